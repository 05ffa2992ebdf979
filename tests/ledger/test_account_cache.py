"""ledger.AccountCache: post_many without account lookups, balances by account id — same results,
and rows of a transaction that rolled back never reused (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from tests.ledger.conftest import CARDHOLDER, EC, FUNDING, MERCHANT, OPERATOR, transfer

from citycard.db import write_transaction
from citycard.ledger import (
    AccountCache,
    AccountKind,
    Layer,
    UnknownAccount,
    balances,
    open_account,
    post_many,
)


def test_cached_posting_and_balances_equal_the_uncached_ones(ledger) -> None:
    cache = AccountCache()
    with write_transaction(ledger) as conn:
        post_many(conn, [transfer("c1", FUNDING, CARDHOLDER, 5_000), transfer("c2", FUNDING, EC, 700)],
                  account_cache=cache)  # fmt: skip
    assert len(cache) == 0  # nothing usable before the caller says it committed
    cache.committed()
    assert {cache.get(code).id > 0 for code in (FUNDING, CARDHOLDER, EC)} == {True}
    with write_transaction(ledger) as conn:
        post_many(
            conn, [transfer("c3", CARDHOLDER, MERCHANT, 1_250, layer=Layer.PENDING)], account_cache=cache
        )
    cache.committed()
    codes = [FUNDING, CARDHOLDER, EC, MERCHANT, OPERATOR]  # OPERATOR never moved: 0, not in the cache
    with write_transaction(ledger) as conn:
        plain = balances(conn, codes)
        assert balances(conn, codes, account_cache=cache) == plain
        assert balances(conn, [CARDHOLDER, MERCHANT], account_cache=cache) == {
            CARDHOLDER: 3_750,
            MERCHANT: 1_250,
        }
    assert plain == {FUNDING: -5_700, CARDHOLDER: 3_750, EC: 700, MERCHANT: 1_250, OPERATOR: 0}


def test_rows_seen_in_a_rolled_back_transaction_are_not_kept(ledger) -> None:
    cache = AccountCache()
    with pytest.raises(RuntimeError), write_transaction(ledger) as conn:
        open_account(conn, "merchant:gone", AccountKind.MERCHANT)
        post_many(conn, [transfer("g1", FUNDING, "merchant:gone", 10)], account_cache=cache)
        assert "merchant:gone" in cache.pending
        raise RuntimeError("the caller's batch failed")
    cache.rolled_back()
    assert cache.get("merchant:gone") is None and not cache.pending
    with write_transaction(ledger) as conn, pytest.raises(UnknownAccount, match="merchant:gone"):
        post_many(conn, [transfer("g2", FUNDING, "merchant:gone", 10)], account_cache=cache)


def test_a_one_transaction_cache_serves_open_codes_rows_without_a_second_lookup(ledger, monkeypatch) -> None:
    from citycard.ledger import journal

    read: list[list[str]] = []
    real = journal._read_accounts
    monkeypatch.setattr(
        journal, "_read_accounts", lambda conn, codes: read.append(list(codes)) or real(conn, codes)
    )
    cache = AccountCache(one_transaction=True)
    with write_transaction(ledger) as conn:
        assert journal.open_codes(conn, [EC, FUNDING, "ec:never-opened"], cache) == {EC, FUNDING}
        assert cache.get(EC).id > 0 and cache.get("ec:never-opened") is None
        assert journal.open_codes(conn, [EC], cache) == {EC}  # from the cache now
        post_many(conn, [transfer("t1", FUNDING, EC, 100)], account_cache=cache)
    assert [codes for codes in read if codes] == [sorted([EC, FUNDING, "ec:never-opened"])]  # post_many: none
    with write_transaction(ledger) as conn:
        assert balances(conn, [EC, FUNDING]) == {EC: 100, FUNDING: -100}


def test_a_plain_cache_serves_nothing_before_commit(ledger) -> None:
    from citycard.ledger.journal import open_codes

    cache = AccountCache()
    with write_transaction(ledger) as conn:
        assert open_codes(conn, [EC], cache) == {EC}
    assert cache.get(EC) is None and EC in cache.pending  # the caller has not said it committed
