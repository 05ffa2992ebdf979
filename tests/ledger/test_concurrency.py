"""Concurrent posting on one engine: no lost update, no overdraft, no deadlock, follow-ups once.

Each thread runs its own transactions (one posting per transaction, as the issuer does); the
expected balances are computed exactly from the deterministic list of transfers.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine
from tests.ledger.conftest import FUNDING, transfer

from citycard.db import read_transaction, write_transaction
from citycard.ledger import (
    AccountKind,
    InsufficientFunds,
    Layer,
    LedgerError,
    balance_fen,
    balances,
    check_invariants,
    open_account,
    post,
    promote,
    reverse,
)

THREADS = 8
TRANSFERS_PER_THREAD = 200
ACCOUNTS = [f"ec:conc:{i}" for i in range(4)]
OPENING_FEN = 100_000  # more than any account can lose, so no transfer in the first test may fail


def _run_threads(work) -> list:  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(work, thread) for thread in range(THREADS)]
        return [future.result() for future in futures]  # re-raises a thread's failure


def _plan(thread: int) -> list[tuple[str, str, str, int]]:
    """(key, source, target, amount_fen) for one thread: every pair of accounts, both directions."""
    plan = []
    for i in range(TRANSFERS_PER_THREAD):
        source = ACCOUNTS[(thread + i) % len(ACCOUNTS)]
        target = ACCOUNTS[(thread + 3 * i + 1) % len(ACCOUNTS)]
        if source == target:
            target = ACCOUNTS[(ACCOUNTS.index(source) + 1) % len(ACCOUNTS)]
        plan.append((f"conc:{thread}:{i}", source, target, 1 + (thread * 7 + i) % 13))
    return plan


def _open(engine: Engine, opening_fen: int) -> None:
    with write_transaction(engine) as conn:
        open_account(conn, FUNDING, AccountKind.FUNDING, allow_negative=True)
        for code in ACCOUNTS:
            open_account(conn, code, AccountKind.EC)
            post(conn, transfer(f"open:{code}", FUNDING, code, opening_fen))


def test_transfers_from_eight_threads_lose_nothing(engine: Engine) -> None:
    _open(engine, OPENING_FEN)

    def work(thread: int) -> int:
        for key, source, target, amount in _plan(thread):
            with write_transaction(engine) as conn:
                assert post(conn, transfer(key, source, target, amount)).created
        return TRANSFERS_PER_THREAD

    assert sum(_run_threads(work)) == THREADS * TRANSFERS_PER_THREAD
    expected = Counter({code: OPENING_FEN for code in ACCOUNTS})
    for thread in range(THREADS):
        for _key, source, target, amount in _plan(thread):
            expected[source] -= amount
            expected[target] += amount
    with read_transaction(engine) as conn:
        assert balances(conn, ACCOUNTS) == dict(expected)
        assert sum(balances(conn, [*ACCOUNTS, FUNDING]).values()) == 0
        assert check_invariants(conn) == []


def test_racing_debits_never_overdraw(engine: Engine) -> None:
    """1,000 fen and 8 × 50 attempts to spend 10 fen: exactly 100 succeed, the balance ends at 0."""
    with write_transaction(engine) as conn:
        open_account(conn, FUNDING, AccountKind.FUNDING, allow_negative=True)
        open_account(conn, "ec:race", AccountKind.EC)
        open_account(conn, "merchant:race", AccountKind.MERCHANT)
        post(conn, transfer("open:race", FUNDING, "ec:race", 1_000))

    def work(thread: int) -> tuple[int, int]:
        approved = declined = 0
        for i in range(50):
            try:
                with write_transaction(engine) as conn:
                    post(conn, transfer(f"race:{thread}:{i}", "ec:race", "merchant:race", 10))
                approved += 1
            except InsufficientFunds:
                declined += 1
        return approved, declined

    outcomes = _run_threads(work)
    assert sum(a for a, _ in outcomes) == 100
    assert sum(d for _, d in outcomes) == THREADS * 50 - 100
    with read_transaction(engine) as conn:
        assert balances(conn, ["ec:race", "merchant:race"]) == {"ec:race": 0, "merchant:race": 1_000}
        assert check_invariants(conn) == []


def test_same_key_and_same_reversal_from_eight_threads_post_once(engine: Engine) -> None:
    _open(engine, 1_000)
    source, target = ACCOUNTS[0], ACCOUNTS[1]

    def post_same(_thread: int) -> bool:
        with write_transaction(engine) as conn:
            return post(conn, transfer("auth:same", source, target, 250)).created

    assert sorted(_run_threads(post_same)) == [False] * (THREADS - 1) + [True]

    def reverse_same_key(_thread: int) -> bool:
        with write_transaction(engine) as conn:
            return reverse(conn, key="rev:auth:same", original_key="auth:same").created

    assert sorted(_run_threads(reverse_same_key)) == [False] * (THREADS - 1) + [True]

    with write_transaction(engine) as conn:
        post(conn, transfer("auth:promoted", source, target, 50))

    def promote_same_key(_thread: int) -> bool:
        with write_transaction(engine) as conn:
            return promote(
                conn, key="clr:auth:promoted", original_key="auth:promoted", to_layer=Layer.CLEARED
            ).created

    assert sorted(_run_threads(promote_same_key)) == [False] * (THREADS - 1) + [True]

    with write_transaction(engine) as conn:
        post(conn, transfer("auth:other", source, target, 100))

    def reverse_other_key(thread: int) -> str:
        try:
            with write_transaction(engine) as conn:
                reverse(conn, key=f"rev:{thread}:auth:other", original_key="auth:other")
        except LedgerError as exc:
            assert "already reversed" in str(exc)
            return "refused"
        return "reversed"

    assert sorted(_run_threads(reverse_other_key)) == ["refused"] * (THREADS - 1) + ["reversed"]
    with read_transaction(engine) as conn:
        assert balances(conn, [source, target]) == {source: 950, target: 1_050}
        assert balance_fen(conn, target, Layer.CLEARED) == 50
        assert check_invariants(conn) == []
