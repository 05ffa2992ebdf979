"""The pure clearing function: uploads in, postings and exceptions out (issue 7 items 3–4).

:func:`clear_batch` does no I/O: what it needs from the database comes in as :class:`Known` (the
cards' issuers, last cleared ATC and EC balance, loss-report minutes, keys already cleared) and the
HSM comes in as a :class:`~citycard.clearing.verify.Verifier`. So it runs unchanged in a worker
process, or later on a distributed engine, over any partition of the records by card.

Per record, in this order (the first failing check names the exception):

1. ``malformed`` — the upload does not parse (:func:`~citycard.clearing.record.parse_record`);
2. ``duplicate`` — PAN+PSN+ATC seen earlier in this batch or already cleared (DESIGN.md §3);
3. ``unknown_card`` — the card is not in ``known`` (not registered, or no EC ledger account);
4. ``late`` — tapped more than :data:`LATE_AFTER` before clearing;
5. ``forged`` — the TC or the IAD's EC balance MAC does not verify in the HSM;
6. per card in ATC order: ``out_of_order`` — an ATC at or below the last cleared one;
   ``balance_chain`` — the next ATC's balance before (after + amount) is not the last balance after.

An accepted tap posts ``tc:PAN:PSN:ATC`` (card EC account → operator settlement account, layer
cleared); one tapped at or after the card's loss-report minute is also refunded with
``refund:PAN:PSN:ATC`` (operator → the card's EC account, i.e. back to the cardholder).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from citycard.clearing.record import ClearingRecord, MalformedRecord, parse_record, record_key
from citycard.clearing.verify import Verifier
from citycard.ledger.model import Layer, Line, PostingRequest

REASONS = ("malformed", "duplicate", "unknown_card", "late", "forged", "out_of_order", "balance_chain")
# UNCERTAIN: CUPS/PBOC give no public figure for how old an offline TC may be when it reaches
# clearing; 30 days covers a validator offline for a week with room to spare.
LATE_AFTER = dt.timedelta(days=30)
FUTURE_SLACK = dt.timedelta(minutes=10)  # a device clock ahead of ours by more is a malformed record


def ec_account(issuer: str, pan: str, psn: str) -> str:
    """The card's EC ledger account, named as the issuer host names it (host.issuer account_codes).

    >>> ec_account("citybank", "6235480000000001", "01")
    'citybank:ec:6235480000000001:01'
    """
    return f"{issuer}:ec:{pan}:{psn}"


def operator_account(operator: str) -> str:
    """The operator's settlement account the fares are cleared to.

    >>> operator_account("bus-1")
    'operator:bus-1'
    """
    return f"operator:{operator}"


@dataclass(frozen=True, slots=True)
class CardState:
    """What clearing knows of a card: its issuer, last cleared ATC and EC balance, loss report."""

    issuer: str
    last_atc: int | None = None
    last_balance_fen: int | None = None
    lost_at: dt.datetime | None = None  # the loss-report minute (platform cards.lost_at), aware UTC


@dataclass(frozen=True)
class Known:
    """State from outside the batch: cards by ``PAN:PSN``, keys already cleared, the clearing time."""

    cards: Mapping[str, CardState]
    seen: Container[str]
    now: dt.datetime


@dataclass(frozen=True, slots=True)
class Accepted:
    """A tap that clears; ``refunded`` when it came at or after its card's loss report."""

    record: ClearingRecord
    refunded: bool


@dataclass(frozen=True, slots=True)
class ClearingException:
    """A record clearing did not accept: the reason (one of :data:`REASONS`), a detail, the upload."""

    key: str
    reason: str
    detail: str
    upload: Mapping[str, Any]
    position: int  # index of the record in the sequence given to clear_batch


@dataclass(frozen=True)
class BatchResult:
    postings: list[PostingRequest] = field(default_factory=list)
    exceptions: list[ClearingException] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)


class Cleared(NamedTuple):
    """An accepted tap reduced to what the ledger and ``clearing_taps`` need: a plain tuple, so a
    worker process hands it back several times cheaper than the full record (pickling)."""

    key: str
    card: str
    pan: str
    psn: str
    atc: int
    amount_fen: int
    balance_after_fen: int
    operator: str
    route: str
    vehicle: str
    terminal_id: str
    tap_at: dt.datetime

    @classmethod
    def of(cls, r: ClearingRecord) -> Cleared:
        return cls(r.key, r.card, r.pan, r.psn, r.atc, r.amount_fen, r.balance_after_fen, r.operator, r.route,
                   r.vehicle, r.terminal_id, r.tap_at)  # fmt: skip


