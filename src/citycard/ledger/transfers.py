"""The bulk posting path: thousands of two-line postings (transfers) with a few statements.

Two-line postings by the thousand — a debit of one account and a credit of another, same amount:
clearing's per-tap refunds (``refund:``/``exitrefund:PAN:PSN:ATC``, operator → card EC account;
its fares are grouped postings since the fourth session) and any caller with many simple
movements. :func:`post_many` builds, checks and writes
each request on its own (~70 µs per posting on SQLite here); :func:`post_transfers` keeps every
rule of the ledger and writes a whole chunk at once:

- each transfer is a balanced posting by construction (one debit line and one credit line of the
  same amount, on two different accounts); key, amount, memo and account limits are checked as in
  :func:`~citycard.ledger.model.check_request`, before anything is written (column by column when
  every transfer certainly passes, else transfer by transfer, naming the first that does not);
- exactly once: the keys are inserted with ``ON CONFLICT DO NOTHING``; a key that was already
  posted with the same lines is a replay (skipped, as :func:`post_many` does), with other lines a
  :class:`PostingConflict`; a key twice in one call is refused;
- balances move once per (account, layer, slot) per call: a card with ten taps in the chunk gets
  one balance update; the no-negative rule is checked on each account's aggregated delta against
  its committed balance (the account rows locked first on PostgreSQL, as :func:`post_many` does);
- after the write, the moved deltas are asserted to sum to zero (the chunk is balanced as a whole);
- all or nothing: an error leaves no posting, line or balance of the call behind.

SQLite: ``executemany`` of plain tuples through the driver (no per-row SQLAlchemy processing); the
new posting ids are read back with one ``SELECT … WHERE id > :before`` (the write lock of ``BEGIN
IMMEDIATE`` makes them exactly this call's rows). PostgreSQL: one ``unnest`` statement per table
(:mod:`.bulk`), ids from ``RETURNING``.
"""

from __future__ import annotations

import operator
import zlib
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import Connection, func, select

from citycard.db.base import utc_now
from citycard.ledger import bulk
from citycard.ledger.journal import (
    _HELD,
    _LOCK,
    _PG_POSTINGS_SUFFIX,
    Draft,
    Entry,
    _accounts,
    _forget,
    _replayed,
    _write_movements,
    assert_balanced,
)
from citycard.ledger.model import (
    AMOUNT_FEN_MAX,
    KEY_LENGTH_MAX,
    MEMO_MAX,
    InsufficientFunds,
    InvalidPosting,
    Layer,
    LedgerError,
)
from citycard.ledger.tables import ledger_postings

TRANSFERS_PER_CALL_MAX = 10_000  # bulk.ROWS_PER_STATEMENT_MAX: one statement per table on PostgreSQL

_P = ledger_postings.c
_SQLITE_POSTING = "INSERT OR IGNORE INTO ledger_postings (key, kind, layer, origin_id, memo, created_at) VALUES (?, 'post', ?, NULL, ?, ?)"
_SQLITE_LINE = "INSERT INTO ledger_lines (posting_id, seq, account_id, layer, debit_fen, credit_fen) VALUES (?, ?, ?, ?, ?, ?)"
_SQLITE_BALANCE = (
    "INSERT INTO ledger_balances (account_id, layer, slot, balance_fen) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (account_id, layer, slot) DO UPDATE SET balance_fen = ledger_balances.balance_fen + excluded.balance_fen"
)


class Transfer(NamedTuple):
    """A posting of two lines: ``amount_fen`` debited from ``debit`` and credited to ``credit``."""

    key: str
    debit: str
    credit: str
    amount_fen: int
    memo: str = ""


