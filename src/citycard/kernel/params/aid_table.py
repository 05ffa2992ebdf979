"""The terminal's AID table: one row of risk-management and capability parameters per application
the terminal supports (pboc-notes §2.2 and §2.3; EMV 4.3 Book 3 §10.6, Book 4 Annex A; JR/T 0025.12).

The table is data (``citycard/data/terminal/aids.toml``)::

    [defaults]                      # merged into every [[aid]]; an [[aid]] key overrides it
    tac_default = "D84000A800"      # hex strings for binary fields, integers (fen) for money
    ...
    [[aid]]                         # file order = the terminal's priority order
    aid = "A000000333010101"
    label = "PBOC DEBIT"

Every key must be a field of :class:`AidParameters`; an unknown key, a wrong type, a wrong length
or a value out of range is a precise :class:`AidTableError` naming the file, the entry and the tag.

>>> table = AidTable.load()
>>> [p.label for p in table]
['PBOC DEBIT', 'PBOC CREDIT', 'PBOC QUASICREDIT', 'PBOC EC']
>>> table.match(bytes.fromhex("A00000033301010101")).aid.hex().upper()   # partial selection
'A000000333010101'
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from citycard.emv.dol import DOLError, parse_dol
from citycard.kernel.params.tomlfile import parse_toml, read_table

AID_BYTES_MIN = 5  # RID alone (ISO/IEC 7816-5)
AID_BYTES_MAX = 16  # RID 5 + PIX up to 11
AID_TABLE_MAX = 32  # a terminal supports a handful of applications
AMOUNT_FEN_MAX = 999_999_999_999  # n12 (9F02 and the limits compared with it)
BINARY4_MAX = 0xFFFF_FFFF  # b4 amounts (9F1B floor limit, DF15 threshold)
LABEL_CHARS_MAX = 16  # 50 application label
PERCENT_MAX = 99  # DF16/DF17: 0–99 (Book 3 §10.6.2)
TERMINAL_TYPES = frozenset(0x10 * tens + units for tens in (1, 2, 3) for units in range(1, 7))  # 11–36 as n2
DEFAULT_PATH = "data/terminal/aids.toml"


class AidTableError(ValueError):
    """A malformed AID table or AID parameter set; the message names the entry and the tag."""


# field name → (tag, byte length or None for variable, is BCD digits) for binary fields
_BINARY_FIELDS: dict[str, tuple[str, int | None, bool]] = {
    "version": ("9F09", 2, False),
    "tac_default": ("DF11", 5, False),
    "tac_online": ("DF12", 5, False),
    "tac_denial": ("DF13", 5, False),
    "ddol_default": ("DF14", None, False),
    "tdol_default": ("97", None, False),
    "ttq": ("9F66", 4, False),
    "terminal_capabilities": ("9F33", 3, False),
    "additional_capabilities": ("9F40", 5, False),
    "country_code": ("9F1A", 2, True),
    "currency_code": ("5F2A", 2, True),
    "merchant_category": ("9F15", 2, True),
}
# field name → (tag, largest value) for amounts in fen: 9F1B and DF15 are b4, the others n12
_AMOUNT_FIELDS: dict[str, tuple[str, int]] = {
    "floor_limit_fen": ("9F1B", BINARY4_MAX),
    "random_threshold_fen": ("DF15", BINARY4_MAX),
    "ec_terminal_limit_fen": ("9F7B", AMOUNT_FEN_MAX),
    "contactless_offline_floor_limit_fen": ("DF19", AMOUNT_FEN_MAX),
    "contactless_transaction_limit_fen": ("DF20", AMOUNT_FEN_MAX),
    "contactless_cvm_limit_fen": ("DF21", AMOUNT_FEN_MAX),
}
_PERCENT_FIELDS: dict[str, str] = {"random_target_percent": "DF17", "random_max_target_percent": "DF16"}
_BOOL_FIELDS: dict[str, str] = {
    "partial_selection": "DF01",
    "online_pin_supported": "DF18",
    "ec_supported": "9F7A",
    "sm_supported": "DF69",
}


@dataclass(frozen=True)
class AidParameters:
    """The terminal's parameters for one AID. Money in fen; binary fields as the tag's bytes.

    ``partial_selection`` (DF01 application selection indicator): the terminal AID also matches
    a card AID that starts with it. ``random_*``: biased random transaction selection (Book 3
    §10.6.2). Offline EC only below ``ec_terminal_limit_fen`` (9F7B). ``contactless_*``
    (DF19/DF20/DF21): qPBOC offline floor limit, transaction limit (at or above: try another
    interface), CVM required limit. ``ec_supported`` (9F7A) and ``sm_supported`` (DF69, SM
    algorithms preferred) are what the terminal puts into the PDOL data. No field has a default:
    the values live in the TOML table; derive variants with ``dataclasses.replace``.
    """

    aid: bytes
    partial_selection: bool
    version: bytes
    tac_default: bytes
    tac_denial: bytes
    tac_online: bytes
    floor_limit_fen: int
    random_threshold_fen: int
    random_target_percent: int
    random_max_target_percent: int
    ddol_default: bytes
    tdol_default: bytes
    ec_terminal_limit_fen: int
    contactless_transaction_limit_fen: int
    contactless_offline_floor_limit_fen: int
    contactless_cvm_limit_fen: int
    online_pin_supported: bool
    ttq: bytes
    terminal_capabilities: bytes
    additional_capabilities: bytes
    terminal_type: int
    country_code: bytes
    currency_code: bytes
    currency_exponent: int
    merchant_category: bytes
    ec_supported: bool
    sm_supported: bool
    label: str = ""  # 50, for display and cardholder confirmation

    def __post_init__(self) -> None:
        _check_bytes("aid", "9F06", self.aid)
        if not AID_BYTES_MIN <= len(self.aid) <= AID_BYTES_MAX:
            raise AidTableError(
                f"aid (9F06) must be {AID_BYTES_MIN} to {AID_BYTES_MAX} bytes, got {len(self.aid)}"
            )
        if not isinstance(self.label, str) or len(self.label) > LABEL_CHARS_MAX:
            raise AidTableError(
                f"label must be text of at most {LABEL_CHARS_MAX} characters, got {self.label!r}"
            )
        for name, (tag, length, bcd) in _BINARY_FIELDS.items():
            value = getattr(self, name)
            _check_bytes(name, tag, value)
            if length is not None and len(value) != length:
                raise AidTableError(f"{name} ({tag}) must be {length} bytes, got {len(value)}")
            if bcd and not value.hex().isdigit():
                raise AidTableError(f"{name} ({tag}) must be BCD digits, got {value.hex().upper()}")
        for name, (tag, largest) in _AMOUNT_FIELDS.items():
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= largest:
                raise AidTableError(
                    f"{name} ({tag}) must be an amount in fen from 0 to {largest}, got {value!r}"
                )
        for name, tag in _PERCENT_FIELDS.items():
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= PERCENT_MAX:
                raise AidTableError(
                    f"{name} ({tag}) must be a percentage from 0 to {PERCENT_MAX}, got {value!r}"
                )
        for name, tag in _BOOL_FIELDS.items():
            if not isinstance(getattr(self, name), bool):
                raise AidTableError(f"{name} ({tag}) must be true or false, got {getattr(self, name)!r}")
        self._check_consistency()

    def _check_consistency(self) -> None:
        if self.random_target_percent > self.random_max_target_percent:
            raise AidTableError(
                f"random_target_percent (DF17) {self.random_target_percent} is above "
                f"random_max_target_percent (DF16) {self.random_max_target_percent}"
            )
        if self.floor_limit_fen > 0 and self.random_threshold_fen >= self.floor_limit_fen:
            raise AidTableError(
                f"random_threshold_fen (DF15) {self.random_threshold_fen} must be below floor_limit_fen "
                f"(9F1B) {self.floor_limit_fen} (Book 3 §10.6.2)"
            )
        if self.floor_limit_fen == 0 and self.random_threshold_fen != 0:
            raise AidTableError(
                f"random_threshold_fen (DF15) must be 0 when floor_limit_fen (9F1B) is 0, got {self.random_threshold_fen}"
            )
        for name, tag in (("ddol_default", "DF14"), ("tdol_default", "97")):
            try:
                parse_dol(getattr(self, name))
            except DOLError as exc:
                raise AidTableError(f"{name} ({tag}): {exc}") from None
        if "9F37" not in {tag for tag, _ in parse_dol(self.ddol_default)}:
            raise AidTableError(
                f"ddol_default (DF14) must ask for the unpredictable number 9F37, got {self.ddol_default.hex().upper()}"
            )
        if not _is_int(self.terminal_type) or self.terminal_type not in TERMINAL_TYPES:
            shown = f"{self.terminal_type:02X}" if _is_int(self.terminal_type) else repr(self.terminal_type)
            raise AidTableError(
                f"terminal_type (9F35) must be 11–16, 21–26 or 31–36 (Book 4 Annex A1), got {shown}"
            )
        if not _is_int(self.currency_exponent) or not 0 <= self.currency_exponent <= 3:
            raise AidTableError(f"currency_exponent (5F36) must be 0 to 3, got {self.currency_exponent!r}")

    def matches(self, card_aid: bytes) -> bool:
        """Does the card's AID (4F/84) select this entry: equal, or starting with it when
        ``partial_selection`` allows (Book 1 §12.3.1)?"""
        if card_aid == self.aid:
            return True
        return self.partial_selection and len(card_aid) > len(self.aid) and card_aid.startswith(self.aid)

    @property
    def aid_hex(self) -> str:
        return self.aid.hex().upper()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bytes(name: str, tag: str, value: Any) -> None:
    if not isinstance(value, bytes):
        raise AidTableError(f"{name} ({tag}) must be bytes, got {type(value).__name__}")


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(AidParameters))
FIELD_TAGS: dict[str, str] = {
    "aid": "9F06",
    **{name: tag for name, (tag, _, _) in _BINARY_FIELDS.items()},
    **{name: tag for name, (tag, _) in _AMOUNT_FIELDS.items()},
    **_PERCENT_FIELDS,
    **_BOOL_FIELDS,
    "terminal_type": "9F35",
    "currency_exponent": "5F36",
    "label": "50",
}
assert set(FIELD_TAGS) == set(_FIELD_NAMES), set(FIELD_TAGS) ^ set(_FIELD_NAMES)
_HEX_FIELDS = frozenset({"aid", *_BINARY_FIELDS})


def _parameters_from_toml(values: Mapping[str, Any], where: str) -> AidParameters:
    unknown = sorted(set(values) - set(_FIELD_NAMES))
    if unknown:
        raise AidTableError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_FIELD_NAMES)})")
    missing = [name for name in _FIELD_NAMES if name not in values and name != "label"]
    if missing:
        raise AidTableError(f"{where}: missing key {missing[0]!r} ({FIELD_TAGS[missing[0]]})")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name in _HEX_FIELDS:
            if not isinstance(value, str):
                raise AidTableError(f"{where}: {name} must be a hex string, got {type(value).__name__}")
            text = "".join(value.split())
            try:
                kwargs[name] = bytes.fromhex(text)
            except ValueError:
                raise AidTableError(f"{where}: {name} is not hex: {value!r}") from None
        else:
            kwargs[name] = value
    try:
        return AidParameters(**kwargs)
    except AidTableError as exc:
        raise AidTableError(f"{where}: {exc}") from None


class AidTable:
    """The AID table in priority order (file order): iterate it, :meth:`match` a card AID."""

    def __init__(self, entries: list[AidParameters] | tuple[AidParameters, ...]) -> None:
        entries = tuple(entries)
        if not entries:
            raise AidTableError("the AID table is empty: a terminal needs at least one AID")
        if len(entries) > AID_TABLE_MAX:
            raise AidTableError(f"the AID table has {len(entries)} entries, at most {AID_TABLE_MAX}")
        seen: set[bytes] = set()
        for entry in entries:
            if entry.aid in seen:
                raise AidTableError(f"AID {entry.aid_hex} is listed twice")
            seen.add(entry.aid)
        self._entries = entries

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> AidTable:
        """Read the table from ``path``, default the shipped ``citycard/data/terminal/aids.toml``."""
        text, source = read_table(path, default=DEFAULT_PATH, what="AID table", error=AidTableError)
        return cls.from_toml(text, source=source)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "AID table") -> AidTable:
        document = parse_toml(text, source=source, error=AidTableError)
        unknown = sorted(set(document) - {"defaults", "aid"})
        if unknown:
            raise AidTableError(
                f"{source}: unknown top-level key {unknown[0]!r} (expected [defaults] and [[aid]])"
            )
        defaults = document.get("defaults", {})
        if not isinstance(defaults, dict):
            raise AidTableError(f"{source}: [defaults] must be a table")
        if "aid" in defaults:
            raise AidTableError(f"{source}: [defaults] cannot hold 'aid'")
        rows = document.get("aid", [])
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise AidTableError(f"{source}: 'aid' must be an array of tables [[aid]]")
        entries = []
        for number, row in enumerate(rows, 1):
            where = f"{source}: aid #{number}" + (
                f" ({row['aid']})" if isinstance(row.get("aid"), str) else ""
            )
            entries.append(_parameters_from_toml({**defaults, **row}, where))
        try:
            return cls(entries)
        except AidTableError as exc:
            raise AidTableError(f"{source}: {exc}") from None

    def __iter__(self) -> Iterator[AidParameters]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"AidTable({', '.join(e.aid_hex for e in self._entries)})"

    def get(self, aid: bytes) -> AidParameters | None:
        """The entry for exactly this terminal AID."""
        return next((e for e in self._entries if e.aid == aid), None)

    def match(self, aid: bytes) -> AidParameters | None:
        """The parameters for a card AID: the exact entry, else the longest terminal AID that is a
        prefix of it with partial selection allowed, else None."""
        exact = self.get(aid)
        if exact is not None:
            return exact
        partial = [e for e in self._entries if e.matches(aid)]
        return max(partial, key=lambda e: len(e.aid), default=None)


__all__ = ["AID_TABLE_MAX", "FIELD_TAGS", "AidParameters", "AidTable", "AidTableError"]