def tc_posting_key(record: ClearingRecord | Cleared) -> str:
    return f"tc:{record.key}"


def refund_posting_key(record: ClearingRecord | Cleared) -> str:
    return f"refund:{record.key}"


def postings_for(record: ClearingRecord | Cleared, issuer: str, *, refunded: bool) -> list[PostingRequest]:
    """The ledger postings of an accepted tap (none for a free ride: a posting needs an amount)."""
    if record.amount_fen == 0:
        return []
    card, operator = ec_account(issuer, record.pan, record.psn), operator_account(record.operator)
    memo = f"{record.operator} {record.route}/{record.vehicle} {record.terminal_id}"
    fare = PostingRequest(
        tc_posting_key(record),
        (Line(card, debit_fen=record.amount_fen), Line(operator, credit_fen=record.amount_fen)),
        Layer.CLEARED,
        memo,
    )
    if not refunded:
        return [fare]
    refund = PostingRequest(
        refund_posting_key(record),
        (Line(operator, debit_fen=record.amount_fen), Line(card, credit_fen=record.amount_fen)),
        Layer.CLEARED,
        f"refund after loss report: {memo}",
    )
    return [fare, refund]


def clear_batch(records: Sequence[Mapping[str, Any]], *, keys: Verifier, known: Known) -> BatchResult:
    """Clear uploaded taps (see the module note). Pure: same inputs, same result; no I/O but ``keys``."""
    result = BatchResult()
    exceptions = result.exceptions

    def reject(position: int, key: str, reason: str, detail: str) -> None:
        exceptions.append(ClearingException(key, reason, detail, records[position], position))

    in_batch: set[str] = set()
    per_card: dict[str, list[tuple[ClearingRecord, int]]] = defaultdict(list)
    for position, upload in enumerate(records):
        try:
            record = parse_record(upload)
        except MalformedRecord as exc:
            reject(position, record_key(upload), "malformed", str(exc))
            continue
        key = record.key
        if key in in_batch or key in known.seen:
            where = "earlier in this batch" if key in in_batch else "in an earlier batch"
            reject(position, key, "duplicate", f"PAN+PSN+ATC {key} already cleared {where}")
            continue
        in_batch.add(key)
        state = known.cards.get(record.card)
        if state is None:
            reject(
                position,
                key,
                "unknown_card",
                f"card {record.card} is not registered with clearing or has no EC ledger account",
            )
            continue
        if known.now - record.tap_at > LATE_AFTER:
            reject(
                position, key, "late", f"tapped {record.tap_at.isoformat()}, over {LATE_AFTER.days} days ago"
            )
            continue
        if record.tap_at - known.now > FUTURE_SLACK:
            reject(position, key, "malformed", f"tap_at {record.tap_at.isoformat()} is in the future")
            continue
        why = keys.forged(record)
        if why is not None:
            reject(position, key, "forged", why)
            continue
        per_card[record.card].append((record, position))

    for card, taps in per_card.items():
        state = known.cards[card]
        last_atc, last_balance = state.last_atc, state.last_balance_fen
        for record, position in sorted(taps, key=lambda pair: pair[0].atc):
            if last_atc is not None and record.atc <= last_atc:
                reject(
                    position, record.key, "out_of_order", f"ATC {record.atc} after ATC {last_atc} was cleared"
                )
                continue
            if (
                last_atc is not None
                and last_balance is not None
                and record.atc == last_atc + 1
                and record.balance_before_fen != last_balance
            ):
                reject(
                    position,
                    record.key,
                    "balance_chain",
                    f"balance before {record.balance_before_fen} fen ≠ {last_balance} fen after ATC {last_atc}",
                )
                continue
            # An ATC gap means online transactions (e.g. a 圈存 top-up) happened in between, so the
            # chain restarts from this tap's MACed balance (UNCERTAIN: ATC gaps are not reconciled).
            last_atc, last_balance = record.atc, record.balance_after_fen
            refunded = state.lost_at is not None and record.tap_at >= state.lost_at
            result.accepted.append(Accepted(record, refunded))
            result.postings.extend(postings_for(record, state.issuer, refunded=refunded))
    return result
