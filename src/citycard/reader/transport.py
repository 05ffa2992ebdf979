"""What a terminal sees of a card: ``connect() -> ATR``, ``transmit(C-APDU) -> R-APDU``, ``disconnect()``.

Every transport handles the T=0 transport-layer status words the way a terminal's stack does
(ISO/IEC 7816-3 §10.3.3 / 7816-4 §5.1.3; EMV Book 1 §9.3.1.3 and Annex A), so the kernel above only
ever sees complete responses:

- ``61xx`` — ``xx`` more bytes wait: send GET RESPONSE ``00 C0 00 00 xx`` and append what comes
  back, again while the card keeps answering ``61xx``;
- ``6Cxx`` — wrong Le, the exact length is ``xx``: send the same command again with Le = ``xx``
  (once per command; a second ``6Cxx`` is returned as it is).

``t0=False`` turns this off, for tests of the card's own T=0 answers.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

APDU_BYTES_MIN = 4  # CLA INS P1 P2
APDU_BYTES_MAX = 65_535  # what one vpcd frame can carry; a short APDU is at most 261, the card checks
RESPONSE_BYTES_MAX = 65_538  # 65 536 bytes of data (extended Le 0000) + SW1 SW2
SW_BYTES = 2
EXCHANGES_PER_TRANSMIT_MAX = 258  # 1 command + 1 Le re-send + 256 GET RESPONSEs (a full 64 KiB at 255)
GET_RESPONSE_HEADER = bytes.fromhex("00C00000")

ApduTrace = Callable[[bytes, bytes, float], None]  # (C-APDU, R-APDU, seconds) for each exchange


class TransportError(Exception):
    """The path to the card failed (not a card status word: those come back as bytes)."""


class NotConnectedError(TransportError):
    """``transmit`` before ``connect`` or after ``disconnect``."""


class NoCardError(TransportError):
    """The reader is there but holds no card (or the card went away)."""


class ReaderNotFoundError(TransportError):
    """No reader matches the name asked for."""


class CardProtocolError(TransportError):
    """The card broke the transport rules: an R-APDU without SW1 SW2, an endless 61xx chain, …"""


@runtime_checkable
class Transport(Protocol):
    """A terminal's connection to one card. Use it as a context manager: ``with t: t.transmit(...)``.

    (:class:`BaseTransport` also offers ``atr`` once connected; it is not part of the protocol, so
    ``isinstance(t, Transport)`` works on a transport that is not connected yet.)
    """

    def connect(self) -> bytes:
        """Power the card up (or attach to it) and return its ATR."""
        ...

    def transmit(self, apdu: bytes) -> bytes:
        """Send one C-APDU, return the complete R-APDU (data ‖ SW1 SW2), 61xx/6Cxx already handled."""
        ...

    def disconnect(self) -> None:
        """Leave the card; a second call does nothing."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def check_apdu(apdu: bytes) -> bytes:
    """``apdu`` as bytes, or ValueError saying what is wrong with it (type, length)."""
    if not isinstance(apdu, bytes | bytearray | memoryview):
        raise TypeError(f"a C-APDU is bytes, got {type(apdu).__name__}")
    apdu = bytes(apdu)
    if len(apdu) < APDU_BYTES_MIN:
        raise ValueError(f"C-APDU of {len(apdu)} bytes: the header CLA INS P1 P2 alone is {APDU_BYTES_MIN}")
    if len(apdu) > APDU_BYTES_MAX:
        raise ValueError(f"C-APDU of {len(apdu)} bytes: at most {APDU_BYTES_MAX} fit one exchange")
    return apdu


def with_le(apdu: bytes, le: int) -> bytes | None:
    """The short C-APDU ``apdu`` with its Le set to ``le`` (for a 6Cxx re-send); None if not short.

    >>> with_le(bytes.fromhex("80CA9F7900"), 6).hex().upper()
    '80CA9F7906'
    >>> with_le(bytes.fromhex("00A4040002AABB"), 0x20).hex().upper()
    '00A4040002AABB20'
    """
    if not 0 <= le <= 0xFF:
        raise ValueError(f"a short Le is 0 to 255, got {le}")
    body = apdu[4:]
    if not body or (len(body) >= 2 and body[0] and len(body) == 1 + body[0]):  # case 1, case 3: add Le
        return apdu + bytes([le])
    if len(body) == 1 or (body[0] and len(body) == 2 + body[0]):  # case 2, case 4: replace Le
        return apdu[:-1] + bytes([le])
    return None  # extended or malformed: nothing a T=0 stack would re-send


