"""Writing to the ledger: accounts and balanced postings (reversals and promotions: :mod:`.chains`).

Every function takes a SQLAlchemy ``Connection`` already inside a transaction; the caller commits,
so a host posts in the same transaction as its own updates (DESIGN §3: one transaction). A call
that raises has written nothing, even if the caller goes on to commit other work.

Writes follow one order in every transaction — posting keys, then (only for accounts that may not
go negative and lose money) account rows by id ``FOR NO KEY UPDATE``, then balance rows by (account, layer,
slot) with ``balance_fen = balance_fen + :delta`` applied in the database — so concurrent posts on
PostgreSQL never lose an update, never overdraw, and never deadlock among themselves; SQLite's
``BEGIN IMMEDIATE`` serialises them (docs/ledger.md "Concurrency").
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from citycard.db.base import utc_now
from citycard.ledger import bulk
from citycard.ledger.model import (
    CODE_LENGTH_MAX,
    DEFAULT_BALANCE_SLOTS,
    NAME_LENGTH_MAX,
    POSTINGS_PER_BATCH_MAX,
    SLOTS_MAX,
    AccountKind,
    InsufficientFunds,
    InvalidPosting,
    LedgerError,
    Line,
    PostingConflict,
    PostingRequest,
    PostResult,
    UnbalancedPosting,
    UnknownAccount,
    check_request,
    check_text,
)
from citycard.ledger.tables import ledger_accounts, ledger_balances, ledger_lines, ledger_postings

CODES_PER_QUERY_MAX = 500  # account codes per IN (...) lookup (SQLite's bound-parameter limit)

_A, _B, _P, _L = ledger_accounts.c, ledger_balances.c, ledger_postings.c, ledger_lines.c


@dataclass(frozen=True, slots=True)
class Entry:
    """A line as written: account code, layer and one non-zero side."""

    account: str
    layer: int
    debit_fen: int
    credit_fen: int


@dataclass(frozen=True, slots=True)
class Draft:
    """A posting about to be written (already checked)."""

    key: str
    kind: str
    layer: int
    origin_id: int | None
    memo: str
    entries: tuple[Entry, ...]


class _Account(NamedTuple):
    """An open account's row as the hot path needs it (a tuple: one is made per account and batch)."""

    id: int
    allow_negative: bool
    balance_slots: int


class AccountCache:
    """Account rows (id, no-negative flag, balance slots) a long-lived writer already looked up.

    Those three never change once an account is open, so a writer that posts to the same accounts
    batch after batch (the issuer host) need not look them up every time. Rows found during a
    transaction wait in ``pending`` until :meth:`committed` (a row of an account opened in a
    transaction that then rolled back must never be reused); :meth:`rolled_back` drops them. One
    cache per writer and database: ids of another database mean nothing here.

    >>> cache = AccountCache()
    >>> cache.pending["a"] = _Account(7, False, 1)
    >>> cache.get("a") is None, len(cache)
    (True, 0)
    >>> cache.committed(); cache.get("a").id, len(cache)
    (7, 1)
    """

    def __init__(self, limit: int = 1_000_000, *, one_transaction: bool = False) -> None:
        self.limit = limit  # about 100 bytes a row; past it the cache starts over
        self._rows: dict[str, _Account] = {}
        self.pending: dict[str, _Account] = {}
        # A cache made inside one transaction and dropped with it (clearing's intake) may serve the
        # rows that transaction found at once: they cannot outlive it.
        self._one_transaction = one_transaction

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, code: str) -> _Account | None:
        row = self._rows.get(code)
        if row is None and self._one_transaction:
            row = self.pending.get(code)
        return row

    def committed(self) -> None:
        if len(self._rows) + len(self.pending) > self.limit:
            self._rows.clear()
        self._rows.update(self.pending)
        self.pending.clear()

    def rolled_back(self) -> None:
        self.pending.clear()


class FollowerTakenError(Exception):
    """Internal (:mod:`.chains`): another transaction reversed or promoted the same posting first."""


# --- accounts ---------------------------------------------------------------------------------------


