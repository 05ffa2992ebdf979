"""BER-TLV decoding and encoding (EMV 4.3 Book 3 Annex B; ISO/IEC 7816-4:2005 §5.2; JR/T 0025.5 Annex B).

A data object is ``tag ‖ length ‖ value``:

- **Tag** (Book 3 B1): 1 to 3 bytes. If b5–b1 of the first byte are all 1 (``xx011111``), more tag
  bytes follow; each following byte with b8 set announces one more. b6 of the first byte set means
  *constructed* (the value is itself a list of data objects), clear means *primitive*.
- **Length** (Book 3 B2): one byte ``00``–``7F``, or ``81``–``84`` followed by 1–4 length bytes.
  We decode any of those forms (pyemv's vector ``9C8400000001FF``), but encode the shortest.
- ``00`` and ``FF`` bytes before, between or after data objects carry no meaning and are skipped
  (Book 3 B3, "padding").

Every malformed input raises :class:`TLVError` (a :class:`ValueError`) naming the tag and the offset;
nothing else escapes the decoder, whatever the bytes. Limits — :data:`MAX_DEPTH`,
:data:`MAX_OBJECTS`, :data:`MAX_VALUE_LENGTH` — keep hostile input cheap.

>>> decode_dict(bytes.fromhex("9C0101E0055F2A0202089F0200"))
{'9C': b'\\x01', 'E0': {'5F2A': b'\\x02\\x08'}, '9F02': b''}
>>> encode_one("9F02", bytes.fromhex("000000000100")).hex().upper()
'9F0206000000000100'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH_BYTES",
    "MAX_OBJECTS",
    "MAX_TAG_BYTES",
    "MAX_VALUE_LENGTH",
    "TLV",
    "TLVError",
    "decode",
    "decode_dict",
    "decode_one",
    "encode",
    "encode_length",
    "encode_one",
    "find",
    "find_all",
    "is_constructed",
    "iter_tlv",
    "normalize_tag",
    "read_tag",
]

MAX_TAG_BYTES = 3
"""Longest tag accepted: ISO/IEC 7816-4:2005 §5.2.2.1 allows 1, 2 or 3 bytes (EMV uses 1–3)."""

MAX_LENGTH_BYTES = 4
"""Longest long-form length: ``84`` + 4 bytes (accepted on decode; encode never needs it)."""

MAX_VALUE_LENGTH = 65536
"""Largest value field we decode or encode, in bytes: one extended-length APDU's data (7816-4 §5.1)."""

MAX_DEPTH = 10
"""Deepest nesting of data objects; top level is 1. EMV needs 4 (6F > A5 > BF0C > 61 > 4F)."""

MAX_OBJECTS = 4096
"""Most data objects, at all levels together, in one :func:`decode` call."""

PADDING = frozenset({0x00, 0xFF})
"""Bytes without meaning between data objects (Book 3 Annex B3)."""


