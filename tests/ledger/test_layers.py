"""reverse and promote: mirror postings, layers that only move forward, exactly-once follow-ups."""

from __future__ import annotations

import pytest
from tests.ledger.conftest import EC, FUNDING, MERCHANT, OPERATOR, transfer

from citycard.db import write_transaction
from citycard.ledger import (
    InsufficientFunds,
    InvalidPosting,
    Layer,
    LedgerError,
    PostingConflict,
    balance_fen,
    balances,
    find_posting,
    post,
    promote,
    reverse,
)


def _layers(conn, account: str) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    return tuple(balance_fen(conn, account, layer) for layer in Layer)  # type: ignore[return-value]


def test_reverse_restores_balances_exactly_once(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:1", FUNDING, EC, 1_000))
        post(conn, transfer("auth:1", EC, MERCHANT, 300))
        first = reverse(conn, key="rev:auth:1", original_key="auth:1", memo="0400 timeout")
        assert first.created
        for _ in range(2):  # the acquirer sends its reversal three times
            again = reverse(conn, key="rev:auth:1", original_key="auth:1")
            assert (again.created, again.posting_id) == (False, first.posting_id)
        assert balances(conn, [EC, MERCHANT]) == {EC: 1_000, MERCHANT: 0}
        stored = find_posting(conn, "rev:auth:1")
        assert stored is not None
        assert (stored.kind, stored.origin_key, stored.layer, stored.memo) == (
            "reversal",
            "auth:1",
            Layer.PENDING,
            "0400 timeout",
        )
        assert [(ln.account, ln.debit_fen, ln.credit_fen) for ln in stored.lines] == [
            (EC, 0, 300),
            (MERCHANT, 300, 0),
        ]


def test_reverse_refusals(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:2", FUNDING, EC, 1_000))
        post(conn, transfer("auth:2", EC, MERCHANT, 300))
        reverse(conn, key="rev:auth:2", original_key="auth:2")
        with pytest.raises(LedgerError, match="cannot reverse 'rev:auth:2': it is a reversal"):
            reverse(conn, key="rev:rev", original_key="rev:auth:2")
        with pytest.raises(LedgerError, match="cannot reverse 'auth:2': already reversed by 'rev:auth:2'"):
            reverse(conn, key="rev:auth:2:b", original_key="auth:2")
        with pytest.raises(LedgerError, match="cannot reverse 'auth:nope': no such posting"):
            reverse(conn, key="rev:nope", original_key="auth:nope")
        with pytest.raises(PostingConflict, match="'load:2' was already used for a different post"):
            reverse(conn, key="load:2", original_key="auth:2")
        post(conn, transfer("auth:3", EC, MERCHANT, 100))
        with pytest.raises(PostingConflict, match="'rev:auth:2'"):  # that key reversed another posting
            reverse(conn, key="rev:auth:2", original_key="auth:3")
        assert balances(conn, [EC, MERCHANT]) == {EC: 900, MERCHANT: 100}


def test_reversal_cannot_overdraw(ledger) -> None:  # type: ignore[no-untyped-def]
    """Reversing a top-up whose money was already spent would make the EC account negative."""
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:7", FUNDING, EC, 500))
        post(conn, transfer("fare:7", EC, OPERATOR, 200))
        with pytest.raises(InsufficientFunds, match="would leave -200 fen"):
            reverse(conn, key="rev:load:7", original_key="load:7")
        assert find_posting(conn, "rev:load:7") is None
        assert balances(conn, [EC, FUNDING]) == {EC: 300, FUNDING: -500}
        reverse(conn, key="rev:fare:7", original_key="fare:7")  # undo the fare, then the top-up works
        assert reverse(conn, key="rev:load:7", original_key="load:7").created
        assert balances(conn, [EC, FUNDING, OPERATOR]) == {EC: 0, FUNDING: 0, OPERATOR: 0}


def test_promote_pending_cleared_settled(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:3", FUNDING, EC, 1_000, layer=Layer.SETTLED))
        post(conn, transfer("tc:3", EC, OPERATOR, 150))
        assert _layers(conn, OPERATOR) == (150, 0, 0)
        cleared = promote(conn, key="clr:tc:3", original_key="tc:3", to_layer=Layer.CLEARED)
        assert cleared.created
        assert promote(conn, key="clr:tc:3", original_key="tc:3", to_layer=Layer.CLEARED).created is False
        assert _layers(conn, OPERATOR) == (0, 150, 0)
        # Either the original or the latest promotion names the chain.
        assert promote(conn, key="stl:tc:3", original_key="clr:tc:3", to_layer=Layer.SETTLED).created
        assert _layers(conn, OPERATOR) == (0, 0, 150)
        assert _layers(conn, EC) == (0, 0, 850)
        assert balances(conn, [EC, OPERATOR]) == {EC: 850, OPERATOR: 150}
        stored = find_posting(conn, "stl:tc:3")
        assert stored is not None and stored.kind == "promotion" and stored.origin_key == "clr:tc:3"
        assert [(ln.account, ln.layer, ln.debit_fen, ln.credit_fen) for ln in stored.lines] == [
            (EC, Layer.CLEARED, 0, 150),
            (OPERATOR, Layer.CLEARED, 150, 0),
            (EC, Layer.SETTLED, 150, 0),
            (OPERATOR, Layer.SETTLED, 0, 150),
        ]


def test_promotion_skipping_a_layer_and_refusals(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:4", FUNDING, EC, 1_000))
        post(conn, transfer("tc:4", EC, MERCHANT, 100))
        assert promote(conn, key="stl:tc:4", original_key="tc:4", to_layer=Layer.SETTLED).created
        assert _layers(conn, MERCHANT) == (0, 0, 100)
        with pytest.raises(LedgerError, match="to CLEARED: it is already SETTLED"):
            promote(conn, key="clr:tc:4", original_key="tc:4", to_layer=Layer.CLEARED)
        with pytest.raises(PostingConflict, match="'stl:tc:4'"):
            promote(conn, key="stl:tc:4", original_key="tc:4", to_layer=Layer.CLEARED)
        with pytest.raises(InvalidPosting, match="to_layer must be a Layer"):
            promote(conn, key="x", original_key="tc:4", to_layer=2)  # type: ignore[arg-type]
        with pytest.raises(LedgerError, match="no such posting"):
            promote(conn, key="x", original_key="tc:none", to_layer=Layer.CLEARED)
        post(conn, transfer("tc:5", EC, MERCHANT, 10))
        reverse(conn, key="rev:tc:5", original_key="tc:5")
        with pytest.raises(LedgerError, match="cannot promote 'tc:5': already reversed by 'rev:tc:5'"):
            promote(conn, key="clr:tc:5", original_key="tc:5", to_layer=Layer.CLEARED)
        with pytest.raises(LedgerError, match="cannot promote 'rev:tc:5': it is a reversal"):
            promote(conn, key="clr:rev", original_key="rev:tc:5", to_layer=Layer.CLEARED)


def test_reversing_a_promoted_posting_undoes_it_where_its_money_is(ledger) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(ledger) as conn:
        post(conn, transfer("load:6", FUNDING, EC, 1_000))
        post(conn, transfer("tc:6", EC, MERCHANT, 400))
        promote(conn, key="clr:tc:6", original_key="tc:6", to_layer=Layer.CLEARED)
        result = reverse(conn, key="chargeback:tc:6", original_key="tc:6")
        assert result.created
        stored = find_posting(conn, "chargeback:tc:6")
        assert stored is not None and stored.layer is Layer.CLEARED and stored.origin_key == "clr:tc:6"
        assert _layers(conn, MERCHANT) == (0, 0, 0)
        assert balance_fen(conn, EC) == 1_000
        with pytest.raises(LedgerError, match="already reversed by 'chargeback:tc:6'"):
            promote(conn, key="stl:tc:6", original_key="clr:tc:6", to_layer=Layer.SETTLED)
