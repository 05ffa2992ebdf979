"""The trip record on the card: Part 14 SFI 15, record 0570, 64 bytes (pboc-notes §7).

The validator reads it with READ CAPP DATA and rewrites it in the same tap with UPDATE CAPP DATA
CACHE (``citycard.kernel.capp``), so the fare debit and the record commit together. Project layout
(UNCERTAIN: a city's transit operator defines its own; this one follows the MOT 128-byte 公共汽电车
record's ideas — status, line, station, vehicle, time, amount — in the 64 bytes the citizen card's
Part 14 files allow). Bytes 0–37 are exactly the transit catalogue entry's fields
(``citycard/data/applications/transit.toml``), so ``platform.application_catalogue.decode_record``
still reads them; bytes 38–63 are this module's, versioned::

    off len  field            encoding
      0   2  record ID        binary (0570)
      2   1  valid            01 (the catalogue's header; 00 = unloaded, refused here)
      3   2  city code        n4 BCD
      5   1  concession       n2 BCD (00 none, 01 student, 02 elderly, 03 disabled, 04 child)
      6   1  trip status      n2 BCD: 00 none, 01 entered, 02 exited (trip closed)
      7  20  stop             ASCII, zero padded: the stop of the last tap (the entry stop while entered)
     27   7  time             n14 BCD YYYYMMDDhhmmss, Asia/Shanghai (terminal clock): the last tap
     34   4  held             n8 BCD fen: charged on entry of a segmented line (0 otherwise)
     38   1  layout version   01 (00 with bytes 38–63 all zero: a record just opened, no trip yet)
     39   1  flags            bit 0: the last ride got a transfer discount; bits 4–6: last tap kind
                              (0 none, 1 entry, 2 exit, 3 flat, 4 taxi); other bits 0
     40   6  line             ASCII, zero padded
     46   8  vehicle          ASCII, zero padded (the MOT record's 8-byte vehicle number)
     54   3  charged          n6 BCD fen: what the last tap debited
     57   4  day              n8 BCD YYYYMMDD (Asia/Shanghai) of the day total; 0 = none
     61   3  day total        n6 BCD fen: net capped-mode fares charged that day

>>> import datetime as dt
>>> rec = TripRecord(record_id=bytes.fromhex("0570"), city_code="5104", status=TripStatus.ENTERED,
...     stop="S03", at=dt.datetime(2026, 11, 27, 0, 30, tzinfo=dt.UTC), held_fen=400, last_kind="entry",
...     line="K1", vehicle="川D12345", charged_fen=400, day=dt.date(2026, 11, 27), day_total_fen=400)
Traceback (most recent call last):
...
citycard.sectors.transit.record.RecordError: vehicle: must be 0–8 printable ASCII characters, got '川D12345'
>>> rec = TripRecord(record_id=bytes.fromhex("0570"), city_code="5104", status=TripStatus.ENTERED,
...     stop="S03", at=dt.datetime(2026, 11, 27, 0, 30, tzinfo=dt.UTC), held_fen=400, last_kind="entry",
...     line="K1", vehicle="D12345", charged_fen=400, day=dt.date(2026, 11, 27), day_total_fen=400)
>>> raw = pack_record(rec)
>>> len(raw), raw[:7].hex().upper(), raw[27:34].hex()
(64, '05700151040001', '20261127083000')
>>> unpack_record(raw) == rec
True
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
RECORD_BYTES = 64
LAYOUT_VERSION = 1
VALID = 0x01
STOP_CHARS = 20
LINE_CHARS = 6
VEHICLE_CHARS = 8
HELD_FEN_MAX = 99_999_999  # n8
CHARGED_FEN_MAX = 999_999  # n6
DAY_TOTAL_FEN_MAX = 999_999  # n6: a larger day total is stored as this (only the cap reads it)
TAP_KINDS = ("entry", "exit", "flat", "taxi")  # flag codes 1…4
_FLAG_TRANSFER = 0x01
_KIND_SHIFT, _KIND_MASK = 4, 0x70
_EXT = slice(38, 64)


class RecordError(ValueError):
    """A trip record does not fit the layout: the message names the field (and offset)."""


class TripStatus(enum.IntEnum):
    NONE = 0
    ENTERED = 1
    EXITED = 2


def _ascii(name: str, value: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) > size or not all(0x20 < ord(c) < 0x7F for c in value):
        raise RecordError(f"{name}: must be 0–{size} printable ASCII characters, got {value!r}")
    return value.encode("ascii").ljust(size, b"\x00")


@dataclass(frozen=True, slots=True)
class TripRecord:
    """The card's trip record, decoded (see the module note). ``at`` is aware UTC (or None)."""

    record_id: bytes
    city_code: str = "0000"
    concession: int = 0
    status: TripStatus = TripStatus.NONE
    stop: str = ""
    at: dt.datetime | None = None
    held_fen: int = 0
    last_kind: str | None = None
    transfer: bool = False
    line: str = ""
    vehicle: str = ""
    charged_fen: int = 0
    day: dt.date | None = None
    day_total_fen: int = 0

    def __post_init__(self) -> None:
        if len(self.record_id) != 2:
            raise RecordError(f"record_id: must be 2 bytes, got {len(self.record_id)}")
        if not (isinstance(self.city_code, str) and len(self.city_code) == 4 and self.city_code.isdigit()):
            raise RecordError(f"city_code: must be 4 digits, got {self.city_code!r}")
        if not 0 <= self.concession <= 99:
            raise RecordError(f"concession: must be 00–99, got {self.concession}")
        for name, size in (("stop", STOP_CHARS), ("line", LINE_CHARS), ("vehicle", VEHICLE_CHARS)):
            _ascii(name, getattr(self, name), size)
        if self.at is not None and (self.at.tzinfo is None or self.at.utcoffset() is None):
            raise RecordError("at: must be an aware datetime")
        if self.last_kind is not None and self.last_kind not in TAP_KINDS:
            raise RecordError(f"last_kind: must be one of {', '.join(TAP_KINDS)}, got {self.last_kind!r}")
        for name, hi in (("held_fen", HELD_FEN_MAX), ("charged_fen", CHARGED_FEN_MAX)):
            value = getattr(self, name)
            if not 0 <= value <= hi:
                raise RecordError(f"{name}: must be 0–{hi}, got {value}")
        if self.day_total_fen < 0:
            raise RecordError(f"day_total_fen: must be ≥ 0, got {self.day_total_fen}")
        if self.status is not TripStatus.NONE and self.at is None:
            raise RecordError("at: a record with a trip needs the tap time")


