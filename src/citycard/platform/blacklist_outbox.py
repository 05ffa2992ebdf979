"""Blacklist publish on loss, without an operator (issue 6 item 4; docs/platform-exchange.md
"Automatic publishing").

The outbox is the platform's event log: a loss report (``card.lost``), an unblock, a replacement,
a cancellation, an issue or activation (the issuer's status changes with them) and a fraud flag
(``blacklist.flagged`` / ``blacklist.flag_cleared``) each commit their event in the same
transaction as the change. The **blacklist publisher** is an ordinary exchange subscriber
(:data:`PUBLISHER`, its cursor in ``platform_subscribers``) that drains those events:

1. in ONE write transaction: lock its subscriber row, read the change events after its cursor
   (at most :data:`DRAIN_EVENTS_MAX`), collect their cards' PANs;
2. :func:`citycard.platform.blacklist.publish_changes` — a new version of every class whose list
   changes for those PANs, computed from those PANs only (O(changes));
3. move its cursor to the last event read — in the same transaction, so a crash before the commit
   leaves nothing and the next drain does it all again; after the commit nothing is done twice.

:func:`background_publisher` runs the drain loop for the life of the API server (its lifespan),
polling every :data:`POLL_INTERVAL_S`; ``citycard blacklist drain`` runs one drain (cron, tests).
A loss report reaches the next delta about half a second later on average.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from citycard.db import read_transaction, utc_now, write_transaction
from citycard.kernel.params.exception_file import ExceptionFileError
from citycard.platform import blacklist, events, exchange
from citycard.platform.errors import NotFound, PlatformError
from citycard.platform.exchange_tables import blacklist_flags
from citycard.platform.tables import cards as platform_cards

log = logging.getLogger("citycard.platform.blacklist_outbox")

PUBLISHER = "blacklist-publisher"
PUBLISHER_SECTOR = "platform"
# Events after which a card's list membership may differ. The issuer's own status follows the
# platform's lifecycle (issue: enrolled "blocked" until activated), so those count too.
CHANGE_KINDS = frozenset(
    {
        "card.issued",
        "card.activated",
        "card.lost",
        "card.unblocked",
        "card.replaced",
        "card.cancelled",
        "blacklist.flagged",
        "blacklist.flag_cleared",
    }
)
DRAIN_EVENTS_MAX = 1_000  # events per drain transaction (= events.READ_LIMIT_MAX)
POLL_INTERVAL_S = 0.5
RETRY_DELAY_S_MAX = 30.0
STOP_TIMEOUT_S = 30.0
ERRORS_KEPT = 100
AUTO_PUBLISH_ENV = "CITYCARD_BLACKLIST_AUTO_PUBLISH"  # "0" turns the server's publisher off

assert events.READ_LIMIT_MAX >= DRAIN_EVENTS_MAX


@dataclass(frozen=True)
class Drained:
    """One drain: events consumed, the publisher's cursor after it, class → version (empty when
    there was nothing to drain)."""

    events: int
    cursor: int
    versions: dict[str, int]


def ensure_publisher(conn: Connection, *, at: datetime) -> dict[str, Any]:
    """The publisher's subscriber row, created on first use with cursor 0 (every change since the
    log began: harmless, each PAN is compared with the list as it is)."""
    try:
        return exchange.get(conn, PUBLISHER)
    except NotFound:
        return exchange.subscribe(
            conn, name=PUBLISHER, sector=PUBLISHER_SECTOR, kinds=sorted(CHANGE_KINDS), at=at
        )


def pending(conn: Connection) -> int:
    """Change events not drained yet (0 before the publisher's first run means none exist)."""
    try:
        row = exchange.get(conn, PUBLISHER)
    except NotFound:
        return len(events.read(conn, after=0, limit=DRAIN_EVENTS_MAX, kinds=CHANGE_KINDS))
    e = events.tables.events.c
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(events.tables.events)
            .where(e.seq > row["cursor"], e.kind.in_(sorted(CHANGE_KINDS)))
        ).scalar_one()
    )


def changed_pans(conn: Connection, found: list[events.Event]) -> set[str]:
    """The PANs behind change events: their cards' (a replacement's new card emits its own
    ``card.issued``/``card.activated``), and flags' (the event carries the flag id, not the PAN)."""
    card_ids = {event.card_id for event in found if event.card_id is not None}
    flag_ids = {
        int(event.payload["flag_id"])
        for event in found
        if event.kind.startswith("blacklist.") and isinstance(event.payload.get("flag_id"), int)
    }
    pans: set[str] = set()
    ids = sorted(card_ids)
    for start in range(0, len(ids), blacklist.PAN_QUERY_CHUNK):
        chunk = ids[start : start + blacklist.PAN_QUERY_CHUNK]
        rows = conn.execute(
            sa.select(platform_cards.c.pan).where(
                platform_cards.c.id.in_(chunk), platform_cards.c.pan.is_not(None)
            )
        )
        pans.update(row.pan for row in rows)
    flags = sorted(flag_ids)
    for start in range(0, len(flags), blacklist.PAN_QUERY_CHUNK):
        chunk = flags[start : start + blacklist.PAN_QUERY_CHUNK]
        pans.update(
            row.pan
            for row in conn.execute(sa.select(blacklist_flags.c.pan).where(blacklist_flags.c.id.in_(chunk)))
        )
    return pans


