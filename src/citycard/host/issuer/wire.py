"""The issuer's view of a request's fields: checks before use, the idempotency key, the stored form of
an answer, and the format-error answer. Pure functions over field dicts (pboc-notes §10).
"""

from __future__ import annotations

import json
from typing import Any

from citycard.host.issuer import codes
from citycard.iso8583 import builders
from citycard.iso8583.spec import CUPS_POS

# Fields the issuer reads, keys on or echoes (builders.ECHOED), checked before use: (digits only,
# min length, max length) as the CUPS spec (iso8583.spec) has them. A request from the server has
# passed the spec already; an in-process caller's dict may not have.
FIELD_RULES: dict[str, tuple[bool, int, int]] = {
    "2": (True, 13, 19), "3": (True, 6, 6), "4": (True, 12, 12), "7": (True, 10, 10),
    "11": (True, 6, 6), "12": (True, 6, 6), "13": (True, 4, 4), "14": (True, 4, 4), "23": (True, 3, 3),
    "25": (True, 2, 2), "32": (True, 1, 11), "33": (True, 1, 11), "37": (False, 12, 12),
    "41": (False, 8, 8), "42": (False, 15, 15), "49": (True, 3, 3), "60": (True, 1, 17), "61": (True, 1, 29),
}  # fmt: skip
# F52: an 8-byte 3DES (or, in-process, 16-byte SM4) PIN block; F57: a 16-byte SM4 PIN block (GM)
BINARY_FIELD_BYTES_MAX = {"52": 16, "55": 255, "57": 16}


def message_key(request: dict[str, Any]) -> str:
    """The idempotency key of a request: F32:F41:F11:F7:MTI (absent parts are ``-``).

    >>> message_key({"t": "0200", "41": "T0000001", "11": "000001", "7": "1127030405"})
    '-:T0000001:000001:1127030405:0200'
    """
    return ":".join(str(request.get(k, "-")) for k in ("32", "41", "11", "7", "t"))


def field_problem(request: dict[str, Any]) -> str | None:
    """The first field of :data:`FIELD_RULES` that is present but malformed, or None.

    >>> field_problem({"11": "00001"})
    'field 11 must be 6..6 digits'
    """
    for key, (digits, low, high) in FIELD_RULES.items():
        value = request.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.isascii() or not low <= len(value) <= high:
            return f"field {key} must be {low}..{high} {'digits' if digits else 'characters'}"
        if (digits and not value.isdigit()) or (not digits and not value.isprintable()):
            return f"field {key} must be {low}..{high} {'digits' if digits else 'characters'}"
    for key, length_max in BINARY_FIELD_BYTES_MAX.items():
        value = request.get(key)
        if value is not None and (not isinstance(value, bytes | bytearray) or len(value) > length_max):
            return f"field {key} must be at most {length_max} bytes"
    return None


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per json.dumps call
BINARY_FIELDS = frozenset(key for key, spec in CUPS_POS.items() if spec.get("fmt") == "b")


def pack_response(fields: dict[str, Any]) -> bytes:
    """A response as stored in the message log: compact JSON, binary fields in hex (7× faster than
    re-encoding the ISO 8583 message, and readable in the database).

    >>> pack_response({"t": "0210", "39": "00", "55": bytes.fromhex("9102AB")})
    b'{"t":"0210","39":"00","55":"9102AB"}'
    >>> unpack_response(pack_response({"t": "0210", "55": bytes([0x91, 0x02])}))["55"].hex()
    '9102'
    """
    plain = {key: value.hex().upper() if key in BINARY_FIELDS else value for key, value in fields.items()}
    return _COMPACT_JSON.encode(plain).encode("ascii")


def unpack_response(raw: bytes) -> dict[str, Any]:
    """The stored response back as a field dict (the exact answer given the first time)."""
    plain = json.loads(raw)
    return {key: bytes.fromhex(value) if key in BINARY_FIELDS else value for key, value in plain.items()}


def format_error_response(request: dict[str, Any]) -> dict[str, Any]:
    """RC 30 for a request no kind fits: MTI + 10 when it is a request MTI, and the echoed fields."""
    mti = request.get("t")
    valid = isinstance(mti, str) and len(mti) == 4 and mti.isdigit() and mti[2] in "0246"
    response: dict[str, Any] = {"t": f"{int(mti) + 10:04d}" if valid else "0810"}  # type: ignore[arg-type]
    # only the fields that are well formed: the answer must encode whatever the request held
    response.update(
        {k: request[k] for k in builders.ECHOED if k in request and field_problem({k: request[k]}) is None}
    )
    response["39"] = codes.FORMAT_ERROR
    return response
