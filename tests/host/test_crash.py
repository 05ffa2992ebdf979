"""Crash test (issue 5 acceptance): `kill -9` the issuer host while 10,000 authorisations are sent.

The terminals (asyncio, pipelined, MACed) log every answer. The `citycard host serve` subprocess is
killed with SIGKILL after a few thousand answers; requests in flight get no answer. After a restart
the terminals sign on again, reverse every request that got no answer (0400, sent twice to check
the reversal is idempotent), and send the rest. Then, reading the database directly:
every approved authorisation is posted exactly once, no declined one (forged ARQCs mixed in) is
posted, the unanswered ones net to zero, and ``check_invariants`` finds nothing.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from tests import dbtools
from tests.conftest import require_service
from tests.host.hostproc import BALANCE_FEN, HostDir

from citycard.host.client import AsyncHostClient, HostTimeout, HostUnavailable
from citycard.iso8583 import builders
from citycard.ledger import balance_fen, check_invariants, find_posting

AUTHORISATIONS = 10_000
TERMINALS = 4
DEPTH = 8
CARDS = 200
KILL_AFTER_ANSWERS = 3_000
FORGED_EVERY = 97  # every 97th request carries a forged ARQC: must be declined and never posted
AMOUNT_FEN = 1


def ledger_key(fields: dict[str, Any]) -> str:
    """The issuer's posting key of an authorisation (docs/issuer.md)."""
    return f"auth:citybank:{fields.get('32', '-')}/{fields['41']}:{fields['11']}:{fields.get('7', '-')}"


async def _connect(port: int, bank: HostDir, terminals: list[builders.Terminal]) -> list[AsyncHostClient]:
    clients = []
    for terminal in terminals:
        client = AsyncHostClient("127.0.0.1", port, hsm=bank.hsm, timeout_s=20)
        await client.connect()
        await client.sign_on(terminal_id=terminal.terminal_id, merchant_id=terminal.merchant_id)
        clients.append(client)
    return clients


async def _send_all(
    clients: list[AsyncHostClient],
    queues: list[list[dict[str, Any]]],
    log: dict[str, str | None],
    *,
    on_answer: Any = None,
) -> None:
    """Send each terminal's queue with DEPTH outstanding; log F39 per request, None when unanswered.

    A request is taken off its queue only when it is sent; after a connection loss the rest stays.
    """

    async def worker(client: AsyncHostClient, queue: list[dict[str, Any]]) -> None:
        while queue:
            fields = queue[0]
            try:
                raw = client.mac_message(fields)
                queue.pop(0)
                log[ledger_key(fields)] = None  # sent, no answer yet
                answer = await client.exchange_raw(raw, (fields["11"], fields["41"]))
            except (HostUnavailable, HostTimeout):
                return
            log[ledger_key(fields)] = answer["39"]
            if on_answer is not None:
                on_answer()

    await asyncio.gather(*(worker(c, q) for c, q in zip(clients, queues, strict=True) for _ in range(DEPTH)))


@pytest.mark.parametrize(
    ("backend", "worker"),
    [("sqlite", "thread"), ("postgresql", "thread"), ("sqlite", "process"), ("postgresql", "process-lanes")],
)
def test_kill_9_during_10000_authorisations(tmp_path, backend: str, worker: str) -> None:
    """… also with two issuer processes side by side (``--lanes 2``): kill -9 of the server kills
    both children, and the rerun still posts every approval exactly once."""
    if backend == "postgresql":
        problem = dbtools.postgres_problem()
        require_service(problem is None, problem or "")
    with dbtools.fresh_database(backend, tmp_path) as url:
        bank = HostDir(tmp_path, url)
        try:
            args = (
                ("--worker", "process", "--lanes", "2") if worker == "process-lanes" else ("--worker", worker)
            )
            _run_crash(bank, args)
        finally:
            bank.close()