def _insert(conn: Connection, table):  # type: ignore[no-untyped-def]
    """``INSERT`` with ``ON CONFLICT`` support for the connection's backend."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class _Statements:
    """The hot path's statements, built once per backend (building one costs more than running it)."""

    def __init__(self, conn: Connection) -> None:
        self.insert_posting = (
            _insert(conn, ledger_postings)
            .on_conflict_do_nothing()  # any unique constraint: the key, or a follower on origin_id
            .returning(_P.id, _P.key)
        )


_STATEMENTS: dict[str, _Statements] = {}
# The balance upsert on SQLite, straight to the driver (its values are ints: nothing to process)
_SQLITE_ADD_TO_BALANCE = (
    "INSERT INTO ledger_balances (account_id, layer, slot, balance_fen) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (account_id, layer, slot) DO UPDATE SET balance_fen = balance_fen + excluded.balance_fen"
)
# The posting insert and the balance upsert as one-statement inserts on PostgreSQL (:mod:`.bulk`).
_PG_POSTINGS_SUFFIX = "ON CONFLICT DO NOTHING RETURNING id, key"
_PG_BALANCES_SUFFIX = (
    "ON CONFLICT (account_id, layer, slot) DO UPDATE "
    "SET balance_fen = ledger_balances.balance_fen + excluded.balance_fen"
)
_BALANCE_COLUMNS = ("account_id", "layer", "slot", "balance_fen")
_LINE_COLUMNS = ("posting_id", "seq", "account_id", "layer", "debit_fen", "credit_fen")
_PG_MOVEMENTS = bulk.together(
    bulk.insert_json_sql(ledger_balances, _BALANCE_COLUMNS, _PG_BALANCES_SUFFIX, prefix="b_"),
    bulk.insert_json_sql(ledger_lines, _LINE_COLUMNS),
)
# Built once per backend (bulk.per_backend: ``= ANY(array)`` on PostgreSQL, ``IN (…)`` elsewhere).
_LOOKUP = bulk.per_backend(
    lambda member: select(_A.code, _A.id, _A.allow_negative, _A.balance_slots).where(member(_A.code, "codes"))
)
# FOR NO KEY UPDATE (key_share): excludes other debits of the account, yet not the FOR KEY SHARE
# locks that the foreign keys of concurrent line and balance inserts take on its row (FOR UPDATE
# would, and deadlocks). SQLite renders nothing: there BEGIN IMMEDIATE already excludes writers.
_LOCK = bulk.per_backend(
    lambda member: select(_A.id).where(member(_A.id, "ids")).order_by(_A.id).with_for_update(key_share=True)
)
_HELD = bulk.per_backend(
    lambda member: (
        select(_B.account_id, func.sum(_B.balance_fen))
        .where(member(_B.account_id, "ids"))
        .group_by(_B.account_id)
    )
)


def _statements(conn: Connection) -> _Statements:
    name = conn.dialect.name
    if name not in _STATEMENTS:
        _STATEMENTS[name] = _Statements(conn)
    return _STATEMENTS[name]


def open_account(
    conn: Connection,
    code: str,
    kind: AccountKind | str,
    *,
    allow_negative: bool = False,
    name: str = "",
    balance_slots: int | None = None,
) -> None:
    """Open an account (idempotent). Reopening with another kind or ``allow_negative`` raises.

    ``allow_negative=False`` means its total balance (credits − debits, all layers) never goes below 0.
    ``balance_slots`` (default by kind, :data:`DEFAULT_BALANCE_SLOTS`) spreads a busy account's
    balance over that many rows per layer; it changes speed, never a balance.
    """
    check_text(code, "account code", length_max=CODE_LENGTH_MAX)
    check_text(name, f"name of account {code!r}", length_max=NAME_LENGTH_MAX, allow_empty=True)
    try:
        kind = AccountKind(kind)
    except ValueError:
        raise InvalidPosting(f"account {code!r}: unknown kind {kind!r}") from None
    if not isinstance(allow_negative, bool):
        raise InvalidPosting(f"account {code!r}: allow_negative must be a bool")
    slots = DEFAULT_BALANCE_SLOTS[kind] if balance_slots is None else balance_slots
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= SLOTS_MAX:
        raise InvalidPosting(f"account {code!r}: balance_slots {slots!r} outside 1…{SLOTS_MAX}")
    stmt = (
        _insert(conn, ledger_accounts)
        .values(
            code=code,
            kind=kind.value,
            allow_negative=allow_negative,
            balance_slots=slots,
            name=name,
            created_at=utc_now(),
        )
        .on_conflict_do_nothing()
        .returning(_A.id)
    )
    if conn.execute(stmt).scalar_one_or_none() is not None:
        return  # balance rows appear with the first movement (upsert)
    row = conn.execute(select(_A.kind, _A.allow_negative).where(_A.code == code)).one()
    if row.kind != kind.value or bool(row.allow_negative) != allow_negative:
        raise LedgerError(
            f"account {code!r} already open as kind={row.kind} allow_negative={bool(row.allow_negative)}; "
            f"cannot reopen as kind={kind.value} allow_negative={allow_negative}"
        )


