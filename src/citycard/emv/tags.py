"""Tag dictionary keyed by scheme (EMV 4.3 Book 3 Annex A; JR/T 0025.5/.12/.13/.14/.15 data elements).

The tables are data, in ``citycard/data/tags_emv.json`` and ``citycard/data/tags_pboc.json``; adding a
tag is one line there. The ``pboc`` table holds only the tags PBOC defines or gives another meaning
(9F77/9F78/9F79 are electronic-cash limits and balance in PBOC, Visa VLP fields in ``emv``); a lookup
in ``pboc`` falls back to ``emv`` for every other tag. An unknown tag is not an error: it is named
``"Unknown"`` with format ``b``, so a decoder can always print what it read.

>>> tag_info("9F79").name
'Electronic Cash Balance'
>>> tag_info("9F79", scheme="emv").name
'VLP Available Funds'
>>> tag_info("9F02").format, tag_info("9F02").length_max
('n', 6)
>>> tag_info("DF7F").name
'Unknown'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from citycard.emv.tlv import MAX_VALUE_LENGTH, TLVError, is_constructed, normalize_tag

__all__ = [
    "FORMATS",
    "SCHEMES",
    "SOURCES",
    "TagInfo",
    "check_scheme",
    "tag_info",
    "tag_name",
    "tag_table",
]

SCHEMES = ("pboc", "emv")
"""Tag tables, most specific first: ``pboc`` falls back to ``emv``."""

FORMATS = frozenset({"a", "an", "ans", "b", "cn", "n", "var"})
"""Data element formats of Book 3 §4.3 (``var`` for templates and lists)."""

SOURCES = frozenset({"card", "terminal", "issuer", "unknown"})

_FALLBACK = {"pboc": ("pboc", "emv"), "emv": ("emv",)}


@dataclass(frozen=True)
class TagInfo:
    """What a tag means in one scheme. Lengths are in bytes (``length_min == length_max`` when fixed)."""

    tag: str
    name: str
    format: str
    length_min: int
    length_max: int
    source: str
    template: tuple[str, ...] = ()
    scheme: str | None = None
    """Table the entry came from (``pboc`` or ``emv``); ``None`` for an unknown tag."""
    name_zh: str | None = None
    spec: str | None = None

    @property
    def known(self) -> bool:
        return self.scheme is not None

    @property
    def constructed(self) -> bool:
        return is_constructed(self.tag)

    @property
    def numeric(self) -> bool:
        """Format ``n``: right-justified BCD, padded and truncated on the left in a DOL (Book 3 §5.4)."""
        return self.format == "n"


def check_scheme(scheme: str) -> str:
    """Return ``scheme`` if it names a tag table, else raise :class:`ValueError`.

    >>> check_scheme("visa")
    Traceback (most recent call last):
    ...
    ValueError: unknown tag scheme 'visa': expected one of 'pboc', 'emv'
    """
    if scheme not in _FALLBACK:
        choices = ", ".join(repr(s) for s in SCHEMES)
        raise ValueError(f"unknown tag scheme {scheme!r}: expected one of {choices}")
    return scheme


def tag_info(tag: str, scheme: str = "pboc") -> TagInfo:
    """Meaning of ``tag`` in ``scheme`` (``pboc`` falls back to ``emv``); ``"Unknown"`` if in neither.

    A malformed tag string (not hex, not one well-formed BER tag) raises :class:`TLVError`; a
    ``scheme`` other than ``pboc``/``emv`` raises :class:`ValueError`.

    >>> info = tag_info("9f74")
    >>> info.tag, info.name_zh, info.format, info.length_min, info.template
    ('9F74', '电子现金发卡行授权码', 'a', 6, ('70',))
    """
    check_scheme(scheme)
    key = normalize_tag(tag)
    for table in _FALLBACK[scheme]:
        info = _table(table).get(key)
        if info is not None:
            return info
    return TagInfo(
        tag=key, name="Unknown", format="b", length_min=0, length_max=MAX_VALUE_LENGTH, source="unknown"
    )


def tag_name(tag: str, scheme: str = "pboc") -> str:
    """Short form of ``tag_info(tag, scheme).name``."""
    return tag_info(tag, scheme).name


def tag_table(scheme: str = "pboc") -> dict[str, TagInfo]:
    """Every tag ``scheme`` knows, fallback included (a new dict; changing it changes nothing)."""
    check_scheme(scheme)
    merged: dict[str, TagInfo] = {}
    for table in reversed(_FALLBACK[scheme]):
        merged.update(_table(table))
    return merged


@cache
def _table(scheme: str) -> dict[str, TagInfo]:
    """Load and check one JSON table; a malformed table is a programming error and fails loudly."""
    filename = f"tags_{scheme}.json"
    text = resources.files("citycard").joinpath("data", filename).read_text(encoding="utf-8")
    document = json.loads(text)
    if document.get("scheme") != scheme:
        raise ValueError(f"{filename}: 'scheme' must be {scheme!r}, got {document.get('scheme')!r}")
    table: dict[str, TagInfo] = {}
    for tag, entry in document["tags"].items():
        table[tag] = _entry(filename, scheme, tag, entry)
    return table


_ENTRY_KEYS = frozenset({"name", "name_zh", "format", "length", "source", "template", "spec"})


def _entry(filename: str, scheme: str, tag: str, entry: dict) -> TagInfo:
    where = f"{filename}: tag {tag}"
    try:
        if normalize_tag(tag) != tag:
            raise ValueError(f"{where}: tag must be upper-case hex")
        template = tuple(normalize_tag(t) for t in entry.get("template", ()))
    except TLVError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    unknown_keys = set(entry) - _ENTRY_KEYS
    if unknown_keys:
        raise ValueError(f"{where}: unknown keys {sorted(unknown_keys)}")
    if entry["format"] not in FORMATS:
        raise ValueError(f"{where}: format {entry['format']!r} not in {sorted(FORMATS)}")
    if entry["source"] not in SOURCES:
        raise ValueError(f"{where}: source {entry['source']!r} not in {sorted(SOURCES)}")
    length = entry["length"]
    low, high = (length, length) if isinstance(length, int) else tuple(length)
    if not 0 <= low <= high:
        raise ValueError(f"{where}: length {length!r} is not n or [min, max] with 0 <= min <= max")
    return TagInfo(
        tag=tag,
        name=entry["name"],
        format=entry["format"],
        length_min=low,
        length_max=high,
        source=entry["source"],
        template=template,
        scheme=scheme,
        name_zh=entry.get("name_zh"),
        spec=entry.get("spec"),
    )
