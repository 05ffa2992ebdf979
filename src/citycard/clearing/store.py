"""The persistent shell around :func:`~citycard.clearing.batch.clear_batch` (issue 7 item 3).

- :func:`intake` — one uploaded batch in ONE write transaction: the batch id is the idempotency key
  (a replay with the same records returns the stored summary and changes nothing; other records
  under the same id are refused), state is read from the database, the pure function runs (in
  ``workers`` processes for big batches), then postings (grouped fares ``fares:BATCH:N``, per-tap
  refunds), taps, card chains and exceptions are written. A crash (even ``kill -9``) before the commit leaves
  nothing; a rerun then does the whole batch exactly once.
- :func:`handle_exception` — the operator's accept / reject / refund of a queued exception, audited.
- :func:`settle` — per operator and settlement day: unsettled taps → gross, fee (rate as data in
  ``fees.toml``), net → one settlement posting and a row; :func:`settlement_csv`/``_json`` files.
- :func:`reconcile` — expected vs collected per operator, ledger invariants, EC chip vs ledger.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from citycard.clearing.batch import (
    CardState,
    Checked,
    Cleared,
    ClearingException,
    Known,
    chain_ends,
    china_day,
    decide,
    digest_of,
    ec_account,
    fare_debits,
    fare_requests,
    operator_account,
    postings_for,
    sqlite_stamp,
    transfers_for,
)
from citycard.clearing.record import CHINA_TIME, MalformedRecord, parse_record, record_key
from citycard.clearing.tables import Batch, Card, Correction, ExceptionItem, Settlement, Tap
from citycard.clearing.verify import Verifier, VerifierSpec
from citycard.db import join_checkpoints, read_transaction, utc_now, write_transaction
from citycard.ledger import (
    POSTINGS_PER_BATCH_MAX,
    AccountKind,
    Layer,
    LedgerError,
    Line,
    PostingRequest,
    balances,
    bulk,
    check_invariants,
    open_account,
    post_many,
)
from citycard.ledger.journal import AccountCache, open_codes
from citycard.ledger.transfers import TRANSFERS_PER_CALL_MAX, post_transfers

RECORDS_PER_BATCH_MAX = 2_000_000  # one upload; ~ four days of a mid-size city's buses
KEYS_PER_QUERY_MAX = 500
HANDLEABLE = {  # reason → the handlings an operator may choose (forged/malformed/duplicate: reject only)
    "out_of_order": {"accept", "reject", "refund"},
    "balance_chain": {"accept", "reject", "refund"},
    "late": {"accept", "reject", "refund"},
    "forged": {"reject"},
    "malformed": {"reject"},
    "duplicate": {"reject"},
    "unknown_card": {"reject"},
    "refund_unbacked": {"accept", "reject"},  # accept: the operator confirms the refund is owed
}
FEES_ACCOUNT = "clearing:fees"


class ClearingError(Exception):
    """A request clearing refuses; nothing was changed."""


@dataclass(frozen=True)
class IntakeResult:
    batch_id: str
    records: int
    accepted: int
    exceptions: int
    replayed: bool


def payable_account(operator: str) -> str:
    return f"operator:{operator}:payable"


def register_card(conn: Connection, *, pan: str, psn: str, issuer: str) -> None:
    """Make a card known to clearing (idempotent): its issuer names its EC ledger account."""
    card = f"{pan}:{psn}"
    if conn.execute(sa.select(Card.card).where(Card.card == card)).first() is None:
        conn.execute(sa.insert(Card).values(card=card, issuer=issuer))


def report_loss(conn: Connection, *, pan: str, psn: str, lost_at: dt.datetime | None) -> None:
    """Record the card's loss-report minute (platform cards.lost_at): later taps are refunded.
    ``None`` lifts it (the report was withdrawn: the card was found)."""
    minute = None
    if lost_at is not None:
        if lost_at.tzinfo is None:
            raise ClearingError("lost_at must be an aware UTC time")
        minute = lost_at.astimezone(dt.UTC).replace(second=0, microsecond=0)
    done = conn.execute(sa.update(Card).where(Card.card == f"{pan}:{psn}").values(lost_at=minute))
    if done.rowcount != 1:
        raise ClearingError(f"card {pan}:{psn} is not known to clearing")


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def load_known(conn: Connection, uploads: Sequence[Mapping[str, Any]], now: dt.datetime) -> Known:
    """The state :func:`clear_batch` needs for these uploads, read in chunks of IN-lists."""
    keys = [record_key(upload) for upload in uploads]
    refunding = {
        f"{upload.get('pan')}:{upload.get('psn')}"
        for upload in uploads
        if isinstance(upload, Mapping)
        and isinstance(upload.get("transit"), Mapping)
        and upload["transit"].get("refund_fen")
    }
    return load_known_for(conn, keys, {key.rsplit(":", 1)[0] for key in keys}, refunding, now)


# Built once per backend (ledger.bulk.per_backend: ``= ANY(array)`` on PostgreSQL, ``IN (…)`` elsewhere).
_CARDS = bulk.per_backend(
    lambda member: sa.select(
        Card.card, Card.issuer, Card.last_atc, Card.last_balance_fen, Card.lost_at, Card.max_atc
    ).where(member(Card.__table__.c.card, "values"))
)


def _taps_at_statement(member: bulk.PairMember) -> Any:
    froms, where = member(Tap.__table__.c.card, Tap.__table__.c.atc, "pairs")
    return sa.select(Tap.key, Tap.amount_fen, Tap.balance_after_fen).select_from(*froms, Tap).where(where)


# Taps by distinct (card, ATC) pairs: the unique (card, atc) index (0014), per backend.
_TAPS_AT = bulk.pairs_per_backend(_taps_at_statement)


def _taps_at(conn: Connection, pairs: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(key, amount, balance after) of the cleared taps at these (card, ATC) pairs, in chunks."""
    out: list[tuple[str, int, int]] = []
    for chunk in _chunks(pairs, KEYS_PER_QUERY_MAX):
        params = bulk.pairs_params(conn, "pairs", chunk)
        out.extend(
            (key, amount, after) for key, amount, after in conn.execute(bulk.for_conn(_TAPS_AT, conn), params)
        )
    return out


def _card_and_atc(key: str) -> tuple[str, int] | None:
    """A tap key's (card, ATC), or ``None`` for a key no cleared tap can have (its ATC not hex:
    a malformed upload's ``PAN:PSN:?``)."""
    card, _, atc_hex = key.rpartition(":")
    try:
        return card, int(atc_hex, 16)
    except ValueError:
        return None


