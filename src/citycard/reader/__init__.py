"""Transports between a terminal and a card (DESIGN.md §1): in-process, PC/SC, and the vpcd bridge.

``Transport`` is what a kernel holds: ``connect() -> ATR``, ``transmit(C-APDU) -> R-APDU`` (T=0
61xx/6Cxx handled), ``disconnect()``. ``VpcdBridge`` is the other direction: it serves a card
object to pcscd, so PC/SC programs (and :class:`PcscTransport`) can reach a virtual card.
"""

from citycard.reader.inprocess import InProcessTransport
from citycard.reader.pcsc import PcscError, PcscTransport, PcscUnavailableError, list_readers
from citycard.reader.transport import (
    CardProtocolError,
    NoCardError,
    NotConnectedError,
    ReaderNotFoundError,
    Transport,
    TransportError,
    status_word,
)
from citycard.reader.vpcd import VPCD_PORT, BridgeError, VpcdBridge

__all__ = [
    "VPCD_PORT",
    "BridgeError",
    "CardProtocolError",
    "InProcessTransport",
    "NoCardError",
    "NotConnectedError",
    "PcscError",
    "PcscTransport",
    "PcscUnavailableError",
    "ReaderNotFoundError",
    "Transport",
    "TransportError",
    "VpcdBridge",
    "list_readers",
    "status_word",
]
