"""Named bit fields: TVR, TSI, AIP, CVR, TTQ, CTQ (EMV 4.3 Book 3 Annex C; VIS 1.5; JR/T 0025.12).

Each field is a table of rows ``(byte, mask, name)``; bytes are numbered from 1 and bits b8..b1 as in
the specs. Three kinds of row:

- a **flag**: ``mask`` has one bit; the name is in :meth:`BitField.decode`'s list when the bit is set.
- a **choice**: ``(byte, mask, field, options)``, a multi-bit code; ``options[value]`` names each code
  (e.g. CVR ``first_gac_ac_type`` → ``first_gac_returned_arqc``). Exactly one option is always listed,
  even for code 0 (``..._aac``), because every code means something.
- a **counter**: ``(byte, mask, field)`` with a multi-bit mask; listed as ``"field=N"`` when N > 0
  (CVR ``issuer_script_commands_processed=2``).

A set bit that no row names (RFU) is listed as ``rfu_byte<B>_bit<b>``, so ``encode(decode(x)) == x``
for every ``x``. Names are snake_case; an unknown name raises :class:`ValueError`.

>>> TTQ.decode(bytes.fromhex("28000000"))
['qpboc_supported', 'offline_only_reader']
>>> tvr = TVR.new()
>>> tvr.set("expired_application")
>>> bytes(tvr).hex().upper(), tvr.is_set("expired_application")
('0040000000', True)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "AIP",
    "CTQ",
    "CVR",
    "FIELDS",
    "TSI",
    "TTQ",
    "TVR",
    "BitField",
    "Bits",
    "pboc_cvr_from_iad",
]

Row = tuple[int, int, str] | tuple[int, int, str, tuple[str, ...]]

# EMV 4.3 Book 3 Annex C5, Table 44 (JR/T 0025.5 uses the same layout).
TVR_ROWS: tuple[Row, ...] = (
    (1, 0x80, "offline_data_authentication_not_performed"),
    (1, 0x40, "sda_failed"),
    (1, 0x20, "icc_data_missing"),
    (1, 0x10, "card_on_exception_file"),
    (1, 0x08, "dda_failed"),
    (1, 0x04, "cda_failed"),
    (1, 0x02, "sda_selected"),
    (2, 0x80, "icc_and_terminal_different_versions"),
    (2, 0x40, "expired_application"),
    (2, 0x20, "application_not_yet_effective"),
    (2, 0x10, "requested_service_not_allowed"),
    (2, 0x08, "new_card"),
    (3, 0x80, "cardholder_verification_not_successful"),
    (3, 0x40, "unrecognised_cvm"),
    (3, 0x20, "pin_try_limit_exceeded"),
    (3, 0x10, "pin_entry_required_and_pin_pad_not_present"),
    (3, 0x08, "pin_entry_required_pin_pad_present_but_pin_not_entered"),
    (3, 0x04, "online_pin_entered"),
    (4, 0x80, "transaction_exceeds_floor_limit"),
    (4, 0x40, "lower_consecutive_offline_limit_exceeded"),
    (4, 0x20, "upper_consecutive_offline_limit_exceeded"),
    (4, 0x10, "transaction_selected_randomly_for_online_processing"),
    (4, 0x08, "merchant_forced_transaction_online"),
    (5, 0x80, "default_tdol_used"),
    (5, 0x40, "issuer_authentication_failed"),
    (5, 0x20, "script_processing_failed_before_final_generate_ac"),
    (5, 0x10, "script_processing_failed_after_final_generate_ac"),
)

# EMV 4.3 Book 3 Annex C6, Table 45.
TSI_ROWS: tuple[Row, ...] = (
    (1, 0x80, "offline_data_authentication_performed"),
    (1, 0x40, "cardholder_verification_performed"),
    (1, 0x20, "card_risk_management_performed"),
    (1, 0x10, "issuer_authentication_performed"),
    (1, 0x08, "terminal_risk_management_performed"),
    (1, 0x04, "script_processing_performed"),
)

# EMV 4.3 Book 3 Annex C1, Table 37; byte 2 is RFU for contact PBOC.
AIP_ROWS: tuple[Row, ...] = (
    (1, 0x40, "sda_supported"),
    (1, 0x20, "dda_supported"),
    (1, 0x10, "cardholder_verification_supported"),
    (1, 0x08, "terminal_risk_management_to_be_performed"),
    (1, 0x04, "issuer_authentication_supported"),
    (1, 0x01, "cda_supported"),
)

# Card Verification Results, VIS 1.5 Appendix A / JR/T 0025.5 (PBOC copies the VIS layout): the three
# bytes after the length byte 03 in IAD (9F10) bytes 4-7 — see :func:`pboc_cvr_from_iad`.
CVR_ROWS: tuple[Row, ...] = (
    (
        1,
        0xC0,
        "second_gac_ac_type",
        ("second_gac_returned_aac", "second_gac_returned_tc", "second_gac_not_requested", "second_gac_rfu"),
    ),
    (
        1,
        0x30,
        "first_gac_ac_type",
        ("first_gac_returned_aac", "first_gac_returned_tc", "first_gac_returned_arqc", "first_gac_rfu"),
    ),
    (1, 0x08, "issuer_authentication_performed_and_failed"),
    (1, 0x04, "offline_pin_verification_performed"),
    (1, 0x02, "offline_pin_verification_failed"),
    (1, 0x01, "unable_to_go_online"),
    (2, 0x80, "last_online_transaction_not_completed"),
    (2, 0x40, "pin_try_limit_exceeded"),
    (2, 0x20, "exceeded_velocity_checking_counters"),
    (2, 0x10, "new_card"),
    (2, 0x08, "issuer_authentication_failure_on_last_online_transaction"),
    (2, 0x04, "issuer_authentication_not_performed_after_online_authorisation"),
    (2, 0x02, "application_blocked_pin_try_limit_exceeded"),
    (2, 0x01, "sda_failed_on_last_transaction_and_declined_offline"),
    (3, 0xF0, "issuer_script_commands_processed"),
    (3, 0x08, "issuer_script_processing_failed"),
    (3, 0x04, "dda_failed_on_last_transaction_and_declined_offline"),
    (3, 0x02, "dda_performed"),
)

# Terminal Transaction Qualifiers, JR/T 0025.12 (qPBOC) with EMV Book A 5.7 / Book C-3 Annex A and
# Book C-7 (byte 1 b7, proprietary in C-7, is "contactless PBOC supported" in qPBOC).
TTQ_ROWS: tuple[Row, ...] = (
    (1, 0x80, "magstripe_mode_supported"),
    (1, 0x40, "contactless_pboc_supported"),
    (1, 0x20, "qpboc_supported"),
    (1, 0x10, "contact_pboc_supported"),
    (1, 0x08, "offline_only_reader"),
    (1, 0x04, "online_pin_supported"),
    (1, 0x02, "signature_supported"),
    (1, 0x01, "oda_for_online_authorisations_supported"),
    (2, 0x80, "online_cryptogram_required"),
    (2, 0x40, "cvm_required"),
    (2, 0x20, "contact_offline_pin_supported"),
    (3, 0x80, "issuer_update_processing_supported"),
    (3, 0x40, "consumer_device_cvm_supported"),
    (4, 0x80, "fdda_version_01_supported"),
)

# Card Transaction Qualifiers, JR/T 0025.12 with EMV Book C-3 Annex A.
CTQ_ROWS: tuple[Row, ...] = (
    (1, 0x80, "online_pin_required"),
    (1, 0x40, "signature_required"),
    (1, 0x20, "go_online_if_oda_fails"),
    (1, 0x10, "switch_interface_if_oda_fails"),
    (1, 0x08, "go_online_if_application_expired"),
    (1, 0x04, "switch_interface_for_cash"),
    (1, 0x02, "switch_interface_for_cashback"),
    (2, 0x80, "consumer_device_cvm_performed"),
    (2, 0x40, "issuer_update_processing_supported"),
)


@dataclass(frozen=True)
class _Part:
    byte: int  # 0-based inside the field
    mask: int
    name: str
    options: tuple[str, ...] | None  # choice when set; counter when None and mask has several bits

    @property
    def shift(self) -> int:
        return (self.mask & -self.mask).bit_length() - 1

    @property
    def is_flag(self) -> bool:
        return self.mask & (self.mask - 1) == 0 and self.options is None

    def get(self, data: bytes | bytearray) -> int:
        return (data[self.byte] & self.mask) >> self.shift

    def put(self, data: bytearray, value: int) -> None:
        data[self.byte] = (data[self.byte] & ~self.mask & 0xFF) | (value << self.shift)

    @property
    def max_value(self) -> int:
        return self.mask >> self.shift


class BitField:
    """A fixed-length bit field described by a table of rows (see the module docstring)."""

    def __init__(self, name: str, tag: str | None, length: int, rows: Iterable[Row], spec: str) -> None:
        self.name = name
        self.tag = tag
        self.length = length
        self.spec = spec
        self._parts: list[_Part] = []
        self._by_name: dict[str, tuple[_Part, int | None]] = {}  # name -> (part, option value or None)
        used = [0] * length
        for row in rows:
            byte, mask, field = row[0], row[1], row[2]
            options = row[3] if len(row) == 4 else None
            if not 1 <= byte <= length or not 0 < mask <= 0xFF or used[byte - 1] & mask:
                raise ValueError(f"{name}: bad or overlapping row {row!r}")
            part = _Part(byte - 1, mask, field, options)
            if options is not None and len(options) != part.max_value + 1:
                raise ValueError(f"{name}: {field} needs {part.max_value + 1} option names")
            used[byte - 1] |= mask
            self._parts.append(part)
            self._add_name(field, part, None)
            for value, option in enumerate(options or ()):
                self._add_name(option, part, value)
        self._rfu: dict[str, _Part] = {}
        for index, mask in enumerate(used):
            for bit in range(8):
                if not mask & (1 << bit):
                    rfu = _Part(index, 1 << bit, f"rfu_byte{index + 1}_bit{bit + 1}", None)
                    self._rfu[rfu.name] = rfu
                    self._add_name(rfu.name, rfu, None)

    def _add_name(self, name: str, part: _Part, value: int | None) -> None:
        if name in self._by_name:
            raise ValueError(f"{self.name}: name {name!r} used twice")
        self._by_name[name] = (part, value)

    def __repr__(self) -> str:
        return f"BitField({self.name!r}, tag={self.tag!r}, length={self.length})"

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this field knows: flags, choice options, counter and choice field names."""
        return tuple(n for n in self._by_name if n not in self._rfu)

    def _lookup(self, name: str) -> tuple[_Part, int | None]:
        found = self._by_name.get(name)
        if found is None:
            close = difflib.get_close_matches(name, self.names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {self.name} bit {name!r}{hint}")
        return found

    def check(self, data: bytes) -> bytes:
        """Return ``data`` as bytes if it has the field's exact length, else raise :class:`ValueError`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"{self.name} must be bytes, not {type(data).__name__}")
        if len(data) != self.length:
            tag = f" ({self.tag})" if self.tag else ""
            raise ValueError(f"{self.name}{tag} must be {self.length} bytes, got {len(data)}")
        return bytes(data)

    def decode(self, data: bytes) -> list[str]:
        """Names of the set flags, the choice options and the non-zero counters (``name=N``), in
        table order, then any set RFU bits.

        >>> CVR.decode(bytes.fromhex("900012"))
        ['second_gac_not_requested', 'first_gac_returned_tc', 'issuer_script_commands_processed=1', 'dda_performed']
        """
        raw = self.check(data)
        out: list[str] = []
        for part in self._parts:
            value = part.get(raw)
            if part.options is not None:
                out.append(part.options[value])
            elif part.is_flag:
                if value:
                    out.append(part.name)
            elif value:
                out.append(f"{part.name}={value}")
        out.extend(name for name, part in self._rfu.items() if part.get(raw))
        return out

    def encode(self, names: Iterable[str]) -> bytes:
        """Bytes with exactly ``names`` set (flags, choice options, ``counter=N``, RFU names).

        >>> TSI.encode(["card_risk_management_performed", "offline_data_authentication_performed"]).hex()
        'a000'
        """
        if isinstance(names, str):
            raise TypeError(f"{self.name}.encode() takes a list of names, not one string")
        bits = self.new()
        chosen: dict[str, str] = {}
        for name in names:
            base, _, count = name.partition("=")
            part, option = self._lookup(base)
            if count:
                bits.put(base, _count(self.name, base, count))
            elif option is not None:
                if chosen.setdefault(part.name, name) != name:
                    raise ValueError(f"{self.name}: {chosen[part.name]!r} and {name!r} are both {part.name}")
                bits.set(name)
            else:
                bits.set(name)
        return bytes(bits)

    def fields(self, data: bytes) -> dict[str, bool | int | str]:
        """Every named row with its value: flags → bool, choices → option name, counters → int."""
        raw = self.check(data)
        out: dict[str, bool | int | str] = {}
        for part in self._parts:
            value = part.get(raw)
            if part.options is not None:
                out[part.name] = part.options[value]
            elif part.is_flag:
                out[part.name] = bool(value)
            else:
                out[part.name] = value
        return out

    def new(self, data: bytes | None = None) -> Bits:
        """A mutable value of this field: zeros, or a copy of ``data`` (exact length)."""
        return Bits(self, b"\x00" * self.length if data is None else self.check(data))


def _count(field: str, name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{field}: {name}={text!r} is not an integer") from None


class Bits:
    """A mutable TVR/TSI/AIP/CVR/TTQ/CTQ value, e.g. the TVR a kernel builds during a transaction.

    >>> cvr = CVR.new()
    >>> cvr.set("first_gac_returned_arqc"); cvr.put("issuer_script_commands_processed", 2)
    >>> bytes(cvr).hex().upper(), cvr.get("first_gac_ac_type"), cvr.is_set("first_gac_returned_tc")
    ('200020', 2, False)
    """

    __slots__ = ("_data", "field")

    def __init__(self, field: BitField, data: bytes) -> None:
        self.field = field
        self._data = bytearray(field.check(data))

    def set(self, name: str) -> None:
        """Set a flag, or select a choice option (the other options of that choice are cleared)."""
        part, option = self.field._lookup(name)
        if option is not None:
            part.put(self._data, option)
        elif part.is_flag:
            part.put(self._data, 1)
        else:
            raise ValueError(f"{self.field.name}: {name!r} holds a number; use put({name!r}, n)")

    def clear(self, name: str) -> None:
        """Clear a flag (choices and counters: use :meth:`put`)."""
        part, option = self.field._lookup(name)
        if option is not None or not part.is_flag:
            raise ValueError(f"{self.field.name}: {name!r} is not a single bit; use put({part.name!r}, n)")
        part.put(self._data, 0)

    def is_set(self, name: str) -> bool:
        """True if a flag is set, or if a choice currently holds this option."""
        part, option = self.field._lookup(name)
        if option is not None:
            return part.get(self._data) == option
        if not part.is_flag:
            raise ValueError(f"{self.field.name}: {name!r} holds a number; use get({name!r})")
        return bool(part.get(self._data))

    __contains__ = is_set

    def get(self, name: str) -> int:
        """Raw value of a flag (0/1), a choice's code or a counter."""
        part, _ = self.field._lookup(name)
        return part.get(self._data)

    def put(self, name: str, value: int) -> None:
        """Store ``value`` in a flag, choice or counter; it must fit its bits."""
        part, option = self.field._lookup(name)
        if option is not None:
            raise ValueError(f"{self.field.name}: {name!r} is an option; use set({name!r})")
        if not 0 <= value <= part.max_value:
            raise ValueError(f"{self.field.name}: {name} must be 0..{part.max_value}, got {value}")
        part.put(self._data, value)

    def names(self) -> list[str]:
        return self.field.decode(bytes(self._data))

    def __bytes__(self) -> bytes:
        return bytes(self._data)

    def hex(self) -> str:
        return self._data.hex().upper()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Bits):
            return self.field is other.field and self._data == other._data
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"{self.field.name}({self.hex()}: {self.names()})"