class TLVError(ValueError):
    """Malformed BER-TLV. ``tag`` and ``offset`` (of the tag's first byte, or of the bad byte) are kept."""

    def __init__(self, message: str, *, tag: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        self.offset = offset


def _where(tag: str, offset: int) -> str:
    return f"tag '{tag}', offset {offset}"


def is_constructed(tag: str) -> bool:
    """True when b6 of the tag's first byte is set (Book 3 Annex B1, "constructed data object").

    >>> is_constructed("70"), is_constructed("9F02"), is_constructed("BF0C")
    (True, False, True)
    """
    return bool(int(tag[:2], 16) & 0x20)


def normalize_tag(tag: str) -> str:
    """Check a tag string and return it upper case; raise :class:`TLVError` if it is not a valid tag.

    The bytes must form exactly one tag of 1–3 bytes as the decoder would read it, and the first byte
    may not be ``00`` or ``FF`` (padding, Book 3 Annex B3).

    >>> normalize_tag("9f02")
    '9F02'
    >>> normalize_tag("9F")
    Traceback (most recent call last):
    ...
    citycard.emv.tlv.TLVError: Tag malformed, subsequent byte missing: tag '9F', offset 0
    """
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a hex string, not {type(tag).__name__}")
    try:
        raw = bytes.fromhex(tag)
    except ValueError:
        raise TLVError(f"Tag {tag!r} is not hex") from None
    if len(tag) != 2 * len(raw) or not raw:
        raise TLVError(f"Tag {tag!r} is not hex")
    parsed, end = read_tag(raw, 0)
    if end != len(raw):
        raise TLVError(f"Tag {tag.upper()!r} has {len(raw) - end} byte(s) after the tag '{parsed}'")
    return parsed


def read_tag(data: bytes, offset: int = 0, end: int | None = None) -> tuple[str, int]:
    """Read one tag at ``offset``; return it (upper-case hex) and the offset just past it.

    Book 3 Annex B1: the tag continues while b5–b1 of the first byte are 11111 and b8 of each
    following byte is set. ``00`` and ``FF`` are not valid first bytes.

    >>> read_tag(bytes.fromhex("9F820101FF"))
    ('9F8201', 3)
    """
    stop = len(data) if end is None else end
    if offset >= stop:
        raise TLVError(f"Tag missing, offset {offset}", offset=offset)
    first = data[offset]
    if first in PADDING:
        raise TLVError(
            f"Tag malformed, '{first:02X}' is not a valid first tag byte: offset {offset}", offset=offset
        )
    size = 1
    if first & 0x1F == 0x1F:
        while True:
            if offset + size >= stop:
                partial = data[offset : offset + size].hex().upper()
                raise TLVError(
                    f"Tag malformed, subsequent byte missing: {_where(partial, offset)}",
                    tag=partial,
                    offset=offset,
                )
            more = data[offset + size] & 0x80
            size += 1
            if not more:
                break
            if size >= MAX_TAG_BYTES:
                partial = data[offset : offset + size].hex().upper()
                raise TLVError(
                    f"Tag malformed, longer than {MAX_TAG_BYTES} bytes: {_where(partial, offset)}",
                    tag=partial,
                    offset=offset,
                )
    return data[offset : offset + size].hex().upper(), offset + size


def _read_length(data: bytes, offset: int, end: int, tag: str) -> tuple[int, int]:
    """Read a length field at ``offset`` (Book 3 Annex B2); return (length, offset past it)."""
    if offset >= end:
        raise TLVError(f"Tag length malformed, length missing: {_where(tag, offset)}", tag=tag, offset=offset)
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    count = first & 0x7F
    if count == 0:
        raise TLVError(
            f"Tag length malformed, indefinite form '80' not allowed: {_where(tag, offset)}",
            tag=tag,
            offset=offset,
        )
    if count > MAX_LENGTH_BYTES:
        raise TLVError(
            f"Tag length malformed, '{first:02X}' announces {count} length bytes, "
            f"at most {MAX_LENGTH_BYTES} allowed: {_where(tag, offset)}",
            tag=tag,
            offset=offset,
        )
    if offset + 1 + count > end:
        raise TLVError(
            f"Tag length malformed, expecting {count} byte(s): {_where(tag, offset + 1)}",
            tag=tag,
            offset=offset + 1,
        )
    length = int.from_bytes(data[offset + 1 : offset + 1 + count], "big")
    if length > MAX_VALUE_LENGTH:
        raise TLVError(
            f"Tag length {length} exceeds the limit of {MAX_VALUE_LENGTH} bytes: {_where(tag, offset)}",
            tag=tag,
            offset=offset,
        )
    return length, offset + 1 + count


@dataclass
class TLV:
    """One BER-TLV data object.

    ``tag`` is upper-case hex. ``value`` is the raw value field. ``children`` is ``None`` for a
    primitive object and the list of nested objects for a constructed one (b6 of the first tag byte).
    ``offset`` is where the tag started in the decoded buffer; it is not part of equality.

    Build a constructed object from either side: ``TLV("70", children=[...])`` fills ``value`` with
    the encoded children, ``TLV("70", raw)`` decodes ``raw`` into ``children`` (given both, they must
    agree). :func:`encode` re-encodes ``children`` of a constructed object (dropping any padding the
    decoded value had).

    >>> TLV("70", children=[TLV("5A", bytes.fromhex("6225880123456789"))]).value.hex().upper()
    '5A086225880123456789'
    >>> TLV("70", bytes.fromhex("9F790100")).children
    [TLV(tag='9F79', value=b'\\x00', children=None, offset=0)]
    """

    tag: str
    value: bytes = b""
    children: list[TLV] | None = None
    offset: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        self.tag = normalize_tag(self.tag)
        if not isinstance(self.value, bytes | bytearray | memoryview):
            raise TypeError(f"TLV value must be bytes, not {type(self.value).__name__}")
        self.value = bytes(self.value)
        if not is_constructed(self.tag):
            if self.children is not None:
                raise TLVError(f"Primitive tag '{self.tag}' cannot have children", tag=self.tag)
            if len(self.value) > MAX_VALUE_LENGTH:
                raise TLVError(
                    f"Tag value of {len(self.value)} bytes exceeds the limit of {MAX_VALUE_LENGTH}: "
                    f"tag '{self.tag}'",
                    tag=self.tag,
                )
        elif self.children is None:
            self.children = decode(self.value)
        elif not self.value:
            self.value = encode(self.children)
        elif decode(self.value) != self.children:
            raise TLVError(f"Value and children of tag '{self.tag}' disagree", tag=self.tag)

    @property
    def constructed(self) -> bool:
        return self.children is not None

    @property
    def length(self) -> int:
        """Length of the value field in bytes."""
        return len(self.value)


def decode(data: bytes, *, padding: bool = True) -> list[TLV]:
    """Decode a concatenation of BER-TLV data objects (Book 3 Annex B), constructed ones recursively.

    ``00``/``FF`` bytes between objects are skipped unless ``padding=False``. Offsets in the result
    and in errors count from the start of ``data``.

    >>> [(t.tag, t.value.hex().upper()) for t in decode(bytes.fromhex("9C8101FF00009F820101FF"))]
    [('9C', 'FF'), ('9F8201', 'FF')]
    >>> decode(bytes.fromhex("9C01"))
    Traceback (most recent call last):
    ...
    citycard.emv.tlv.TLVError: Tag value malformed, expecting 1 byte(s): tag '9C', offset 2
    """
    buf = _as_bytes(data)
    budget = [MAX_OBJECTS]
    return _decode_level(buf, 0, len(buf), 1, budget, padding)


def _as_bytes(data: bytes) -> bytes:
    if isinstance(data, str):
        raise TypeError("BER-TLV data must be bytes, not str (use bytes.fromhex)")
    return bytes(data)


def _decode_level(
    buf: bytes, start: int, end: int, depth: int, budget: list[int], padding: bool
) -> list[TLV]:
    objects: list[TLV] = []
    pos = start
    while pos < end:
        if padding and buf[pos] in PADDING:
            pos += 1
            continue
        obj, pos = _decode_object(buf, pos, end, depth, budget, padding)
        objects.append(obj)
    return objects


def _decode_object(
    buf: bytes, pos: int, end: int, depth: int, budget: list[int], padding: bool
) -> tuple[TLV, int]:
    tag, after_tag = read_tag(buf, pos, end)
    if depth > MAX_DEPTH:
        raise TLVError(f"Nesting deeper than {MAX_DEPTH} levels: {_where(tag, pos)}", tag=tag, offset=pos)
    budget[0] -= 1
    if budget[0] < 0:
        raise TLVError(f"More than {MAX_OBJECTS} data objects: {_where(tag, pos)}", tag=tag, offset=pos)
    length, value_start = _read_length(buf, after_tag, end, tag)
    value_end = value_start + length
    if value_end > end:
        raise TLVError(
            f"Tag value malformed, expecting {length} byte(s): {_where(tag, value_start)}",
            tag=tag,
            offset=value_start,
        )
    obj = TLV.__new__(TLV)  # skip __post_init__: the tag is already checked and children decoded here
    obj.tag = tag
    obj.value = buf[value_start:value_end]
    obj.children = (
        _decode_level(buf, value_start, value_end, depth + 1, budget, padding)
        if is_constructed(tag)
        else None
    )
    obj.offset = pos
    return obj, value_end


def decode_one(data: bytes, *, tag: str | None = None) -> TLV:
    """Decode exactly one data object filling ``data``: no padding, no trailing bytes.

    For responses that must be one template, e.g. a READ RECORD answer ``70 L V`` (Book 3 §10.2:
    data outside the template is an error) or a GPO answer ``77``. ``tag`` checks the template.

    >>> decode_one(bytes.fromhex("70035A0112")).children[0].tag
    '5A'
    >>> decode_one(bytes.fromhex("70035A0112FFFF"))
    Traceback (most recent call last):
    ...
    citycard.emv.tlv.TLVError: Trailing bytes after tag '70': 2 byte(s) at offset 5
    """
    buf = _as_bytes(data)
    if not buf:
        raise TLVError("No data object: empty input, offset 0", offset=0)
    obj, end = _decode_object(buf, 0, len(buf), 1, [MAX_OBJECTS], True)
    if end != len(buf):
        raise TLVError(
            f"Trailing bytes after tag '{obj.tag}': {len(buf) - end} byte(s) at offset {end}",
            tag=obj.tag,
            offset=end,
        )
    if tag is not None and obj.tag != normalize_tag(tag):
        raise TLVError(
            f"Expected template '{normalize_tag(tag)}', got {_where(obj.tag, 0)}", tag=obj.tag, offset=0
        )
    return obj


def encode_length(length: int) -> bytes:
    """Shortest length field for ``length`` (Book 3 Annex B2).

    >>> [encode_length(n).hex().upper() for n in (0, 127, 128, 255, 256)]
    ['00', '7F', '8180', '81FF', '820100']
    """
    if length < 0 or length > MAX_VALUE_LENGTH:
        raise TLVError(f"Length {length} outside 0..{MAX_VALUE_LENGTH}")
    if length < 0x80:
        return bytes([length])
    size = (length.bit_length() + 7) // 8
    return bytes([0x80 | size]) + length.to_bytes(size, "big")


def encode_one(tag: str, value: bytes) -> bytes:
    """Encode one data object with the shortest length form.

    For a constructed tag, ``value`` must itself be valid BER-TLV (checked by decoding it).

    >>> encode_one("9c", b"\\x00").hex().upper()
    '9C0100'
    """
    tag = normalize_tag(tag)
    value = bytes(value)
    if is_constructed(tag):
        decode(value)
    return _header(tag, len(value)) + value


def encode(objects: Iterable[TLV]) -> bytes:
    """Encode data objects in order; constructed objects are rebuilt from their ``children``.

    >>> encode([TLV("9C", b"\\x00"), TLV("E0", children=[TLV("5F2A", bytes.fromhex("0156"))])]).hex().upper()
    '9C0100E0055F2A020156'
    """
    return b"".join(_encode_object(obj) for obj in objects)


def _encode_object(obj: TLV) -> bytes:
    value = obj.value if obj.children is None else encode(obj.children)
    return _header(obj.tag, len(value)) + value


def _header(tag: str, length: int) -> bytes:
    if length > MAX_VALUE_LENGTH:
        raise TLVError(
            f"Tag value of {length} bytes exceeds the limit of {MAX_VALUE_LENGTH}: tag '{tag}'", tag=tag
        )
    return bytes.fromhex(tag) + encode_length(length)


def iter_tlv(objects: Iterable[TLV]) -> Iterator[TLV]:
    """Every object, depth first, parents before their children."""
    for obj in objects:
        yield obj
        if obj.children:
            yield from iter_tlv(obj.children)


def find(objects: Iterable[TLV], tag: str) -> TLV | None:
    """First object with ``tag`` at any depth (depth first), or ``None``.

    >>> find(decode(bytes.fromhex("770E8202180094080801010010010301")), "94").value.hex().upper()
    '0801010010010301'
    """
    wanted = normalize_tag(tag)
    return next((obj for obj in iter_tlv(objects) if obj.tag == wanted), None)


def find_all(objects: Iterable[TLV], tag: str) -> list[TLV]:
    """All objects with ``tag`` at any depth, in depth-first order (e.g. every ``61`` of a PPSE)."""
    wanted = normalize_tag(tag)
    return [obj for obj in iter_tlv(objects) if obj.tag == wanted]


def flat_primitives(
    data: bytes, *, constructed: str = "skip", length_bytes_max: int = MAX_LENGTH_BYTES
) -> dict[str, bytes]:
    """A flat run of BER-TLV objects as ``{tag: primitive value}`` in one pass (Book 3 Annex B).

    The reader for field 55 on the hot paths (the issuer's authorisation, clearing): several times
    faster than :func:`decode_dict`, and stricter — no 00/FF padding, a repeated tag is an error.
    ``constructed``: ``"skip"`` passes over templates (a request's 71/72 are not read), ``"refuse"``
    makes one an error. ``length_bytes_max`` limits the long length form (81 = 1 byte … 84 = 4).
    Errors are :class:`TLVError` naming the tag and offset.

    >>> flat_primitives(bytes.fromhex("9F3602000182027C00DF310120"))
    {'9F36': b'\\x00\\x01', '82': b'|\\x00', 'DF31': b' '}
    >>> flat_primitives(bytes.fromhex("700382010082027C00"), constructed="refuse")
    Traceback (most recent call last):
    ...
    citycard.emv.tlv.TLVError: constructed tag 70 at offset 0
    """
    if constructed not in ("skip", "refuse"):
        raise ValueError(f"constructed must be 'skip' or 'refuse', got {constructed!r}")
    out: dict[str, bytes] = {}
    i, end = 0, len(data)
    while i < end:
        start = i
        first = data[i]
        if first in PADDING:
            raise TLVError(f"{first:02X} is not a tag at offset {i}", offset=i)
        i += 1
        if first & 0x1F == 0x1F:  # a multi-byte tag: more bytes while b8 is set (Annex B1)
            while i < end and data[i] & 0x80:
                i += 1
            i += 1
        if i - start > MAX_TAG_BYTES:
            raise TLVError(f"tag at offset {start} is longer than {MAX_TAG_BYTES} bytes", offset=start)
        if i >= end:
            raise TLVError(f"object at offset {start} has no length", offset=start)
        tag = data[start:i].hex().upper()
        if first & 0x20 and constructed == "refuse":
            raise TLVError(f"constructed tag {tag} at offset {start}", tag=tag, offset=start)
        length = data[i]
        i += 1
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= length_bytes_max:
                raise TLVError(
                    f"{tag} at offset {start} has an unsupported length byte {length:02X}",
                    tag=tag,
                    offset=start,
                )
            if i + count > end:
                raise TLVError(f"{tag} at offset {start} has a cut length", tag=tag, offset=start)
            length = int.from_bytes(data[i : i + count], "big")
            i += count
        if i + length > end:
            raise TLVError(f"{tag} at offset {start} runs past the end", tag=tag, offset=start)
        if not first & 0x20:
            if tag in out:
                raise TLVError(f"{tag} repeated at offset {start}", tag=tag, offset=start)
            out[tag] = data[i : i + length]
        i += length
    return out


def decode_dict(data: bytes, *, flat: bool = False) -> dict[str, bytes | dict]:
    """Decode to ``{tag: value}``, pyemv style; constructed objects become nested dicts.

    With ``flat=True`` only primitive objects are kept, all in one dict (templates dissolved).
    A tag repeated at one level (or anywhere, when flat) raises :class:`TLVError`: use
    :func:`decode` and :func:`find_all` for lists such as the ``61`` entries of a PPSE answer.

    >>> decode_dict(bytes.fromhex("7709820219809F36020053"), flat=True)
    {'82': b'\\x19\\x80', '9F36': b'\\x00S'}
    """
    objects = decode(data)
    if flat:
        out: dict[str, bytes | dict] = {}
        first_seen: dict[str, int] = {}
        for obj in iter_tlv(objects):
            if obj.children is None:
                _check_duplicate(first_seen, obj)
                out[obj.tag] = obj.value
        return out
    return _nested(objects)


def _nested(objects: list[TLV]) -> dict[str, bytes | dict]:
    out: dict[str, bytes | dict] = {}
    first_seen: dict[str, int] = {}
    for obj in objects:
        _check_duplicate(first_seen, obj)
        out[obj.tag] = obj.value if obj.children is None else _nested(obj.children)
    return out


def _check_duplicate(first_seen: dict[str, int], obj: TLV) -> None:
    if obj.tag in first_seen:
        raise TLVError(
            f"Duplicate tag '{obj.tag}' at offset {obj.offset} (first at offset {first_seen[obj.tag]})",
            tag=obj.tag,
            offset=obj.offset,
        )
    first_seen[obj.tag] = obj.offset