def drain(conn: Connection, *, at: datetime | None = None, limit: int = DRAIN_EVENTS_MAX) -> Drained:
    """One drain in the caller's (write) transaction: the change events after the publisher's
    cursor → :func:`blacklist.publish_changes` → the cursor moves. Idempotent: a second drain finds
    nothing; two drains at once are serialised on the publisher's row."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= DRAIN_EVENTS_MAX:
        raise ValueError(f"drain limit must be 1 to {DRAIN_EVENTS_MAX}, got {limit!r}")
    at = at or utc_now()
    ensure_publisher(conn, at=at)
    cursor = exchange.lock_cursor(conn, PUBLISHER)  # serialises drainers (PostgreSQL row lock)
    found = events.read(conn, after=cursor, limit=limit, kinds=CHANGE_KINDS)
    if not found:
        return Drained(events=0, cursor=cursor, versions={})
    versions = blacklist.publish_changes(conn, pans=changed_pans(conn, found), actor=PUBLISHER, at=at)
    cursor = exchange.ack(conn, PUBLISHER, found[-1].seq, at=at)
    return Drained(events=len(found), cursor=cursor, versions=versions)


def drain_all(engine: Engine, *, rounds_max: int = 1_000) -> list[Drained]:
    """Drain until nothing is left (each round its own transaction); the rounds that did work."""
    done = []
    for _ in range(rounds_max):
        with write_transaction(engine) as conn:
            result = drain(conn)
        if result.events == 0:
            break
        done.append(result)
    return done


def warm(engine: Engine) -> int:
    """Build each class's latest list into memory (once after a start, off the request path), so the
    first incremental publish does not wait for it. Returns the entries loaded."""
    loaded = 0
    with read_transaction(engine) as conn:
        for name in blacklist.TERMINAL_CLASSES:
            loaded += len(blacklist.full_list(conn, terminal_class=name))
    return loaded


def auto_publish_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """The server publishes on its own unless ``CITYCARD_BLACKLIST_AUTO_PUBLISH=0``."""
    value = (os.environ if environ is None else environ).get(AUTO_PUBLISH_ENV, "1").strip()
    return value not in ("0", "false", "no", "off")


@dataclass
class PublisherStats:
    """What a publisher run did."""

    drains: int = 0
    events: int = 0
    errors: list[str] = field(default_factory=list)


async def run_publisher(
    engine: Engine,
    *,
    stop: asyncio.Event,
    poll_interval_s: float = POLL_INTERVAL_S,
    warm_first: bool = True,
    stats: PublisherStats | None = None,
) -> PublisherStats:
    """Drain the outbox until ``stop`` is set; database or platform errors are logged and retried
    with a back-off (the cursor stays, so nothing is lost). ``stats`` is updated as it goes."""
    stats = stats if stats is not None else PublisherStats()
    delay = poll_interval_s
    if warm_first:
        try:
            await asyncio.to_thread(warm, engine)
        except (SQLAlchemyError, PlatformError, ExceptionFileError) as exc:
            log.warning("blacklist publisher: warm-up failed: %s", exc)
    while not stop.is_set():
        try:
            result = await asyncio.to_thread(_drain_once, engine)
        except (SQLAlchemyError, PlatformError, ExceptionFileError) as exc:
            message = f"{type(exc).__name__}: {exc}"
            log.warning("blacklist publisher: %s (retry in %.1f s)", message, delay)
            stats.errors = [*stats.errors[-(ERRORS_KEPT - 1) :], message]
            delay = min(max(delay * 2, poll_interval_s), RETRY_DELAY_S_MAX)
        else:
            delay = poll_interval_s
            if result.events:
                stats.drains += 1
                stats.events += result.events
                if result.events == DRAIN_EVENTS_MAX:
                    continue  # more waiting: no pause
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
    return stats


def _drain_once(engine: Engine) -> Drained:
    with read_transaction(engine) as conn:  # the common case: nothing new, no write lock taken
        if pending(conn) == 0:
            return Drained(events=0, cursor=0, versions={})
    with write_transaction(engine) as conn:
        return drain(conn)


@dataclass
class Publisher:
    """A running background publisher: its stats (live) and the task."""

    stats: PublisherStats
    task: asyncio.Task[PublisherStats]


@contextlib.asynccontextmanager
async def background_publisher(
    engine: Engine, *, enabled: bool | None = None, poll_interval_s: float = POLL_INTERVAL_S
) -> AsyncIterator[Publisher | None]:
    """Run the publisher as a task for the life of an application (an ASGI lifespan). Yields None
    and runs nothing when disabled (``CITYCARD_BLACKLIST_AUTO_PUBLISH=0``)."""
    if not (auto_publish_enabled() if enabled is None else enabled):
        yield None
        return
    stop = asyncio.Event()
    stats = PublisherStats()

    task = asyncio.create_task(
        run_publisher(engine, stop=stop, poll_interval_s=poll_interval_s, stats=stats),
        name="citycard-blacklist-publisher",
    )
    try:
        yield Publisher(stats=stats, task=task)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=STOP_TIMEOUT_S)
        except TimeoutError:
            task.cancel()
            log.warning("blacklist publisher did not stop within %.0f s; cancelled", STOP_TIMEOUT_S)
