"""Encode and decode CUPS ISO 8583 messages with ``pyiso8583`` under :data:`spec.CUPS_POS`.

A message is a dict keyed like pyiso8583's (``"t"`` for the MTI, ``"2"``…``"64"`` for fields).
Values are ``str`` for numeric and text fields and ``bytes`` for binary ones (F52, F55, F62, F64).
Every failure on either side is an :class:`Iso8583Error` naming the field and, when decoding, the
offset: a malformed message from the network never raises anything else.
"""

from __future__ import annotations

from typing import Any

import iso8583
from citycard.emv import TLV, TLVError
from citycard.emv import decode as tlv_decode
from citycard.emv import encode as tlv_encode
from citycard.iso8583.spec import CUPS_POS, FMT_CHARS

MESSAGE_BYTES_MAX = 4096  # no CUPS POS message comes near this; checked before parsing
_BITMAP_KEYS = ("p", "1")


class Iso8583Error(ValueError):
    """A message that cannot be encoded or decoded; ``field`` and ``offset`` say where."""

    def __init__(self, reason: str, *, field: str | None = None, offset: int | None = None) -> None:
        self.reason = reason
        self.field = field
        self.offset = offset
        where = []
        if field is not None:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


def _fmt(key: str, spec: dict[str, dict[str, Any]]) -> str:
    """Our character class of a field; a foreign spec without ``fmt`` maps binary to ``b``."""
    field_spec = spec[key]
    return field_spec.get("fmt") or ("b" if field_spec["data_enc"] == "b" else "ans")


def _check_chars(key: str, value: str, spec: dict[str, dict[str, Any]]) -> None:
    fmt = _fmt(key, spec)
    allowed = FMT_CHARS.get(fmt)
    if allowed is not None:
        if not allowed.issuperset(value):  # a set test in C; the first bad character only for the message
            bad = next(c for c in value if c not in allowed)
            raise Iso8583Error(f"{fmt} field holds {bad!r} (only {''.join(sorted(allowed))})", field=key)
    elif not (value.isascii() and value.isprintable()):  # = every character in " "…"~"
        raise Iso8583Error(f"{fmt} field holds a non-printable character", field=key)


def _to_library(fields: dict[str, Any], spec: dict[str, dict[str, Any]]) -> dict[str, str]:
    if "t" not in fields:
        raise Iso8583Error("message has no MTI", field="t")
    doc: dict[str, str] = {}
    for key, value in fields.items():
        if key in _BITMAP_KEYS:
            continue  # regenerated from the fields present
        if key not in spec or key == "h":
            raise Iso8583Error("field is not in the specification", field=str(key))
        if _fmt(key, spec) == "b":
            if not isinstance(value, bytes | bytearray):
                raise Iso8583Error(f"binary field needs bytes, got {type(value).__name__}", field=key)
            doc[key] = bytes(value).hex().upper()
        else:
            if not isinstance(value, str):
                raise Iso8583Error(f"field needs str, got {type(value).__name__}", field=key)
            _check_chars(key, value, spec)
            doc[key] = value
    if len(doc["t"]) != 4:
        raise Iso8583Error(f"MTI must be 4 digits, got {len(doc['t'])}", field="t")
    return doc


def encode(fields: dict[str, Any], *, spec: dict[str, dict[str, Any]] = CUPS_POS) -> bytes:
    """Encode a message dict into wire bytes (without the 2-byte length frame).

    >>> encode({"t": "0800", "11": "000001", "41": "T0000001"}).hex().upper()
    '080000200000008000000000015430303030303031'
    """
    doc = _to_library(fields, spec)
    try:
        raw, _ = iso8583.encode(doc, spec)
    except iso8583.EncodeError as exc:
        raise Iso8583Error(exc.msg, field=exc.field) from None
    return bytes(raw)


def decode(
    raw: bytes, *, spec: dict[str, dict[str, Any]] = CUPS_POS
) -> tuple[dict[str, Any], dict[str, dict[str, bytes]]]:
    """Decode wire bytes into ``(fields, raw_parts)``; ``raw_parts[key]`` has ``len`` and ``data`` bytes.

    >>> fields, parts = decode(bytes.fromhex("080000200000008000000000015430303030303031"))
    >>> fields
    {'t': '0800', '11': '000001', '41': 'T0000001'}
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise Iso8583Error(f"message must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MESSAGE_BYTES_MAX:
        raise Iso8583Error(f"message of {len(raw)} bytes exceeds the limit of {MESSAGE_BYTES_MAX}")
    try:
        doc, parts = iso8583.decode(raw, spec)
    except iso8583.DecodeError as exc:
        raise Iso8583Error(exc.msg, field=exc.field, offset=exc.pos) from None
    except KeyError as exc:  # the bitmap names a field the spec lacks
        raise Iso8583Error(
            "bitmap sets a field that is not in the specification", field=str(exc.args[0])
        ) from None
    except (ValueError, IndexError, TypeError) as exc:  # library edge cases: still malformed
        raise Iso8583Error(f"malformed message ({type(exc).__name__}: {exc})") from None
    if not set(doc) - {"h", "t", *_BITMAP_KEYS}:
        raise Iso8583Error("bitmap sets no data field", field="p")
    fields: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _BITMAP_KEYS:
            continue
        if key not in spec:
            raise Iso8583Error("field is not in the specification", field=key)
        if _fmt(key, spec) == "b":
            fields[key] = bytes.fromhex(value)
        else:
            _check_chars(key, value, spec)
            fields[key] = value
    return fields, parts


def ic_data(fields: dict[str, Any]) -> list[TLV]:
    """Field 55 as BER-TLV objects (3-byte and unknown tags kept); ``[]`` when F55 is absent."""
    data = fields.get("55")
    if data is None:
        return []
    try:
        return tlv_decode(data, padding=False)
    except TLVError as exc:
        raise Iso8583Error(f"IC data is not BER-TLV: {exc}", field="55", offset=exc.offset) from None


def with_ic_data(fields: dict[str, Any], objects: list[TLV]) -> dict[str, Any]:
    """A copy of ``fields`` with F55 set to the encoded ``objects``."""
    return {**fields, "55": tlv_encode(objects)}
