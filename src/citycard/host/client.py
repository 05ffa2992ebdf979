"""ISO 8583 clients of a :class:`citycard.host.server.HostServer`: sync for terminals, asyncio for switches.

Both speak 2-byte-length frames (pboc-notes §10), sign on with 0800 / F60.3 003 and install the
PIK and MAK of the F62 reply in the terminal's HSM (deciphered under its TMK there; layout in
:mod:`citycard.hsm.keyexchange`), MAC every 01xx/02xx/04xx/05xx request under the MAK and verify
the MAC of every answer that carries one. Answers are matched to requests on F11 + F41; the
caller sets F11 (the STAN is the terminal's, it also keys reversals).

The client's copies of session keys are kept under the HSM labels ``mak:to/<host>:<port>/<peer>``
and ``pik:…``, so a test that gives the server and the client one HSM keeps both sides apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from datetime import UTC, datetime
from itertools import count
from typing import Any

from citycard.host.server import MAC_BYTES, MAC_CLASSES, RC_APPROVED, master_key_label, peer_of
from citycard.hsm.keyexchange import session_label
from citycard.iso8583 import FramingError, Iso8583Error, frame, recv_message
from citycard.iso8583.builders import Terminal, network
from citycard.iso8583.fast import decode_fields, encode

TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
_stans = count(1)


class HostUnavailable(ConnectionError):  # noqa: N818 — the name the brief gives the API
    """The host cannot be reached or closed the connection."""


class HostTimeout(TimeoutError):  # noqa: N818 — the name the brief gives the API
    """No answer with the request's F11 + F41 within the timeout."""


class SignOnError(ConnectionError):
    """The host answered the sign-on with a code other than 00."""


def _match_key(fields: dict[str, Any]) -> tuple[str, str]:
    return str(fields.get("11", "")), str(fields.get("41", ""))


class _Keys:
    """The terminal-side MAC/PIN key handling shared by both clients."""

    def __init__(self, host: str, port: int, hsm: Any, tmk_label: str | None) -> None:
        self.hsm = hsm
        self.tmk_label = tmk_label
        self.prefix = f"to/{host}:{port}/"
        self.signed_on: set[str] = set()

    def sign_on_request(
        self,
        terminal_id: str,
        merchant_id: str,
        stan: int | None,
        institution_id: str | None = None,
        kind: str = "sign_on",
    ) -> dict[str, Any]:
        if self.hsm is None:
            raise ValueError("sign-on needs an HSM holding the terminal master key")
        terminal = Terminal(terminal_id=terminal_id, merchant_id=merchant_id)
        request = network(kind, terminal=terminal, stan=stan or next_stan(), when=datetime.now(UTC))
        if institution_id is not None:  # a switch signs on as forwarding institution: keys under its ZMK
            request["33"] = institution_id
        return request

    def install(self, request: dict[str, Any], answer: dict[str, Any]) -> None:
        if answer.get("39") != RC_APPROVED:
            what = "key exchange" if request.get("60", "")[8:11] == "101" else "sign-on"
            raise SignOnError(f"{what} answered {answer.get('39')!r}")
        if "62" not in answer:
            raise Iso8583Error("sign-on answer carries no keys", field="62")
        peer = peer_of(request)
        master = self.tmk_label or master_key_label(request)
        assert peer is not None and master is not None
        self.hsm.install_session_keys(master, peer=self.prefix + peer, f62=answer["62"])
        self.signed_on.add(peer)

    def mak_label(self, fields: dict[str, Any]) -> str | None:
        peer = peer_of(fields)
        if peer is None or peer not in self.signed_on or fields.get("t", "0000")[1] not in MAC_CLASSES:
            return None
        return session_label("MAK", self.prefix + peer)

    def to_wire(self, fields: dict[str, Any]) -> bytes:
        label = self.mak_label(fields)
        if label is None:
            return encode({k: v for k, v in fields.items() if k != "64"})
        body = encode({**fields, "64": bytes(MAC_BYTES)})[:-MAC_BYTES]
        return body + self.hsm.session_mac(label, body)

    def from_wire(self, raw: bytes) -> dict[str, Any]:
        fields = decode_fields(raw)
        label = self.mak_label(fields)
        if label is not None and "64" in fields:
            if not self.hsm.verify_session_mac(label, raw[:-MAC_BYTES], fields["64"]):
                raise Iso8583Error("answer MAC does not verify under the session MAK", field="64")
        elif label is not None and fields.get("39") == RC_APPROVED:
            raise Iso8583Error("approved answer without a MAC from a signed-on host", field="64")
        return fields

    def pin_block(self, *, terminal_id: str, pin: str, pan: str) -> bytes:
        if terminal_id not in self.signed_on:
            raise ValueError(f"terminal {terminal_id} has not signed on: no PIN key")
        return self.hsm.encipher_pin_block(session_label("PIK", self.prefix + terminal_id), pin=pin, pan=pan)