def load_known_for(
    conn: Connection,
    keys: Sequence[str],
    cards: set[str],
    refunding: set[str],
    now: dt.datetime,
    accounts: AccountCache | None = None,
    taps: Sequence[tuple[str, str, int]] | None = None,
    read: Mapping[str, CardState | None] | None = None,
) -> Known:
    """:class:`Known` for exact tap keys and cards (``refunding``: the cards with an exit refund).
    ``accounts``: a cache of this transaction (``one_transaction``) that keeps the EC account rows
    read here, so the fare postings after need no second lookup. ``taps``: (key, card, ATC) of
    each key when the caller has them parsed (then ``keys`` is not read again). ``read``: card
    states read earlier in this transaction (:class:`ReadAhead`; ``None`` for a card not there)."""
    if read is None:
        states = read_card_states(conn, cards)
    else:  # what the read-ahead has (a card it found missing is None), the others read now
        states = read_card_states(conn, [card for card in cards if card not in read])
        states.update((card, read[card]) for card in cards if read.get(card) is not None)
    if taps is None:
        maybe = sorted(key for key in set(keys) if _may_be_cleared(key, states))
        pairs = [pair for pair in map(_card_and_atc, maybe) if pair is not None]
    else:  # the same, from the taps' own card and ATC (_may_be_cleared_at, per card once)
        tops = {card: _top_atc(state) for card, state in states.items()}
        looked_up = {
            (key, card, atc)
            for key, card, atc in taps
            if (top := tops.get(card, _UNKNOWN)) is _UNKNOWN or (top is not None and atc <= top)
        }
        maybe = sorted(key for key, _, _ in looked_up)
        pairs = sorted((card, atc) for _, card, atc in looked_up)
    seen = {key for key, _, _ in _taps_at(conn, pairs)}
    # A card whose EC ledger account was never opened would fail the whole batch in the ledger
    # (UnknownAccount); leaving it out of Known makes its taps "unknown_card" exceptions instead.
    codes = {ec_account(state.issuer, *card.split(":")): card for card, state in states.items()}
    opened = open_codes(conn, codes, AccountCache() if accounts is None else accounts)
    known_cards = {card: states[card] for code, card in codes.items() if code in opened}
    refundable = refundable_fen(conn, sorted(refunding & set(known_cards)))
    # a late tap (ATC below its card's last cleared one) is among the keys that may be cleared
    return Known(known_cards, seen, now, refundable, _late_neighbours(conn, maybe, known_cards))


def _may_be_cleared_at(card: str, atc: int, states: Mapping[str, CardState]) -> bool:
    """:func:`_may_be_cleared` of the tap of ``card`` and ``atc``."""
    state = states.get(card)
    if state is None:
        return True
    top = _top_atc(state)
    return top is not None and atc <= top


_UNKNOWN = object()  # a card not in clearing_cards: its taps are looked up


def _top_atc(state: CardState) -> int | None:
    """The highest ATC of the card's taps in clearing_taps (max_atc, or the chain's end if above
    it), ``None`` while it has none."""
    top = state.max_atc
    if state.last_atc is not None and (top is None or state.last_atc > top):
        top = state.last_atc
    return top


def read_card_states(conn: Connection, cards: Iterable[str]) -> dict[str, CardState]:
    """The clearing_cards rows of these cards (``PAN:PSN``) that exist, in chunks."""
    states: dict[str, CardState] = {}
    for chunk in _chunks(sorted(cards), KEYS_PER_QUERY_MAX):
        for card, issuer, last_atc, last_balance, lost_at, max_atc in conn.execute(
            bulk.for_conn(_CARDS, conn), {"values": chunk}
        ).all():
            states[card] = CardState(issuer, last_atc, last_balance, lost_at, max_atc)
    return states


READ_AHEAD_CARDS_PER_STEP = 256  # cards a read-ahead step reads: one step is ~1–2 ms


class ReadAhead:
    """The card states and EC account rows of a batch's cards, read while the parent would wait for
    the workers (their first results take tens of ms: fork, cold pages), in steps of
    :data:`READ_AHEAD_CARDS_PER_STEP` cards, partition by partition (``parts``: positions, in the
    order the partitions come). :func:`load_known_for` then reads only the cards it lacks (``read``).

    Safe because a card's state changes only when its own partition is written, later in the same
    transaction, and every card is in one partition; a card is named by its upload's ``pan:psn``
    texts, which is the parsed record's card whenever the record can be cleared at all."""

    def __init__(
        self, conn: Connection, uploads: Sequence[Mapping[str, Any]], accounts: AccountCache
    ) -> None:
        self.conn, self.uploads, self.accounts = conn, uploads, accounts
        self.read: dict[str, CardState | None] = {}  # None: looked up, not in clearing_cards
        self._part, self._offset = 0, 0

    def __call__(self, parts: Sequence[Sequence[int]]) -> bool:
        """One step; ``False`` when every partition's cards have been read."""
        wanted: set[str] = set()
        while len(wanted) < READ_AHEAD_CARDS_PER_STEP and self._part < len(parts):
            take = READ_AHEAD_CARDS_PER_STEP - len(wanted)  # positions: at most one card each
            positions = parts[self._part][self._offset : self._offset + take]
            self._offset += len(positions)
            if self._offset >= len(parts[self._part]):
                self._part, self._offset = self._part + 1, 0
            for position in positions:
                upload = self.uploads[position]
                if (
                    type(upload) is dict
                    and type(pan := upload.get("pan")) is str
                    and type(psn := upload.get("psn")) is str
                ):
                    wanted.add(f"{pan}:{psn}")
        wanted.difference_update(self.read)
        if wanted:
            states = read_card_states(self.conn, wanted)
            self.read.update(dict.fromkeys(wanted))
            self.read.update(states)
            codes = [ec_account(state.issuer, *card.split(":")) for card, state in states.items()]
            open_codes(self.conn, codes, self.accounts)  # the rows wait in the cache for load_known_for
        return self._part < len(parts)


def _may_be_cleared(key: str, states: Mapping[str, CardState]) -> bool:
    """Whether tap ``key`` (PAN:PSN:ATC) may be in clearing_taps: not when its card has no tap there
    or only taps of lower ATCs (clearing_cards.max_atc, kept by every write of a tap; the chain's
    last ATC is never above it); an unknown card or an odd key is looked up. A late tap (below the
    last ATC) is always one that may be."""
    card, _, atc_hex = key.rpartition(":")
    if card not in states:
        return True
    try:
        atc = int(atc_hex, 16)
    except ValueError:
        return True
    return _may_be_cleared_at(card, atc, states)


