"""post / post_many / open_account: balances, idempotency, conflicts and bad input that writes nothing."""

from __future__ import annotations

from datetime import UTC

import pytest
from sqlalchemy import func, select
from tests.ledger.conftest import CARDHOLDER, EC, FUNDING, MERCHANT, transfer

from citycard.db import read_transaction, write_transaction
from citycard.ledger import (
    AMOUNT_FEN_MAX,
    KEY_LENGTH_MAX,
    LINES_PER_POSTING_MAX,
    POSTINGS_PER_BATCH_MAX,
    AccountKind,
    InsufficientFunds,
    InvalidPosting,
    Layer,
    LedgerError,
    Line,
    PostingConflict,
    PostingRequest,
    UnbalancedPosting,
    UnknownAccount,
    balance_fen,
    balances,
    check_invariants,
    find_posting,
    open_account,
    post,
    post_many,
)
from citycard.ledger.tables import ledger_lines, ledger_postings


def _journal_size(conn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    postings = conn.execute(select(func.count()).select_from(ledger_postings)).scalar_one()
    lines = conn.execute(select(func.count()).select_from(ledger_lines)).scalar_one()
    return postings, lines


def test_post_moves_balances_and_is_stored(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        result = post(conn, transfer("load:1", FUNDING, EC, 10_000, memo="top-up at the cash desk"))
        assert result.created and result.key == "load:1" and result.posting_id > 0
        spend = post(conn, transfer("tc:1", EC, MERCHANT, 2_50))
        assert spend.created and spend.posting_id != result.posting_id
    with read_transaction(ledger) as conn:
        assert balances(conn, [EC, MERCHANT, FUNDING]) == {EC: 9_750, MERCHANT: 250, FUNDING: -10_000}
        assert balance_fen(conn, EC) == 9_750
        assert balance_fen(conn, EC, Layer.PENDING) == 9_750
        assert balance_fen(conn, EC, Layer.CLEARED) == 0
        posting = find_posting(conn, "load:1")
        assert posting is not None
        assert posting.kind == "post" and posting.layer is Layer.PENDING and posting.origin_key is None
        assert posting.memo == "top-up at the cash desk"
        assert posting.created_at.tzinfo is not None and posting.created_at.utcoffset() == UTC.utcoffset(None)
        assert [(ln.account, ln.layer, ln.debit_fen, ln.credit_fen) for ln in posting.lines] == [
            (FUNDING, Layer.PENDING, 10_000, 0),
            (EC, Layer.PENDING, 0, 10_000),
        ]
        assert find_posting(conn, "no-such-key") is None
        assert check_invariants(conn) == []


def test_post_in_another_layer(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("settled:1", FUNDING, MERCHANT, 700, layer=Layer.SETTLED))
        assert balance_fen(conn, MERCHANT, Layer.SETTLED) == 700
        assert balance_fen(conn, MERCHANT, Layer.PENDING) == 0
        assert balance_fen(conn, MERCHANT) == 700


def test_same_key_same_lines_posts_once(ledger) -> None:  # type: ignore[no-untyped-def]
    request = transfer("load:2", FUNDING, EC, 500)
    with write_transaction(ledger) as conn:
        first = post(conn, request)
    with write_transaction(ledger) as conn:
        again = post(conn, request)
        assert (again.created, again.posting_id) == (False, first.posting_id)
        assert balance_fen(conn, EC) == 500
        assert _journal_size(conn) == (1, 2)


def test_same_key_different_lines_is_a_conflict(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:3", FUNDING, EC, 500))
    with write_transaction(ledger) as conn:
        with pytest.raises(PostingConflict, match="'load:3'"):
            post(conn, transfer("load:3", FUNDING, EC, 501))
        with pytest.raises(PostingConflict, match="'load:3'"):
            post(conn, transfer("load:3", FUNDING, EC, 500, layer=Layer.CLEARED))
        assert balance_fen(conn, EC) == 500
        assert _journal_size(conn) == (1, 2)


def test_insufficient_funds_writes_nothing_even_if_the_caller_commits(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:4", FUNDING, EC, 1_000))
    with write_transaction(ledger) as conn:
        # Three lines: the funding account (opened first, allowed negative) is updated before EC fails
        # (accounts are locked in id order), so its update must be compensated.
        request = PostingRequest(
            "tc:overdraw",
            (Line(FUNDING, debit_fen=1), Line(EC, debit_fen=1_001), Line(MERCHANT, credit_fen=1_002)),
        )
        with pytest.raises(InsufficientFunds, match=r"account 'ec:6230000000000000001:01': balance 1000 fen"):
            post(conn, request)
        # The issuer declines (RC 51) and commits its own records: the ledger must be untouched.
    with read_transaction(ledger) as conn:
        assert balances(conn, [EC, MERCHANT, FUNDING]) == {EC: 1_000, MERCHANT: 0, FUNDING: -1_000}
        assert balance_fen(conn, FUNDING, Layer.PENDING) == -1_000
        assert find_posting(conn, "tc:overdraw") is None
        assert _journal_size(conn) == (1, 2)
    with write_transaction(ledger) as conn:  # the exact balance can be spent
        assert post(conn, transfer("tc:exact", EC, MERCHANT, 1_000)).created
        assert balance_fen(conn, EC) == 0


def test_unknown_account_writes_nothing(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        with pytest.raises(UnknownAccount, match="unknown accounts: ec:nope, merchant:nope"):
            post(
                conn, PostingRequest("x", (Line("ec:nope", debit_fen=1), Line("merchant:nope", credit_fen=1)))
            )
        with pytest.raises(UnknownAccount, match="ec:nope"):
            balance_fen(conn, "ec:nope")
        with pytest.raises(UnknownAccount, match="ec:nope"):
            balances(conn, [EC, "ec:nope"])
        assert _journal_size(conn) == (0, 0)


def test_unbalanced_posting_is_refused(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        with pytest.raises(UnbalancedPosting, match="'u:1' does not balance: debits 100 fen, credits 99 fen"):
            post(conn, PostingRequest("u:1", (Line(FUNDING, debit_fen=100), Line(EC, credit_fen=99))))
        assert _journal_size(conn) == (0, 0)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (PostingRequest("", (Line(FUNDING, debit_fen=1), Line(EC, credit_fen=1))), "posting key is empty"),
        (
            PostingRequest("k" * (KEY_LENGTH_MAX + 1), (Line(FUNDING, debit_fen=1), Line(EC, credit_fen=1))),
            f"limit {KEY_LENGTH_MAX}",
        ),
        (PostingRequest("k\n", (Line(FUNDING, debit_fen=1), Line(EC, credit_fen=1))), "control characters"),
        (PostingRequest("k", (Line(FUNDING, debit_fen=1),)), "has 1 lines; 2…32 allowed"),
        (
            PostingRequest("k", tuple(Line(FUNDING, debit_fen=1) for _ in range(LINES_PER_POSTING_MAX + 1))),
            "has 33 lines",
        ),
        (
            PostingRequest("k", (Line(FUNDING, debit_fen=1, credit_fen=1), Line(EC, credit_fen=0))),
            "exactly one",
        ),
        (PostingRequest("k", (Line(FUNDING), Line(EC))), "exactly one"),
        (PostingRequest("k", (Line(FUNDING, debit_fen=-5), Line(EC, credit_fen=-5))), "outside 0…"),
        (
            PostingRequest(
                "k", (Line(FUNDING, debit_fen=AMOUNT_FEN_MAX + 1), Line(EC, credit_fen=AMOUNT_FEN_MAX + 1))
            ),
            "outside 0…1000000000000 fen",
        ),
        (
            PostingRequest("k", (Line(FUNDING, debit_fen=1.5), Line(EC, credit_fen=1.5))),
            "integer number of fen",
        ),  # type: ignore[arg-type]
        (
            PostingRequest("k", (Line(FUNDING, debit_fen=True), Line(EC, credit_fen=True))),
            "integer number of fen",
        ),
        (
            PostingRequest("k", (Line(FUNDING, debit_fen=1), Line(EC, credit_fen=1)), layer=1),
            "must be a Layer",
        ),  # type: ignore[arg-type]
        (PostingRequest("k", (Line("", debit_fen=1), Line(EC, credit_fen=1))), "account code on line 0"),
        (
            PostingRequest("k", (Line(FUNDING, debit_fen=1), Line(EC, credit_fen=1)), memo="m" * 201),
            "limit 200",
        ),
    ],
)
def test_malformed_requests_are_refused_precisely(ledger, request_, message) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        with pytest.raises(InvalidPosting, match=message):
            post(conn, request_)
        assert _journal_size(conn) == (0, 0)


def test_post_many_is_one_batch(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:5", FUNDING, EC, 1_000))
        requests = [transfer(f"tc:b{i}", EC, MERCHANT, 100) for i in range(5)]
        results = post_many(conn, [*requests, requests[0], transfer("load:5", FUNDING, EC, 1_000)])
        assert [r.created for r in results] == [True] * 5 + [False, False]
        assert results[5].posting_id == results[0].posting_id
        assert balances(conn, [EC, MERCHANT]) == {EC: 500, MERCHANT: 500}
        assert post_many(conn, []) == []


def test_post_many_checks_the_batch_net_and_writes_nothing_on_error(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:6", FUNDING, EC, 300))
    with write_transaction(ledger) as conn:
        batch = [transfer(f"tc:n{i}", EC, MERCHANT, 100) for i in range(4)]  # 400 > 300
        with pytest.raises(InsufficientFunds, match="movement -400 fen"):
            post_many(conn, batch)
        with pytest.raises(PostingConflict, match="twice in the batch"):
            post_many(conn, [transfer("d", EC, MERCHANT, 1), transfer("d", EC, MERCHANT, 2)])
        with pytest.raises(PostingConflict, match="'load:6'"):
            post_many(conn, [transfer("tc:ok", EC, MERCHANT, 1), transfer("load:6", FUNDING, EC, 1)])
        with pytest.raises(InvalidPosting, match=f"limit {POSTINGS_PER_BATCH_MAX}"):
            post_many(conn, [transfer(f"t{i}", EC, MERCHANT, 1) for i in range(POSTINGS_PER_BATCH_MAX + 1)])
        assert balances(conn, [EC, MERCHANT]) == {EC: 300, MERCHANT: 0}
        assert _journal_size(conn) == (1, 2)


def test_open_account_is_idempotent_and_refuses_another_kind(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        open_account(conn, EC, AccountKind.EC)  # again: no-op
        open_account(conn, EC, "ec")
        with pytest.raises(LedgerError, match="already open as kind=ec allow_negative=False"):
            open_account(conn, EC, AccountKind.MERCHANT)
        with pytest.raises(LedgerError, match="cannot reopen as kind=ec allow_negative=True"):
            open_account(conn, EC, AccountKind.EC, allow_negative=True)
        with pytest.raises(InvalidPosting, match="unknown kind 'wallet'"):
            open_account(conn, "w:1", "wallet")
        with pytest.raises(InvalidPosting, match="limit 64"):
            open_account(conn, "x" * 65, AccountKind.EC)
        open_account(conn, "cardholder:2", AccountKind.CARDHOLDER, name="张三")
        assert balance_fen(conn, "cardholder:2") == 0
        assert {layer: balance_fen(conn, "cardholder:2", layer) for layer in Layer} == {
            Layer.PENDING: 0,
            Layer.CLEARED: 0,
            Layer.SETTLED: 0,
        }
        post(conn, transfer("cash:1", FUNDING, CARDHOLDER, 50))
        assert balance_fen(conn, CARDHOLDER) == 50


def test_a_busy_account_spreads_over_slots_and_still_sums_exactly(ledger) -> None:  # type: ignore[no-untyped-def]
    from citycard.ledger import HOT_ACCOUNT_SLOTS
    from citycard.ledger.tables import ledger_accounts, ledger_balances

    with write_transaction(ledger) as conn:
        post(conn, transfer("load:s", FUNDING, EC, 100_000))
        post_many(conn, [transfer(f"tc:s{i}", EC, MERCHANT, 10 + i) for i in range(40)][:20])
        for i in range(20, 40):
            post(conn, transfer(f"tc:s{i}", EC, MERCHANT, 10 + i))
        rows = conn.execute(
            select(ledger_balances.c.slot, ledger_balances.c.balance_fen)
            .join(ledger_accounts, ledger_accounts.c.id == ledger_balances.c.account_id)
            .where(ledger_accounts.c.code == MERCHANT)
        ).all()
        assert 1 < len(rows) <= HOT_ACCOUNT_SLOTS  # spread over several rows …
        expected = sum(10 + i for i in range(40))
        assert sum(balance for _slot, balance in rows) == expected  # … that add up exactly
        assert balance_fen(conn, MERCHANT) == expected
        ec_rows = conn.execute(
            select(func.count())
            .select_from(ledger_balances)
            .join(ledger_accounts, ledger_accounts.c.id == ledger_balances.c.account_id)
            .where(ledger_accounts.c.code == EC)
        ).scalar_one()
        assert ec_rows == 1  # a card's account keeps one row
        with pytest.raises(InvalidPosting, match="balance_slots 0 outside 1…64"):
            open_account(conn, "merchant:x", AccountKind.MERCHANT, balance_slots=0)
        open_account(conn, "merchant:one-row", AccountKind.MERCHANT, balance_slots=1)
