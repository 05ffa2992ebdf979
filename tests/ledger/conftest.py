"""Ledger test helpers: a small chart of accounts on the migrated ``engine`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from citycard.db import write_transaction
from citycard.ledger import AccountKind, Line, PostingRequest, check_invariants, open_account

FUNDING = "funding:cash"
EC = "ec:6230000000000000001:01"
CARDHOLDER = "cardholder:6230000000000000001"
MERCHANT = "merchant:100000000000001"
OPERATOR = "operator:bus"
SUSPENSE = "suspense:unmatched"


def transfer(key: str, source: str, target: str, amount_fen: int, **kw) -> PostingRequest:  # type: ignore[no-untyped-def]
    """A request that moves ``amount_fen`` from ``source`` (debit) to ``target`` (credit)."""
    return PostingRequest(
        key, (Line(source, debit_fen=amount_fen), Line(target, credit_fen=amount_fen)), **kw
    )


@pytest.fixture
def ledger(engine: Engine):  # type: ignore[no-untyped-def]
    """The engine with a funding account (may go negative) and spend accounts (may not); after the
    test the whole ledger must still satisfy every invariant."""
    with write_transaction(engine) as conn:
        open_account(conn, FUNDING, AccountKind.FUNDING, allow_negative=True, name="cash desk")
        open_account(conn, EC, AccountKind.EC)
        open_account(conn, CARDHOLDER, AccountKind.CARDHOLDER)
        open_account(conn, MERCHANT, AccountKind.MERCHANT)
        open_account(conn, OPERATOR, AccountKind.OPERATOR)
        open_account(conn, SUSPENSE, AccountKind.SUSPENSE, allow_negative=True)
    yield engine
    with write_transaction(engine) as conn:
        assert check_invariants(conn) == []