def _late_neighbours(
    conn: Connection, keys: Sequence[str], cards: Mapping[str, CardState]
) -> dict[str, tuple[int, int]]:
    """Tap key → (balance before, balance after) of the cleared taps at ATC ± 1 of every key below
    its card's last cleared ATC (a late tap's neighbours, batch.decide), by key in chunks."""
    wanted: set[tuple[str, int]] = set()
    for key in keys:
        pair = _card_and_atc(key)
        state = None if pair is None else cards.get(pair[0])
        if pair is None or state is None or state.last_atc is None:
            continue
        card, atc = pair
        if atc < state.last_atc:  # its neighbours' keys are late_neighbour_keys(card, atc)
            wanted.update(((card, atc - 1), (card, atc + 1)))
    return {
        key: (int(after) + int(amount), int(after)) for key, amount, after in _taps_at(conn, sorted(wanted))
    }


def refundable_fen(conn: Connection, cards: Sequence[str]) -> dict[tuple[str, str], int]:
    """Per (card ``PAN:PSN``, operator): fen the operator may still refund to the card — its
    cleared, unrefunded fares less the exit refunds and corrections already paid (the sanity bound
    of an exit refund or a correction)."""
    out: dict[tuple[str, str], int] = {}
    for chunk in _chunks(list(cards), KEYS_PER_QUERY_MAX):
        fares = sa.case((Tap.refunded.is_(False), Tap.amount_fen), else_=0)
        for card, operator, fen in conn.execute(
            sa.select(Tap.card, Tap.operator, sa.func.sum(fares - sa.func.coalesce(Tap.exit_refund_fen, 0)))
            .where(Tap.card.in_(chunk))
            .group_by(Tap.card, Tap.operator)
        ):
            out[(card, operator)] = int(fen or 0)
        for card, operator, fen in conn.execute(
            sa.select(Correction.card, Correction.operator, sa.func.sum(Correction.amount_fen))
            .where(Correction.card.in_(chunk))
            .group_by(Correction.card, Correction.operator)
        ):
            out[(card, operator)] = out.get((card, operator), 0) - int(fen or 0)
    return out


def _day(moment: dt.datetime) -> str:
    return moment.astimezone(CHINA_TIME).date().isoformat()


def _write_postings(conn: Connection, postings: Sequence[PostingRequest]) -> None:
    for operator in sorted(
        {line.account for p in postings for line in p.lines if line.account.startswith("operator:")}
    ):
        open_account(conn, operator, AccountKind.OPERATOR)
    for chunk in _chunks(postings, POSTINGS_PER_BATCH_MAX):
        post_many(conn, chunk)


def _tap_row(record: Any, batch_id: str, refunded: bool) -> dict[str, Any]:
    return {
        "key": record.key, "card": record.card, "atc": record.atc, "batch_id": batch_id,
        "operator": record.operator, "route": record.route, "vehicle": record.vehicle,
        "terminal_id": record.terminal_id, "tap_at": record.tap_at, "day": _day(record.tap_at),
        "amount_fen": record.amount_fen, "balance_after_fen": record.balance_after_fen, "refunded": refunded,
        "exit_refund_fen": record.exit_refund_fen or None, "transit": _transit_text(record),
    }  # fmt: skip


def _transit_text(record: Any) -> str | None:
    transit = record.transit
    return transit if transit is None or isinstance(transit, str) else transit.json()


