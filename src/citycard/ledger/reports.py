"""Read-only views of the ledger for operators: balances per account and layer, journal counts."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, case, func, select

from citycard.ledger.model import InvalidPosting, Layer
from citycard.ledger.tables import ledger_accounts, ledger_balances, ledger_lines, ledger_postings

ACCOUNTS_PER_PAGE_MAX = 10_000  # rows per list_balances call; page on with ``after``

_A, _B = ledger_accounts.c, ledger_balances.c


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """One account's balances (credits − debits) per layer."""

    code: str
    kind: str
    allow_negative: bool
    pending_fen: int
    cleared_fen: int
    settled_fen: int

    @property
    def total_fen(self) -> int:
        return self.pending_fen + self.cleared_fen + self.settled_fen

    def in_layer(self, layer: Layer | None) -> int:
        """The balance in ``layer``, or the total for ``None``."""
        if layer is None:
            return self.total_fen
        return (self.pending_fen, self.cleared_fen, self.settled_fen)[int(layer)]


def list_balances(
    conn: Connection, *, limit: int = ACCOUNTS_PER_PAGE_MAX, after: str | None = None
) -> list[AccountBalance]:
    """Accounts in code order (those after ``after``), at most ``limit``, with their layer balances."""
    if not 1 <= limit <= ACCOUNTS_PER_PAGE_MAX:
        raise InvalidPosting(f"limit {limit} outside 1…{ACCOUNTS_PER_PAGE_MAX}")

    def layer_sum(layer: Layer):  # type: ignore[no-untyped-def]
        return func.coalesce(func.sum(case((_B.layer == int(layer), _B.balance_fen), else_=0)), 0)

    query = (
        select(
            _A.code,
            _A.kind,
            _A.allow_negative,
            layer_sum(Layer.PENDING),
            layer_sum(Layer.CLEARED),
            layer_sum(Layer.SETTLED),
        )
        .select_from(ledger_accounts)
        .outerjoin(ledger_balances, _B.account_id == _A.id)
        .group_by(_A.id, _A.code, _A.kind, _A.allow_negative)
        .order_by(_A.code)
        .limit(limit)
    )
    if after is not None:
        query = query.where(_A.code > after)
    return [
        AccountBalance(code, kind, bool(negative_ok), int(pending), int(cleared), int(settled))
        for code, kind, negative_ok, pending, cleared, settled in conn.execute(query)
    ]


def journal_counts(conn: Connection) -> dict[str, int]:
    """How many accounts, postings and lines the ledger holds."""
    count = func.count()
    return {
        "accounts": conn.execute(select(count).select_from(ledger_accounts)).scalar_one(),
        "postings": conn.execute(select(count).select_from(ledger_postings)).scalar_one(),
        "lines": conn.execute(select(count).select_from(ledger_lines)).scalar_one(),
    }