def _run_crash(bank: HostDir, serve_args: tuple[str, ...]) -> None:
    cards = bank.enrol(CARDS)
    terminals = [bank.terminal(f"K{index:07d}") for index in range(TERMINALS)]
    by_terminal = [cards[index::TERMINALS] for index in range(TERMINALS)]
    queues: list[list[dict[str, Any]]] = [[] for _ in terminals]
    forged: set[str] = set()
    for number in range(AUTHORISATIONS):
        index = number % TERMINALS
        group = by_terminal[index]
        card = group[(number // TERMINALS) % len(group)]
        tamper = number % FORGED_EVERY == FORGED_EVERY - 1
        fields = card.request("purchase" if number % 2 else "authorisation", terminal=terminals[index],
                              stan=number // TERMINALS + 1, amount_fen=AMOUNT_FEN, when=datetime.now(UTC),
                              tamper=tamper)  # fmt: skip
        queues[index].append(fields)
        if tamper:
            forged.add(ledger_key(fields))
    originals = {ledger_key(f): f for queue in queues for f in queue}
    log: dict[str, str | None] = {}

    server = bank.serve(*serve_args)
    answered = 0

    def count_and_kill() -> None:
        nonlocal answered
        answered += 1
        if answered == KILL_AFTER_ANSWERS:
            server.kill9()  # SIGKILL: no graceful anything

    async def phase_one() -> None:
        clients = await _connect(server.port, bank, terminals)
        try:
            await _send_all(clients, queues, log, on_answer=count_and_kill)
        finally:
            for client in clients:
                await client.close()

    try:
        asyncio.run(phase_one())
    finally:
        if server.proc.poll() is None:
            server.kill9()
    assert server.proc.returncode == -9
    unanswered = [key for key, rc in log.items() if rc is None]
    assert KILL_AFTER_ANSWERS <= len(log) < AUTHORISATIONS, "the kill came mid-stream"
    assert unanswered, "requests were in flight when the host died"

    restarted = bank.serve(*serve_args)
    reversal_log: dict[str, str] = {}

    async def phase_two() -> None:
        clients = await _connect(restarted.port, bank, terminals)
        by_id = {t.terminal_id: c for t, c in zip(terminals, clients, strict=True)}
        try:
            for _attempt in range(2):  # each reversal twice: the second must change nothing
                answers = await asyncio.gather(*(
                    by_id[originals[key]["41"]].exchange(builders.reversal(originals[key]))
                    for key in unanswered
                ))  # fmt: skip
                for key, answer in zip(unanswered, answers, strict=True):
                    assert answer["t"] == "0410"
                    reversal_log[key] = answer["39"]
            await _send_all(clients, queues, log)  # the rest of the 10,000
        finally:
            for client in clients:
                await client.close()

    try:
        asyncio.run(phase_two())
        assert restarted.stop() == 0  # graceful this time
    finally:
        restarted.__exit__()

    assert len(log) == AUTHORISATIONS and all(
        rc is not None for key, rc in log.items() if key not in unanswered
    )
    assert set(reversal_log.values()) <= {"00", "25"}  # reversed, or the original never arrived
    approved = [key for key, rc in log.items() if rc == "00" and key not in unanswered]
    declined = [key for key, rc in log.items() if rc not in ("00", None)]
    assert set(declined) == forged - set(unanswered), "exactly the forged ARQCs are declined"
    with bank.engine.connect() as conn:
        for key in approved:
            posting = find_posting(conn, key)
            assert posting is not None, f"approved {key} not posted"
        for key in declined:
            assert find_posting(conn, key) is None, f"declined {key} was posted"
        merchants = {f"citybank:merchant:{t.merchant_id}" for t in terminals}
        total = sum(balance_fen(conn, account) for account in merchants)
        # each approved one adds 1 fen exactly once; each unanswered one nets to zero
        assert total == len(approved) * AMOUNT_FEN
        spent = sum(BALANCE_FEN - balance_fen(conn, f"citybank:card:{c.pan}:01") for c in cards)
        assert spent == len(approved) * AMOUNT_FEN
        assert check_invariants(conn) == []