def _accounts(
    conn: Connection, codes: Iterable[str], cache: AccountCache | None = None
) -> dict[str, _Account]:
    """Look codes up (those not in ``cache``); raise :class:`UnknownAccount` naming every code never opened."""
    found: dict[str, _Account] = {}
    if cache is None:
        wanted = sorted(set(codes))
    else:
        wanted = []
        for code in set(codes):
            row = cache.get(code)
            if row is None:
                wanted.append(code)
            else:
                found[code] = row
        wanted.sort()
    found.update(_read_accounts(conn, wanted))
    missing = [code for code in wanted if code not in found]
    if missing:
        raise UnknownAccount(f"unknown account{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    if cache is not None:
        cache.pending.update((code, found[code]) for code in wanted)
    return found


def _read_accounts(conn: Connection, codes: Sequence[str]) -> dict[str, _Account]:
    """The rows of those ``codes`` that name open accounts, read per :data:`CODES_PER_QUERY_MAX`."""
    found: dict[str, _Account] = {}
    lookup = bulk.for_conn(_LOOKUP, conn)
    for start in range(0, len(codes), CODES_PER_QUERY_MAX):
        chunk = codes[start : start + CODES_PER_QUERY_MAX]
        for code, account_id, allow_negative, slots in conn.execute(lookup, {"codes": chunk}).all():
            found[code] = _Account(int(account_id), bool(allow_negative), int(slots))
    return found


def open_codes(conn: Connection, codes: Iterable[str], cache: AccountCache) -> set[str]:
    """Which of ``codes`` name open accounts. Codes ``cache`` lacks are read, and their rows go to
    its ``pending`` (a :func:`post_many` with the same cache then needs no lookup for them)."""
    wanted = set(codes)
    have = {code for code in wanted if cache.get(code) is not None}
    found = _read_accounts(conn, sorted(wanted - have))
    cache.pending.update(found)
    return have | set(found)


# --- posting ----------------------------------------------------------------------------------------


def _entries(lines: Sequence[Line], layer: int) -> tuple[Entry, ...]:
    return tuple(Entry(line.account, layer, line.debit_fen, line.credit_fen) for line in lines)


def assert_balanced(draft: Draft) -> None:
    """Invariant where written: each layer of a posting sums to zero."""
    per_layer: dict[int, int] = defaultdict(int)
    for entry in draft.entries:
        per_layer[entry.layer] += entry.credit_fen - entry.debit_fen
    off = {layer: total for layer, total in per_layer.items() if total}
    if off or not draft.entries:
        raise UnbalancedPosting(f"posting {draft.key!r} does not balance per layer: {off}")


def post(conn: Connection, request: PostingRequest) -> PostResult:
    """Post a balanced request once. The same key again with the same lines is a no-op
    (``created=False``); with other lines, :class:`PostingConflict`."""
    return post_many(conn, [request])[0]


def post_many(
    conn: Connection, requests: Sequence[PostingRequest], *, account_cache: AccountCache | None = None
) -> list[PostResult]:
    """Post several requests with one round of batched SQL; all of them or (on an error) none.

    The no-negative rule is checked on the batch's net effect per account. ``account_cache``: the
    caller's :class:`AccountCache` (it calls ``committed``/``rolled_back`` after its transaction).
    """
    if len(requests) > POSTINGS_PER_BATCH_MAX:
        raise InvalidPosting(f"{len(requests)} postings in one batch; limit {POSTINGS_PER_BATCH_MAX}")
    drafts = []
    for request in requests:
        check_request(request)
        drafts.append(
            Draft(
                request.key,
                "post",
                int(request.layer),
                None,
                request.memo,
                _entries(request.lines, request.layer),
            )
        )
    return write_drafts(conn, drafts, account_cache=account_cache)


def write_drafts(
    conn: Connection, drafts: Sequence[Draft], *, account_cache: AccountCache | None = None
) -> list[PostResult]:
    """Write checked drafts: claim keys, move balances, store lines. Writes nothing if it raises."""
    if not drafts:
        return []
    unique: dict[str, Draft] = {}
    for draft in drafts:
        assert_balanced(draft)
        first = unique.setdefault(draft.key, draft)
        if first is not draft and first != draft:
            raise PostingConflict(
                f"posting key {draft.key!r} appears twice in the batch with different lines"
            )
    accounts = _accounts(conn, (e.account for d in unique.values() for e in d.entries), account_cache)

    now = utc_now()
    rows = [
        {
            "key": d.key,
            "kind": d.kind,
            "layer": d.layer,
            "origin_id": d.origin_id,
            "memo": d.memo,
            "created_at": now,
        }
        for d in unique.values()
    ]
    if bulk.is_postgresql(conn):  # one statement for all headers (ledger.bulk says why)
        result = bulk.insert_rows(conn, ledger_postings, rows, suffix=_PG_POSTINGS_SUFFIX)
    else:
        result = conn.execute(_statements(conn).insert_posting, rows)
    inserted: dict[str, int] = {key: int(pid) for pid, key in result}
    try:
        existing = {key: _replayed(conn, draft) for key, draft in unique.items() if key not in inserted}
        balance_rows = _move_balances(conn, [d for d in unique.values() if d.key in inserted], accounts)
    except (LedgerError, FollowerTakenError):
        # An expected refusal: take back our own posting rows so the caller may still commit its
        # other work. (A database error leaves the transaction for the caller to roll back.)
        _forget(conn, inserted.values())
        raise
    line_rows = [
        {
            "posting_id": inserted[d.key],
            "seq": seq,
            "account_id": accounts[e.account].id,
            "layer": e.layer,
            "debit_fen": e.debit_fen,
            "credit_fen": e.credit_fen,
        }
        for d in unique.values()
        if d.key in inserted
        for seq, e in enumerate(d.entries)
    ]
    _write_movements(conn, balance_rows, line_rows)
    results = []
    for draft in drafts:
        if draft.key in inserted:
            results.append(PostResult(draft.key, inserted[draft.key], True))
        else:
            results.append(PostResult(draft.key, existing[draft.key], False))
    # A key repeated inside the batch was created once; its later copies are replays.
    seen: set[str] = set()
    for index, result in enumerate(results):
        if result.key in seen:
            results[index] = PostResult(result.key, result.posting_id, False)
        seen.add(result.key)
    return results


def _forget(conn: Connection, posting_ids: Iterable[int]) -> None:
    """Undo this transaction's own posting inserts (no lines or balances written for them yet)."""
    ids = list(posting_ids)
    if ids:
        conn.execute(ledger_postings.delete().where(_P.id.in_(ids)))


def _replayed(conn: Connection, draft: Draft) -> int:
    """The key was not inserted: same posting stored → its id; different → PostingConflict."""
    header = conn.execute(
        select(_P.id, _P.kind, _P.layer, _P.origin_id).where(_P.key == draft.key)
    ).one_or_none()
    if header is None:
        # Not the key: the unique origin_id. Someone reversed or promoted the same posting first.
        raise FollowerTakenError(draft.key)
    stored = tuple(
        Entry(line.account, int(line.layer), line.debit_fen, line.credit_fen)
        for line in stored_lines(conn, header.id)
    )
    if (header.kind, header.layer, header.origin_id, stored) != (
        draft.kind,
        draft.layer,
        draft.origin_id,
        draft.entries,
    ):
        raise PostingConflict(f"posting key {draft.key!r} was already used for a different {header.kind}")
    return int(header.id)


def _move_balances(
    conn: Connection, drafts: Sequence[Draft], accounts: dict[str, _Account]
) -> list[dict[str, int]]:
    """Check the no-negative rule; return the balance-row deltas to apply (:func:`_write_movements`).

    Only an account that may not go negative and loses money in this batch needs the check: its
    account row is locked (``FOR UPDATE``, by id) so debits of it run one at a time, then its
    committed balance is summed. A credit cannot break the rule, so it takes no such lock, and a
    concurrent uncommitted credit only makes the sum smaller than the truth (safe side). Raises
    :class:`InsufficientFunds` before any balance row is written.
    """
    if not drafts:
        return []
    net: dict[str, int] = defaultdict(int)
    per_row: dict[tuple[int, int, int], int] = defaultdict(int)
    # One slot per batch and account, picked from the first key: spreads concurrent postings.
    spread = zlib.crc32(drafts[0].key.encode())
    for draft in drafts:
        for e in draft.entries:
            account = accounts[e.account]
            net[e.account] += e.credit_fen - e.debit_fen
            per_row[(account.id, e.layer, spread % account.balance_slots)] += e.credit_fen - e.debit_fen
    guarded = {
        accounts[code].id: (code, delta)
        for code, delta in net.items()
        if delta < 0 and not accounts[code].allow_negative
    }
    if guarded:
        ids = sorted(guarded)
        if bulk.is_postgresql(conn):  # SQLite has no row locks: its BEGIN IMMEDIATE already holds them all
            conn.execute(_LOCK[True], {"ids": ids}).all()
        held = dict(conn.execute(bulk.for_conn(_HELD, conn), {"ids": ids}).all())
        for account_id in ids:
            code, delta = guarded[account_id]
            balance = int(held.get(account_id) or 0)
            if balance + delta < 0:
                raise InsufficientFunds(
                    f"account {code!r}: balance {balance} fen, movement {delta} fen would leave {balance + delta} fen"
                )
    rows = [
        {"account_id": account_id, "layer": layer, "slot": slot, "balance_fen": delta}
        for (account_id, layer, slot), delta in sorted(per_row.items())  # one global order
        if delta
    ]
    return rows


def _write_movements(
    conn: Connection, balance_rows: list[dict[str, int]], line_rows: list[dict[str, int]]
) -> None:
    """Apply the balance deltas (in their sorted lock order), then store the lines.

    PostgreSQL: ONE statement for both — the balance upsert as a data-modifying ``WITH`` part of the
    lines insert (:func:`.bulk.together`), one round trip. They touch different tables; the lines'
    foreign keys take only KEY SHARE locks on account rows, which no writer here ever waits on, so
    the order among balance rows alone decides waits, as before. Elsewhere: two ``executemany``.
    """
    if not bulk.is_postgresql(conn):
        if balance_rows:  # tuples straight to the driver: SQLAlchemy's per-row processing cost more
            conn.exec_driver_sql(
                _SQLITE_ADD_TO_BALANCE,
                [(r["account_id"], r["layer"], r["slot"], r["balance_fen"]) for r in balance_rows],
            )
        bulk.insert_rows(conn, ledger_lines, line_rows)
        return
    if balance_rows and line_rows:
        params = bulk.json_rows(balance_rows, _BALANCE_COLUMNS, "b_") | bulk.json_rows(
            line_rows, _LINE_COLUMNS
        )
        bulk.driver_execute(conn, _PG_MOVEMENTS, params)
    elif balance_rows:
        bulk.insert_rows(conn, ledger_balances, balance_rows, suffix=_PG_BALANCES_SUFFIX)
    else:
        bulk.insert_rows(conn, ledger_lines, line_rows)


def stored_lines(conn: Connection, posting_id: int):  # type: ignore[no-untyped-def]
    """A posting's lines in order: account code, layer, debit, credit."""
    return conn.execute(
        select(_A.code.label("account"), _L.layer, _L.debit_fen, _L.credit_fen)
        .join(ledger_accounts, _A.id == _L.account_id)
        .where(_L.posting_id == posting_id)
        .order_by(_L.seq)
    ).all()
