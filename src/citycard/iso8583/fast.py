"""A fast path for the CUPS ISO 8583 codec, compiled from the same spec data (:data:`spec.CUPS_POS`).

``pyiso8583`` under :mod:`citycard.iso8583.message` stays the codec and validator of record. This
module reads the same spec table once, compiles each field to a small plan (length prefix, unit,
padding, character class) and encodes/decodes the common messages in one tight loop: ≈ 4–6× less
CPU per message than the general library (docs/hosts.md "Performance").

It is a *sound subset*: whenever the fast path meets anything it does not handle exactly — a
secondary bitmap, a field missing from the spec, a bad length prefix, a character outside the
field's class, a value of an unexpected type, trailing bytes — it hands the message to the
reference codec, which then returns its result or raises its own precise :class:`Iso8583Error`.
So for every input ``decode_fields(raw) == message.decode(raw)[0]`` and
``encode(fields) == message.encode(fields)``, errors included; tests/iso8583/test_iso8583_fast.py
checks this with hypothesis on random valid messages and on mutated and random bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from citycard.iso8583 import message
from citycard.iso8583.message import MESSAGE_BYTES_MAX
from citycard.iso8583.spec import CUPS_POS, FMT_CHARS

_NUMERIC, _TEXT, _BINARY = 0, 1, 2
_MTI_BYTES = 2
_BITMAP_BYTES = 8
_HEAD_BYTES = _MTI_BYTES + _BITMAP_BYTES
_PLANS_MAX = 4_096  # distinct primary bitmaps remembered (a host sees a handful)


class _FallbackError(Exception):
    """Internal: the fast path does not handle this input; the reference codec decides."""


@dataclass(frozen=True, slots=True)
class _Field:
    key: str
    number: int
    kind: int  # _NUMERIC (BCD nibbles), _TEXT (ASCII), _BINARY (bytes)
    prefix_bytes: int  # 0 fixed, 1 LLVAR, 2 LLLVAR (BCD length prefix)
    max_len: int  # nibbles (numeric) or bytes
    left_pad: bool  # odd nibble count padded on the left (else on the right)
    chars: frozenset[str] | None  # numeric: allowed characters; None = digits only / printable


def _compile(spec: dict[str, dict[str, Any]]) -> dict[str, _Field]:
    """One plan per data field of ``spec``; a field outside the supported shapes is left out (it then
    always takes the reference path)."""
    plans: dict[str, _Field] = {}
    head = (spec["h"]["max_len"], spec["t"]["data_enc"], spec["t"]["max_len"], spec["p"]["data_enc"])
    if head != (0, "b", 2, "b"):
        return plans  # another layout of header, MTI or bitmap: always the reference codec
    for key, field_spec in spec.items():
        if not key.isdigit() or key == "1":
            continue
        fmt = field_spec.get("fmt") or ("b" if field_spec["data_enc"] == "b" else "ans")
        len_type, len_enc = field_spec["len_type"], field_spec["len_enc"]
        if len_type not in (0, 1, 2) or (len_type and len_enc != "bcd"):
            continue
        nibbles = field_spec.get("len_count", "bytes") == "nibbles"
        if fmt in ("n", "z") and field_spec["data_enc"] == "b" and nibbles:
            kind = _NUMERIC
        elif fmt == "b" and field_spec["data_enc"] == "b" and not nibbles:
            kind = _BINARY
        elif fmt in ("an", "ans") and field_spec["data_enc"] == "ascii" and not nibbles:
            kind = _TEXT
        else:
            continue
        left = bool(field_spec.get("left_pad", "")[:1])
        pad = field_spec.get("left_pad", "")[:1] or field_spec.get("right_pad", "")[:1]
        if kind == _NUMERIC and pad != "0":
            continue  # only "0" padding is compiled
        chars = FMT_CHARS.get(fmt) if fmt == "z" else None
        plans[key] = _Field(key, int(key), kind, len_type, field_spec["max_len"], left, chars)
    return plans


_FIELDS = _compile(CUPS_POS)
_BY_NUMBER: dict[int, _Field] = {field.number: field for field in _FIELDS.values()}
_PLANS: dict[int, tuple[_Field, ...]] = {}


def _plan(bitmap: int) -> tuple[_Field, ...]:
    """The fields a primary bitmap sets, in order; _FallbackError when one is not compiled."""
    plan = _PLANS.get(bitmap)
    if plan is None:
        found = []
        for number in range(2, 65):
            if bitmap >> (64 - number) & 1:
                field = _BY_NUMBER.get(number)
                if field is None:
                    raise _FallbackError
                found.append(field)
        plan = tuple(found)
        if len(_PLANS) < _PLANS_MAX:
            _PLANS[bitmap] = plan
    return plan


def _decode(raw: bytes) -> dict[str, Any]:
    size = len(raw)
    if size <= _HEAD_BYTES:
        raise _FallbackError
    mti = raw[:_MTI_BYTES].hex()
    if not mti.isdigit():
        raise _FallbackError
    bitmap = int.from_bytes(raw[_MTI_BYTES:_HEAD_BYTES], "big")
    if bitmap >> 63 or not bitmap:  # a secondary bitmap, or no data field at all
        raise _FallbackError
    fields: dict[str, Any] = {"t": mti}
    index = _HEAD_BYTES
    for field in _plan(bitmap):
        prefix = field.prefix_bytes
        if prefix:
            digits = raw[index : index + prefix].hex()
            if len(digits) != 2 * prefix or not digits.isdigit():
                raise _FallbackError
            length = int(digits)
            if length > field.max_len:
                raise _FallbackError
            index += prefix
        else:
            length = field.max_len
        kind = field.kind
        if kind == _NUMERIC:
            end = index + (length + 1) // 2
            if end > size:
                raise _FallbackError
            value = raw[index:end].hex()
            if length & 1:
                if field.left_pad:
                    if value[:1] != "0":
                        raise _FallbackError
                    value = value[1:]
                else:
                    if value[-1:] != "0":
                        raise _FallbackError
                    value = value[:-1]
            if field.chars is None:
                if value and not value.isdigit():
                    raise _FallbackError
            else:
                value = value.upper()
                if not field.chars.issuperset(value):
                    raise _FallbackError
        else:
            end = index + length
            if end > size:
                raise _FallbackError
            if kind == _BINARY:
                value = raw[index:end]
            else:
                data = raw[index:end]
                if not data.isascii():
                    raise _FallbackError
                value = data.decode("ascii")
                if not value.isprintable():
                    raise _FallbackError
        fields[field.key] = value
        index = end
    if index != size:
        raise _FallbackError
    return fields


def decode_fields(raw: bytes) -> dict[str, Any]:
    """The fields of an encoded CUPS message: the same dict as ``message.decode(raw)[0]``, or the same
    :class:`Iso8583Error` (anything unusual is decided by the reference codec)."""
    if type(raw) is bytes and len(raw) <= MESSAGE_BYTES_MAX:
        try:
            return _decode(raw)
        except _FallbackError:
            pass
    return message.decode(raw)[0]


def _encode(fields: dict[str, Any]) -> bytes:
    mti = fields.get("t")
    if type(mti) is not str or len(mti) != 4 or not (mti.isascii() and mti.isdigit()):
        raise _FallbackError
    items = []
    bitmap = 0
    for key, value in fields.items():
        if key == "t":
            continue
        field = _FIELDS.get(key)
        if field is None:
            raise _FallbackError
        bitmap |= 1 << (64 - field.number)
        items.append((field.number, field, value))
    if not items:
        raise _FallbackError
    items.sort(key=lambda item: item[0])
    out = [bytes.fromhex(mti), bitmap.to_bytes(_BITMAP_BYTES, "big")]
    for _, field, value in items:
        kind = field.kind
        if kind == _NUMERIC:
            if type(value) is not str or not value.isascii():
                raise _FallbackError
            if field.chars is None:
                if value and not value.isdigit():
                    raise _FallbackError
            elif not field.chars.issuperset(value):
                raise _FallbackError
            length = len(value)
            data = bytes.fromhex(("0" + value if field.left_pad else value + "0") if length & 1 else value)
        elif kind == _BINARY:
            if type(value) is bytes:
                data = value
            elif type(value) is bytearray:
                data = bytes(value)
            else:
                raise _FallbackError
            length = len(data)
        else:
            if type(value) is not str or not (value.isascii() and value.isprintable()):
                raise _FallbackError
            data = value.encode("ascii")
            length = len(data)
        if field.prefix_bytes:
            if length > field.max_len:
                raise _FallbackError
            out.append(bytes.fromhex(f"{length:0{2 * field.prefix_bytes}d}"))
        elif length != field.max_len:
            raise _FallbackError
        out.append(data)
    return b"".join(out)


def encode(fields: dict[str, Any]) -> bytes:
    """Wire bytes of a CUPS message: the same bytes as ``message.encode(fields)``, or the same
    :class:`Iso8583Error` (anything unusual is decided by the reference codec)."""
    if type(fields) is dict:
        try:
            return _encode(fields)
        except _FallbackError:
            pass
    return message.encode(fields)
