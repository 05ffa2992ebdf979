"""The PC/SC transport: any card in any reader that ``pcscd`` knows, through pyscard.

A real card in a real reader, or a virtual card that :class:`~citycard.reader.vpcd.VpcdBridge`
serves to pcscd's ``vpcd`` driver (readers "Virtual PCD 00 00" and "Virtual PCD 00 01"). pyscard is
the ``pcsc`` extra (``pip install 'citycard[pcsc]'``); it is imported on first use, so the rest of
citycard works without it. This uses pyscard's thin ``smartcard.scard`` layer (one C call per
APDU), not its observer-based ``CardConnection`` classes.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any, Literal

from citycard.reader.transport import (
    ApduTrace,
    BaseTransport,
    NoCardError,
    ReaderNotFoundError,
    TransportError,
)

CARD_WAIT_S_DEFAULT = 5.0  # how long connect() waits for a card to appear in the reader
CARD_WAIT_S_MAX = 600.0
STATUS_POLL_MS = 250  # one SCardGetStatusChange call waits at most this long
Protocol = Literal["any", "T0", "T1"]


class PcscUnavailableError(TransportError):
    """pyscard is not installed, or pcscd is not running."""


class PcscError(TransportError):
    """A PC/SC call failed; ``code`` is the SCARD_* result."""

    def __init__(self, call: str, code: int, message: str):
        super().__init__(f"{call} failed: {message} (0x{code & 0xFFFFFFFF:08X})")
        self.call = call
        self.code = code


def _pyscard() -> ModuleType:
    try:
        from smartcard import scard
    except ImportError as exc:
        raise PcscUnavailableError(
            "PC/SC needs pyscard: install citycard[pcsc] (pip install 'citycard[pcsc]'; "
            "it builds with swig, libpcsclite-dev and a C compiler)"
        ) from exc
    return scard


def _check(scard: ModuleType, call: str, code: int) -> None:
    if code == scard.SCARD_S_SUCCESS:
        return
    message = scard.SCardGetErrorMessage(code)
    if code == scard.SCARD_E_NO_SERVICE:
        raise PcscUnavailableError(f"{call}: pcscd is not running ({message}); start it with `pcscd` as root")
    if code in (scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_REMOVED_CARD, scard.SCARD_W_UNPOWERED_CARD):
        raise NoCardError(f"{call}: {message}")
    if code in (scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE):
        raise ReaderNotFoundError(f"{call}: {message}")
    raise PcscError(call, code, message)


def _context(scard: ModuleType) -> Any:
    code, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    _check(scard, "SCardEstablishContext", code)
    return context


def _readers(scard: ModuleType, context: Any) -> list[str]:
    code, readers = scard.SCardListReaders(context, [])
    if code == scard.SCARD_E_NO_READERS_AVAILABLE:
        return []
    _check(scard, "SCardListReaders", code)
    return list(readers)


def list_readers() -> list[str]:
    """The names of the readers pcscd knows now, e.g. ``['Virtual PCD 00 00', 'Virtual PCD 00 01']``."""
    scard = _pyscard()
    context = _context(scard)
    try:
        return _readers(scard, context)
    finally:
        scard.SCardReleaseContext(context)


def choose_reader(readers: list[str], name: str | None) -> str:
    """The reader whose name is ``name`` or, failing that, the first that contains it (case-insensitive).

    >>> choose_reader(["Virtual PCD 00 00", "Virtual PCD 00 01"], "00 01")
    'Virtual PCD 00 01'
    """
    if not readers:
        raise ReaderNotFoundError(
            "pcscd knows no reader (for a virtual card: apt-get install vsmartcard-vpcd)"
        )
    if name is None:
        return readers[0]
    if name in readers:
        return name
    matches = [reader for reader in readers if name.lower() in reader.lower()]
    if not matches:
        raise ReaderNotFoundError(f"no reader matches {name!r}; readers: {', '.join(readers)}")
    return matches[0]


class PcscTransport(BaseTransport):
    """``PcscTransport("Virtual PCD 00 00")``: the card in the first reader whose name contains that.

    ``connect()`` waits up to ``card_wait_s`` for a card, connects in shared mode with T=0 or T=1
    (``protocol``), and returns the ATR. ``reset()`` warm-resets the card.
    """

    def __init__(
        self,
        reader: str | None = None,
        *,
        protocol: Protocol = "any",
        card_wait_s: float = CARD_WAIT_S_DEFAULT,
        t0: bool = True,
        trace: ApduTrace | None = None,
    ):
        if not 0 <= card_wait_s <= CARD_WAIT_S_MAX:
            raise ValueError(f"card_wait_s must be 0 to {CARD_WAIT_S_MAX} s, got {card_wait_s}")
        if protocol not in ("any", "T0", "T1"):
            raise ValueError(f"protocol must be 'any', 'T0' or 'T1', got {protocol!r}")
        super().__init__(t0=t0, trace=trace)
        self.reader_name = reader
        self.protocol = protocol
        self.card_wait_s = card_wait_s
        self.reader: str | None = None  # the reader chosen by connect()
        self._scard: ModuleType | None = None
        self._context: Any = None
        self._card: Any = None
        self._pci: Any = None

    def __repr__(self) -> str:
        return f"PcscTransport({self.reader or self.reader_name!r})"

    def _protocols(self, scard: ModuleType) -> int:
        return {
            "any": scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
            "T0": scard.SCARD_PROTOCOL_T0,
            "T1": scard.SCARD_PROTOCOL_T1,
        }[self.protocol]

    def _wait_for_card(self, scard: ModuleType, reader: str) -> None:
        deadline = time.monotonic() + self.card_wait_s
        state, wait_ms = scard.SCARD_STATE_UNAWARE, 0
        while True:
            code, states = scard.SCardGetStatusChange(self._context, wait_ms, [(reader, state)])
            if code == scard.SCARD_S_SUCCESS:
                state = states[0][1] & ~scard.SCARD_STATE_CHANGED
                if state & scard.SCARD_STATE_PRESENT:
                    return
            elif code != scard.SCARD_E_TIMEOUT:
                _check(scard, "SCardGetStatusChange", code)
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise NoCardError(f"no card in {reader!r} after {self.card_wait_s:g} s")
            wait_ms = min(left_ms, STATUS_POLL_MS)

    def _connect(self) -> bytes:
        scard = self._scard = _pyscard()
        self._context = _context(scard)
        try:
            self.reader = choose_reader(_readers(scard, self._context), self.reader_name)
            self._wait_for_card(scard, self.reader)
            code, card, active = scard.SCardConnect(
                self._context, self.reader, scard.SCARD_SHARE_SHARED, self._protocols(scard)
            )
            _check(scard, f"SCardConnect({self.reader!r})", code)
            self._card = card
            self._pci = scard.SCARD_PCI_T0 if active == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
            return self._status_atr(scard)
        except BaseException:
            self._release()
            raise

    def _status_atr(self, scard: ModuleType) -> bytes:
        code, _reader, _state, _protocol, atr = scard.SCardStatus(self._card)
        _check(scard, "SCardStatus", code)
        return bytes(atr)

    def reset(self) -> bytes:
        """Warm reset (SCardReconnect with SCARD_RESET_CARD); returns the new ATR."""
        self.connect()
        scard = self._scard
        assert scard is not None
        code, active = scard.SCardReconnect(
            self._card, scard.SCARD_SHARE_SHARED, self._protocols(scard), scard.SCARD_RESET_CARD
        )
        _check(scard, "SCardReconnect", code)
        self._pci = scard.SCARD_PCI_T0 if active == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
        self._atr = self._status_atr(scard)
        return self._atr

    def _exchange(self, apdu: bytes) -> bytes:
        scard = self._scard
        assert scard is not None
        code, response = scard.SCardTransmit(self._card, self._pci, list(apdu))
        if code != scard.SCARD_S_SUCCESS:
            _check(scard, "SCardTransmit", code)
        return bytes(response)

    def _disconnect(self) -> None:
        self._release()

    def _release(self) -> None:
        scard = self._scard
        if scard is None:
            return
        if self._card is not None:
            scard.SCardDisconnect(self._card, scard.SCARD_LEAVE_CARD)
            self._card = None
        if self._context is not None:
            scard.SCardReleaseContext(self._context)
            self._context = None
