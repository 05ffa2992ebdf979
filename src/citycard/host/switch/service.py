"""The running switch: a :class:`HostServer` in front of :class:`Switch`, its links and its forwarder.

The host server runs with ``batches_in_flight`` = :data:`BATCHES_IN_FLIGHT_MAX`: batches are handled
concurrently. The issuer's server hands one batch at a time
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

from citycard.host.server import BATCHES_IN_FLIGHT_MAX, HostServer
from citycard.host.switch.config import SwitchConfig
from citycard.host.switch.core import Switch
from citycard.host.switch.forwarder import Forwarder
from citycard.host.switch.links import EndpointLink

log = logging.getLogger(__name__)


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
        self.server = HostServer(
            self.switch,
            hsm=hsm,
            host=config.switch.host if host is None else host,
            port=config.switch.port if port is None else port,
            require_mac=config.switch.require_mac,
            institution_id=institution,
            # forwarding waits on the banks: a slow bank must not hold up the batch behind it
            batches_in_flight=BATCHES_IN_FLIGHT_MAX,
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