def _all_fine(transfers: Sequence[Transfer]) -> bool:
    """True when every transfer certainly passes :func:`_check` — checked column by column, a few
    C-level passes instead of a Python loop per transfer. Stricter than :func:`_check` (no space in
    any key), so ``False`` only means: let the loop decide (and name the first problem)."""
    try:
        keys, debits, credits, amounts, memos = zip(*transfers, strict=True)
        joined = "".join(keys)
        memo_text = "".join(memos)
    except (TypeError, ValueError):
        return False
    return (
        len(set(keys)) == len(keys)
        and min(map(len, keys)) > 0
        and max(map(len, keys)) <= KEY_LENGTH_MAX
        and joined.isprintable()
        and " " not in joined
        and all(type(key) is str for key in keys)
        and all(type(amount) is int for amount in amounts)
        and min(amounts) > 0
        and max(amounts) <= AMOUNT_FEN_MAX
        and not any(map(operator.eq, debits, credits))
        and all(type(memo) is str for memo in memos)
        and max(map(len, memos)) <= MEMO_MAX
        and memo_text.isprintable()
    )


def _check(transfers: Sequence[Transfer]) -> None:
    """Shape and limits of every transfer (model.check_request's rules), before any write."""
    if len(transfers) > TRANSFERS_PER_CALL_MAX:
        raise InvalidPosting(f"{len(transfers)} transfers in one call; limit {TRANSFERS_PER_CALL_MAX}")
    if transfers and _all_fine(transfers):
        return
    keys: set[str] = set()
    for t in transfers:
        key, amount = t.key, t.amount_fen
        if (
            not isinstance(key, str)
            or not 0 < len(key) <= KEY_LENGTH_MAX
            or not key.isprintable()
            or key != key.strip()
        ):
            raise InvalidPosting(
                f"posting key {str(key)[:20]!r} must be 1…{KEY_LENGTH_MAX} printable characters"
            )
        if key in keys:
            raise InvalidPosting(f"posting key {key!r} appears twice in one call")
        keys.add(key)
        if type(amount) is not int or not 0 < amount <= AMOUNT_FEN_MAX:
            raise InvalidPosting(f"posting {key!r}: amount {amount!r} outside 1…{AMOUNT_FEN_MAX} fen")
        if t.debit == t.credit:
            raise InvalidPosting(f"posting {key!r} debits and credits the same account {t.debit!r}")
        if not isinstance(t.memo, str) or len(t.memo) > MEMO_MAX or not t.memo.isprintable():
            raise InvalidPosting(f"memo of posting {key!r} must be at most {MEMO_MAX} printable characters")


def _draft(t: Transfer, layer: int) -> Draft:
    return Draft(
        t.key,
        "post",
        layer,
        None,
        t.memo,
        (Entry(t.debit, layer, t.amount_fen, 0), Entry(t.credit, layer, 0, t.amount_fen)),
    )


def _insert_headers(conn: Connection, transfers: Sequence[Transfer], layer: int) -> dict[str, int]:
    """Insert the posting headers (conflicting keys skipped); key → new id for the inserted ones."""
    now = utc_now()
    if bulk.is_postgresql(conn):
        rows = [
            {
                "key": t.key,
                "kind": "post",
                "layer": layer,
                "origin_id": None,
                "memo": t.memo,
                "created_at": now,
            }
            for t in transfers
        ]
        result = bulk.insert_rows(conn, ledger_postings, rows, suffix=_PG_POSTINGS_SUFFIX)
        return {key: int(pid) for pid, key in result}
    stamp = ledger_postings.c.created_at.type._cached_bind_processor(conn.dialect)(now)
    highest = select(func.coalesce(func.max(_P.id), 0))
    before = int(conn.execute(highest).scalar_one())
    done = conn.exec_driver_sql(_SQLITE_POSTING, [(t.key, layer, t.memo, stamp) for t in transfers])
    count = len(transfers)
    # Under BEGIN IMMEDIATE nobody else writes: an INTEGER PRIMARY KEY row gets max(id) + 1, so when
    # every row went in and the top id rose by exactly their count, the ids are before+1 … in order.
    if done.rowcount == count and int(conn.execute(highest).scalar_one()) == before + count:
        last = conn.execute(select(_P.key).where(_P.id == before + count)).scalar_one()
        if last == transfers[-1].key:
            return {t.key: before + 1 + i for i, t in enumerate(transfers)}
    return {key: int(pid) for pid, key in conn.execute(select(_P.id, _P.key).where(_P.id > before))}


