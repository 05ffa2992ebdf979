"""Follow-ups of a posting: its reversal, and its promotion from layer to layer (miniGL).

A posting and its follow-ups form a chain: each follow-up records the posting it follows in the
unique ``origin_id``, so a posting is followed at most once even when two transactions race; the
loser re-reads the chain (it moved) and either follows the new head or refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select

from citycard.ledger.journal import Draft, Entry, FollowerTakenError, stored_lines, write_drafts
from citycard.ledger.model import (
    KEY_LENGTH_MAX,
    MEMO_MAX,
    InvalidPosting,
    Layer,
    LedgerError,
    PostingConflict,
    PostResult,
    check_text,
)
from citycard.ledger.tables import ledger_postings

CHAIN_LENGTH_MAX = 4  # post → cleared → settled → reversal: the longest follow-up chain
CHAIN_RETRIES_MAX = 3  # a reversal/promotion re-reads a chain that moved under it this many times

_P = ledger_postings.c


@dataclass(frozen=True, slots=True)
class _Header:
    id: int
    key: str
    kind: str
    layer: int
    origin_id: int | None


_HEADER = select(_P.id, _P.key, _P.kind, _P.layer, _P.origin_id)


def _header(conn: Connection, **where: object) -> _Header | None:
    clauses = [getattr(_P, column) == value for column, value in where.items()]
    row = conn.execute(_HEADER.where(*clauses)).one_or_none()
    return None if row is None else _Header(int(row.id), row.key, row.kind, int(row.layer), row.origin_id)


def _root_id(conn: Connection, header: _Header) -> int:
    """The first posting of the chain ``header`` belongs to (its plain post)."""
    for _ in range(CHAIN_LENGTH_MAX):
        if header.origin_id is None:
            return header.id
        parent = _header(conn, id=header.origin_id)
        if parent is None:
            raise LedgerError(f"posting {header.key!r} points to a missing origin {header.origin_id}")
        header = parent
    raise LedgerError(f"posting chain of {header.key!r} longer than {CHAIN_LENGTH_MAX}")


def _head(conn: Connection, header: _Header) -> _Header:
    """The latest posting of the chain starting at ``header`` (follow reversals/promotions forward)."""
    for _ in range(CHAIN_LENGTH_MAX):
        follower = _header(conn, origin_id=header.id)
        if follower is None:
            return header
        header = follower
    raise LedgerError(f"posting chain after {header.key!r} longer than {CHAIN_LENGTH_MAX}")


def _effective(conn: Connection, head: _Header) -> list[Entry]:
    """The lines that hold the chain's money now: the head's lines in the head's layer."""
    return [
        Entry(row.account, int(row.layer), row.debit_fen, row.credit_fen)
        for row in stored_lines(conn, head.id)
        if row.layer == head.layer
    ]


def _replay(
    conn: Connection, *, key: str, original: _Header, kind: str, to_layer: int | None
) -> PostResult | None:
    """``key`` already posted: the same follow-up of the same chain → its result; else a conflict."""
    existing = _header(conn, key=key)
    if existing is None:
        return None
    same = (
        existing.kind == kind
        and existing.origin_id is not None
        and _root_id(conn, existing) == _root_id(conn, original)
        and (to_layer is None or existing.layer == to_layer)
    )
    if not same:
        raise PostingConflict(f"posting key {key!r} was already used for a different {existing.kind}")
    return PostResult(key, existing.id, False)


def _follow_up(
    conn: Connection, *, key: str, original_key: str, kind: str, to_layer: int | None, memo: str
) -> PostResult:
    check_text(key, "posting key", length_max=KEY_LENGTH_MAX)
    check_text(original_key, "original posting key", length_max=KEY_LENGTH_MAX)
    check_text(memo, f"memo of posting {key!r}", length_max=MEMO_MAX, allow_empty=True)
    verb = "reverse" if kind == "reversal" else "promote"
    for _ in range(CHAIN_RETRIES_MAX):
        original = _header(conn, key=original_key)
        if original is None:
            raise LedgerError(f"cannot {verb} {original_key!r}: no such posting")
        if original.kind == "reversal":
            raise LedgerError(f"cannot {verb} {original_key!r}: it is a reversal")
        replayed = _replay(conn, key=key, original=original, kind=kind, to_layer=to_layer)
        if replayed is not None:
            return replayed
        head = _head(conn, original)
        refusal = None
        if head.kind == "reversal":
            refusal = f"cannot {verb} {original_key!r}: already reversed by {head.key!r}"
        elif to_layer is not None and to_layer <= head.layer:
            refusal = (
                f"cannot promote {original_key!r} to {Layer(to_layer).name}: it is already "
                f"{Layer(head.layer).name} (layers only move forward)"
            )
        if refusal is not None:
            # READ COMMITTED: a concurrent call with this very key may have committed between our
            # two reads, moving the chain; then this call is a replay, not a refusal.
            replayed = _replay(conn, key=key, original=original, kind=kind, to_layer=to_layer)
            if replayed is not None:
                return replayed
            raise LedgerError(refusal)
        effective = _effective(conn, head)
        mirror = tuple(Entry(e.account, e.layer, e.credit_fen, e.debit_fen) for e in effective)
        if to_layer is None:
            draft = Draft(key, kind, head.layer, head.id, memo, mirror)
        else:
            moved = tuple(Entry(e.account, to_layer, e.debit_fen, e.credit_fen) for e in effective)
            draft = Draft(key, kind, to_layer, head.id, memo, mirror + moved)
        try:
            return write_drafts(conn, [draft])[0]
        except FollowerTakenError:
            continue  # the chain moved (promoted or reversed meanwhile): read it again
    raise LedgerError(f"cannot {verb} {original_key!r}: it kept changing under concurrent updates")


def reverse(conn: Connection, *, key: str, original_key: str, memo: str = "") -> PostResult:
    """Post the mirror of ``original_key``'s current lines in its current layer, exactly once.

    If the original was promoted, the reversal undoes it where its money now is. The same ``key``
    again is a no-op; reversing a reversal, an unknown key or an already reversed posting raises.
    """
    return _follow_up(conn, key=key, original_key=original_key, kind="reversal", to_layer=None, memo=memo)


def promote(conn: Connection, *, key: str, original_key: str, to_layer: Layer, memo: str = "") -> PostResult:
    """Move ``original_key``'s money forward (pending → cleared → settled), once: its mirror in the
    current layer plus the same lines in ``to_layer``, as one posting."""
    if not isinstance(to_layer, Layer):
        raise InvalidPosting(f"to_layer must be a Layer, got {to_layer!r}")
    return _follow_up(
        conn, key=key, original_key=original_key, kind="promotion", to_layer=int(to_layer), memo=memo
    )
