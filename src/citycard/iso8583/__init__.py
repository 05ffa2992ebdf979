"""CUPS ISO 8583:1987 messages: spec as data, encode/decode, 2-byte framing, F64 MAC, builders.

Layer rule: imports only :mod:`citycard.emv` and :mod:`citycard.crypto` from the package.
"""

from citycard.iso8583.framing import (
    FRAME_BYTES_MAX,
    Deframer,
    FramingError,
    frame,
    recv_message,
    send_message,
)
from citycard.iso8583.mac import add_mac, compute_mac, verify_mac
from citycard.iso8583.message import MESSAGE_BYTES_MAX, Iso8583Error, decode, encode, ic_data, with_ic_data
from citycard.iso8583.spec import CUPS_POS, F55_MAX_BYTES

__all__ = [
    "CUPS_POS",
    "F55_MAX_BYTES",
    "FRAME_BYTES_MAX",
    "MESSAGE_BYTES_MAX",
    "Deframer",
    "FramingError",
    "Iso8583Error",
    "add_mac",
    "compute_mac",
    "decode",
    "encode",
    "frame",
    "ic_data",
    "recv_message",
    "send_message",
    "verify_mac",
    "with_ic_data",
]