TVR = BitField("TVR", "95", 5, TVR_ROWS, "EMV 4.3 Book 3 Annex C5")
TSI = BitField("TSI", "9B", 2, TSI_ROWS, "EMV 4.3 Book 3 Annex C6")
AIP = BitField("AIP", "82", 2, AIP_ROWS, "EMV 4.3 Book 3 Annex C1")
CVR = BitField("CVR", None, 3, CVR_ROWS, "VIS 1.5 Appendix A; JR/T 0025.5 (IAD 9F10 bytes 5-7)")
TTQ = BitField("TTQ", "9F66", 4, TTQ_ROWS, "JR/T 0025.12; EMV Book A 5.7, Book C-3 Annex A, Book C-7")
CTQ = BitField("CTQ", "9F6C", 2, CTQ_ROWS, "JR/T 0025.12; EMV Book C-3 Annex A")

FIELDS: dict[str, BitField] = {f.name: f for f in (TVR, TSI, AIP, CVR, TTQ, CTQ)}
"""The bit fields by name."""


def pboc_cvr_from_iad(tag_9f10: bytes) -> bytes:
    """The 3 CVR bytes of a PBOC/VIS Issuer Application Data (pboc-notes §2.4; JR/T 0025.5).

    Layout: byte 1 length of the standard part (07), byte 2 DKI, byte 3 CVN, byte 4 CVR length (03),
    bytes 5–7 CVR.

    >>> CVR.decode(pboc_cvr_from_iad(bytes.fromhex("07010103900002040A010000008800180FE8DE")))
    ['second_gac_not_requested', 'first_gac_returned_tc', 'dda_performed']
    """
    if len(tag_9f10) < 7:
        raise ValueError(f"IAD (9F10) must be at least 7 bytes to hold a CVR, got {len(tag_9f10)}")
    if tag_9f10[3] != 0x03:
        raise ValueError(f"IAD (9F10) byte 4 (CVR length) must be 03, got {tag_9f10[3]:02X}")
    return bytes(tag_9f10[4:7])
