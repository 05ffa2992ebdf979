"""The NATS JetStream relay against the real NATS server at nats://127.0.0.1:4222 (require_service).

Each test uses its own stream and subject prefix, so SQLite and PostgreSQL runs (whose event
sequence numbers both start at 1) never share a Msg-Id dedupe window.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket

import pytest
from tests.conftest import require_service

from citycard.db import read_transaction, write_transaction
from citycard.platform import events, exchange, nats_relay

NATS_URL = os.environ.get("CITYCARD_TEST_NATS_URL", "nats://127.0.0.1:4222")


def _reachable(url: str) -> bool:
    host, _, port = url.removeprefix("nats://").partition(":")
    try:
        with socket.create_connection((host, int(port or 4222)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def config():
    require_service(_reachable(NATS_URL), f"NATS at {NATS_URL} unreachable")
    tag = secrets.token_hex(4)
    cfg = nats_relay.RelayConfig(
        url=NATS_URL, stream=f"CITYCARD_TEST_{tag}", subject_prefix=f"citycardtest.{tag}.events", batch=3,
        poll_interval_s=0.05,
    )  # fmt: skip
    yield cfg
    asyncio.run(_delete_stream(cfg))


async def _delete_stream(cfg) -> None:
    import nats

    nc = await nats.connect(cfg.url)
    try:
        await nc.jetstream().delete_stream(cfg.stream)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


async def _stream_messages(cfg) -> list[tuple[str, dict, str]]:
    """Every message in the stream: (subject, body, Nats-Msg-Id)."""
    import nats

    nc = await nats.connect(cfg.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(cfg.stream)
        found = []
        for stream_seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(cfg.stream, stream_seq)
            found.append(
                (message.subject, json.loads(message.data), (message.headers or {}).get("Nats-Msg-Id"))
            )
        return found
    finally:
        await nc.close()


def emit(engine, kinds):
    with write_transaction(engine) as conn:
        return [events.emit(conn, kind, card_id=9, payload={"i": i}) for i, kind in enumerate(kinds)]


async def _relay_until_idle(engine, cfg) -> nats_relay.RelayStats:
    import nats

    stats = nats_relay.RelayStats()
    nc = await nats.connect(cfg.url)
    try:
        js = nc.jetstream()
        await nats_relay.ensure_stream(js, cfg)
        await asyncio.to_thread(nats_relay.ensure_subscriber, engine, cfg)
        while await nats_relay.relay_batch(engine, js, cfg, stats):
            pass
    finally:
        await nc.close()
    return stats


def test_every_event_reaches_the_stream_once_on_its_subject(engine, config):
    seqs = emit(engine, ["card.issued", "card.lost", "payment", "card.replaced", "visit"])
    stats = asyncio.run(_relay_until_idle(engine, config))
    assert (stats.published, stats.duplicates, stats.errors) == (5, 0, [])
    messages = asyncio.run(_stream_messages(config))
    prefix = config.subject_prefix
    assert [(s, b["seq"], b["kind"], m) for s, b, m in messages] == [
        (f"{prefix}.card.issued", seqs[0], "card.issued", str(seqs[0])),
        (f"{prefix}.card.lost", seqs[1], "card.lost", str(seqs[1])),
        (f"{prefix}.payment", seqs[2], "payment", str(seqs[2])),
        (f"{prefix}.card.replaced", seqs[3], "card.replaced", str(seqs[3])),
        (f"{prefix}.visit", seqs[4], "visit", str(seqs[4])),
    ]
    assert messages[1][1]["payload"] == {"i": 1} and messages[1][1]["card_id"] == 9
    with read_transaction(engine) as conn:
        assert exchange.get(conn, config.subscriber)["cursor"] == seqs[-1]
    # Nothing new: a further run publishes nothing.
    assert asyncio.run(_relay_until_idle(engine, config)).published == 0


def test_a_crash_between_publish_and_ack_does_not_duplicate(engine, config):
    """The relay published a batch and died before moving its cursor: the restart republishes the
    same seqs, JetStream drops them by Nats-Msg-Id, and the stream holds each event once."""
    import nats

    seqs = emit(engine, ["card.lost", "card.lost"])

    async def publish_then_crash() -> None:
        nc = await nats.connect(config.url)
        try:
            js = nc.jetstream()
            await nats_relay.ensure_stream(js, config)
            await asyncio.to_thread(nats_relay.ensure_subscriber, engine, config)
            with read_transaction(engine) as conn:
                batch = exchange.read_for(conn, config.subscriber)
            await nats_relay.publish_events(js, config, batch, nats_relay.RelayStats())
        finally:
            await nc.close()  # no ack: the cursor stays at 0

    asyncio.run(publish_then_crash())
    with read_transaction(engine) as conn:
        assert exchange.get(conn, config.subscriber)["cursor"] == 0
    stats = asyncio.run(_relay_until_idle(engine, config))
    assert (stats.published, stats.duplicates) == (2, 2)
    assert [b["seq"] for _, b, _ in asyncio.run(_stream_messages(config))] == seqs


def test_the_relay_loop_follows_new_events_until_stopped(engine, config):
    emit(engine, ["card.issued"])

    async def scenario() -> nats_relay.RelayStats:
        stop = asyncio.Event()
        task = asyncio.create_task(nats_relay.run_relay(engine, config, stop=stop))
        await asyncio.sleep(0.3)
        last = (await asyncio.to_thread(emit, engine, ["card.lost", "card.unblocked"]))[-1]
        for _ in range(100):  # at most 5 s
            with read_transaction(engine) as conn:
                if exchange.get(conn, config.subscriber)["cursor"] == last:
                    break
            await asyncio.sleep(0.05)
        stop.set()
        return await asyncio.wait_for(task, timeout=10)

    stats = asyncio.run(scenario())
    assert stats.published == 3 and stats.errors == []
    assert [b["kind"] for _, b, _ in asyncio.run(_stream_messages(config))] == [
        "card.issued",
        "card.lost",
        "card.unblocked",
    ]


def test_the_relay_is_enabled_by_the_environment():
    assert nats_relay.config_from_env({}) is None
    assert nats_relay.config_from_env({"CITYCARD_NATS_URL": "  "}) is None
    cfg = nats_relay.config_from_env({"CITYCARD_NATS_URL": "nats://10.0.0.5:4222"})
    assert (cfg.url, cfg.stream, cfg.subject_prefix, cfg.subscriber) == (
        "nats://10.0.0.5:4222", "CITYCARD_EVENTS", "citycard.events", "nats-relay",
    )  # fmt: skip
    with pytest.raises(ValueError, match="relay batch"):
        nats_relay.RelayConfig(url="nats://x", batch=0)


def test_background_relay_runs_for_the_life_of_an_application(engine, config):
    seqs = emit(engine, ["card.issued", "card.lost"])

    async def application() -> nats_relay.RelayStats:
        async with nats_relay.background_relay(engine, config) as task:
            assert task is not None
            for _ in range(100):  # the relay creates its subscriber row once connected
                with read_transaction(engine) as conn:
                    if [s["cursor"] for s in exchange.list_subscribers(conn)] == [seqs[-1]]:
                        break
                await asyncio.sleep(0.05)
        assert task.done()
        return task.result()

    assert asyncio.run(application()).published == 2


def test_without_the_environment_variable_there_is_no_relay(engine, monkeypatch):
    monkeypatch.delenv(nats_relay.NATS_URL_ENV, raising=False)

    async def application() -> object:
        async with nats_relay.background_relay(engine) as task:
            return task

    assert asyncio.run(application()) is None


def test_nats_unreachable_keeps_the_cursor_and_stops_promptly(engine):
    import time

    emit(engine, ["card.lost"])
    config = nats_relay.RelayConfig(url="nats://127.0.0.1:1", stream="CITYCARD_NOWHERE", poll_interval_s=0.05)

    async def scenario() -> nats_relay.RelayStats:
        stop = asyncio.Event()
        task = asyncio.create_task(nats_relay.run_relay(engine, config, stop=stop))
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        stop.set()
        stats = await asyncio.wait_for(task, timeout=5)
        assert time.perf_counter() - started < 2
        return stats

    stats = asyncio.run(scenario())
    assert stats.published == 0
    assert stats.errors and "Connect call failed" in stats.errors[0]
    with read_transaction(engine) as conn:  # never reached the database: no subscriber row either
        assert exchange.list_subscribers(conn) == []


def test_the_relay_applies_the_consent_filter_of_its_sector(engine, config):
    """The shared stream (the platform's relay) carries events about cardholders redacted; a
    sector's own relay carries them in full for the cardholders who consented to that sector."""
    import dataclasses

    from tests.platform.test_blacklist import add_card

    from citycard.platform import cardholders
    from citycard.platform.tables import cards as platform_cards

    with write_transaction(engine) as conn:
        ids = [add_card(conn, pan=f"623548200000{n:04d}", psn=1, serial=40 + n) for n in (1, 2)]
        holders = [
            conn.execute(platform_cards.select().where(platform_cards.c.id == i)).one().cardholder_id
            for i in ids
        ]
        cardholders.grant_consent(conn, holders[0], sector="health", scope="records", actor="desk:1")
        seqs = [
            events.emit(conn, "card.lost", card_id=i, cardholder_id=h, payload={"formal": True})
            for i, h in zip(ids, holders, strict=True)
        ]
    asyncio.run(_relay_until_idle(engine, config))
    shared = [body for _, body, _ in asyncio.run(_stream_messages(config)) if body["kind"] == "card.lost"]
    redacted = {"redacted": "consent.missing"}
    assert [(b["seq"], b["card_id"], b["cardholder_id"], b["payload"]) for b in shared] == [
        (seqs[0], None, None, redacted),
        (seqs[1], None, None, redacted),
    ]
    health = dataclasses.replace(
        config, sector="health", subscriber="nats-relay-health", stream=config.stream + "_HEALTH",
        subject_prefix=config.subject_prefix + "-health",
    )  # fmt: skip
    try:
        asyncio.run(_relay_until_idle(engine, health))
        own = [body for _, body, _ in asyncio.run(_stream_messages(health)) if body["kind"] == "card.lost"]
    finally:
        asyncio.run(_delete_stream(health))
    assert [(b["seq"], b["card_id"], b["payload"]) for b in own] == [
        (seqs[0], ids[0], {"formal": True}),
        (seqs[1], None, redacted),
    ]
