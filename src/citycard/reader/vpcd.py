"""Serve a card object to ``pcscd`` through the ``vpcd`` driver (vsmartcard), so any PC/SC program sees it.

pcscd's vpcd driver (Debian ``vsmartcard-vpcd``, ``/etc/reader.conf.d/vpcd``, ``CHANNELID 0x8C7B``)
listens on TCP 35963 for "Virtual PCD 00 00" and 35964 for "Virtual PCD 00 01"; the card side
connects to it as a client. Every message either way is a 2-byte big-endian length and a payload
(vsmartcard ``vpcd.c``; vectors-public.md §6). A 1-byte payload from pcscd is a control code:
``00`` power off, ``01`` power on, ``02`` reset (none answered), ``04`` get ATR (answered with the
ATR). Any other payload is a C-APDU, answered with ``card.process(apdu)``. pcscd polls with ``04``
about every 400 ms to see whether the card is still there; a closed connection is a removed card.

The card is duck-typed: ``process(bytes) -> bytes`` and ``atr``; ``power_on()``, ``power_off()``
and ``reset()`` are called when it has them. The bridge saves nothing: the card saves its own image.

Latency: pcscd's vpcd (Debian 0.8 driver) writes the 2-byte length and the payload with two
``send`` calls and leaves Nagle's algorithm on, so the payload waits until the length is ACKed; a
delayed ACK on our side makes that ~40 ms per APDU (measured 44 ms). TCP_QUICKACK makes the ACK
immediate (0.08 ms); Linux clears it again on its own, so it is set before every ``recv``.
TCP_NODELAY keeps our own answers from waiting the same way.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from citycard.reader.inprocess import card_atr, power
from citycard.reader.transport import TransportError

log = logging.getLogger(__name__)

VPCD_PORT = 35963  # "Virtual PCD 00 00"; slot n listens on VPCD_PORT + n
VPCD_HOST = "127.0.0.1"
CTRL_POWER_OFF, CTRL_POWER_ON, CTRL_RESET, CTRL_ATR = 0x00, 0x01, 0x02, 0x04
FRAME_LENGTH_BYTES = 2
FRAME_PAYLOAD_BYTES_MAX = 0xFFFF  # the 2-byte length
RECV_BYTES = FRAME_LENGTH_BYTES + FRAME_PAYLOAD_BYTES_MAX
CONNECT_TIMEOUT_S = 2.0  # one TCP connect to pcscd
FRAME_TIMEOUT_S = 5.0  # from the first byte of a frame to its last
BACKOFF_S_MIN = 0.05  # first wait after a refused or lost connection, doubled each time …
BACKOFF_S_MAX = 2.0  # … up to this
STOP_TIMEOUT_S = 5.0
SW_NO_PRECISE_DIAGNOSIS = bytes.fromhex("6F00")  # answered when the card object fails
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only

ApduLog = Callable[[bytes, bytes, float], None]  # (C-APDU, R-APDU, seconds in the card)


class BridgeError(TransportError):
    """The vpcd connection broke a framing rule (a frame cut short or too slow)."""


def frame(payload: bytes) -> bytes:
    """One vpcd message: 2-byte big-endian length ‖ payload.

    >>> frame(bytes([CTRL_ATR])).hex()
    '000104'
    """
    if len(payload) > FRAME_PAYLOAD_BYTES_MAX:
        raise ValueError(
            f"vpcd payload of {len(payload)} bytes: the 2-byte length allows {FRAME_PAYLOAD_BYTES_MAX}"
        )
    return len(payload).to_bytes(FRAME_LENGTH_BYTES, "big") + payload


def take_frame(buffer: bytearray) -> bytes | None:
    """Remove and return the first whole frame's payload from ``buffer``; None if it is not all there.

    >>> b = bytearray.fromhex("000104 0005 00A40400")
    >>> take_frame(b).hex(), take_frame(b), b.hex()
    ('04', None, '000500a40400')
    """
    if len(buffer) < FRAME_LENGTH_BYTES:
        return None
    end = FRAME_LENGTH_BYTES + int.from_bytes(buffer[:FRAME_LENGTH_BYTES], "big")
    if len(buffer) < end:
        return None
    payload = bytes(buffer[FRAME_LENGTH_BYTES:end])
    del buffer[:end]
    return payload


class VpcdBridge:
    """Serve ``card`` on pcscd's vpcd port: ``with VpcdBridge(card): ...`` runs it in a thread.

    ``serve_forever()`` runs it in the calling thread until :meth:`stop`. When pcscd is not there
    or goes away (restart), the bridge reconnects with exponential backoff (``BACKOFF_S_MIN`` to
    ``BACKOFF_S_MAX``), for ever or ``reconnects_max`` times. ``on_apdu(command, response, seconds)``
    sees every APDU (``citycard card serve --verbose``).
    """

    def __init__(
        self,
        card: Any,
        *,
        host: str = VPCD_HOST,
        port: int = VPCD_PORT,
        on_apdu: ApduLog | None = None,
        reconnects_max: int | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        frame_timeout_s: float = FRAME_TIMEOUT_S,
        backoff_s_min: float = BACKOFF_S_MIN,
        backoff_s_max: float = BACKOFF_S_MAX,
    ):
        if not callable(getattr(card, "process", None)):
            raise TypeError(f"{type(card).__name__} has no process(apdu) -> bytes method")
        card_atr(card)  # fail now, not at pcscd's first ATR request
        if not 0 < port < 65_536:
            raise ValueError(f"port must be 1 to 65535, got {port}")
        if reconnects_max is not None and reconnects_max < 0:
            raise ValueError(f"reconnects_max must be ≥ 0 or None (for ever), got {reconnects_max}")
        if not 0 < backoff_s_min <= backoff_s_max:
            raise ValueError(f"need 0 < backoff_s_min ≤ backoff_s_max, got {backoff_s_min}, {backoff_s_max}")
        if connect_timeout_s <= 0 or frame_timeout_s <= 0:
            raise ValueError("connect_timeout_s and frame_timeout_s must be > 0")
        self.card = card
        self.host, self.port = host, port
        self.on_apdu = on_apdu
        self.reconnects_max = reconnects_max
        self.connect_timeout_s, self.frame_timeout_s = connect_timeout_s, frame_timeout_s
        self.backoff_s_min, self.backoff_s_max = backoff_s_min, backoff_s_max
        self.apdus = 0  # APDUs answered since the bridge was made
        self.connections = 0  # TCP connections made to pcscd
        self.last_error: Exception | None = None
        self._stop = threading.Event()
        self._attached = threading.Event()  # pcscd has talked to us on the current connection
        self._sock: socket.socket | None = None
        self._sock_lock = threading.RLock()  # stop() may run in a signal handler on the serving thread
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"VpcdBridge({type(self.card).__name__} → {self.host}:{self.port})"

    # --- life cycle ------------------------------------------------------------------------------
    def start(self) -> Self:
        """Serve in a daemon thread; returns at once (see :meth:`wait_attached`)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self!r} is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"vpcd-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop serving: close the connection (pcscd sees the card removed) and join the thread."""
        self._stop.set()
        with self._sock_lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):  # already closed by the peer
                    self._sock.shutdown(socket.SHUT_RDWR)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                raise TimeoutError(f"{self!r} did not stop within {timeout_s} s")
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_attached(self, timeout_s: float) -> bool:
        """True once pcscd has sent a first frame on the current connection (it polls every ~400 ms).

        A bare TCP connect is not enough: vpcd accepts one client per slot, and a second client's
        connection waits in the listen backlog without ever hearing from pcscd.
        """
        return self._attached.wait(timeout_s)

    # --- serving ---------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Connect, serve, reconnect after a loss, until :meth:`stop`.

        Raises :class:`ConnectionError` after ``reconnects_max`` consecutive attempts that served
        nothing (refused, or closed before pcscd sent a frame).
        """
        failures = 0
        while not self._stop.is_set():
            sock = self._open()
            served = sock is not None and self._serve_connection(sock)
            if self._stop.is_set():
                break
            failures = 0 if served else failures + 1
            if self.reconnects_max is not None and failures > self.reconnects_max:
                raise ConnectionError(
                    f"no vpcd at {self.host}:{self.port} after {failures} attempts "
                    f"(is pcscd running with vsmartcard-vpcd?): {self.last_error}"
                )
            self._stop.wait(min(self.backoff_s_max, self.backoff_s_min * 2 ** max(0, failures - 1)))

    def _run(self) -> None:
        try:
            self.serve_forever()
        except ConnectionError as exc:
            self.last_error = exc
            log.error("%s gave up: %s", self, exc)

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            self.last_error = exc
            log.debug("vpcd %s:%d not reachable: %s", self.host, self.port, exc)
            return None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._sock_lock:
            if self._stop.is_set():
                sock.close()
                return None
            self._sock = sock
        self.connections += 1
        log.info("connected to vpcd at %s:%d", self.host, self.port)
        return sock

    def _serve_connection(self, sock: socket.socket) -> bool:
        """Answer frames until the peer closes or stop(); True when at least one frame was served."""
        buffer = bytearray()
        served = False
        try:
            while True:
                payload = self._read_frame(sock, buffer)
                if payload is None:
                    break
                if not served:
                    served = True
                    self._attached.set()
                answer = self._answer(payload)
                if answer is not None:
                    sock.sendall(frame(answer))
        except (OSError, BridgeError) as exc:
            if not self._stop.is_set():
                self.last_error = exc
                log.warning("vpcd connection %s:%d lost: %s", self.host, self.port, exc)
        finally:
            self._attached.clear()
            with self._sock_lock:
                self._sock = None
            sock.close()
            self._power("power_off")  # the card left the reader
            log.info("disconnected from vpcd at %s:%d", self.host, self.port)
        return served

    def _read_frame(self, sock: socket.socket, buffer: bytearray) -> bytes | None:
        """The next frame's payload; None when the peer closed between frames."""
        while (payload := take_frame(buffer)) is None:
            if buffer:  # inside a frame: the rest must come soon
                readable, _, _ = select.select([sock], [], [], self.frame_timeout_s)
                if not readable:
                    raise BridgeError(
                        f"vpcd frame incomplete after {self.frame_timeout_s:g} s "
                        f"({len(buffer)} bytes of {FRAME_LENGTH_BYTES + _declared(buffer)})"
                    )
            if _QUICKACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            chunk = sock.recv(RECV_BYTES)
            if not chunk:
                if buffer:
                    raise BridgeError(f"vpcd closed the connection inside a frame ({len(buffer)} bytes)")
                return None
            buffer += chunk
        return payload

    def _answer(self, payload: bytes) -> bytes | None:
        """What to send back for one frame from pcscd (None: nothing)."""
        if len(payload) != 1:
            return self._process(payload)
        code = payload[0]
        if code == CTRL_ATR:
            return card_atr(self.card)
        if code == CTRL_POWER_ON:
            self._power("power_on")
        elif code == CTRL_POWER_OFF:
            self._power("power_off")
        elif code == CTRL_RESET:
            self._power("reset" if hasattr(self.card, "reset") else "power_on")
        else:
            log.warning("unknown vpcd control code %02X ignored", code)
        return None

    def _power(self, action: str) -> None:
        log.debug("%s", action)
        try:
            power(self.card, action)
        except Exception:  # a card bug must not take pcscd's reader down
            log.exception("card.%s() raised", action)

    def _process(self, apdu: bytes) -> bytes:
        started = time.perf_counter()
        try:
            response = bytes(self.card.process(apdu))
        except Exception:  # a card bug must not take pcscd's reader down: 6F00 and the trace
            log.exception("card.process(%s) raised; answering 6F00", apdu.hex().upper())
            response = SW_NO_PRECISE_DIAGNOSIS
        if not 2 <= len(response) <= FRAME_PAYLOAD_BYTES_MAX:
            log.error("card answered %d bytes to %s; answering 6F00", len(response), apdu[:4].hex().upper())
            response = SW_NO_PRECISE_DIAGNOSIS
        self.apdus += 1
        if self.on_apdu is not None:
            self.on_apdu(apdu, response, time.perf_counter() - started)
        return response


def _declared(buffer: bytearray) -> int:
    return int.from_bytes(buffer[:FRAME_LENGTH_BYTES], "big") if len(buffer) >= FRAME_LENGTH_BYTES else 0
