"""Whole-ledger invariant checks (TigerBeetle: assert invariants on both sides; docs/ledger.md).

Each check is one aggregate query; a healthy ledger returns ``[]``. Run after every test, by
``citycard ledger check`` and by operators after an incident.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, func, literal, select, true

from citycard.ledger.model import Layer
from citycard.ledger.tables import ledger_accounts, ledger_balances, ledger_lines, ledger_postings

PROBLEMS_PER_CHECK_MAX = 50  # report at most this many findings per check (the first ones, by id)

_A, _B, _P, _L = ledger_accounts.c, ledger_balances.c, ledger_postings.c, ledger_lines.c
_NET = func.sum(_L.credit_fen - _L.debit_fen)


def _layer_name(layer: int) -> str:
    return Layer(layer).name.lower() if layer in Layer._value2member_map_ else str(layer)


def check_invariants(conn: Connection) -> list[str]:
    """Problems found, one sentence each; ``[]`` means every invariant holds.

    1. every layer's lines sum to zero (double entry);
    2. every posting balances in each layer it touches, and has lines;
    3. every account's stored balance in each layer (the sum of its slot rows) equals the sum of
       its journal lines there, and no balance row lies outside the account's slots;
    4. no account with ``allow_negative`` False has a negative total balance.
    """
    limit = PROBLEMS_PER_CHECK_MAX
    problems: list[str] = []

    for layer, net in conn.execute(select(_L.layer, _NET).group_by(_L.layer).having(_NET != 0)):
        problems.append(f"layer {_layer_name(layer)}: lines sum to {net} fen, not 0")

    unbalanced = (
        select(_P.key, _L.layer, _NET)
        .join(ledger_lines, _L.posting_id == _P.id)
        .group_by(_P.id, _P.key, _L.layer)
        .having(_NET != 0)
        .order_by(_P.id)
        .limit(limit)
    )
    for key, layer, net in conn.execute(unbalanced):
        problems.append(f"posting {key!r}: layer {_layer_name(layer)} lines sum to {net} fen, not 0")
    empty = (
        select(_P.key)
        .where(~select(_L.posting_id).where(_L.posting_id == _P.id).exists())
        .order_by(_P.id)
        .limit(limit)
    )
    for (key,) in conn.execute(empty):
        problems.append(f"posting {key!r} has no lines")

    journal = (
        select(_L.account_id.label("account_id"), _L.layer.label("layer"), _NET.label("net"))
        .group_by(_L.account_id, _L.layer)
        .subquery()
    )
    stored = (
        select(
            _B.account_id.label("account_id"),
            _B.layer.label("layer"),
            func.sum(_B.balance_fen).label("total"),
        )
        .group_by(_B.account_id, _B.layer)
        .subquery()
    )
    # Both directions of the comparison (no FULL OUTER JOIN on older SQLite).
    for left, right, left_is_stored in ((stored, journal, True), (journal, stored, False)):
        left_value = left.c.total if left_is_stored else left.c.net
        right_value = right.c.net if left_is_stored else right.c.total
        mismatches = (
            select(_A.code, left.c.layer, left_value, func.coalesce(right_value, literal(0)))
            .join(ledger_accounts, _A.id == left.c.account_id)
            .outerjoin(right, and_(right.c.account_id == left.c.account_id, right.c.layer == left.c.layer))
            .where(left_value != func.coalesce(right_value, literal(0)))
            .where(right_value.is_(None) if not left_is_stored else true())
            .order_by(_A.id, left.c.layer)
            .limit(limit)
        )
        for code, layer, mine, other in conn.execute(mismatches):
            held, journal_net = (mine, other) if left_is_stored else (other, mine)
            problems.append(
                f"account {code!r} layer {_layer_name(layer)}: stored {held} fen, journal {journal_net} fen"
            )

    bad_slots = (
        select(_A.code, _B.slot, _A.balance_slots)
        .join(ledger_accounts, _A.id == _B.account_id)
        .where(_B.slot >= _A.balance_slots)
        .order_by(_A.id, _B.slot)
        .limit(limit)
    )
    for code, slot, slots in conn.execute(bad_slots):
        problems.append(f"account {code!r}: balance row in slot {slot}, but the account has {slots} slots")

    totals = (
        select(_B.account_id.label("account_id"), func.sum(_B.balance_fen).label("total"))
        .group_by(_B.account_id)
        .subquery()
    )
    negative = (
        select(_A.code, totals.c.total)
        .join(totals, totals.c.account_id == _A.id)
        .where(_A.allow_negative != true(), totals.c.total < 0)
        .order_by(_A.id)
        .limit(limit)
    )
    for code, total in conn.execute(negative):
        problems.append(f"account {code!r} may not go negative but holds {total} fen")
    return problems