class BaseTransport(ABC):
    """The T=0 response handling and the checks common to every transport.

    Subclasses implement :meth:`_connect`, :meth:`_exchange` (one raw C-APDU → R-APDU) and
    :meth:`_disconnect`. ``trace`` is called with every raw exchange, GET RESPONSEs included.
    """

    def __init__(self, *, t0: bool = True, trace: ApduTrace | None = None):
        self.t0 = t0
        self.trace = trace
        self._atr: bytes | None = None

    # --- the Transport protocol ------------------------------------------------------------------
    @property
    def atr(self) -> bytes:
        if self._atr is None:
            raise NotConnectedError(f"{self!r} is not connected: no ATR yet")
        return self._atr

    @property
    def connected(self) -> bool:
        return self._atr is not None

    def connect(self) -> bytes:
        if self._atr is None:
            atr = self._connect()
            if not atr:
                raise CardProtocolError("the card answered to reset with an empty ATR")
            self._atr = bytes(atr)
        return self._atr

    def transmit(self, apdu: bytes) -> bytes:
        command = check_apdu(apdu)
        if self._atr is None:
            raise NotConnectedError(f"transmit on {self!r} before connect()")
        data = bytearray()
        resent = False
        for _ in range(EXCHANGES_PER_TRANSMIT_MAX):
            response = self._traced_exchange(command)
            sw1, sw2 = response[-2], response[-1]
            if self.t0 and sw1 == 0x6C and not resent:
                again = with_le(command, sw2)
                if again is not None:
                    command, resent = again, True
                    continue
            if self.t0 and sw1 == 0x61:
                data += response[:-SW_BYTES]
                if len(data) + SW_BYTES > RESPONSE_BYTES_MAX:
                    raise CardProtocolError(
                        f"response chained with 61xx grew past {RESPONSE_BYTES_MAX} bytes ({len(data)})"
                    )
                command, resent = GET_RESPONSE_HEADER + bytes([sw2]), False
                continue
            return bytes(data) + response
        raise CardProtocolError(
            f"the card kept answering 61xx/6Cxx for {EXCHANGES_PER_TRANSMIT_MAX} exchanges "
            f"to {apdu[:4].hex().upper()}"
        )

    def disconnect(self) -> None:
        if self._atr is not None:
            self._atr = None
            self._disconnect()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.disconnect()

    # --- for subclasses --------------------------------------------------------------------------
    def _traced_exchange(self, command: bytes) -> bytes:
        started = time.perf_counter()
        response = self._exchange(command)
        if len(response) < SW_BYTES:
            raise CardProtocolError(
                f"R-APDU of {len(response)} bytes to {command[:4].hex().upper()}: SW1 SW2 alone are 2"
            )
        if len(response) > RESPONSE_BYTES_MAX:
            raise CardProtocolError(f"R-APDU of {len(response)} bytes: at most {RESPONSE_BYTES_MAX}")
        if self.trace is not None:
            self.trace(command, response, time.perf_counter() - started)
        return response

    @abstractmethod
    def _connect(self) -> bytes:
        """Power up / attach; return the ATR."""

    @abstractmethod
    def _exchange(self, apdu: bytes) -> bytes:
        """One raw C-APDU → R-APDU, no T=0 handling."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Release the card."""


def status_word(response: bytes) -> int:
    """SW1 SW2 of an R-APDU as an int.

    >>> hex(status_word(bytes.fromhex("6F109000")))
    '0x9000'
    """
    if len(response) < SW_BYTES:
        raise ValueError(f"an R-APDU is at least SW1 SW2 (2 bytes), got {len(response)}")
    return int.from_bytes(response[-2:], "big")
