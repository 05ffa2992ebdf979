"""Links from the switch to its endpoints: one pipelined :class:`AsyncHostClient` each, signed on.

A link connects lazily, signs on with the switch's institution code in F33 (so the endpoint's
server files the session keys under the switch as a forwarding institution and looks for its
ZMK as ``zmk:<F33>``, see :mod:`citycard.host.server`), and reconnects after a failure — but not
more often than every :data:`RECONNECT_S`, so a down endpoint costs a request nothing but a check.

The distinction the switch needs is *was the request possibly delivered?*:

* :class:`EndpointDownError` — no connection could be made, nothing was sent (stand-in or "91");
* :class:`LostInFlightError` — the request was sent and no usable answer came (timeout, the connection
  broke after sending, an answer whose MAC fails): the endpoint may have acted on it, so the switch
  must reverse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from citycard.host.client import AsyncHostClient, HostTimeout, HostUnavailable, next_stan
from citycard.host.switch.config import Endpoint
from citycard.iso8583 import Iso8583Error
from citycard.iso8583.builders import Terminal

log = logging.getLogger(__name__)

RECONNECT_S = 0.5  # after a failed connect, requests fail fast for this long
DEFAULT_TERMINAL_ID = "SWITCH01"  # F41/F42 of the switch's own network messages when not configured
DEFAULT_MERCHANT_ID = "SWITCH000000001"


class EndpointDownError(ConnectionError):
    """The endpoint cannot be reached: the request was not sent."""


class LostInFlightError(TimeoutError):
    """The request was sent but no answer came in time (or the connection broke afterwards)."""


class EndpointLink:
    """The switch's connection to one endpoint (issuer or remote switch)."""

    def __init__(self, endpoint: Endpoint, *, hsm: Any, institution_id: str) -> None:
        self.endpoint = endpoint
        self._hsm = hsm
        self._institution_id = institution_id
        self._client: AsyncHostClient | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self.connects = 0  # counters for logs and tests

    def _alive(self, client: AsyncHostClient) -> bool:
        # The client records the error that ended its connection; a dead client is replaced.
        return client.alive

    async def _connect(self) -> AsyncHostClient:
        endpoint = self.endpoint
        client = AsyncHostClient(
            endpoint.host, endpoint.port, timeout_s=endpoint.timeout_s, hsm=self._hsm, tmk_label=endpoint.zmk
        )
        await client.connect()
        if endpoint.zmk is not None:
            try:
                await self._sign_on(client)
            except (HostUnavailable, HostTimeout, Iso8583Error, ValueError) as exc:
                await client.close()
                raise HostUnavailable(f"sign-on to {endpoint.name} failed: {exc}") from None
        self.connects += 1
        log.info("link to %s (%s:%d) up", endpoint.name, endpoint.host, endpoint.port)
        return client

    async def _sign_on(self, client: AsyncHostClient) -> None:
        """0800 sign-on with F33 = our institution code (a forwarding institution's sign-on)."""
        endpoint = self.endpoint
        terminal = Terminal(
            terminal_id=endpoint.terminal_id or DEFAULT_TERMINAL_ID,
            merchant_id=endpoint.merchant_id or DEFAULT_MERCHANT_ID,
        )
        await client.sign_on(
            terminal_id=terminal.terminal_id,
            merchant_id=terminal.merchant_id,
            stan=next_stan(),
            institution_id=self._institution_id,
        )

    async def client(self) -> AsyncHostClient:
        """A live, signed-on client, or :class:`EndpointDownError`."""
        async with self._lock:
            if self._client is not None and self._alive(self._client):
                return self._client
            if self._client is not None:
                await self._drop()
            loop = asyncio.get_running_loop()
            if loop.time() < self._retry_at:
                raise EndpointDownError(f"{self.endpoint.name} is down (retrying shortly)")
            try:
                self._client = await self._connect()
            except HostUnavailable as exc:
                self._retry_at = loop.time() + RECONNECT_S
                raise EndpointDownError(f"{self.endpoint.name} is down: {exc}") from None
            return self._client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await client.close()

    async def exchange(self, fields: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Send ``fields`` (MACed by the client when signed on) and return the answer."""
        client = await self.client()
        try:
            return await client.exchange(fields, self.endpoint.timeout_s if timeout_s is None else timeout_s)
        except HostTimeout as exc:
            raise LostInFlightError(f"{self.endpoint.name}: {exc}") from None
        except HostUnavailable as exc:
            raise LostInFlightError(f"{self.endpoint.name}: connection lost: {exc}") from None
        except Iso8583Error as exc:  # an answer that fails its MAC or does not decode: not trusted
            raise LostInFlightError(f"{self.endpoint.name}: unusable answer: {exc}") from None

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
