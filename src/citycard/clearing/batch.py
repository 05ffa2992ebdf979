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
6. per card in ATC order: a tap above the card's last cleared ATC extends the chain —
   ``balance_chain`` when it is the next ATC and its balance before (after + amount) is not the last
   balance after; a tap BELOW it (not a duplicate, so never cleared: a validator that uploaded days
   late) is a *late tap*, checked against its cleared (or accepted in this batch) neighbours —
   ``balance_chain`` when the tap at ATC−1 has another balance after than this one's balance before,
   or the tap at ATC+1 another balance before than this one's balance after (neighbours across an
   ATC gap are not checked, as on the forward chain); an accepted late tap does not move the card's
   last ATC and balance. ``out_of_order`` is left only for an ATC EQUAL to the last cleared one that
   is not a duplicate (clearing state without its tap row: cannot be checked; never seen in normal
   running) and for old queued rows;
   ``refund_unbacked`` — the tap's transit exit refund exceeds what the operator collected from the
   card (its cleared, unrefunded fares to that operator less the refunds already paid, plus the
   fares accepted earlier in this batch): held for the operator's handling.

An accepted tap's fare is posted with the other fares of its card partition and operator
(:func:`fare_postings`: ``fares:BATCH:N``, each card's EC account ``ISSUER:ec:PAN:PSN`` debited with
its fares, the operator's settlement account credited with their sum, layer cleared; at most
:data:`FARE_CARDS_PER_POSTING_MAX` cards per posting) — the taps themselves are the batch's rows in
``clearing_taps``. One tapped at or after the card's loss-report minute is also refunded with
``refund:PAN:PSN:ATC`` (operator → the card's EC account, i.e. back to the cardholder). A tap whose
transit object (:mod:`~citycard.clearing.transit`) carries ``refund_fen`` > 0 (a segmented exit
paying back part of the maximum held at entry) also posts ``exitrefund:PAN:PSN:ATC`` (operator →
the card's EC account). A zero-amount tap is checked like any other and posts no fare. An
exception the operator accepts later posts its own ``tc:PAN:PSN:ATC``
(:func:`~citycard.clearing.store.handle_exception`).

Why grouped: one posting per tap was three ledger rows per tap (header and two lines) — on SQLite
about 40 % of the clearing parent's CPU. Grouped, a card partition of 2,000 taps writes one line
per card and operator and one header per 31 cards; every movement still balances and is posted
once (the batch is one transaction under its id).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

from citycard.clearing.record import (
    ClearingRecord,
    MalformedRecord,
    native_json_part,
    native_parser,
    parse_fields_fast,
    parse_record,  # noqa: F401 — still importable from here (benchmarks/clearing_split.py wraps it)
    parse_record_general,
    record_key,
)
from citycard.clearing.verify import Verifier
from citycard.ledger.model import LINES_PER_POSTING_MAX, MEMO_MAX, Layer, Line, PostingRequest
from citycard.ledger.transfers import Transfer

_new_tuple = tuple.__new__
REASONS = (
    "malformed", "duplicate", "unknown_card", "late", "forged", "out_of_order", "balance_chain",
    "refund_unbacked",
)  # fmt: skip
# UNCERTAIN: CUPS/PBOC give no public figure for how old an offline TC may be when it reaches
# clearing; 30 days covers a validator offline for a week with room to spare.
LATE_AFTER = dt.timedelta(days=30)
FUTURE_SLACK = dt.timedelta(minutes=10)  # a device clock ahead of ours by more is a malformed record


def digest_of(records: Sequence[Mapping[str, Any]]) -> str:
    """The identity of an uploaded batch's content: SHA-256 of its canonical JSON (an upload id
    replayed with other records is refused). Stored per batch, so its form must never change.

    >>> digest_of([{"b": 1, "a": "x"}]) == digest_of([{"a": "x", "b": 1}])
    True
    """
    return digest_of_parts([digest_part(records)])  # the SHA-256 of json.dumps(list(records), sort_keys…)


def digest_part(records: Sequence[Mapping[str, Any]]) -> bytes:
    """The canonical JSON of consecutive records as :func:`digest_of` hashes it, without the list's
    brackets: the parts of a batch's slices, in order, give its digest (:func:`digest_of_parts`),
    so workers can share the encoding. An upload of the usual shape is written in C where the
    extension is built (``record.native_json_part``), else by a format string (:func:`_upload_json`),
    any other record by ``json.dumps``: the same text every way (hypothesis-tested).

    >>> digest_of_parts([digest_part([{"a": 1}]), digest_part([]), digest_part([{"b": 2}])]) == digest_of([{"a": 1}, {"b": 2}])
    True
    """
    native = native_json_part()
    if native is not None:  # the usual uploads written in C (clearing._record_native), others below
        return native(records, _record_json)
    return ",".join([_record_json(r) for r in records]).encode()


def _record_json(record: Any) -> str:
    """A record's canonical JSON as :func:`digest_of` writes it (ASCII: json.dumps escapes the rest)."""
    return _upload_json(record) or _canonical_json(record)


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# An upload's fields in sorted order (record.UPLOAD_FIELDS), "transit" aside: its JSON is the same
# text json.dumps(sort_keys=True) writes when the texts need no escape.
_UPLOAD_FIELDS_SORTED = itemgetter(
    "amount_fen", "balance_fen_after", "field55", "operator", "pan", "psn", "route", "tap_at", "terminal_id",
    "vehicle",
)  # fmt: skip
_UPLOAD_FIELD_COUNT = 10


def _upload_json(record: Any) -> str | None:
    """:func:`_canonical_json` of an upload of the usual shape — exactly the upload fields, plain
    int amounts, texts in printable ASCII without ``"`` or a backslash (JSON writes them as they
    are), a transit object or none — written by one format string: json.dumps sorts and escapes in
    general, at three times the cost. ``None`` for any other record."""
    if type(record) is not dict:
        return None
    size = len(record)
    if size == _UPLOAD_FIELD_COUNT:
        transit = ""
    elif size == _UPLOAD_FIELD_COUNT + 1 and type(record.get("transit")) is dict:
        transit = f'"transit":{_canonical_json(record["transit"])},'
    else:
        return None
    try:
        amount, after, *texts = _UPLOAD_FIELDS_SORTED(record)
        joined = "".join(texts)  # a TypeError unless every one is a str
    except (KeyError, TypeError):
        return None
    if (
        type(amount) is not int
        or type(after) is not int
        or not joined.isascii()
        or not joined.isprintable()
        or '"' in joined
        or "\\" in joined
    ):
        return None
    field55, operator, pan, psn, route, tap_at, terminal_id, vehicle = texts
    return (
        f'{{"amount_fen":{amount},"balance_fen_after":{after},"field55":"{field55}","operator":"{operator}",'
        f'"pan":"{pan}","psn":"{psn}","route":"{route}","tap_at":"{tap_at}","terminal_id":"{terminal_id}",'
        f'{transit}"vehicle":"{vehicle}"}}'
    )


def digest_of_parts(parts: Iterable[bytes]) -> str:
    """:func:`digest_of` from the :func:`digest_part` of each slice of the batch, in order."""
    digest = DigestOfParts()
    for part in parts:
        digest.add(part)
    return digest.hexdigest()


class DigestOfParts:
    """:func:`digest_of_parts` fed one part at a time, as the parts arrive (in order)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256(b"[")
        self._first = True

    def add(self, part: bytes) -> None:
        if part:
            if not self._first:
                self._sha.update(b",")
            self._sha.update(part)
            self._first = False

    def hexdigest(self) -> str:
        sha = self._sha.copy()
        sha.update(b"]")
        return sha.hexdigest()


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


class CardState(NamedTuple):
    """What clearing knows of a card: its issuer, last cleared ATC and EC balance, loss report (a
    tuple: an intake reads one per card)."""

    issuer: str
    last_atc: int | None = None
    last_balance_fen: int | None = None
    lost_at: dt.datetime | None = None  # the loss-report minute (platform cards.lost_at), aware UTC
    max_atc: int | None = None  # the highest ATC of its cleared taps (clearing_cards.max_atc)


@dataclass(frozen=True)
class Known:
    """State from outside the batch: cards by ``PAN:PSN``, keys already cleared, the clearing time."""

    cards: Mapping[str, CardState]
    # The batch's keys already in clearing_taps (store.load_known_for looks up only those that may
    # be: a key above its card's max_atc cannot).
    seen: Container[str]
    now: dt.datetime
    # (card, operator) → fen the operator may still refund to the card: its cleared, unrefunded
    # fares less the exit refunds and corrections paid (only for cards with a refund in the batch).
    refundable: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # tap key ``PAN:PSN:ATC`` → (balance before, balance after) of the cleared taps next to the late
    # taps of the batch (ATC ± 1 of each tap below its card's last cleared ATC; store.load_known).
    neighbours: Mapping[str, tuple[int, int]] = field(default_factory=dict)


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

    # first the values of a clearing_taps row, in the order store's SQLite insert takes them by
    # number (a row is a slice of this tuple: no per-row rebuilding in the writing parent)
    key: str
    card: str
    atc: int
    amount_fen: int
    balance_after_fen: int
    operator: str
    route: str
    vehicle: str
    terminal_id: str
    exit_refund_fen: int  # 0: none
    # the tap row's texts, made where the record is parsed (a worker), not in the writing parent:
    tap_at_text: str  # tap_at as SQLite stores it (sqlite_stamp)
    day: str  # the Asia/Shanghai day of tap_at (settlement day)
    transit: str | None  # canonical JSON (clearing.transit.Transit.json)
    pan: str
    psn: str
    # last: a worker's row is all the fields before it (checked_wire), this one put back after
    tap_at: dt.datetime

    @classmethod
    def of(cls, r: ClearingRecord) -> Cleared:
        transit, at = r.transit, r.tap_at
        return cls(r.key, r.card, r.atc, r.amount_fen, r.balance_after_fen, r.operator, r.route, r.vehicle,
                   r.terminal_id, 0 if transit is None else transit.refund_fen, sqlite_stamp(at), china_day(at),
                   None if transit is None else transit.json(), r.pan, r.psn, at)  # fmt: skip


_ZERO = dt.timedelta(0)
_UTC = dt.UTC
_CHINA_OFFSET = dt.timedelta(hours=8)  # Asia/Shanghai has had no DST since 1991


def sqlite_stamp(moment: dt.datetime) -> str:
    """What SQLAlchemy's SQLite DateTime stores for an aware UTC time (UTCDateTime), without its
    per-value processing: ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC."""
    if moment.tzinfo is _UTC:  # what the parsers give: its ISO text but the "+00:00"
        return moment.isoformat(" ", "microseconds")[:26]
    if moment.utcoffset() != _ZERO:
        moment = moment.astimezone(dt.UTC)
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def tap_texts(when: Any, moment: dt.datetime) -> tuple[str, str]:
    """(:func:`sqlite_stamp`, :func:`china_day`) of ``moment``, the time an upload's ``tap_at`` text
    ``when`` was parsed to: sliced from the text when it has the validators' shape
    ``YYYY-MM-DDTHH:MM:SS+00:00`` (whose fields are then exactly the time's), else formatted from the
    time. Both ways give the same texts (hypothesis-tested); slicing costs a quarter of formatting."""
    if (
        type(when) is str and len(when) == 25 and when[19:] == "+00:00"
        and when[4] == "-" and when[7] == "-" and when[13] == ":" and when[16] == ":"
    ):  # fmt: skip
        stamp = f"{when[:10]} {when[11:19]}.000000"
        return stamp, when[:10] if when[11:13] < "16" else china_day(moment)  # 16:00 UTC: 00:00 in China
    return sqlite_stamp(moment), china_day(moment)


def china_day(moment: dt.datetime) -> str:
    """The Asia/Shanghai day of an aware time, ``YYYY-MM-DD`` (the settlement day of a tap)."""
    if moment.tzinfo is not _UTC:
        moment = moment.astimezone(dt.UTC)
    return (moment + _CHINA_OFFSET).date().isoformat()


def tc_posting_key(record: ClearingRecord | Cleared) -> str:
    return f"tc:{record.key}"


def refund_posting_key(record: ClearingRecord | Cleared) -> str:
    return f"refund:{record.key}"


def exit_refund_posting_key(record: ClearingRecord | Cleared) -> str:
    return f"exitrefund:{record.key}"


def transfers_for(
    record: ClearingRecord | Cleared, issuer: str, *, refunded: bool, fares: bool = True
) -> list[Transfer]:
    """The ledger movements of an accepted tap, as two-line transfers (ledger.transfers): the fare
    (none for a free ride: a posting needs an amount), its refund after a loss report, and the
    transit exit refund — card EC account ``ISSUER:ec:PAN:PSN`` ⇄ ``operator:OPERATOR``."""
    card, operator = ec_account(issuer, record.pan, record.psn), operator_account(record.operator)
    memo = f"{record.operator} {record.route}/{record.vehicle} {record.terminal_id}"
    key, amount, exit_refund = record.key, record.amount_fen, record.exit_refund_fen
    out = []
    new = _new_tuple  # Transfer(...) without the named tuple's Python-level __new__
    if amount:
        if fares:
            out.append(new(Transfer, (f"tc:{key}", card, operator, amount, memo)))
        if refunded:
            out.append(
                new(Transfer, (f"refund:{key}", operator, card, amount, f"refund after loss report: {memo}"))
            )
    if exit_refund:
        out.append(new(Transfer, (f"exitrefund:{key}", operator, card, exit_refund, f"exit refund: {memo}")))
    return out


FARE_CARDS_PER_POSTING_MAX = LINES_PER_POSTING_MAX - 1  # and one line crediting the operator


def fare_postings(
    cleared: Sequence[tuple[Cleared, bool]], cards: Mapping[str, CardState], *, batch_id: str, first: int
) -> list[PostingRequest]:
    """The fares of accepted taps as grouped postings (layer cleared): per operator, up to
    :data:`FARE_CARDS_PER_POSTING_MAX` card EC accounts debited with their fares to it and the
    operator credited with the sum — ``fares:BATCH:N``, N counting from ``first``. The taps behind
    a posting are the batch's rows in ``clearing_taps``; refunds stay one posting per tap
    (:func:`transfers_for` with ``fares=False``). It is :func:`fare_requests` of
    :func:`fare_debits` (a worker may compute the debits, the writer numbers the postings)."""
    return fare_requests(fare_debits(cleared, cards), batch_id=batch_id, first=first)


def fare_debits(
    cleared: Sequence[tuple[Cleared, bool]], cards: Mapping[str, CardState]
) -> dict[str, list[tuple[str, int]]]:
    """Per operator (sorted), the card EC accounts (sorted) and the fen their accepted taps owe it;
    cards whose taps were all free are left out."""
    per_operator: dict[str, dict[str, int]] = {}  # operator → card EC account → fen
    accounts: dict[str, str] = {}  # card → its EC account, named once per card
    for tap, _ in cleared:
        amount = tap.amount_fen
        if amount:
            card = tap.card
            account = accounts.get(card)
            if account is None:
                account = accounts[card] = ec_account(cards[card].issuer, tap.pan, tap.psn)
            debits = per_operator.get(tap.operator)
            if debits is None:
                debits = per_operator[tap.operator] = {}
            debits[account] = debits.get(account, 0) + amount
    return {operator: sorted(per_operator[operator].items()) for operator in sorted(per_operator)}


def fare_requests(
    debits_by_operator: Mapping[str, Sequence[tuple[str, int]]], *, batch_id: str, first: int
) -> list[PostingRequest]:
    """:func:`fare_debits` as grouped postings ``fares:BATCH:N`` (N from ``first``), in operator
    order, up to :data:`FARE_CARDS_PER_POSTING_MAX` accounts a posting."""
    out = []
    for operator, debits in debits_by_operator.items():
        credit = operator_account(operator)
        for start in range(0, len(debits), FARE_CARDS_PER_POSTING_MAX):
            group = debits[start : start + FARE_CARDS_PER_POSTING_MAX]
            lines = (
                *(Line(account, debit_fen=fen) for account, fen in group),
                Line(credit, credit_fen=sum(fen for _, fen in group)),
            )
            key = f"fares:{batch_id}:{first + len(out)}"
            out.append(
                PostingRequest(
                    key,
                    lines,
                    Layer.CLEARED,
                    f"{operator} fares of {len(group)} cards, batch {batch_id}"[:MEMO_MAX],
                )
            )
    return out


def chain_ends(
    cleared: Sequence[tuple[Cleared | ClearingRecord, bool]], cards: Mapping[str, CardState]
) -> list[tuple[int, int, str]]:
    """(ATC, balance after, card) of each card's new chain end, by card: its highest accepted ATC
    not below its last cleared one (a late tap, :func:`decide`, leaves the end where it is)."""
    last: dict[str, tuple[int, int]] = {}
    for tap, _ in cleared:
        end, state = last.get(tap.card), cards[tap.card]
        if state.last_atc is not None and tap.atc < state.last_atc:
            continue
        if end is None or tap.atc > end[0]:
            last[tap.card] = (tap.atc, tap.balance_after_fen)
    return [(atc, balance, card) for card, (atc, balance) in sorted(last.items())]


def batch_postings(
    accepted: Sequence[tuple[Any, bool]], cards: Mapping[str, CardState], *, batch_id: str, first: int = 0
) -> list[PostingRequest]:
    """All the postings of accepted taps: the grouped fares (:func:`fare_postings`, numbered from
    ``first``), then per tap its refunds (after a loss report, transit exit refund)."""
    out = fare_postings(accepted, cards, batch_id=batch_id, first=first)
    for tap, refunded in accepted:
        if refunded or tap.exit_refund_fen:
            out.extend(postings_for(tap, cards[tap.card].issuer, refunded=refunded, fares=False))
    return out


def postings_for(
    record: ClearingRecord | Cleared, issuer: str, *, refunded: bool, fares: bool = True
) -> list[PostingRequest]:
    """:func:`transfers_for` as ledger posting requests (layer cleared), for ``post_many``."""
    out = []
    for t in transfers_for(record, issuer, refunded=refunded, fares=fares):
        lines = (Line(t.debit, debit_fen=t.amount_fen), Line(t.credit, credit_fen=t.amount_fen))
        out.append(PostingRequest(t.key, lines, Layer.CLEARED, t.memo))
    return out


class Checked(NamedTuple):
    """A record after the per-record checks that need no state (:func:`check_records`): parsed and
    verified (``tap``), or ``problem`` = ("malformed" | "forged", detail). ``position`` indexes the
    uploads the exceptions refer to."""

    position: int
    key: str
    tap: ClearingRecord | Cleared | None
    problem: tuple[str, str] | None


def check_records(
    records: Sequence[Mapping[str, Any]], *, keys: Verifier, compact: bool = False
) -> list[Checked]:
    """Parse every record and verify its TC and IAD MAC (all of them in one HSM call when the
    verifier has ``forged_taps`` or ``forged_many``). Pure but for ``keys``; needs no database
    state, so it runs in any process over any slice of the uploads. ``compact`` returns
    :class:`Cleared` rows (:func:`checked_wire` then :func:`from_wire`) and, with ``forged_taps``,
    builds no ClearingRecord for the canonical uploads
    (:func:`~citycard.clearing.record.parse_fields_fast`)."""
    if compact:
        return from_wire(checked_wire(records, keys=keys))
    parsed, out = _parsed(records)
    reasons = _reasons(parsed, keys)
    for (position, f), why in zip(parsed, reasons, strict=True):
        record = ClearingRecord(*f)
        out.append(
            _new_tuple(Checked, (position, record.key, record, None if why is None else ("forged", why)))
        )
    out.sort(key=_position)
    return out


def _parsed(records: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[int, Any]], list[Any]]:
    """(position, ClearingRecord fields) of the records that parse; the others as malformed Checked."""
    malformed: list[Any] = []
    parsed: list[tuple[int, Any]] = []  # (position, the ClearingRecord fields in field order)
    fast, native = parse_fields_fast, native_parser()
    for position, upload in enumerate(records):
        fields = native(upload) if native is not None else None
        if fields is None:
            fields = fast(upload)
        if fields is None:
            try:
                fields = astuple_record(parse_record_general(upload))
            except MalformedRecord as exc:
                malformed.append(Checked(position, record_key(upload), None, ("malformed", str(exc))))
                continue
        parsed.append((position, fields))
    return parsed, malformed


def _reasons(parsed: Sequence[tuple[int, Any]], keys: Verifier) -> list[str | None]:
    taps = getattr(keys, "forged_taps", None)
    if taps is not None:  # the HSM verifier: the TapToVerify tuples straight from the fields
        return taps([(f[0], f[1], f[2].to_bytes(2, "big"), f[7], f[6], f[8]) for _, f in parsed])
    many = getattr(keys, "forged_many", None)
    records_ = [ClearingRecord(*f) for _, f in parsed]
    return many(records_) if many is not None else [keys.forged(r) for r in records_]


def checked_wire(
    records: Sequence[Mapping[str, Any]], *, keys: Verifier, timed: bool = False
) -> list[tuple[Any, ...]]:
    """:func:`check_records` (``compact``) as plain rows for a worker process to send back:
    ``(position, key, tap, problem)`` with ``tap`` the :class:`Cleared` fields but ``tap_at`` (the
    time travels as its ``tap_at_text``; pickling a datetime costs more than all the rest of a
    row), in position order. :func:`from_wire` makes them :class:`Checked` again. ``timed``: the
    parsed time appended, ``tap`` then all of the Cleared fields (rows that stay in the process)."""
    parsed, out = _parsed(records)
    reasons = _reasons(parsed, keys)
    rows: list[tuple[Any, ...]] = [tuple(c) for c in out]
    # Equal texts that recur in a batch (a validator's operator, route, vehicle and terminal; the
    # day; a card's PAN:PSN) as one object each: pickle writes it once and refers to it after (a
    # partition's rows pickle in a third of the time, unpickle in half), and the parent holds one.
    shared: dict[str, str] = {}
    share = shared.setdefault
    for (position, f), why in zip(parsed, reasons, strict=True):
        pan, psn, atc, transit, at = f[0], f[1], f[2], f[15], f[13]
        card, operator, route, vehicle, terminal_id = f"{pan}:{psn}", f[10], f[11], f[12], f[9]
        key = f"{card}:{atc:04X}"
        upload = records[position]
        at_text, day = tap_texts(upload.get("tap_at") if type(upload) is dict else None, at)
        wire = (
            key, share(card, card), atc, f[3], f[5], share(operator, operator), share(route, route),
            share(vehicle, vehicle), share(terminal_id, terminal_id),
            0 if transit is None else transit.refund_fen, at_text, share(day, day),
            None if transit is None else transit.json(), pan, psn,
        )  # fmt: skip
        if timed:
            wire = (*wire, at)
        rows.append((position, key, wire, None if why is None else ("forged", why)))
    rows.sort(key=_first)
    return rows


def checked_taps(
    records: Sequence[Mapping[str, Any]], *, keys: Verifier, positions: Sequence[int]
) -> list[Checked]:
    """:func:`checked_wire` then :func:`from_wire` where both run in one process (a worker that
    decides too): the parsed time kept, not read back from its text. ``positions``: each record's
    position in the batch."""
    new = _new_tuple
    return [
        new(Checked, (positions[position], key, None if tap is None else new(Cleared, tap), problem))
        for position, key, tap, problem in checked_wire(records, keys=keys, timed=True)
    ]


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


_WIRE_AT_TEXT = Cleared._fields.index("tap_at_text")  # the time's text on the wire
assert Cleared._fields[-1] == "tap_at", "from_wire appends the time"
_from_iso = dt.datetime.fromisoformat


def from_wire(rows: Iterable[tuple[Any, ...]], positions: Sequence[int] | None = None) -> list[Checked]:
    """:func:`checked_wire`'s rows as :class:`Checked` with :class:`Cleared` taps (``tap_at`` an
    aware UTC time again, read from its text); ``positions`` maps a row's position to the batch's."""
    new, text = _new_tuple, _WIRE_AT_TEXT
    out = []
    for position, key, wire, problem in rows:
        if positions is not None:
            position = positions[position]
        if wire is not None:
            # tap_at_text is sqlite_stamp's "YYYY-MM-DD HH:MM:SS.ffffff", always in UTC
            wire = new(Cleared, (*wire, _from_iso(wire[text] + "+00:00")))
        out.append(new(Checked, (position, key, wire, problem)))
    return out


def _position(checked: Checked) -> int:
    return checked.position


def astuple_record(record: ClearingRecord) -> tuple[Any, ...]:
    """A :class:`ClearingRecord`'s fields in field order (what ``ClearingRecord(*fields)`` takes)."""
    return tuple(getattr(record, name) for name in ClearingRecord.__slots__)


def late_neighbour_keys(card: str, atc: int) -> tuple[str, str]:
    """The tap keys next to a late tap (ATC − 1, ATC + 1) whose balances it must fit.

    >>> late_neighbour_keys("6235480000000001:01", 5)
    ('6235480000000001:01:0004', '6235480000000001:01:0006')
    """
    return f"{card}:{atc - 1:04X}", f"{card}:{atc + 1:04X}"


def _late_misfit(
    card: str,
    atc: int,
    before: int,
    after: int,
    cleared: Mapping[str, tuple[int, int]],
    late: Mapping[int, tuple[int, int]],
) -> str | None:
    """Why a late tap does not fit its neighbours (cleared, or late taps accepted in this batch)."""
    below, above = late_neighbour_keys(card, atc)
    prev = late.get(atc - 1) or cleared.get(below)
    if prev is not None and prev[1] != before:
        return f"late ATC {atc}: balance before {before} fen ≠ {prev[1]} fen after ATC {atc - 1}"
    nxt = late.get(atc + 1) or cleared.get(above)
    if nxt is not None and nxt[0] != after:
        return f"late ATC {atc}: balance after {after} fen ≠ {nxt[0]} fen before ATC {atc + 1}"
    return None


def decide(
    checked: Sequence[Checked], uploads: Sequence[Mapping[str, Any]], *, known: Known
) -> tuple[list[tuple[ClearingRecord | Cleared, bool]], list[ClearingException]]:
    """The checks that need state (see the module note for the order): duplicates, unknown cards,
    late and future taps, forged, then per card in ATC order the chain and the exit refund bound.
    Returns the accepted taps with their loss-refund flag, and the exceptions. Pure."""
    accepted: list[tuple[ClearingRecord | Cleared, bool]] = []
    exceptions: list[ClearingException] = []

    def reject(position: int, key: str, reason: str, detail: str) -> None:
        exceptions.append(ClearingException(key, reason, detail, uploads[position], position))

    in_batch: set[str] = set()
    # per card (ATC, position, record): sorted as plain tuples (a card's ATCs in a batch are distinct:
    # a repeated one is a duplicate key, rejected above), no key function called per tap
    per_card: dict[str, list[tuple[int, int, ClearingRecord | Cleared]]] = defaultdict(list)
    cards, seen, now = known.cards, known.seen, known.now
    oldest, newest = now - LATE_AFTER, now + FUTURE_SLACK  # now − tap_at > LATE_AFTER ⇔ tap_at < oldest
    for position, key, record, problem in checked:
        if record is None:
            assert problem is not None
            reject(position, key, *problem)
            continue
        if key in in_batch or key in seen:
            where = "earlier in this batch" if key in in_batch else "in an earlier batch"
            reject(position, key, "duplicate", f"PAN+PSN+ATC {key} already cleared {where}")
            continue
        in_batch.add(key)
        card, tap_at = record.card, record.tap_at
        if card not in cards:
            reject(
                position,
                key,
                "unknown_card",
                f"card {card} is not registered with clearing or has no EC ledger account",
            )
            continue
        if tap_at < oldest:
            reject(position, key, "late", f"tapped {tap_at.isoformat()}, over {LATE_AFTER.days} days ago")
            continue
        if tap_at > newest:
            reject(position, key, "malformed", f"tap_at {tap_at.isoformat()} is in the future")
            continue
        if problem is not None:
            reject(position, key, *problem)
            continue
        per_card[card].append((record.atc, position, record))

    for card, taps in per_card.items():
        state = cards[card]
        last_atc, last_balance = state.last_atc, state.last_balance_fen
        refundable: dict[str, int] = {}  # operator → fen still refundable to this card
        if len(taps) > 1:
            taps.sort()
        late: dict[int, tuple[int, int]] = {}  # ATC → (before, after) of late taps accepted here
        for atc, position, record in taps:
            before = record.balance_after_fen + record.amount_fen
            is_late = state.last_atc is not None and atc < state.last_atc
            if is_late:
                why = _late_misfit(card, atc, before, record.balance_after_fen, known.neighbours, late)
                if why is not None:
                    reject(position, record.key, "balance_chain", why)
                    continue
            elif last_atc is not None and atc <= last_atc:
                reject(position, record.key, "out_of_order", f"ATC {atc} after ATC {last_atc} was cleared")
                continue
            elif (
                last_atc is not None
                and last_balance is not None
                and atc == last_atc + 1
                and before != last_balance
            ):
                reject(
                    position,
                    record.key,
                    "balance_chain",
                    f"balance before {before} fen ≠ {last_balance} fen after ATC {last_atc}",
                )
                continue
            refunded = state.lost_at is not None and record.tap_at >= state.lost_at
            exit_refund, op = record.exit_refund_fen, record.operator
            have = refundable.get(op)
            if have is None:
                have = known.refundable.get((card, op), 0)
            if exit_refund > have:
                reject(
                    position,
                    record.key,
                    "refund_unbacked",
                    f"exit refund {exit_refund} fen > {have} fen the operator {op} collected from card {card}",
                )
                continue
            refundable[op] = have - exit_refund + (0 if refunded else record.amount_fen)
            if is_late:  # the chain's end stays the card's last cleared tap
                late[atc] = (before, record.balance_after_fen)
            else:
                # An ATC gap means online transactions (e.g. a 圈存 top-up) happened in between, so the
                # chain restarts from this tap's MACed balance (UNCERTAIN: ATC gaps are not reconciled).
                last_atc, last_balance = atc, record.balance_after_fen
            accepted.append((record, refunded))
    return accepted, exceptions


def clear_batch(
    records: Sequence[Mapping[str, Any]], *, keys: Verifier, known: Known, batch_id: str
) -> BatchResult:
    """Clear uploaded taps (see the module note). Pure: same inputs, same result; no I/O but ``keys``.
    It is :func:`check_records` (per record, stateless) then :func:`decide` (per card, with
    ``known``); the postings are :func:`batch_postings` (their keys name ``batch_id``)."""
    accepted, exceptions = decide(check_records(records, keys=keys), records, known=known)
    result = BatchResult(exceptions=exceptions)
    result.accepted.extend(Accepted(record, refunded) for record, refunded in accepted)  # type: ignore[arg-type]
    result.postings.extend(batch_postings(accepted, known.cards, batch_id=batch_id))
    return result
