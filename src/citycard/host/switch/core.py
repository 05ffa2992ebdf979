"""The switch's message handling: route, forward, relay — or stand in, and store what is owed.

:class:`Switch` is a :class:`citycard.host.server.Handler`. For each request from a terminal or an
acquirer (0100/0200/0220/0400; pboc-notes §10):

1. route by F2 with the BIN table (longest prefix, else the default route; none → "15",
   a malformed PAN → "14", no PAN → "30");
2. forward it to the endpoint with F33 (forwarding institution) = the switch's code, F32 kept,
   F64 dropped (each link MACs under its own session key);
3. relay the answer unchanged except F64 (the server MACs it for the acquirer's link) and F33,
   which is put back as the acquirer sent it (the answer echoes the request the acquirer made);
4. when the endpoint is down or late: see :mod:`citycard.host.switch.standin` — the answer, the
   stand-in record and the queued advice or reversal are written in ONE transaction before the
   acquirer gets the answer; 0220/0400 from acquirers that cannot be delivered now are queued and
   acknowledged by the switch itself ("00"), the forwarder delivers them later.

0500 settlement totals carry no PAN: the switch, as the terminal's acquirer host, asks every issuer
endpoint (and, for a terminal's own 0500, every remote switch) for its totals of the terminal's batch
(F41 + F42 + F60.2), adds them up and answers 00 when the sum equals the terminal's F63, 95 when
not (F63 = the sum), 91 when an endpoint gives no totals. A 0500 forwarded by a peer switch (F33
present) goes to local issuers only, so two switches never send it round in a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from citycard.db import write_transaction
from citycard.host.switch import codes, standin, store
from citycard.host.switch.config import SwitchConfig
from citycard.host.switch.links import EndpointDownError, LostInFlightError
from citycard.host.switch.routing import Destination, RoutingTable
from citycard.iso8583.builders import (
    classify,
    parse_amount,
    parse_settlement_totals,
    response,
    settlement_totals,
)
from citycard.iso8583.message import Iso8583Error

log = logging.getLogger(__name__)

DUPLICATE_TRANSMISSION = "94"  # the same F11+F41 is already in flight to the endpoint (ISO 8583)
INVALID_TRANSACTION = "12"
ROUTED_MTIS = frozenset({"0100", "0200", "0220", "0400"})
SETTLEMENT_MTI = "0500"
RECONCILE_ERROR = "95"  # ISO 8583 reconcile error: the totals differ (as the issuer answers)
TOTALS_KEYS = ("debit_count", "debit_fen", "credit_count", "credit_fen")
STORED_MTIS = frozenset({"0220", "0400"})


class Link(Protocol):
    async def exchange(self, fields: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]: ...


class Switch:
    """Routes requests to endpoint links; a :class:`citycard.host.server.Handler`."""

    def __init__(
        self,
        config: SwitchConfig,
        *,
        engine: Engine,
        links: Mapping[str, Link],
        on_stored: Callable[[], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        missing = {e.name for e in config.endpoints} - set(links)
        if missing:
            raise ValueError(f"no link for endpoint(s) {', '.join(sorted(missing))}")
        self.config = config
        self.routing = RoutingTable(config)
        self._engine = engine
        self._links = links
        self._on_stored = on_stored or (lambda: None)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.standins = 0  # counters for logs and tests
        self.stored = 0

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Every request of the batch concurrently (each waits for its own endpoint)."""
        return list(await asyncio.gather(*(self.handle(request) for request in requests)))

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = classify(request)  # the server only hands over requests that classify
        if kind.mti == SETTLEMENT_MTI:
            return await self._settle(request)
        if kind.mti not in ROUTED_MTIS:
            return response(request, INVALID_TRANSACTION)
        pan = request.get("2")
        if not isinstance(pan, str):
            return response(request, codes.FORMAT_ERROR)
        try:
            destination = self.routing.route(pan)
        except ValueError:
            return response(request, codes.INVALID_CARD_NUMBER)
        if destination is None:
            return response(request, codes.NO_SUCH_ISSUER)
        forward = {k: v for k, v in request.items() if k != "64"}
        forward["33"] = self.config.switch.institution_id
        try:
            answer = await self._links[destination.endpoint].exchange(forward)
        except EndpointDownError as exc:
            log.info("F11 %s: %s", request.get("11"), exc)
            return await self._outage(request, forward, kind.name, destination, "down")
        except LostInFlightError as exc:
            log.info("F11 %s: %s", request.get("11"), exc)
            return await self._outage(request, forward, kind.name, destination, "timeout")
        except ValueError as exc:  # the same F11+F41 is already in flight to the endpoint
            log.warning("F11 %s: %s", request.get("11"), exc)
            return response(request, DUPLICATE_TRANSMISSION)
        if answer.get("t") != f"{int(request['t']) + 10:04d}":
            # A late answer to an earlier message with the same F11+F41 (the original of this
            # reversal): not this request's answer, so this one counts as unanswered.
            log.info("F11 %s: got a %s instead of the answer", request.get("11"), answer.get("t"))
            return await self._outage(request, forward, kind.name, destination, "timeout")
        return self._relay(request, answer)

    async def _settle(self, request: dict[str, Any]) -> dict[str, Any]:
        """0500: the sum of every endpoint's totals of the terminal's batch against the terminal's F63."""
        try:
            theirs = parse_settlement_totals(request)
        except Iso8583Error:
            return response(request, codes.FORMAT_ERROR)
        from_switch = bool(request.get("33"))
        names = [e.name for e in self.config.endpoints if e.kind == "issuer" or not from_switch]
        forward = {k: v for k, v in request.items() if k != "64"}
        forward["33"] = self.config.switch.institution_id
        parts = await asyncio.gather(*(self._totals_of(name, forward) for name in names))
        if any(part is None for part in parts):
            return response(request, codes.ISSUER_UNAVAILABLE)
        ours = {key: sum(part[key] for part in parts if part is not None) for key in TOTALS_KEYS}
        rc = codes.APPROVED if ours == theirs else RECONCILE_ERROR
        try:
            return response(request, rc, f63=settlement_totals(**ours))
        except Iso8583Error:  # a sum past n3/n12: it cannot equal the terminal's totals either
            return response(request, RECONCILE_ERROR)

    async def _totals_of(self, endpoint: str, forward: dict[str, Any]) -> dict[str, int] | None:
        """One endpoint's totals from its 0510 (F39 00 or 95, F63), or None (down, late, refused)."""
        try:
            answer = await self._links[endpoint].exchange(dict(forward))
        except (EndpointDownError, LostInFlightError, ValueError) as exc:
            log.info("0500 F11 %s to %s: %s", forward.get("11"), endpoint, exc)
            return None
        if answer.get("t") != "0510" or answer.get("39") not in (codes.APPROVED, RECONCILE_ERROR):
            log.info("0500 F11 %s: %s answered %s F39 %s", forward.get("11"), endpoint, answer.get("t"),
                     answer.get("39"))  # fmt: skip
            return None
        try:
            return parse_settlement_totals(answer)
        except Iso8583Error:
            return None

    @staticmethod
    def _relay(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        relayed = {k: v for k, v in answer.items() if k not in ("64", "33")}
        if "33" in request:
            relayed["33"] = request["33"]
        return relayed

    async def _outage(
        self,
        request: dict[str, Any],
        forward: dict[str, Any],
        kind_name: str,
        destination: Destination,
        outage: standin.Outage,
    ) -> dict[str, Any]:
        endpoint = destination.endpoint
        now = self._clock()
        if request["t"] in STORED_MTIS:
            # An advice or reversal the endpoint did not take now: the switch takes responsibility
            # for delivering it and acknowledges it to the acquirer.
            key = store.message_key(kind_name, endpoint, forward)
            await self._tx(
                lambda conn: store.enqueue(conn, key=key, endpoint=endpoint, fields=forward, now=now)
            )
            self.stored += 1
            self._on_stored()
            return response(request, codes.APPROVED)
        decision = standin.decide(
            destination.standin,
            kind=kind_name,
            amount_fen=parse_amount(request),
            stan=request["11"],
            outage=outage,
        )

        def record(conn: Any) -> None:
            if decision.approved:
                advice = standin.advice_for(forward, decision)
                key = store.message_key("standin", endpoint, forward)  # apart from acquirer advices
                item_id = store.enqueue(conn, key=key, endpoint=endpoint, fields=advice, now=now)
                store.record_standin(
                    conn, key=key, endpoint=endpoint, pan=request["2"], amount_fen=parse_amount(request),
                    auth_code=decision.auth_code or "", outage=outage, saf_item_id=item_id, now=now,
                )  # fmt: skip
            elif outage == "timeout":
                reversal = standin.reversal_for(forward)
                key = store.message_key("reversal", endpoint, forward)
                store.enqueue(conn, key=key, endpoint=endpoint, fields=reversal, now=now)

        if decision.approved or outage == "timeout":
            await self._tx(record)
            self.stored += 1
            self._on_stored()
        if decision.approved:
            self.standins += 1
            return response(request, decision.response_code, f38=decision.auth_code)
        return response(request, decision.response_code)

    def _tx(self, fn: Callable[[Any], Any]) -> Any:
        def run() -> Any:
            with write_transaction(self._engine) as conn:
                return fn(conn)

        return asyncio.to_thread(run)
