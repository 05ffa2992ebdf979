"""The running switch: a :class:`HostServer` in front of :class:`Switch`, its links and its forwarder.

:class:`SwitchServer` is the host server with one change the switch needs: batches are handled
concurrently (up to :data:`BATCHES_IN_FLIGHT_MAX`). The issuer's server hands one batch at a time
to one database transaction; a switch that did so would make every terminal wait behind the
slowest issuer's timeout (head-of-line blocking). Framing, format errors, MAC and sign-on are the
host server's, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.engine import Engine

from citycard.host.server import RC_SYSTEM_MALFUNCTION, HostServer
from citycard.host.switch.config import SwitchConfig
from citycard.host.switch.core import Switch
from citycard.host.switch.forwarder import Forwarder
from citycard.host.switch.links import EndpointLink
from citycard.iso8583.builders import response

log = logging.getLogger(__name__)

BATCHES_IN_FLIGHT_MAX = 64


class SwitchServer(HostServer):
    """:class:`HostServer` whose dispatcher does not wait for one batch before starting the next."""

    async def _dispatch(self) -> None:
        assert self._queue is not None
        queue = self._queue
        slots = asyncio.Semaphore(BATCHES_IN_FLIGHT_MAX)
        running: set[asyncio.Task[None]] = set()
        while True:
            items = [await queue.get()]
            while len(items) < self.batch_max and not queue.empty():
                items.append(queue.get_nowait())
            await slots.acquire()
            self._in_batch += len(items)  # shutdown waits until this is back to 0
            task = asyncio.create_task(self._run_batch(items, slots))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _run_batch(self, items: list[Any], slots: asyncio.Semaphore) -> None:
        try:
            try:
                answers = await self.handler.handle_batch([item.fields for item in items])
                if len(answers) != len(items):
                    raise RuntimeError(f"handler gave {len(answers)} answers for {len(items)} requests")
            except Exception:
                log.exception("switch failed on a batch of %d", len(items))
                answers = [response(item.fields, RC_SYSTEM_MALFUNCTION) for item in items]
            for item, answer in zip(items, answers, strict=True):
                item.conn.outstanding -= 1
                if answer is not None:
                    self._send(item.conn, answer, mac=True)
            self.stats.batches += 1
        finally:
            self._in_batch -= len(items)
            slots.release()


class SwitchService:
    """Everything one switch runs: server, links, forwarder. ``start`` → ``serve_forever``/``shutdown``."""

    def __init__(
        self,
        config: SwitchConfig,
        *,
        engine: Engine,
        hsm: Any,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.hsm = hsm
        institution = config.switch.institution_id
        self.links = {e.name: EndpointLink(e, hsm=hsm, institution_id=institution) for e in config.endpoints}
        self.forwarder = Forwarder(engine, self._send_stored)
        self.switch = Switch(config, engine=engine, links=self.links, on_stored=self.forwarder.wake)
        self.server = SwitchServer(
            self.switch,
            hsm=hsm,
            host=config.switch.host if host is None else host,
            port=config.switch.port if port is None else port,
            require_mac=config.switch.require_mac,
            institution_id=institution,
        )
        self._forwarder_task: asyncio.Task[None] | None = None

    async def _send_stored(self, endpoint: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self.links[endpoint].exchange(fields)

    async def start(self) -> int:
        """Listen and start delivering the store-and-forward queue; returns the bound port."""
        port = await self.server.start()
        self._forwarder_task = asyncio.create_task(self.forwarder.run(), name="switch-forwarder")
        return port

    async def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT or :meth:`shutdown`, then stop the forwarder and the links."""
        try:
            await self.server.serve_forever()
        finally:
            await self._stop_background()

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Graceful: answer every request already read, then stop the forwarder and close the links."""
        await self.server.shutdown(grace_s)
        await self._stop_background()

    async def _stop_background(self) -> None:
        self.forwarder.stop()
        if self._forwarder_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._forwarder_task, timeout=15)
            self._forwarder_task = None
        for link in self.links.values():
            await link.close()
