"""check_invariants finds tampering; find_posting refuses a posting that no longer balances."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from tests.ledger.conftest import EC, FUNDING, MERCHANT, transfer

from citycard.db import write_transaction
from citycard.ledger import UnbalancedPosting, check_invariants, find_posting, post


def _seed(engine: Engine) -> None:
    with write_transaction(engine) as conn:
        post(conn, transfer("load:1", FUNDING, EC, 1_000))
        post(conn, transfer("tc:1", EC, MERCHANT, 100))
        assert check_invariants(conn) == []


def _tamper(engine: Engine, sql: str) -> list[str]:
    """Apply ``sql`` behind the ledger's back, report the problems, then undo it (rollback)."""
    with engine.connect() as conn, conn.begin() as trans:
        conn.execute(text(sql))
        problems = check_invariants(conn)
        trans.rollback()
    return problems


def test_a_stored_balance_that_disagrees_with_the_journal(ledger: Engine) -> None:
    _seed(ledger)
    problems = _tamper(
        ledger,
        "UPDATE ledger_balances SET balance_fen = balance_fen + 5 WHERE layer = 0 AND account_id = "
        f"(SELECT id FROM ledger_accounts WHERE code = '{MERCHANT}')",
    )
    assert problems == [f"account '{MERCHANT}' layer pending: stored 105 fen, journal 100 fen"]


def test_a_line_changed_in_the_journal(ledger: Engine) -> None:
    _seed(ledger)
    problems = _tamper(
        ledger,
        "UPDATE ledger_lines SET credit_fen = 101 WHERE seq = 1 AND posting_id = "
        "(SELECT id FROM ledger_postings WHERE key = 'tc:1')",
    )
    assert "layer pending: lines sum to 1 fen, not 0" in problems
    assert "posting 'tc:1': layer pending lines sum to 1 fen, not 0" in problems
    assert f"account '{MERCHANT}' layer pending: stored 100 fen, journal 101 fen" in problems


def test_a_posting_without_lines_and_a_missing_balance_row(ledger: Engine) -> None:
    _seed(ledger)
    problems = _tamper(
        ledger,
        "INSERT INTO ledger_postings (key, kind, layer, origin_id, memo, created_at) "
        "VALUES ('empty', 'post', 0, NULL, '', CURRENT_TIMESTAMP)",
    )
    assert problems == ["posting 'empty' has no lines"]
    problems = _tamper(
        ledger,
        f"DELETE FROM ledger_balances WHERE account_id = (SELECT id FROM ledger_accounts WHERE code = '{EC}')",
    )
    assert problems == [f"account '{EC}' layer pending: stored 0 fen, journal 900 fen"]


def test_a_negative_balance_and_a_slot_out_of_range(ledger: Engine) -> None:
    _seed(ledger)
    ec_rows = f"FROM ledger_accounts WHERE code = '{EC}'"
    problems = _tamper(
        ledger, f"UPDATE ledger_balances SET balance_fen = -1 WHERE account_id = (SELECT id {ec_rows})"
    )
    assert problems == [
        f"account '{EC}' layer pending: stored -1 fen, journal 900 fen",
        f"account '{EC}' may not go negative but holds -1 fen",
    ]
    problems = _tamper(
        ledger, f"UPDATE ledger_balances SET slot = 5 WHERE account_id = (SELECT id {ec_rows})"
    )
    assert problems == [f"account '{EC}': balance row in slot 5, but the account has 1 slots"]


def test_find_posting_checks_the_balance_where_read(ledger: Engine) -> None:
    _seed(ledger)
    with ledger.connect() as conn, conn.begin() as trans:
        conn.execute(
            text(
                "UPDATE ledger_lines SET debit_fen = 99 WHERE seq = 0 AND posting_id = "
                "(SELECT id FROM ledger_postings WHERE key = 'tc:1')"
            )
        )
        with pytest.raises(UnbalancedPosting, match="'tc:1'"):
            find_posting(conn, "tc:1")
        trans.rollback()
