"""Relay the platform's event log to NATS JetStream (issue 6 item 5; docs/platform-exchange.md "NATS").

Enabled when ``CITYCARD_NATS_URL`` is set (e.g. ``nats://127.0.0.1:4222``). The relay is an ordinary
exchange subscriber (default name ``nats-relay``, every kind) with its own cursor in the database:

1. read the events after its cursor (a read transaction: no lock is held during network I/O);
2. publish each to subject ``citycard.events.<kind>`` (e.g. ``citycard.events.card.lost``) in the
   stream ``CITYCARD_EVENTS`` (created when missing), with header ``Nats-Msg-Id: <seq>`` and wait for
   the stream's acknowledgement;
3. move its cursor to the last published seq (a write transaction).

Events about a cardholder are relayed as :func:`citycard.platform.exchange.consent_view` shows
them to the relay's sector: on the shared stream (sector ``platform``) redacted — no card or
cardholder id, payload ``{"redacted": "consent.missing"}`` — since every sector may read it; a
sector's own relay (``RelayConfig(sector=...)``, its own stream) carries them in full for the
cardholders who consented to that sector.

A crash between 2 and 3 republishes the same events on restart: delivery is at least once, and
JetStream drops the repeats inside its duplicate window because the Msg-Id is the same seq (the
window is set to DUPLICATE_WINDOW_S on a stream this relay creates). Consumers should still treat
``seq`` as the identity. The message body is the event as JSON (events.Event.as_dict).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from citycard.db import read_transaction, utc_now, write_transaction
from citycard.platform import events, exchange
from citycard.platform.errors import NotFound

NATS_URL_ENV = "CITYCARD_NATS_URL"
STREAM_DEFAULT = "CITYCARD_EVENTS"
SUBJECT_PREFIX_DEFAULT = "citycard.events"
RELAY_SUBSCRIBER_DEFAULT = "nats-relay"
RELAY_SECTOR = "platform"
RELAY_BATCH_MAX = events.READ_LIMIT_MAX  # events per read; each is acknowledged by the stream
POLL_INTERVAL_S = 0.5  # when the log had nothing new
PUBLISH_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
DUPLICATE_WINDOW_S = 24 * 3600.0  # a relay restarted within a day never duplicates an event
RETRY_DELAY_S_MAX = 30.0  # back-off cap after a NATS or database error
CONNECT_DEADLINE_S = 10.0  # one connection attempt (nats-py itself would retry forever)
STOP_TIMEOUT_S = 10.0
ERRORS_KEPT = 100  # the last errors in RelayStats.errors


@dataclass(frozen=True)
class RelayConfig:
    """Where and how to relay. Tests give their own stream and subject prefix."""

    url: str
    stream: str = STREAM_DEFAULT
    subject_prefix: str = SUBJECT_PREFIX_DEFAULT
    subscriber: str = RELAY_SUBSCRIBER_DEFAULT
    batch: int = RELAY_BATCH_MAX
    # Whose consents apply (exchange.consent_view). The shared stream's relay is the platform's:
    # no cardholder consents to "platform", so every event about a cardholder goes out redacted
    # (any sector may read that stream). A sector's own relay (its own stream and subject prefix,
    # sector="health") carries full events of the cardholders who consented to that sector.
    sector: str = RELAY_SECTOR
    poll_interval_s: float = POLL_INTERVAL_S

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= RELAY_BATCH_MAX:
            raise ValueError(f"relay batch must be 1 to {RELAY_BATCH_MAX}, got {self.batch}")


@dataclass
class RelayStats:
    """What a relay run did: events published, of which the stream reported duplicates, and errors."""

    published: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


def config_from_env(environ: Mapping[str, str] | None = None) -> RelayConfig | None:
    """The relay configuration when ``CITYCARD_NATS_URL`` is set, else None (relay disabled).

    >>> config_from_env({}) is None
    True
    >>> config_from_env({"CITYCARD_NATS_URL": "nats://127.0.0.1:4222"}).stream
    'CITYCARD_EVENTS'
    """
    url = (environ if environ is not None else os.environ).get(NATS_URL_ENV, "").strip()
    return RelayConfig(url=url) if url else None


def subject_for(kind: str, prefix: str = SUBJECT_PREFIX_DEFAULT) -> str:
    """The NATS subject of an event kind; a dotted kind gives subject tokens.

    >>> subject_for("card.lost")
    'citycard.events.card.lost'
    """
    return f"{prefix}.{kind}"


def message_body(event: events.Event) -> bytes:
    """The event as compact JSON with sorted keys (what consumers receive)."""
    return json.dumps(event.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def ensure_stream(js: JetStreamContext, config: RelayConfig) -> None:
    """Create the stream (file storage, subjects ``<prefix>.>``) unless it exists."""
    try:
        await js.stream_info(config.stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=config.stream,
                subjects=[f"{config.subject_prefix}.>"],
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )


def ensure_subscriber(engine: Engine, config: RelayConfig) -> dict[str, Any]:
    """The relay's subscriber row (created with cursor 0 — the whole history — when missing)."""
    with write_transaction(engine) as conn:
        try:
            return exchange.get(conn, config.subscriber)
        except NotFound:
            return exchange.subscribe(conn, name=config.subscriber, sector=config.sector, at=utc_now())