_SQLITE_TAP = (
    "INSERT INTO clearing_taps (key, card, atc, batch_id, operator, route, vehicle, terminal_id, tap_at, day, "
    "amount_fen, balance_after_fen, refunded, exit_refund_fen, transit) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The chain's new end; max_atc follows it up (it may already be above it: a desk-accepted tap)
_SQLITE_CHAIN = (
    "UPDATE clearing_cards SET last_atc = ?, last_balance_fen = ?, max_atc = MAX(COALESCE(max_atc, -1), ?) "
    "WHERE card = ?"
)
_PG_MAX_ATC = "max_atc = GREATEST(clearing_cards.max_atc, v.last_atc)"  # GREATEST skips a NULL
# The insert of a worker's tap (a Cleared with its texts): the row is a slice of the Cleared —
# ?1 key, ?2 card, ?3 atc, ?4 amount, ?5 balance after, ?6 operator, ?7 route, ?8 vehicle,
# ?9 terminal, ?10 exit refund (0: none, stored NULL), ?11 tap_at text, ?12 day, ?13 transit —
# and the batch id and the loss-refund flag, the same for many rows, are in the statement's text:
# per row nothing is rebuilt and no value is bound twice. The usual tap has no transit object: its
# row stops before it (Python's sqlite3 binds a None only after looking for an adapter and failing,
# ~3,000 instructions a parameter).
_CLEARED_PLAIN = Cleared._fields.index("transit")  # a slice this long: the values but transit
assert Cleared._fields[: _CLEARED_PLAIN + 1] == (
    "key", "card", "atc", "amount_fen", "balance_after_fen", "operator", "route", "vehicle", "terminal_id",
    "exit_refund_fen", "tap_at_text", "day", "transit",
), "_sqlite_cleared_tap numbers Cleared's fields"  # fmt: skip


@functools.lru_cache(maxsize=64)
def _sqlite_cleared_tap(batch_id: str, refunded: bool, transit: bool) -> str:
    """The insert of worker taps of ``batch_id`` (a SQL string literal: quotes doubled; a batch id
    is printable text, no NUL), loss-refunded or not, with or without their transit object."""
    batch = "'" + batch_id.replace("'", "''") + "'"
    return (
        "INSERT INTO clearing_taps (key, card, atc, batch_id, operator, route, vehicle, terminal_id, tap_at, "
        "day, amount_fen, balance_after_fen, refunded, exit_refund_fen, transit) "
        f"VALUES (?1, ?2, ?3, {batch}, ?6, ?7, ?8, ?9, ?11, ?12, ?4, ?5, {int(refunded)}, NULLIF(?10, 0), "
        f"{'?13' if transit else 'NULL'})"
    )


_TAP_COLUMNS = (
    "key", "card", "atc", "batch_id", "operator", "route", "vehicle", "terminal_id", "tap_at", "day",
    "amount_fen", "balance_after_fen", "refunded", "exit_refund_fen", "transit",
)  # fmt: skip


_sqlite_stamp = sqlite_stamp  # the bulk writer's time text (tested against SQLAlchemy's)


def _tap_tuple(tap: Any, batch_id: str, refunded: bool, stamp: Any) -> tuple[Any, ...]:
    at = tap.tap_at
    if type(tap) is Cleared and stamp is sqlite_stamp and tap.tap_at_text:  # made in the worker
        at_text, day = tap.tap_at_text, tap.day
    else:
        at_text, day = stamp(at), china_day(at)
    return (
        tap.key, tap.card, tap.atc, batch_id, tap.operator, tap.route, tap.vehicle, tap.terminal_id, at_text,
        day, tap.amount_fen, tap.balance_after_fen, refunded, tap.exit_refund_fen or None, _transit_text(tap),
    )  # fmt: skip


class WritePlan(NamedTuple):
    """One partition's result as the writer stores it, made by :func:`write_plan` (pure) in the
    parent or in a worker (a plain tuple: it travels back pickled), written by :func:`_write_plan`."""

    accepted: int
    # tap rows by insert: SQLite ((refunded, transit) for _sqlite_cleared_tap, None for _SQLITE_TAP);
    # PostgreSQL (None, _TAP_COLUMNS tuples)
    taps: list[tuple[tuple[bool, bool] | None, list[tuple[Any, ...]]]]
    fares: dict[str, list[tuple[str, int]]]  # batch.fare_debits: the writer numbers the postings
    transfers: list[Any]  # loss refunds and exit refunds (batch.transfers_for), one posting each
    chains: list[tuple[int, int, str]]  # batch.chain_ends
    operators: list[str]
    exceptions: list[tuple[int, str, str, str]]  # (position, key, reason, detail)
    accounts: dict[str, Any]  # EC account rows a worker read, for the writer's AccountCache


def write_plan(
    cleared: Sequence[tuple[Any, bool]],
    exceptions: Sequence[ClearingException],
    cards: Mapping[str, CardState],
    batch_id: str,
    *,
    postgresql: bool,
    accounts: Mapping[str, Any] | None = None,
) -> WritePlan:
    """What :func:`decide`'s result of a partition writes: tap rows grouped by insert statement,
    fare debits, refund transfers, chain ends, the operators named, the exceptions. Pure."""
    transfers = [
        t
        for tap, refunded in cleared
        if refunded or tap.exit_refund_fen
        for t in transfers_for(tap, cards[tap.card].issuer, refunded=refunded, fares=False)
    ]
    if postgresql:
        taps: list[tuple[tuple[bool, bool] | None, list[tuple[Any, ...]]]] = [
            (None, [_tap_tuple(t, batch_id, r, _same) for t, r in cleared])
        ]
    else:
        taps = _sqlite_tap_groups(cleared, batch_id)
    return WritePlan(
        len(cleared),
        taps,
        fare_debits(cleared, cards),
        transfers,
        chain_ends(cleared, cards),
        sorted({tap.operator for tap, _ in cleared}),
        [(item.position, item.key, item.reason, item.detail) for item in exceptions],
        dict(accounts or {}),
    )


def _sqlite_tap_groups(
    cleared: Sequence[tuple[Any, bool]], batch_id: str
) -> list[tuple[tuple[bool, bool] | None, list[tuple[Any, ...]]]]:
    groups: list[tuple[tuple[bool, bool] | None, list[tuple[Any, ...]]]] = []
    # the usual tap, a worker's Cleared (it carries its texts) with no transit, not refunded: its
    # fields straight, as a slice, in one pass
    plain = [
        t[:_CLEARED_PLAIN]
        for t, r in cleared
        if not r and type(t) is Cleared and t.transit is None and t.tap_at_text
    ]
    if plain:
        groups.append(((False, False), plain))
    if len(plain) == len(cleared):
        return groups
    texts = [(t, r) for t, r in cleared if type(t) is Cleared and t.tap_at_text]
    for refunded, transit in (
        (False, True),
        (True, False),
        (True, True),
    ):  # refunded = 1 as SQLAlchemy stores True
        rows = [
            t[: _CLEARED_PLAIN + transit]
            for t, r in texts
            if r == refunded and (t.transit is not None) == transit
        ]
        if rows:
            groups.append(((refunded, transit), rows))
    if len(texts) < len(cleared):
        others = [(t, r) for t, r in cleared if not (type(t) is Cleared and t.tap_at_text)]
        groups.append((None, [_tap_tuple(t, batch_id, r, sqlite_stamp) for t, r in others]))
    return groups


def _write_result(
    conn: Connection,
    batch_id: str,
    cleared: Sequence[tuple[Any, bool]],
    exceptions: Sequence[ClearingException],
    known: Known,
    operators: set[str] | None = None,
    fare_seq: int = 0,
    accounts: AccountCache | None = None,
) -> int:
    """Write one partition's result (:func:`write_plan` then :func:`_write_plan`): grouped fare
    postings, refund transfers (bulk), taps, chains, exceptions. ``operators``: the operator
    accounts already opened in this transaction (filled here); ``fare_seq``: the batch's fare
    postings written before (their keys go on from it). Returns the number of fare postings written."""
    plan = write_plan(cleared, (), known.cards, batch_id, postgresql=bulk.is_postgresql(conn))
    written = _write_plan(conn, batch_id, plan, operators, fare_seq, accounts)
    _write_exceptions(conn, batch_id, exceptions)
    return written


def _write_plan(
    conn: Connection,
    batch_id: str,
    plan: WritePlan,
    operators: set[str] | None = None,
    fare_seq: int = 0,
    accounts: AccountCache | None = None,
) -> int:
    """Write a :class:`WritePlan` but its exceptions; returns the number of fare postings written."""
    operators = set() if operators is None else operators
    for name in sorted(set(plan.operators) - operators):
        open_account(conn, operator_account(name), AccountKind.OPERATOR)
        operators.add(name)
    if accounts is not None and plan.accounts:
        accounts.pending.update(plan.accounts)  # rows of this transaction's database, read by a worker
    fares = fare_requests(plan.fares, batch_id=batch_id, first=fare_seq)
    for chunk in _chunks(fares, POSTINGS_PER_BATCH_MAX):
        post_many(conn, chunk, account_cache=accounts)
    for chunk in _chunks(plan.transfers, TRANSFERS_PER_CALL_MAX):
        post_transfers(conn, chunk, layer=Layer.CLEARED)
    chains = plan.chains
    if bulk.is_postgresql(conn):
        for _, tuples in plan.taps:
            rows = [dict(zip(_TAP_COLUMNS, row, strict=True)) for row in tuples]
            for chunk in _chunks(rows, bulk.ROWS_PER_STATEMENT_MAX):
                bulk.insert_rows(conn, Tap.__table__, chunk)
        for chunk in _chunks(chains, bulk.ROWS_PER_STATEMENT_MAX):
            conn.exec_driver_sql(
                bulk.update_sql(
                    Card.__table__, "card", ("last_atc", "last_balance_fen"), more_sets=_PG_MAX_ATC
                ),
                {
                    "card": [c for _, _, c in chunk],
                    "last_atc": [a for a, _, _ in chunk],
                    "last_balance_fen": [b for _, b, _ in chunk],
                },
            )
    else:
        for flags, rows in plan.taps:
            statement = _SQLITE_TAP if flags is None else _sqlite_cleared_tap(batch_id, *flags)
            conn.exec_driver_sql(statement, rows)
        if chains:
            conn.exec_driver_sql(_SQLITE_CHAIN, [(atc, balance, atc, card) for atc, balance, card in chains])
    return len(fares)


def _write_exceptions(conn: Connection, batch_id: str, exceptions: Sequence[ClearingException]) -> None:
    now = utc_now()
    items = [
        {
            "batch_id": batch_id,
            "position": item.position,
            "key": item.key[:32],
            "reason": item.reason,
            "detail": item.detail[:200],
            "status": "open",
            "created_at": now,
            "upload": json.dumps(item.upload, sort_keys=True, default=str),
        }
        for item in exceptions
    ]
    if items:
        conn.execute(sa.insert(ExceptionItem), items)


def _same(value: Any) -> Any:
    return value


def decide_partition(
    conn: Connection,
    checked: Sequence[Checked],
    uploads: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    accounts: AccountCache,
    read: Mapping[str, CardState | None] | None = None,
) -> tuple[Known, list[tuple[Any, bool]], list[ClearingException]]:
    """A card partition's state read (:func:`load_known_for`) and its stateful checks
    (:func:`~citycard.clearing.batch.decide`): (known, accepted taps with their refund flag,
    exceptions)."""
    taps = [c.tap for c in checked if c.tap is not None]
    known = load_known_for(
        conn,
        (),
        {t.card for t in taps},
        {t.card for t in taps if t.exit_refund_fen},
        now,
        accounts,
        [(t.key, t.card, t.atc) for t in taps],
        read,
    )
    cleared, rejected = decide(checked, uploads, known=known)
    return known, cleared, rejected


def _parent_plans(
    conn: Connection,
    uploads: Sequence[Mapping[str, Any]],
    keys: Verifier | VerifierSpec,
    workers: int,
    now: dt.datetime,
    batch_id: str,
    accounts: AccountCache,
    on_digest: Callable[[str], None],
) -> Iterator[WritePlan]:
    """The parent's path: each partition's state read here (ahead, while the workers run) and
    decided, as a :class:`WritePlan` — what :class:`PartitionPlanner` makes in a worker."""
    from citycard.clearing import parallel

    ahead = ReadAhead(conn, uploads, accounts)
    postgresql = bulk.is_postgresql(conn)
    for checked in parallel.checked_parts(
        uploads, keys=keys, workers=workers, on_digest=on_digest, on_wait=ahead
    ):
        known, cleared, rejected = decide_partition(conn, checked, uploads, now, accounts, ahead.read)
        yield write_plan(cleared, rejected, known.cards, batch_id, postgresql=postgresql)


def workers_decide(engine: Engine, workers: int) -> bool:
    """Whether an intake's workers read their partitions' state and decide (:class:`PartitionPlanner`):
    more than one worker, a SQLite file another process can open (:func:`_file_sqlite`), and no
    other thread in this process when the pool forks. A thread inside SQLite at the fork leaves
    SQLite's own mutexes (its allocator's, its file table's) locked in the child, which then hangs
    at its first connection (seen: the background checkpoint of the batch before). So this process's
    background checkpoints are waited for (:func:`~citycard.db.join_checkpoints`), and while any
    other thread lives (a server's) the parent reads and decides, its workers never opening SQLite."""
    if workers < 2 or not _file_sqlite(engine):
        return False
    return join_checkpoints() and threading.active_count() == 1


def _file_sqlite(engine: Engine) -> bool:
    """Whether ``engine`` is SQLite on a file another process can open (not an in-memory one)."""
    if engine.dialect.name != "sqlite":
        return False
    database = engine.url.database or ""
    return (
        database not in ("", ":memory:")
        and not database.startswith("file:")
        and (engine.url.query.get("mode") != "memory")
    )


class PartitionPlanner:
    """In each worker, after a partition's stateless checks: its state read on the worker's own
    read-only connection, :func:`decide`, and :func:`write_plan` — so the parent, the batch's one
    writer, only writes (its serial work was the batch's critical path: at 1,000,000 records the
    workers idled 60 % of the time while it read and decided).

    Safe on SQLite because the parent holds the write lock (``BEGIN IMMEDIATE``) from before the
    workers start until its commit: nothing commits meanwhile, so every worker read sees the state
    the batch started from; and a card's state changes only when its own partition is written,
    every card being in one partition. (PostgreSQL has no such lock: there the parent reads.)"""

    def __init__(
        self, engine: Engine, uploads: Sequence[Mapping[str, Any]], now: dt.datetime, batch_id: str
    ) -> None:
        self.engine, self.uploads, self.now, self.batch_id = engine, uploads, now, batch_id
        self._pid = os.getpid()

    def __call__(self, checked: list[Checked]) -> WritePlan:
        if self._pid != os.getpid():  # first partition in this worker: connections of its own
            # (SQLAlchemy's recipe after a fork: a new pool, the parent's connections left alone;
            # the engine's compiled statements are kept, so the worker compiles none again)
            self.engine.dispose(close=False)
            self._pid = os.getpid()
        accounts = AccountCache(one_transaction=True)
        with read_transaction(self.engine) as conn:
            known, cleared, rejected = decide_partition(conn, checked, self.uploads, self.now, accounts)
        return write_plan(
            cleared, rejected, known.cards, self.batch_id, postgresql=False, accounts=accounts.pending
        )


def intake(
    engine: Engine,
    batch_id: str,
    uploads: Sequence[Mapping[str, Any]],
    *,
    keys: Verifier | VerifierSpec,
    now: dt.datetime | None = None,
    workers: int = 1,
) -> IntakeResult:
    """Clear one uploaded batch exactly once (see the module note).

    Per card partition (:mod:`~citycard.clearing.parallel`): the stateless checks (parse, TC and
    IAD MAC in the HSM) in ``workers`` processes or in this one; then here, in the one write
    transaction, the partition's state is read (:func:`load_known_for`), the stateful checks run
    (:func:`~citycard.clearing.batch.decide`) and the result is written in bulk."""
    from citycard.clearing import parallel  # here: multiprocessing's pool is for an intake only

    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= 64 or not batch_id.isprintable():
        raise ClearingError(f"batch id {batch_id!r} must be 1…64 printable characters")
    if len(uploads) > RECORDS_PER_BATCH_MAX:
        raise ClearingError(f"{len(uploads)} records in one batch; limit {RECORDS_PER_BATCH_MAX}")
    if not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ClearingError(f"workers must be 1…64, got {workers!r}")
    if workers > 1 and not isinstance(keys, VerifierSpec):
        raise ClearingError("--workers needs a VerifierSpec (each worker opens the HSM itself)")
    now = now or utc_now()
    # a batch writes megabytes of WAL: its commit leaves the checkpoint to a background thread
    with write_transaction(engine, checkpoint_after=True) as conn:
        stored = conn.execute(sa.select(Batch).where(Batch.batch_id == batch_id)).first()
        if stored is not None:
            if stored.digest != digest_of(uploads):
                raise ClearingError(f"batch {batch_id!r} was uploaded before with other records")
            return IntakeResult(batch_id, stored.records, stored.accepted, stored.exceptions, True)
        accepted = 0
        held: list[ClearingException] = []
        operators: set[str] = set()
        fare_seq = 0  # fare postings written so far (keys fares:BATCH:N)
        digests: list[str] = []  # a new batch: its digest comes from a worker, after the partitions
        accounts = AccountCache(one_transaction=True)  # the EC rows load_known_for reads, for post_many
        with parallel.batch_collector():
            if workers_decide(engine, workers):
                # the workers read each partition's state themselves and decide (PartitionPlanner)
                planner = PartitionPlanner(engine, uploads, now, batch_id)
                plans = parallel.checked_parts(
                    uploads, keys=keys, workers=workers, on_digest=digests.append, then=planner
                )
            else:
                plans = _parent_plans(conn, uploads, keys, workers, now, batch_id, accounts, digests.append)
            for plan in plans:
                fare_seq += _write_plan(conn, batch_id, plan, operators, fare_seq, accounts)
                accepted += plan.accepted
                held.extend(
                    ClearingException(key, reason, detail, uploads[position], position)
                    for position, key, reason, detail in plan.exceptions
                )
        (digest,) = digests
        exceptions = len(held)
        held.sort(key=lambda item: item.position)  # the queue in upload order
        _write_exceptions(conn, batch_id, held)
        conn.execute(
            sa.insert(Batch).values(
                batch_id=batch_id, digest=digest, received_at=now, records=len(uploads),
                accepted=accepted, exceptions=exceptions,
            )
        )  # fmt: skip
    return IntakeResult(batch_id, len(uploads), accepted, exceptions, False)


def handle_exception(
    engine: Engine,
    exception_id: int,
    *,
    action: str,
    operator: str,
    note: str = "",
    now: dt.datetime | None = None,
) -> str:
    """The operator's decision on a queued exception, once: ``accept`` clears the tap (posting
    ``tc:…``), ``refund`` clears it and refunds it, ``reject`` posts nothing. Audited in the row."""
    if action not in ("accept", "reject", "refund"):
        raise ClearingError(f"action {action!r} must be accept, reject or refund")
    if not operator or len(operator) > 32 or len(note) > 200:
        raise ClearingError("operator must be 1…32 characters and the note at most 200")
    with write_transaction(engine) as conn:
        item = conn.execute(sa.select(ExceptionItem).where(ExceptionItem.id == exception_id)).first()
        if item is None:
            raise ClearingError(f"no exception {exception_id}")
        if item.status != "open":
            raise ClearingError(f"exception {exception_id} was already handled ({item.status})")
        if action not in HANDLEABLE.get(item.reason, {"reject"}):
            raise ClearingError(f"a {item.reason} exception can only be rejected")
        status = {"accept": "accepted", "reject": "rejected", "refund": "refunded"}[action]
        if action != "reject":
            try:
                record = parse_record(json.loads(item.upload))
            except MalformedRecord as exc:
                raise ClearingError(f"exception {exception_id}: {exc}") from None
            cleared = sa.select(Tap.key).where(Tap.card == record.card, Tap.atc == record.atc)
            if conn.execute(cleared).first() is not None:
                raise ClearingError(f"tap {record.key} is already cleared")
            card = conn.execute(sa.select(Card).where(Card.card == record.card)).one()
            refunded = action == "refund"
            try:
                _write_postings(conn, postings_for(record, card.issuer, refunded=refunded))
            except LedgerError as exc:
                raise ClearingError(f"exception {exception_id}: the ledger refuses: {exc}") from None
            # The chain is not moved: an accepted exception is outside the card's ATC order. Its
            # highest ATC is: a later upload of this key must be looked up (load_known_for).
            conn.execute(sa.insert(Tap).values(**_tap_row(record, item.batch_id, refunded)))
            conn.execute(
                sa.update(Card)
                .where(Card.card == record.card, sa.or_(Card.max_atc.is_(None), Card.max_atc < record.atc))
                .values(max_atc=record.atc)
            )
        conn.execute(
            sa.update(ExceptionItem)
            .where(ExceptionItem.id == exception_id)
            .values(status=status, handled_by=operator, handled_at=now or utc_now(), note=note)
        )
    return status


def fee_rates(text: str | None = None) -> tuple[int, dict[str, int]]:
    """(default rate, per-operator rates) in basis points, from ``fees.toml`` or ``text``."""
    if text is None:
        text = resources.files("citycard.clearing").joinpath("fees.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    default, per = data.get("default_rate_bp"), data.get("operators", {})
    for name, rate in [("default_rate_bp", default), *per.items()]:
        if not isinstance(rate, int) or not 0 <= rate <= 10_000:
            raise ClearingError(f"fee rate {name} = {rate!r} must be 0…10000 basis points")
    return default, dict(per)


def fee_fen(gross_fen: int, rate_bp: int) -> int:
    """The fee, rounded half up to the fen (UNCERTAIN: contracts may round otherwise).

    >>> fee_fen(10_000, 60), fee_fen(125, 60), fee_fen(0, 60)
    (60, 1, 0)
    """
    return (gross_fen * rate_bp + 5_000) // 10_000


@dataclass(frozen=True)
class SettlementLine:
    operator: str
    day: str
    taps: int
    gross_fen: int
    fee_rate_bp: int
    fee_fen: int
    net_fen: int


def _unsettled_taps(operator: str | None, day: str) -> Any:
    """Taps a settlement of ``day`` takes: unsettled, of ``day`` or before, and moving money for the
    operator (a fare not refunded after a loss report, or an exit refund)."""
    where = [
        Tap.settlement_key.is_(None),
        Tap.day <= day,
        sa.or_(Tap.refunded.is_(False), sa.func.coalesce(Tap.exit_refund_fen, 0) > 0),
    ]
    return where if operator is None else [*where, Tap.operator == operator]


def settle(
    engine: Engine, day: str, *, rates: tuple[int, dict[str, int]] | None = None
) -> list[SettlementLine]:
    """Settle every operator's unsettled taps and corrections of ``day`` or before (Asia/Shanghai days).

    Gross = fares (taps not refunded after a loss report) − transit exit refunds − correction
    refunds. Once per operator and day: a second call finds the row and returns it again. The
    posting ``settle:OPERATOR:DAY`` moves the gross from the operator's cleared account to its
    payable account (net) and the fees account (fee), in the settled layer. An operator whose
    refunds exceed its fares in the window (gross < 0) is not settled that day: its items wait.
    """
    dt.date.fromisoformat(day)
    default, per = rates or fee_rates()
    lines: list[SettlementLine] = []
    with write_transaction(engine) as conn:
        open_account(conn, FEES_ACCOUNT, AccountKind.FEES)
        fares = sa.case((Tap.refunded.is_(False), Tap.amount_fen), else_=0)
        taps = sa.case((Tap.refunded.is_(False), 1), else_=0)
        pending = {
            row[0]: (int(row[1] or 0), int(row[2] or 0), int(row[3] or 0))
            for row in conn.execute(
                sa.select(
                    Tap.operator,
                    sa.func.sum(taps),
                    sa.func.sum(fares),
                    sa.func.sum(sa.func.coalesce(Tap.exit_refund_fen, 0)),
                )
                .where(*_unsettled_taps(None, day))
                .group_by(Tap.operator)
            )
        }
        corrections = dict(
            conn.execute(
                sa.select(Correction.operator, sa.func.sum(Correction.amount_fen))
                .where(Correction.settlement_key.is_(None), Correction.day <= day)
                .group_by(Correction.operator)
            ).all()
        )
        operators = (
            set(pending)
            | set(corrections)
            | set(conn.execute(sa.select(Settlement.operator).where(Settlement.day == day)).scalars())
        )
        for operator in sorted(operators):
            done = conn.execute(
                sa.select(Settlement).where(Settlement.operator == operator, Settlement.day == day)
            ).first()
            if done is not None:
                lines.append(
                    SettlementLine(
                        operator, day, done.taps, done.gross_fen, done.fee_rate_bp, done.fee_fen, done.net_fen
                    )
                )
                continue
            count, fares_fen, exit_refunds_fen = pending.get(operator, (0, 0, 0))
            gross = fares_fen - exit_refunds_fen - int(corrections.get(operator) or 0)
            if gross < 0:
                continue  # refunds beyond this window's fares: wait for the fares of a later day
            rate = per.get(operator, default)
            fee = fee_fen(gross, rate)
            key = f"settle:{operator}:{day}"
            if gross:
                open_account(conn, payable_account(operator), AccountKind.OPERATOR)
                account = operator_account(operator)
                request_lines = [
                    Line(account, debit_fen=gross),
                    Line(payable_account(operator), credit_fen=gross - fee),
                ]
                if fee:
                    request_lines.append(Line(FEES_ACCOUNT, credit_fen=fee))
                post_many(
                    conn, [PostingRequest(key, tuple(request_lines), Layer.SETTLED, f"settlement {day}")]
                )
            conn.execute(sa.update(Tap).where(*_unsettled_taps(operator, day)).values(settlement_key=key))
            conn.execute(
                sa.update(Correction)
                .where(
                    Correction.operator == operator,
                    Correction.settlement_key.is_(None),
                    Correction.day <= day,
                )
                .values(settlement_key=key)
            )
            conn.execute(
                sa.insert(Settlement).values(
                    operator=operator, day=day, taps=count, gross_fen=gross, fee_rate_bp=rate, fee_fen=fee,
                    net_fen=gross - fee, posting_key=key if gross else None, created_at=utc_now(),
                )
            )  # fmt: skip
            lines.append(SettlementLine(operator, day, count, gross, rate, fee, gross - fee))
    return lines


SETTLEMENT_COLUMNS = ("operator", "day", "taps", "gross_fen", "fee_rate_bp", "fee_fen", "net_fen")


def settlement_csv(lines: Sequence[SettlementLine]) -> str:
    rows = [",".join(SETTLEMENT_COLUMNS)]
    rows += [",".join(str(getattr(line, c)) for c in SETTLEMENT_COLUMNS) for line in lines]
    return "\n".join(rows) + "\n"


def settlement_json(lines: Sequence[SettlementLine]) -> str:
    return json.dumps([asdict(line) for line in lines], indent=2) + "\n"


def reconcile(engine: Engine) -> dict[str, Any]:
    """Expected (cleared fares) vs collected (operator ledger accounts + fees) per operator, the
    ledger invariants, and per card the chip's last EC balance vs the ledger's EC account.

    The EC comparison holds as of each card's last cleared tap: the ledger's EC balance minus the
    credits the chip has not seen (refunds after a loss report, transit exit refunds, corrections)
    must equal the balance the chip reported (MACed in the IAD). Expected per operator is its
    cleared fares less exit refunds and corrections. A top-up after the last cleared tap shows as a
    difference until the next tap clears.
    """
    with engine.connect() as conn:
        fares = sa.case((Tap.refunded.is_(False), Tap.amount_fen), else_=0)
        expected = {
            op: int(fen or 0)
            for op, fen in conn.execute(
                sa.select(
                    Tap.operator, sa.func.sum(fares - sa.func.coalesce(Tap.exit_refund_fen, 0))
                ).group_by(Tap.operator)
            )
        }
        for op, fen in conn.execute(
            sa.select(Correction.operator, sa.func.sum(Correction.amount_fen)).group_by(Correction.operator)
        ):
            expected[op] = expected.get(op, 0) - int(fen or 0)
        fees = dict(
            conn.execute(
                sa.select(Settlement.operator, sa.func.sum(Settlement.fee_fen)).group_by(Settlement.operator)
            ).all()
        )
        accounts = [a for op in expected for a in (operator_account(op), payable_account(op))]
        held = _existing_balances(conn, accounts)
        operators = {}
        for op, fen in sorted(expected.items()):
            collected = (
                held.get(operator_account(op), 0) + held.get(payable_account(op), 0) + int(fees.get(op) or 0)
            )
            operators[op] = {
                "expected_fen": int(fen),
                "collected_fen": collected,
                "equal": int(fen) == collected,
            }
        problems = check_invariants(conn)
        # Credits the chip has not seen: refunds after a loss report, exit refunds, corrections.
        credited = sa.case((Tap.refunded.is_(True), Tap.amount_fen), else_=0) + sa.func.coalesce(
            Tap.exit_refund_fen, 0
        )
        refunds: dict[str, int] = {
            card: int(fen or 0)
            for card, fen in conn.execute(sa.select(Tap.card, sa.func.sum(credited)).group_by(Tap.card))
        }
        for card, fen in conn.execute(
            sa.select(Correction.card, sa.func.sum(Correction.amount_fen)).group_by(Correction.card)
        ):
            refunds[card] = refunds.get(card, 0) + int(fen or 0)
        cards = conn.execute(sa.select(Card).where(Card.last_atc.is_not(None))).all()
        codes = {row.card: ec_account(row.issuer, *row.card.split(":")) for row in cards}
        ledger_ec = _existing_balances(conn, list(codes.values()))
        ec_differences = {
            row.card: {"chip_fen": row.last_balance_fen, "ledger_fen": ledger_ec.get(codes[row.card], 0)}
            for row in cards
            if ledger_ec.get(codes[row.card], 0) - int(refunds.get(row.card) or 0) != row.last_balance_fen
        }
    return {
        "operators": operators,
        "expected_fen": sum(o["expected_fen"] for o in operators.values()),
        "collected_fen": sum(o["collected_fen"] for o in operators.values()),
        "ledger_balanced": problems == [],
        "ledger_problems": problems,
        "ec_reconciled": not ec_differences,
        "ec_differences": ec_differences,
    }


def _existing_balances(conn: Connection, codes: Sequence[str]) -> dict[str, int]:
    from citycard.ledger import UnknownAccount

    found: dict[str, int] = {}
    for code in codes:  # small lists (operators, cards of a reconciliation); unknown → no money yet
        try:
            found.update(balances(conn, [code]))
        except (UnknownAccount, KeyError):
            continue
    return found


# --- transit: what the daily corrections read and post (helper B's sectors.transit.daily) ----------

CORRECTION_PREFIX = "correction:"
CORRECTION_KEY_CHARS_MAX = 128


@dataclass(frozen=True)
class TransitTap:
    """A cleared tap with its transit object, as :func:`transit_taps` returns it."""

    key: str  # PAN:PSN:ATC (hex)
    pan: str
    psn: str
    atc: int
    tap_at: dt.datetime  # aware UTC
    day: str  # Asia/Shanghai
    amount_fen: int
    exit_refund_fen: int
    refunded: bool  # refunded after a loss report
    operator: str
    route: str
    vehicle: str
    terminal_id: str
    transit: dict[str, Any]


def transit_taps(
    conn: Connection, *, day: str, pan: str | None = None, psn: str | None = None
) -> list[TransitTap]:
    """The cleared taps carrying a transit object on ``day`` (Asia/Shanghai, ``YYYY-MM-DD``), of one
    card when ``pan`` and ``psn`` are given, ordered by card then ATC."""
    try:
        dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ClearingError(f"day {day!r} must be YYYY-MM-DD") from None
    if (pan is None) != (psn is None):
        raise ClearingError("give both pan and psn, or neither")
    query = sa.select(Tap).where(Tap.day == day, Tap.transit.is_not(None))
    if pan is not None:
        query = query.where(Tap.card == f"{pan}:{psn}")
    out = []
    for row in conn.execute(query.order_by(Tap.card, Tap.atc)):
        card_pan, card_psn = row.card.split(":")
        out.append(
            TransitTap(
                row.key, card_pan, card_psn, row.atc, row.tap_at, row.day, int(row.amount_fen),
                int(row.exit_refund_fen or 0), bool(row.refunded), row.operator, row.route, row.vehicle,
                row.terminal_id, json.loads(row.transit),
            )
        )  # fmt: skip
    return out


def post_correction(
    conn: Connection,
    *,
    key: str,
    pan: str,
    psn: str,
    operator: str,
    amount_fen: int,
    reason: str,
    day: str | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Refund ``amount_fen`` from ``operator`` to the card's EC account once under ``key`` (e.g.
    ``correction:PAN:PSN:DAY:KIND``, which is also the ledger posting key), in the caller's
    transaction. ``day`` (default: the key's third field if it is a date, else today in
    Asia/Shanghai) is the operator day the settlement takes it with.

    Returns True when posted, False when the same key was posted before with the same card,
    operator and amount (nothing changes). Raises :class:`ClearingError` (nothing written) for a bad
    argument, an unknown card, the same key with other values, or an amount beyond what the operator
    still holds of this card's fares (cleared, unrefunded fares less refunds and corrections paid).
    """
    if not isinstance(key, str) or not key.startswith(CORRECTION_PREFIX) or not key.isprintable():
        raise ClearingError(f"correction key {str(key)[:40]!r} must start with {CORRECTION_PREFIX!r}")
    if len(key) > CORRECTION_KEY_CHARS_MAX:
        raise ClearingError(f"correction key is {len(key)} characters; limit {CORRECTION_KEY_CHARS_MAX}")
    from citycard.clearing.record import PAN_RE, PSN_RE, TEXT_RE

    if (
        not isinstance(pan, str)
        or not PAN_RE.fullmatch(pan)
        or not isinstance(psn, str)
        or not PSN_RE.fullmatch(psn)
    ):
        raise ClearingError(f"card {pan!r}:{psn!r} is not a PAN (12–19 digits) and PSN (2 digits)")
    if not isinstance(operator, str) or not TEXT_RE.fullmatch(operator):
        raise ClearingError(f"operator {operator!r} does not match {TEXT_RE.pattern}")
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or not 1 <= amount_fen <= 100_000:
        raise ClearingError(f"amount_fen {amount_fen!r} must be 1…100000 fen")
    if not isinstance(reason, str) or not 1 <= len(reason) <= 200 or not reason.isprintable():
        raise ClearingError("reason must be 1…200 printable characters")
    if day is None:
        parts = key.split(":")
        try:
            day = dt.date.fromisoformat(parts[3]).isoformat() if len(parts) > 3 else None
        except ValueError:
            day = None
        day = day or _day(now or utc_now())
    else:
        try:
            day = dt.date.fromisoformat(day).isoformat()
        except (TypeError, ValueError):
            raise ClearingError(f"day {day!r} must be YYYY-MM-DD") from None
    card = f"{pan}:{psn}"
    stored = conn.execute(sa.select(Correction).where(Correction.key == key)).first()
    if stored is not None:
        if (stored.card, stored.operator, int(stored.amount_fen)) != (card, operator, amount_fen):
            raise ClearingError(f"correction {key!r} was posted before with other values")
        return False
    state = conn.execute(sa.select(Card).where(Card.card == card)).first()
    if state is None:
        raise ClearingError(f"card {card} is not known to clearing")
    bound = refundable_fen(conn, [card]).get((card, operator), 0)
    if amount_fen > bound:
        raise ClearingError(
            f"correction {amount_fen} fen > {bound} fen the operator {operator} collected from card {card}"
        )
    request = PostingRequest(
        key,
        (
            Line(operator_account(operator), debit_fen=amount_fen),
            Line(ec_account(state.issuer, pan, psn), credit_fen=amount_fen),
        ),
        Layer.CLEARED,
        f"correction: {reason}"[:200].strip(),
    )
    try:
        (posted,) = post_many(conn, [request])
    except LedgerError as exc:
        raise ClearingError(f"correction {key!r}: the ledger refuses: {exc}") from None
    if not posted.created:  # a concurrent run posted the same key first (and writes its row)
        return False
    conn.execute(
        sa.insert(Correction).values(
            key=key, card=card, operator=operator, day=day, amount_fen=amount_fen, reason=reason,
            created_at=now or utc_now(),
        )
    )  # fmt: skip
    return True
