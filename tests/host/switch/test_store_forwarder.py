"""Store-and-forward queue and forwarder on SQLite and PostgreSQL (the pure core, an injected sender).

The sender here is a real coroutine that answers like an endpoint (with builders.response) or fails
like one (ConnectionError, TimeoutError); the queue, its transactions and the backoff are real.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from citycard.db import write_transaction
from citycard.host.switch import store
from citycard.host.switch.forwarder import Forwarder
from citycard.host.switch.standin import reversal_for
from citycard.iso8583 import builders

WHEN = datetime(2026, 1, 27, 4, 0, tzinfo=UTC)  # in the past: queued items are due now


def _purchase(stan: int) -> dict:
    return builders.financial(
        "purchase",
        terminal=builders.Terminal("T0000001", "M00000000000001", acquirer_id="04519999"),
        card=builders.Card("6235480000000017", psn=1),
        amount_fen=1_234, stan=stan, when=WHEN, ic=bytes.fromhex("9F2608" + "11" * 8),
    )  # fmt: skip


def _queue(engine, stan: int, endpoint: str = "bank-a") -> int:
    reversal = reversal_for(_purchase(stan))
    with write_transaction(engine) as conn:
        return store.enqueue(
            conn,
            key=store.message_key("reversal", endpoint, reversal),
            endpoint=endpoint,
            fields=reversal,
            now=WHEN,
        )


def test_enqueue_is_idempotent_and_keeps_the_message(engine):
    first = _queue(engine, 7)
    assert _queue(engine, 7) == first
    with write_transaction(engine) as conn:
        [item] = store.items(conn)
        assert (item.id, item.mti, item.status, item.attempts) == (first, "0400", "pending", 0)
        assert (
            item.fields["11"] == "000007" and item.fields["39"] == "98" and item.fields["4"] == "000000001234"
        )
        assert store.pending_count(conn) == 1
        with pytest.raises(ValueError, match="only 0220 advices and 0400 reversals"):
            store.enqueue(conn, key="x", endpoint="bank-a", fields=_purchase(8), now=WHEN)
        with pytest.raises(ValueError, match="timezone-aware"):
            store.due(conn, now=datetime(2026, 1, 1))


def test_forwarder_delivers_in_order_and_marks_never_deletes(engine):
    ids = [_queue(engine, stan) for stan in (1, 2, 3)]
    sent: list[str] = []

    async def send(endpoint: str, fields: dict) -> dict:
        sent.append(fields["11"])
        return builders.response(fields, "00")

    forwarder = Forwarder(engine, send, clock=lambda: WHEN)
    assert asyncio.run(forwarder.run_once()) == 3
    assert sent == ["000001", "000002", "000003"]
    with write_transaction(engine) as conn:
        items = store.items(conn)
        assert [i.id for i in items] == ids
        assert {(i.status, i.response_code, i.attempts) for i in items} == {("delivered", "00", 1)}
        assert store.pending_count(conn) == 0
    assert asyncio.run(forwarder.run_once()) == 0  # nothing sent twice


def test_failures_back_off_and_stop_the_endpoint_round(engine):
    _queue(engine, 1)
    _queue(engine, 2)
    _queue(engine, 3, endpoint="bank-b")
    now = [WHEN]
    calls: list[tuple[str, str]] = []
    down = {"bank-a"}

    async def send(endpoint: str, fields: dict) -> dict:
        calls.append((endpoint, fields["11"]))
        if endpoint in down:
            raise ConnectionError("refused")
        return builders.response(fields, "25")  # any answer acknowledges (issuer: unknown original)

    forwarder = Forwarder(engine, send, clock=lambda: now[0])
    assert asyncio.run(forwarder.run_once()) == 1
    assert calls == [("bank-a", "000001"), ("bank-b", "000003")]  # bank-a's 2nd item waits its turn
    with write_transaction(engine) as conn:
        first = store.items(conn, endpoint="bank-a")[0]
        assert first.attempts == 1 and first.next_attempt_at == WHEN + timedelta(seconds=store.backoff_s(1))
        assert store.due(conn, now=WHEN) == [store.items(conn, endpoint="bank-a")[1]]
        assert store.items(conn, endpoint="bank-b")[0].response_code == "25"
    down.clear()
    now[0] = WHEN + timedelta(seconds=1)
    assert asyncio.run(forwarder.run_once()) == 2
    with write_transaction(engine) as conn:
        assert store.pending_count(conn) == 0


def test_wrong_answer_is_not_an_acknowledgement(engine):
    _queue(engine, 5)

    async def send(endpoint: str, fields: dict) -> dict:
        return {**builders.response(fields, "00"), "11": "000006"}  # another STAN's answer

    forwarder = Forwarder(engine, send, clock=lambda: WHEN)
    assert asyncio.run(forwarder.run_once()) == 0
    with write_transaction(engine) as conn:
        [item] = store.items(conn)
        assert item.status == "pending" and item.attempts == 1


def test_run_loop_delivers_after_wake_and_stops(engine):
    async def scenario() -> int:
        delivered = asyncio.Event()

        async def send(endpoint: str, fields: dict) -> dict:
            delivered.set()
            return builders.response(fields, "00")

        forwarder = Forwarder(engine, send)
        task = asyncio.create_task(forwarder.run())
        await asyncio.sleep(0.05)
        await asyncio.to_thread(_queue, engine, 9)
        forwarder.wake()
        await asyncio.wait_for(delivered.wait(), 5)
        await asyncio.sleep(0.1)
        forwarder.stop()
        await asyncio.wait_for(task, 5)
        return forwarder.delivered

    assert asyncio.run(scenario()) == 1
