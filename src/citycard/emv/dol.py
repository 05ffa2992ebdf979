"""Data Object Lists: PDOL, CDOL1/2, TDOL, DDOL (EMV 4.3 Book 3 §5.4; JR/T 0025.5 §5.4 is the same rule).

A DOL is a list of ``tag ‖ one-byte length`` entries. The terminal answers it with the values of those
data elements concatenated, each made exactly as long as its entry says (Book 3 §5.4):

- a constructed tag, or a data element the terminal does not have, gives that many ``00`` bytes;
- a longer value is cut: on the left for format ``n`` (keep the low-order digits), on the right for
  every other format;
- a shorter value is padded: ``00`` on the left for ``n``, ``FF`` on the right for ``cn``, ``00`` on
  the right for every other format.

The format comes from the tag dictionary (:func:`citycard.emv.tags.tag_info`), so ``scheme`` matters
for the few tags PBOC defines differently.

>>> cdol1 = bytes.fromhex("9F02069F03069F1A0295055F2A029A039C019F3704")
>>> dol_length(cdol1)
29
>>> build_dol(bytes.fromhex("9F02069C01"), {"9F02": bytes.fromhex("0100"), "9C": b"\\x00"}).hex().upper()
'00000000010000'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from citycard.emv.tags import tag_info
from citycard.emv.tlv import TLVError, is_constructed, normalize_tag, read_tag

__all__ = [
    "MAX_DOL_LENGTH",
    "DOLError",
    "build_dol",
    "dol_length",
    "fit",
    "parse_dol",
    "split_dol_data",
]

MAX_DOL_LENGTH = 252
"""Longest DOL accepted, in bytes: a DOL is the value of 9F38/8C/8D/97/9F49, at most 252 (Annex A)."""

DolEntries = list[tuple[str, int]]


class DOLError(ValueError):
    """Malformed DOL, or DOL data that does not match its DOL."""


def parse_dol(data: bytes) -> DolEntries:
    """Split a DOL into ``(tag, length)`` entries (Book 3 §5.4: BER tag, then a one-byte length).

    >>> parse_dol(bytes.fromhex("9F6604DF60019F0206"))
    [('9F66', 4), ('DF60', 1), ('9F02', 6)]
    >>> parse_dol(bytes.fromhex("9F6604DF60"))
    Traceback (most recent call last):
    ...
    citycard.emv.dol.DOLError: DOL entry malformed, length byte missing: tag 'DF60', offset 5
    """
    raw = bytes(data)
    if len(raw) > MAX_DOL_LENGTH:
        raise DOLError(f"DOL of {len(raw)} bytes exceeds the limit of {MAX_DOL_LENGTH}")
    entries: DolEntries = []
    pos = 0
    while pos < len(raw):
        try:
            tag, after = read_tag(raw, pos)
        except TLVError as exc:
            raise DOLError(f"DOL entry malformed: {exc}") from exc
        if after >= len(raw):
            raise DOLError(f"DOL entry malformed, length byte missing: tag '{tag}', offset {after}")
        entries.append((tag, raw[after]))
        pos = after + 1
    return entries


def _entries(dol: bytes | Sequence[tuple[str, int]]) -> DolEntries:
    if isinstance(dol, bytes | bytearray | memoryview):
        return parse_dol(bytes(dol))
    entries: DolEntries = []
    for tag, length in dol:
        if not 0 <= length <= 0xFF:
            raise DOLError(f"DOL entry length must be 0..255, got {length} for tag '{tag}'")
        try:
            entries.append((normalize_tag(tag), length))
        except TLVError as exc:
            raise DOLError(f"DOL entry malformed: {exc}") from exc
    return entries


def dol_length(dol: bytes | Sequence[tuple[str, int]]) -> int:
    """Length in bytes of the data that answers ``dol``."""
    return sum(length for _, length in _entries(dol))


def fit(value: bytes, length: int, fmt: str) -> bytes:
    """Pad or cut ``value`` to ``length`` bytes by the Book 3 §5.4 rule for format ``fmt``.

    >>> [fit(bytes.fromhex(v), 2, f).hex().upper() for v, f in [("123456", "n"), ("123456", "b"),
    ...     ("12", "n"), ("12", "cn"), ("12", "an")]]
    ['3456', '1234', '0012', '12FF', '1200']
    """
    if length < 0:
        raise DOLError(f"length must be >= 0, got {length}")
    value = bytes(value)
    if len(value) >= length:
        return value[len(value) - length :] if fmt == "n" else value[:length]
    pad = length - len(value)
    if fmt == "n":
        return b"\x00" * pad + value
    return value + (b"\xff" if fmt == "cn" else b"\x00") * pad


def build_dol(
    dol: bytes | Sequence[tuple[str, int]], values: Mapping[str, bytes], *, scheme: str = "pboc"
) -> bytes:
    """Data for ``dol`` from ``values`` (tag → value bytes), by the rules of Book 3 §5.4.

    Missing tags and constructed tags give zeros; formats come from ``tag_info(tag, scheme)``.

    >>> build_dol([("9F37", 4), ("5A", 10), ("70", 2)], {"9F37": bytes.fromhex("CAFEBABE"),
    ...     "5A": bytes.fromhex("6225880123456789")}).hex().upper()
    'CAFEBABE6225880123456789FFFF0000'
    """
    by_tag: dict[str, bytes] = {}
    for tag, value in values.items():
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"value of tag {tag!r} must be bytes, not {type(value).__name__}")
        by_tag[normalize_tag(tag)] = bytes(value)
    parts = []
    for tag, length in _entries(dol):
        value = by_tag.get(tag)
        if value is None or is_constructed(tag):
            parts.append(b"\x00" * length)
        else:
            parts.append(fit(value, length, tag_info(tag, scheme).format))
    return b"".join(parts)


def split_dol_data(dol: bytes | Sequence[tuple[str, int]], data: bytes) -> dict[str, bytes]:
    """Cut DOL data back into ``{tag: value}``; ``data`` must be exactly as long as the DOL asks.

    This is what a card does with the GPO or GENERATE AC command data (JR/T 0025.5).

    >>> split_dol_data(bytes.fromhex("9F66049C01"), bytes.fromhex("2800000000"))
    {'9F66': b'(\\x00\\x00\\x00', '9C': b'\\x00'}
    >>> split_dol_data(bytes.fromhex("9F66049C01"), bytes.fromhex("28000000"))
    Traceback (most recent call last):
    ...
    citycard.emv.dol.DOLError: DOL data must be 5 bytes for this DOL, got 4
    """
    entries = _entries(dol)
    raw = bytes(data)
    expected = sum(length for _, length in entries)
    if len(raw) != expected:
        raise DOLError(f"DOL data must be {expected} bytes for this DOL, got {len(raw)}")
    out: dict[str, bytes] = {}
    pos = 0
    for tag, length in entries:
        if tag in out:
            raise DOLError(f"DOL lists tag '{tag}' twice")
        out[tag] = raw[pos : pos + length]
        pos += length
    return out