def next_stan() -> int:
    """A process-wide STAN 1..999999 for network messages (financial STANs are the terminal's)."""
    return next(_stans) % 999_999 + 1


class HostClient:
    """Blocking client on one TCP connection (a terminal's link to its acquirer host)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = TIMEOUT_S,
        hsm: Any = None,
        tmk_label: str | None = None,
    ) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._keys = _Keys(host, port, hsm, tmk_label)
        try:
            self._sock = socket.create_connection((host, port), timeout=min(timeout_s, CONNECT_TIMEOUT_S))
        except OSError as exc:
            raise HostUnavailable(f"cannot connect to {host}:{port}: {exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> HostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def sign_on(
        self,
        *,
        terminal_id: str,
        merchant_id: str,
        stan: int | None = None,
        institution_id: str | None = None,
    ) -> None:
        """0800 sign-on; installs the PIK and MAK of the answer's F62 in the HSM.

        With ``institution_id`` the request carries F33: the peer is that institution (a switch),
        its master key ``zmk:<F33>``, and every request with that F33 is MACed under its MAK.
        """
        request = self._keys.sign_on_request(terminal_id, merchant_id, stan, institution_id)
        self._keys.install(request, self.exchange(request))

    def key_exchange(self, *, terminal_id: str, merchant_id: str, institution_id: str | None = None) -> None:
        """0800 key exchange on demand (F60.3 101): new PIK and MAK, installed like a sign-on's."""
        request = self._keys.sign_on_request(
            terminal_id, merchant_id, None, institution_id, kind="key_exchange"
        )
        self._keys.install(request, self.exchange(request))

    def pin_block(self, *, terminal_id: str, pin: str, pan: str) -> bytes:
        """F52 for ``pin`` under the session PIK (enciphered in the HSM; ISO 9564 format 0)."""
        return self._keys.pin_block(terminal_id=terminal_id, pin=pin, pan=pan)

    pin_block_key = pin_block

    def exchange(self, fields: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """Send one request (MACed when signed on) and return its answer (MAC verified).

        Answers to other STANs (late answers to requests that timed out) are skipped.
        """
        raw = self._keys.to_wire(fields)
        try:
            self._sock.sendall(frame(raw))
        except OSError as exc:
            raise HostUnavailable(f"send to {self.host}:{self.port} failed: {exc}") from None
        wanted = _match_key(fields)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostTimeout(f"no answer to F11 {wanted[0]} within the timeout")
            try:
                answer_raw = recv_message(self._sock, remaining)
            except TimeoutError:
                raise HostTimeout(f"no answer to F11 {wanted[0]} within the timeout") from None
            except (ConnectionError, FramingError, OSError) as exc:
                raise HostUnavailable(f"{self.host}:{self.port}: {exc}") from None
            answer = self._keys.from_wire(answer_raw)
            if _match_key(answer) == wanted:
                return answer


class AsyncHostClient:
    """asyncio client on one connection with many requests outstanding (switches, benchmarks)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = TIMEOUT_S,
        hsm: Any = None,
        tmk_label: str | None = None,
    ) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._keys = _Keys(host, port, hsm, tmk_label)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._error: BaseException | None = None

    async def connect(self) -> None:
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout=CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise HostUnavailable(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def __aenter__(self) -> AsyncHostClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._fail_all(HostUnavailable("client closed"))

    def _fail_all(self, error: BaseException) -> None:
        self._error = error
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        from citycard.iso8583 import Deframer

        deframer = Deframer()
        try:
            while True:
                data = await reader.read(65_536)
                if not data:
                    raise HostUnavailable(f"{self.host}:{self.port} closed the connection")
                for raw in deframer.feed(data):
                    try:
                        answer = self._keys.from_wire(raw)
                    except Iso8583Error as exc:
                        answer = {"error": exc}
                        key = _answer_key_of_bad(raw)
                    else:
                        key = _match_key(answer)
                    future = self._waiting.pop(key, None) if key else None
                    if future is not None and not future.done():
                        if "error" in answer:
                            future.set_exception(answer["error"])
                        else:
                            future.set_result(answer)
        except (HostUnavailable, FramingError, OSError, ConnectionError) as exc:
            error = exc if isinstance(exc, HostUnavailable) else HostUnavailable(str(exc))
            self._fail_all(error)

    def mac_message(self, fields: dict[str, Any]) -> bytes:
        """The wire bytes of ``fields`` with F64 under the session MAK (precompute for benchmarks)."""
        return self._keys.to_wire(fields)

    @property
    def alive(self) -> bool:
        """Connected and no connection error seen."""
        return self._writer is not None and self._error is None

    async def sign_on(
        self,
        *,
        terminal_id: str,
        merchant_id: str,
        stan: int | None = None,
        institution_id: str | None = None,
    ) -> None:
        """0800 sign-on (see :meth:`HostClient.sign_on`; ``institution_id`` = F33 for a switch)."""
        request = self._keys.sign_on_request(terminal_id, merchant_id, stan, institution_id)
        self._keys.install(request, await self.exchange(request))

    async def key_exchange(
        self, *, terminal_id: str, merchant_id: str, institution_id: str | None = None
    ) -> None:
        """0800 key exchange on demand (F60.3 101)."""
        request = self._keys.sign_on_request(
            terminal_id, merchant_id, None, institution_id, kind="key_exchange"
        )
        self._keys.install(request, await self.exchange(request))

    async def exchange(self, fields: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Send one request and await its answer (matched on F11 + F41, MAC verified)."""
        return await self.exchange_raw(self._keys.to_wire(fields), _match_key(fields), timeout_s)

    async def exchange_raw(
        self, raw: bytes, key: tuple[str, str], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send already-encoded (and MACed) bytes whose F11 + F41 are ``key``; await the answer."""
        if self._writer is None or self._error is not None:
            raise self._error or HostUnavailable("not connected")
        if key in self._waiting:
            raise ValueError(f"a request with F11 {key[0]} F41 {key[1]} is already outstanding")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        try:
            self._writer.write(frame(raw))
            await self._writer.drain()
        except (OSError, ConnectionError) as exc:
            self._waiting.pop(key, None)
            raise HostUnavailable(f"send to {self.host}:{self.port} failed: {exc}") from None
        try:
            return await asyncio.wait_for(future, self.timeout_s if timeout_s is None else timeout_s)
        except TimeoutError:
            self._waiting.pop(key, None)
            raise HostTimeout(f"no answer to F11 {key[0]} within the timeout") from None


def _answer_key_of_bad(raw: bytes) -> tuple[str, str] | None:
    """F11 + F41 of an answer whose MAC failed (so its waiter gets the error, not a timeout)."""
    try:
        fields = decode_fields(raw)
    except Iso8583Error:
        return None
    return _match_key(fields)
