"""citycard.ledger.transfers.post_transfers: the bulk path keeps every ledger rule (SQLite and
PostgreSQL): the same rows as post_many, exactly once, replays and conflicts, the no-negative rule
on the aggregated delta, all or nothing, invariants after each."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from citycard.db import write_transaction
from citycard.ledger import (
    InsufficientFunds,
    InvalidPosting,
    Layer,
    PostingConflict,
    UnknownAccount,
    balance_fen,
    check_invariants,
    find_posting,
    journal_counts,
    post_many,
)
from citycard.ledger.tables import ledger_balances, ledger_postings
from citycard.ledger.transfers import TRANSFERS_PER_CALL_MAX, Transfer, post_transfers

from .conftest import EC, FUNDING, OPERATOR, SUSPENSE, transfer


def _fund(engine, amount: int) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(engine) as conn:
        post_many(conn, [transfer("load:1", FUNDING, EC, amount, layer=Layer.CLEARED)])


def test_bulk_rows_equal_post_many_rows(ledger) -> None:  # type: ignore[no-untyped-def]
    _fund(ledger, 10_000)
    taps = [Transfer(f"tc:{i}", EC, OPERATOR, 100 + i, f"tap {i}") for i in range(30)]
    with write_transaction(ledger) as conn:
        assert post_transfers(conn, taps, layer=Layer.CLEARED) == 30
    with ledger.connect() as conn:
        assert balance_fen(conn, EC) == 10_000 - sum(100 + i for i in range(30))
        assert balance_fen(conn, OPERATOR) == sum(100 + i for i in range(30))
        posting = find_posting(conn, "tc:7")
        assert posting is not None and posting.memo == "tap 7" and posting.layer == Layer.CLEARED
        assert [(line.account, line.debit_fen, line.credit_fen) for line in posting.lines] == [
            (EC, 107, 0),
            (OPERATOR, 0, 107),
        ]
        # one balance row per account and layer for the whole call (the card: 30 taps, one update)
        rows = conn.execute(select(func.count()).select_from(ledger_balances)).scalar_one()
        assert rows == 3  # funding, EC, operator in the cleared layer
        assert check_invariants(conn) == []


def test_replays_post_once_and_conflicts_write_nothing(ledger) -> None:  # type: ignore[no-untyped-def]
    _fund(ledger, 1_000)
    first = [Transfer("tc:a", EC, OPERATOR, 100), Transfer("tc:b", EC, OPERATOR, 200)]
    with write_transaction(ledger) as conn:
        assert post_transfers(conn, first, layer=Layer.CLEARED) == 2
    with write_transaction(ledger) as conn:  # a replay and a new one
        assert post_transfers(conn, [*first, Transfer("tc:c", EC, OPERATOR, 50)], layer=Layer.CLEARED) == 1
    with ledger.connect() as conn:
        assert balance_fen(conn, EC) == 650
        counts = journal_counts(conn)
    with pytest.raises(PostingConflict), write_transaction(ledger) as conn:
        post_transfers(
            conn,
            [Transfer("tc:d", EC, OPERATOR, 1), Transfer("tc:a", EC, OPERATOR, 101)],
            layer=Layer.CLEARED,
        )
    with write_transaction(ledger) as conn:  # a refusal the caller catches: its other work may commit
        with pytest.raises(PostingConflict):
            post_transfers(
                conn,
                [Transfer("tc:e", EC, OPERATOR, 1), Transfer("tc:b", EC, SUSPENSE, 200)],
                layer=Layer.CLEARED,
            )
        assert (
            conn.execute(
                select(func.count()).select_from(ledger_postings).where(ledger_postings.c.key == "tc:e")
            ).scalar_one()
            == 0
        )
    with ledger.connect() as conn:
        assert journal_counts(conn) == counts and balance_fen(conn, EC) == 650


def test_no_negative_on_the_aggregated_delta(ledger) -> None:  # type: ignore[no-untyped-def]
    _fund(ledger, 300)
    # 200 + 200 from a 300 balance: refused as a whole, though each alone would pass
    with (
        write_transaction(ledger) as conn,
        pytest.raises(InsufficientFunds, match="balance 300 fen, movement -400 fen"),
    ):
        post_transfers(
            conn,
            [Transfer("tc:1", EC, OPERATOR, 200), Transfer("tc:2", EC, OPERATOR, 200)],
            layer=Layer.CLEARED,
        )
    # a debit and a later credit in the same call net out: allowed (net effect, as post_many)
    with write_transaction(ledger) as conn:
        taps = [Transfer("tc:3", EC, OPERATOR, 400), Transfer("refund:3", OPERATOR, EC, 400)]
        assert post_transfers(conn, taps, layer=Layer.CLEARED) == 2
    with ledger.connect() as conn:
        assert balance_fen(conn, EC) == 300 and balance_fen(conn, OPERATOR) == 0
        assert find_posting(conn, "tc:1") is None


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (Transfer("", EC, OPERATOR, 1), InvalidPosting, "posting key"),
        (Transfer("k" * 129, EC, OPERATOR, 1), InvalidPosting, "posting key"),
        (Transfer("k\n", EC, OPERATOR, 1), InvalidPosting, "posting key"),
        (Transfer("k", EC, OPERATOR, 0), InvalidPosting, "amount"),
        (Transfer("k", EC, OPERATOR, True), InvalidPosting, "amount"),
        (Transfer("k", EC, OPERATOR, 10**13), InvalidPosting, "amount"),
        (Transfer("k", EC, EC, 1), InvalidPosting, "same account"),
        (Transfer("k", EC, OPERATOR, 1, "m" * 201), InvalidPosting, "memo"),
        (Transfer("k", EC, "nobody:1", 1), UnknownAccount, "nobody:1"),
    ],
)
def test_bad_transfers_are_refused_before_any_write(ledger, bad, error, match) -> None:  # type: ignore[no-untyped-def]
    _fund(ledger, 100)
    with ledger.connect() as conn:
        counts = journal_counts(conn)
    with pytest.raises(error, match=match), write_transaction(ledger) as conn:
        post_transfers(conn, [Transfer("ok", EC, OPERATOR, 1), bad], layer=Layer.CLEARED)
    with ledger.connect() as conn:
        assert journal_counts(conn) == counts


def test_limits(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        with pytest.raises(InvalidPosting, match="twice"):
            post_transfers(
                conn, [Transfer("k", FUNDING, EC, 1), Transfer("k", FUNDING, EC, 1)], layer=Layer.CLEARED
            )
        with pytest.raises(InvalidPosting, match="limit"):
            post_transfers(
                conn,
                [Transfer(f"k{i}", FUNDING, EC, 1) for i in range(TRANSFERS_PER_CALL_MAX + 1)],
                layer=Layer.CLEARED,
            )
        with pytest.raises(InvalidPosting, match="Layer"):
            post_transfers(conn, [Transfer("k", FUNDING, EC, 1)], layer=1)  # type: ignore[arg-type]
        assert post_transfers(conn, [], layer=Layer.CLEARED) == 0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from([(FUNDING, EC), (EC, OPERATOR), (OPERATOR, EC)]), st.integers(1, 500)),
        min_size=1,
        max_size=40,
    )
)
def test_bulk_equals_post_many_for_any_sequence(ledger, moves) -> None:  # type: ignore[no-untyped-def]
    """The same movements through post_transfers or post_many leave the same balances or the same refusal."""
    with ledger.connect() as conn:
        start = {code: balance_fen(conn, code) for code in (FUNDING, EC, OPERATOR)}
    tag = uuid.uuid4().hex[:12]
    bulk_result = many_result = None
    try:
        with write_transaction(ledger) as conn:
            post_transfers(
                conn,
                [Transfer(f"b:{tag}:{i}", d, c, a) for i, ((d, c), a) in enumerate(moves)],
                layer=Layer.CLEARED,
            )
            bulk_result = {code: balance_fen(conn, code) - start[code] for code in start}
            raise _RollbackError
    except _RollbackError:
        pass
    except InsufficientFunds:
        bulk_result = "refused"
    try:
        with write_transaction(ledger) as conn:
            post_many(
                conn,
                [
                    transfer(f"m:{tag}:{i}", d, c, a, layer=Layer.CLEARED)
                    for i, ((d, c), a) in enumerate(moves)
                ],
            )
            many_result = {code: balance_fen(conn, code) - start[code] for code in start}
            raise _RollbackError
    except _RollbackError:
        pass
    except InsufficientFunds:
        many_result = "refused"
    assert bulk_result == many_result


class _RollbackError(Exception):
    """Leave the transaction without committing (the property test compares, then forgets)."""