def post_transfers(conn: Connection, transfers: Sequence[Transfer], *, layer: Layer) -> int:
    """Post ``transfers`` once each in ``layer`` (see the module note); returns how many were created
    (the others were replays of the same lines). All or nothing; raises like :func:`post_many`."""
    if not isinstance(layer, Layer):
        raise InvalidPosting(f"layer must be a Layer, got {layer!r}")
    _check(transfers)
    if not transfers:
        return 0
    accounts = _accounts(conn, {code for t in transfers for code in (t.debit, t.credit)})
    level = int(layer)
    inserted = _insert_headers(conn, transfers, level)
    try:
        if len(inserted) != len(transfers):  # replays: the same lines → skip; other lines → conflict
            for t in transfers:
                if t.key not in inserted:
                    _replayed(conn, _draft(t, level))
            transfers = [t for t in transfers if t.key in inserted]
        net: dict[str, int] = defaultdict(int)
        for t in transfers:
            net[t.debit] -= t.amount_fen
            net[t.credit] += t.amount_fen
        _check_no_negative(conn, net, accounts)
    except LedgerError:  # an expected refusal: take back this call's headers, then raise
        _forget(conn, inserted.values())
        raise
    # One slot per call and account, picked from the first key: spreads concurrent callers.
    spread = zlib.crc32(transfers[0].key.encode()) if transfers else 0
    per_row: dict[tuple[int, int, int], int] = defaultdict(int)
    for code, delta in net.items():
        account = accounts[code]
        per_row[(account.id, level, spread % account.balance_slots)] += delta
    assert sum(per_row.values()) == 0, "a chunk of balanced transfers must move balances by zero in total"
    balance_rows = [
        {"account_id": a, "layer": lay, "slot": s, "balance_fen": d}
        for (a, lay, s), d in sorted(per_row.items())
        if d
    ]
    line_rows = []
    for t in transfers:
        pid = inserted[t.key]
        line_rows.append((pid, 0, accounts[t.debit].id, level, t.amount_fen, 0))
        line_rows.append((pid, 1, accounts[t.credit].id, level, 0, t.amount_fen))
    if bulk.is_postgresql(conn):
        columns = ("posting_id", "seq", "account_id", "layer", "debit_fen", "credit_fen")
        _write_movements(conn, balance_rows, [dict(zip(columns, row, strict=True)) for row in line_rows])
    else:
        if balance_rows:
            conn.exec_driver_sql(_SQLITE_BALANCE, [tuple(row.values()) for row in balance_rows])
        if line_rows:
            conn.exec_driver_sql(_SQLITE_LINE, line_rows)
    return len(transfers)


def _check_no_negative(conn: Connection, net: dict[str, int], accounts: dict) -> None:  # type: ignore[type-arg]
    """Accounts that may not go negative and lose money here: locked, then their committed balance
    plus this call's net delta must stay ≥ 0 (:func:`~citycard.ledger.journal._move_balances`)."""
    guarded = {
        accounts[code].id: (code, delta)
        for code, delta in net.items()
        if delta < 0 and not accounts[code].allow_negative
    }
    ids = sorted(guarded)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        conn.execute(bulk.for_conn(_LOCK, conn), {"ids": chunk}).all()
        held = dict(conn.execute(bulk.for_conn(_HELD, conn), {"ids": chunk}).all())
        for account_id in chunk:
            code, delta = guarded[account_id]
            balance = int(held.get(account_id) or 0)
            if balance + delta < 0:
                raise InsufficientFunds(
                    f"account {code!r}: balance {balance} fen, movement {delta} fen would leave {balance + delta} fen"
                )


__all__ = ["TRANSFERS_PER_CALL_MAX", "Transfer", "assert_balanced", "post_transfers"]
