"""Field-64 MAC under a terminal MAC key (TAK), in both algorithm suites.

The MAC input is the encoded message from the MTI up to the end of field 63, with bit 64 already
set in the bitmap (the MAC is computed over the message as sent, minus its last 8 bytes), padded
with ISO/IEC 9797-1 method 2. INTL: MAC algorithm 3 (retail MAC, 3DES double-length key). GM: SM4
CBC-MAC, leftmost 8 bytes. The CUPS POS document also names an XOR-then-ECB "POS MAC"; that variant
is not implemented here.
"""

from __future__ import annotations

import hmac
from typing import Any

from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import Suite
from citycard.iso8583.message import Iso8583Error, decode, encode

MAC_BYTES = 8


def compute_mac(data: bytes, key: bytes, suite: Suite) -> bytes:
    """The 8-byte MAC over ``data`` (the message bytes before field 64)."""
    suite.check_key(key, "terminal MAC key")
    return suite.block_mac(key, pad_method_2(data, suite.block_bytes))[:MAC_BYTES]


def add_mac(fields: dict[str, Any], key: bytes, suite: Suite) -> bytes:
    """Encode ``fields`` with F64 set to the MAC over everything before it; return the wire bytes."""
    raw = encode({**fields, "64": bytes(MAC_BYTES)})
    body = raw[:-MAC_BYTES]
    return body + compute_mac(body, key, suite)


def verify_mac(raw: bytes, key: bytes, suite: Suite) -> bool:
    """True when ``raw`` is a well-formed message whose F64 matches; a malformed message is False."""
    try:
        fields, _ = decode(raw)
    except Iso8583Error:
        return False
    if "64" not in fields or "1" in fields:
        return False
    body = bytes(raw[:-MAC_BYTES])
    return hmac.compare_digest(compute_mac(body, key, suite), fields["64"])