def _bcd(value: int, size: int) -> bytes:
    return bytes.fromhex(f"{value:0{size * 2}d}")


def _digits(raw: bytes, name: str, offset: int) -> str:
    text = raw.hex()
    if not text.isdigit():
        raise RecordError(f"{name} (offset {offset}): not BCD digits: {text.upper()}")
    return text


def pack_record(record: TripRecord) -> bytes:
    """The 64 bytes to write with UPDATE CAPP DATA CACHE (layout in the module note)."""
    when = b"\x00" * 7
    if record.at is not None:
        when = bytes.fromhex(record.at.astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S"))
    kind = 0 if record.last_kind is None else TAP_KINDS.index(record.last_kind) + 1
    flags = (_FLAG_TRANSFER if record.transfer else 0) | (kind << _KIND_SHIFT)
    day = _bcd(0, 4) if record.day is None else bytes.fromhex(record.day.strftime("%Y%m%d"))
    out = b"".join(
        (
            record.record_id,
            bytes([VALID]),
            bytes.fromhex(record.city_code),
            _bcd(record.concession, 1),
            _bcd(int(record.status), 1),
            _ascii("stop", record.stop, STOP_CHARS),
            when,
            _bcd(record.held_fen, 4),
            bytes([LAYOUT_VERSION, flags]),
            _ascii("line", record.line, LINE_CHARS),
            _ascii("vehicle", record.vehicle, VEHICLE_CHARS),
            _bcd(record.charged_fen, 3),
            day,
            _bcd(min(record.day_total_fen, DAY_TOTAL_FEN_MAX), 3),
        )
    )
    assert len(out) == RECORD_BYTES
    return out


def _text(raw: bytes, name: str, offset: int) -> str:
    body = raw.rstrip(b"\x00")
    if b"\x00" in body or not all(0x20 < b < 0x7F for b in body):
        raise RecordError(f"{name} (offset {offset}): not zero-padded printable ASCII: {raw.hex().upper()}")
    return body.decode("ascii")


def unpack_record(raw: bytes, *, record_id: bytes | None = None) -> TripRecord:
    """Decode a record read from the card; any deviation raises :class:`RecordError` naming the field."""
    if len(raw) != RECORD_BYTES:
        raise RecordError(f"trip record must be {RECORD_BYTES} bytes, got {len(raw)}")
    if record_id is not None and raw[:2] != record_id:
        raise RecordError(
            f"record_id (offset 0): expected {record_id.hex().upper()}, got {raw[:2].hex().upper()}"
        )
    if raw[2] != VALID:
        raise RecordError(
            f"valid (offset 2): must be 01 (the transit application is loaded), got {raw[2]:02X}"
        )
    city = _digits(raw[3:5], "city_code", 3)
    concession = int(_digits(raw[5:6], "concession", 5))
    status_n = int(_digits(raw[6:7], "trip_status", 6))
    if status_n not in TripStatus._value2member_map_:
        raise RecordError(f"trip_status (offset 6): must be 00, 01 or 02, got {status_n:02d}")
    status = TripStatus(status_n)
    stop = _text(raw[7:27], "stop", 7)
    when_digits = _digits(raw[27:34], "time", 27)
    at = None
    if int(when_digits):
        try:
            local = dt.datetime.strptime(when_digits, "%Y%m%d%H%M%S")
        except ValueError:
            raise RecordError(f"time (offset 27): not a date and time: {when_digits}") from None
        at = local.replace(tzinfo=SHANGHAI).astimezone(dt.UTC)
    held = int(_digits(raw[34:38], "held", 34))
    version = raw[38]
    if version == 0:
        if any(raw[_EXT]):
            raise RecordError("layout version (offset 38): 00 but bytes 38–63 are not all zero")
        if status is not TripStatus.NONE or held:
            raise RecordError("layout version (offset 38): 00 (fresh record) but a trip is recorded")
        return TripRecord(record_id=raw[:2], city_code=city, concession=concession, stop=stop, at=at)
    if version != LAYOUT_VERSION:
        raise RecordError(
            f"layout version (offset 38): this validator reads {LAYOUT_VERSION:02X}, got {version:02X}"
        )
    flags = raw[39]
    if flags & ~(_FLAG_TRANSFER | _KIND_MASK) & 0xFF:
        raise RecordError(f"flags (offset 39): reserved bits set: {flags:02X}")
    kind_code = (flags & _KIND_MASK) >> _KIND_SHIFT
    if kind_code > len(TAP_KINDS):
        raise RecordError(f"flags (offset 39): tap kind {kind_code} is not 0–{len(TAP_KINDS)}")
    day_digits = _digits(raw[57:61], "day", 57)
    day = None
    if int(day_digits):
        try:
            day = dt.datetime.strptime(day_digits, "%Y%m%d").date()
        except ValueError:
            raise RecordError(f"day (offset 57): not a date: {day_digits}") from None
    if status is not TripStatus.NONE and at is None:
        raise RecordError("time (offset 27): zero, but the record holds a trip")
    return TripRecord(
        record_id=raw[:2],
        city_code=city,
        concession=concession,
        status=status,
        stop=stop,
        at=at,
        held_fen=held,
        last_kind=TAP_KINDS[kind_code - 1] if kind_code else None,
        transfer=bool(flags & _FLAG_TRANSFER),
        line=_text(raw[40:46], "line", 40),
        vehicle=_text(raw[46:54], "vehicle", 46),
        charged_fen=int(_digits(raw[54:57], "charged", 54)),
        day=day,
        day_total_fen=int(_digits(raw[61:64], "day_total", 61)),
    )