def _pending(engine: Engine, config: RelayConfig) -> list[events.Event]:
    """The next batch, each event as the relay's sector may see it (redacted without consent)."""
    with read_transaction(engine) as conn:
        return exchange.read_for(conn, config.subscriber, limit=config.batch)


def _ack(engine: Engine, config: RelayConfig, seq: int) -> int:
    with write_transaction(engine) as conn:
        return exchange.ack(conn, config.subscriber, seq)


async def publish_events(
    js: JetStreamContext, config: RelayConfig, batch: list[events.Event], stats: RelayStats
) -> None:
    """Publish ``batch`` in order, each acknowledged by the stream (Nats-Msg-Id = seq)."""
    for event in batch:
        ack = await js.publish(
            subject_for(event.kind, config.subject_prefix),
            message_body(event),
            timeout=PUBLISH_TIMEOUT_S,
            stream=config.stream,
            headers={"Nats-Msg-Id": str(event.seq)},
        )
        stats.published += 1
        stats.duplicates += bool(ack.duplicate)


async def relay_batch(engine: Engine, js: JetStreamContext, config: RelayConfig, stats: RelayStats) -> int:
    """One step: read after the cursor, publish, then move the cursor. Returns the events relayed."""
    batch = await asyncio.to_thread(_pending, engine, config)
    if not batch:
        return 0
    await publish_events(js, config, batch, stats)
    await asyncio.to_thread(_ack, engine, config, batch[-1].seq)
    return len(batch)


async def run_relay(engine: Engine, config: RelayConfig, *, stop: asyncio.Event) -> RelayStats:
    """Relay until ``stop`` is set: batches back to back while there is a backlog, a poll every
    ``poll_interval_s`` when idle, an exponential back-off (≤ RETRY_DELAY_S_MAX) after an error —
    NATS unreachable at start included (the cursor only moves after the stream acknowledged)."""
    stats = RelayStats()
    delay_s = config.poll_interval_s
    while not stop.is_set():
        try:
            nc = await _connect(config, stats, stop)
        except (nats.errors.Error, OSError) as exc:
            _note(stats, exc)
            delay_s = min(delay_s * 2, RETRY_DELAY_S_MAX)
            await _pause(stop, delay_s)
            continue
        if nc is None:  # stopped while connecting
            break
        try:
            await ensure_stream(js := nc.jetstream(), config)
            await asyncio.to_thread(ensure_subscriber, engine, config)
            delay_s = config.poll_interval_s
            while not stop.is_set():
                try:
                    relayed = await relay_batch(engine, js, config, stats)
                    delay_s = config.poll_interval_s
                except (nats.errors.Error, OSError, OperationalError) as exc:  # NATS or DB down: retry later
                    _note(stats, exc)
                    relayed, delay_s = 0, min(delay_s * 2, RETRY_DELAY_S_MAX)
                if not relayed:
                    await _pause(stop, delay_s)
        except (nats.errors.Error, OSError) as exc:  # the stream could not be set up: reconnect later
            _note(stats, exc)
            delay_s = min(delay_s * 2, RETRY_DELAY_S_MAX)
            await _pause(stop, delay_s)
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()
    return stats


async def _connect(config: RelayConfig, stats: RelayStats, stop: asyncio.Event) -> nats.NATS | None:
    """A connection, or None when ``stop`` is set first. nats-py retries an unreachable server by
    itself (reporting each failure to ``error_cb``), so the attempt is bounded by CONNECT_DEADLINE_S."""

    async def on_error(exc: Exception) -> None:
        _note(stats, exc)

    connecting = asyncio.ensure_future(
        nats.connect(
            config.url, connect_timeout=CONNECT_TIMEOUT_S, max_reconnect_attempts=-1, error_cb=on_error
        )
    )
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {connecting, stopping}, timeout=CONNECT_DEADLINE_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopping.cancel()
    if connecting in done:
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, nats.errors.Error, OSError):
        await connecting
    if stop.is_set():
        return None
    raise OSError(f"no NATS at {config.url} within {CONNECT_DEADLINE_S:.0f} s")


def _note(stats: RelayStats, problem: BaseException | str) -> None:
    text = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
    stats.errors.append(text)
    del stats.errors[:-ERRORS_KEPT]


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


@contextlib.asynccontextmanager
async def background_relay(
    engine: Engine, config: RelayConfig | None = None
) -> AsyncIterator[asyncio.Task[RelayStats] | None]:
    """The relay as a task for the lifetime of an application (e.g. a FastAPI lifespan):
    ``async with background_relay(engine): ...``. Without a config it reads ``CITYCARD_NATS_URL``
    and yields None (no relay) when that is unset. Stopped and awaited on exit."""
    config = config if config is not None else config_from_env()
    if config is None:
        yield None
        return
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(engine, config, stop=stop), name="citycard-nats-relay")
    try:
        yield task
    finally:
        stop.set()
        # On timeout wait_for cancels the task (a publish was hanging); the cursor is safe anyway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, timeout=STOP_TIMEOUT_S)
