"""The store-and-forward task: deliver queued advices and reversals until acknowledged.

One asyncio task per switch. Each round it reads the due items (oldest first), sends each through
an injected ``send(endpoint, fields) -> response fields`` coroutine (the switch passes its endpoint
links; tests may pass any real sender), and in one write transaction per item marks it delivered
(the answer is the expected 0230/0410 with the same STAN — whatever its F39, a retry would get the
same answer from an idempotent issuer) or failed with exponential backoff. After the first failure
for an endpoint the rest of its items wait for the next round, so a down endpoint is not hammered
and its items stay in order. Because the queue is in the database, a restarted switch simply
carries on where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from citycard.db import write_transaction
from citycard.host.switch import codes, store

log = logging.getLogger(__name__)

Send = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
IDLE_POLL_S = 1.0  # longest sleep between rounds when nothing wakes the forwarder


class UnexpectedAnswerError(Exception):
    """The endpoint answered a stored message with something that is not its acknowledgement."""


def check_ack(item: store.QueuedMessage, answer: dict[str, Any]) -> str:
    """The response code of ``answer`` if it acknowledges ``item``; raises :class:`UnexpectedAnswerError`."""
    expected = codes.ACK_MTI[item.mti]
    if answer.get("t") != expected or answer.get("11") != item.fields.get("11"):
        raise UnexpectedAnswerError(
            f"expected {expected} for STAN {item.fields.get('11')}, got {answer.get('t')} "
            f"for STAN {answer.get('11')}"
        )
    rc = answer.get("39")
    if not isinstance(rc, str) or len(rc) != 2:
        raise UnexpectedAnswerError(f"acknowledgement {expected} has no response code")
    return rc


class Forwarder:
    """Delivers the store-and-forward queue of ``engine`` with ``send``; :meth:`wake` after queueing."""

    def __init__(self, engine: Engine, send: Send, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._send = send
        self._clock = clock or (lambda: datetime.now(UTC))
        self._wakeup = asyncio.Event()
        self._stopping = False
        self.delivered = 0  # counters for logs and tests
        self.failures = 0

    def wake(self) -> None:
        self._wakeup.set()

    def _tx(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        def run() -> Any:
            with write_transaction(self._engine) as conn:
                return fn(conn, *args, **kwargs)

        return asyncio.to_thread(run)

    async def run_once(self) -> int:
        """One round over the due items; returns how many were delivered."""
        now = self._clock()
        due = await self._tx(lambda conn: store.due(conn, now=now))
        delivered = 0
        failed_endpoints: set[str] = set()
        for item in due:
            if item.endpoint in failed_endpoints or self._stopping:
                continue
            try:
                answer = await self._send(item.endpoint, dict(item.fields))
                rc = check_ack(item, answer)
            except (OSError, TimeoutError, ValueError, UnexpectedAnswerError) as exc:
                # OSError covers refused/closed connections (ConnectionError, HostUnavailable),
                # ValueError a malformed answer (Iso8583Error); the item simply waits its backoff.
                failed_endpoints.add(item.endpoint)
                self.failures += 1
                error = f"{type(exc).__name__}: {exc}"
                await self._tx(store.mark_failed, item.id, error=error, now=self._clock())
                log.info("store-and-forward %s to %s failed: %s", item.key, item.endpoint, error)
                continue
            await self._tx(store.mark_delivered, item.id, response_code=rc, now=self._clock())
            delivered += 1
            self.delivered += 1
            log.info("store-and-forward %s delivered to %s (F39 %s)", item.key, item.endpoint, rc)
        return delivered

    async def _sleep_s(self) -> float:
        next_at = await self._tx(store.next_due_at)
        if next_at is None:
            return IDLE_POLL_S
        return max(0.0, min(IDLE_POLL_S, (next_at - self._clock()).total_seconds()))

    async def run(self) -> None:
        """Deliver until :meth:`stop`; a database error is logged and retried, never fatal."""
        while not self._stopping:
            self._wakeup.clear()
            try:
                await self.run_once()
                sleep_s = await self._sleep_s()
            except Exception:
                log.exception("store-and-forward round failed; retrying")
                sleep_s = IDLE_POLL_S
            if sleep_s > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=sleep_s)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
