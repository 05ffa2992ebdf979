"""The catalogue of sector applications a citizen card can carry, as data (DESIGN.md §3 "specs as data").

One TOML file per application in ``citycard/data/applications/`` (docs/applications.md): its id,
names (zh/en), the sector that runs it and the sectors that may read it, the PBOC Part 14 file it
lives in (SFI, 2-byte record ID, record size; pboc-notes §7) and its record layout, and the HSM
labels of its keys: the issuer's **opening key** masters for that file (the profile's
``[issuer] imk_capp``, ``-<suite>-<sfi>`` added) and the sector's **record key** master
(``-<suite>`` added; the sector's PSAM key for later ``84 DE`` writes).

Record (project layout, UNCERTAIN: the sector specs — WS/T 543 for health, the MOHRSS card spec,
the MOT transit record — define their own; pboc-notes §7, §8): record ID (2) ‖ status (1: 01 valid,
00 invalid = unloaded) ‖ the fields in order ‖ zero padding to ``record_bytes``. Field types:

* ``n`` — BCD digits, right-aligned, left-padded with 0 (a string of digits or an int; read back
  at full width, ``"1"`` in a 1-byte field reads ``"01"``);
* ``fen`` — an amount in fen, BCD like ``n`` (an int ≥ 0; DESIGN.md §3: money is integer fen);
* ``an`` — printable ASCII, left-aligned, zero-padded;
* ``gbk`` — Chinese text in GBK (as the health/social cards use), left-aligned, zero-padded;
* ``date`` — ``YYYY-MM-DD`` as 4 BCD bytes ``YYYYMMDD``;
* ``b`` — hex bytes, exactly the field's size.

>>> app = catalogue()["campus"]
>>> (app.sfi, app.record_id.hex().upper(), app.record_bytes)
(23, '4301', 64)
>>> record = encode_record(app, {"school_code": "1033500001", "member_no": "2026A0042",
...     "role": "01", "faculty": "计算机学院", "valid_until": "2030-07-31"})
>>> record[:3].hex().upper(), len(record)
('430101', 64)
>>> decode_record(app, record)["faculty"]
'计算机学院'
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

FORMAT = "citycard-application/1"
RECORD_ID_BYTES = 2
STATUS_BYTES = 1
HEADER_BYTES = RECORD_ID_BYTES + STATUS_BYTES
STATUS_VALID, STATUS_INVALID = 0x01, 0x00
RECORD_BYTES_MAX = 64  # the citizen card's Part 14 files take records of up to 64 bytes
FIELD_TYPES = ("n", "fen", "an", "gbk", "date", "b")
SUITE_LABELS = {"GM": "gm", "INTL": "intl"}  # the HSM label suffixes of each algorithm suite
_ID = re.compile(r"^[a-z][a-z0-9_]{1,23}$")


class CatalogueError(ValueError):
    """A catalogue file is malformed: the message names the file and the entry."""


class RecordError(ValueError):
    """A value does not fit the record layout: ``field`` names it."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    size: int  # bytes on the card
    default: Any = None  # None: the value is required
    description: str = ""


@dataclass(frozen=True)
class Application:
    """One catalogue entry (module note)."""

    id: str
    name_zh: str
    name_en: str
    sector: str
    readers: tuple[str, ...]  # sectors that may read it (besides its own)
    sfi: int
    record_id: bytes
    record_bytes: int
    opening_key: str  # HSM label base of the file's opening-key masters ("-gm-17" added)
    record_key: str  # HSM label base of the sector's record-key master ("-gm" added)
    create_missing_keys: bool  # the test issuer creates a missing record-key master
    fields: tuple[Field, ...]
    description: str = ""
    installs_ddf1: bool = False  # [ddf1] install = true: also load the health DDF1 (docs/health-card.md)

    def opening_label(self, suite_name: str) -> str:
        return f"{self.opening_key}-{SUITE_LABELS[suite_name]}-{self.sfi:02x}"

    def record_label(self, suite_name: str) -> str:
        return f"{self.record_key}-{SUITE_LABELS[suite_name]}"

    def public(self) -> dict[str, Any]:
        """The catalogue entry as JSON (for the API and the console): no key, only labels."""
        return {
            "id": self.id,
            "name": {"zh": self.name_zh, "en": self.name_en},
            "sector": self.sector,
            "readers": list(self.readers),
            "file": {
                "sfi": self.sfi,
                "record_id": self.record_id.hex().upper(),
                "record_bytes": self.record_bytes,
            },
            "fields": [
                {"name": f.name, "type": f.type, "bytes": f.size, "required": f.default is None}
                for f in self.fields
            ],
            "keys": {"opening": self.opening_key, "record": self.record_key},
            "description": self.description,
        }


def _field(where: str, entry: dict[str, Any]) -> Field:
    try:
        name, kind, size = entry["name"], entry["type"], entry["bytes"]
    except KeyError as exc:
        raise CatalogueError(f"{where}: a field needs name, type and bytes (missing {exc})") from None
    if kind not in FIELD_TYPES:
        raise CatalogueError(f"{where}: field {name}: type {kind!r} is not one of {', '.join(FIELD_TYPES)}")
    if not isinstance(size, int) or size < 1 or (kind == "date" and size != 4):
        raise CatalogueError(f"{where}: field {name}: bytes must be ≥ 1 (a date is 4)")
    field = Field(name, kind, size, entry.get("default"), entry.get("description", ""))
    if field.default is not None:
        try:
            encode_field(field, field.default)
        except RecordError as exc:
            raise CatalogueError(f"{where}: field {name}: default does not fit: {exc.reason}") from None
    return field


def parse_application(where: str, doc: dict[str, Any]) -> Application:
    """One catalogue file's content (``where`` names it in errors)."""
    if doc.get("format") != FORMAT:
        raise CatalogueError(f"{where}: format must be {FORMAT!r}")
    try:
        ident, names, file, keys = doc["id"], doc["name"], doc["file"], doc["keys"]
        fields = tuple(_field(where, f) for f in doc["fields"])
        app = Application(
            id=ident,
            name_zh=names["zh"],
            name_en=names["en"],
            sector=doc["sector"],
            readers=tuple(doc.get("readers", ())),
            sfi=file["sfi"],
            record_id=bytes.fromhex(file["record_id"]),
            record_bytes=file["record_bytes"],
            opening_key=keys["opening"],
            record_key=keys["record"],
            create_missing_keys=bool(keys.get("create_missing", False)),
            fields=fields,
            description=doc.get("description", ""),
            installs_ddf1=bool(doc.get("ddf1", {}).get("install", False)),
        )
    except KeyError as exc:
        raise CatalogueError(f"{where}: missing {exc}") from None
    except ValueError as exc:
        raise CatalogueError(f"{where}: {exc}") from None
    if not _ID.match(app.id):
        raise CatalogueError(f"{where}: id {app.id!r} must be 2–24 of a-z, 0-9, _ starting with a letter")
    if not 1 <= app.sfi <= 30 or len(app.record_id) != RECORD_ID_BYTES:
        raise CatalogueError(f"{where}: file.sfi must be 1–30 and file.record_id 2 bytes (4 hex digits)")
    if not HEADER_BYTES < app.record_bytes <= RECORD_BYTES_MAX:
        raise CatalogueError(f"{where}: file.record_bytes must be {HEADER_BYTES + 1}–{RECORD_BYTES_MAX}")
    used = HEADER_BYTES + sum(f.size for f in fields)
    if used > app.record_bytes:
        raise CatalogueError(f"{where}: the fields need {used} bytes, the record has {app.record_bytes}")
    if len({f.name for f in fields}) != len(fields):
        raise CatalogueError(f"{where}: a field name appears twice")
    return app


def check_catalogue(apps: list[Application]) -> dict[str, Application]:
    """Refuse two applications with one id or one (file, record ID): they would overwrite each other."""
    out: dict[str, Application] = {}
    places: dict[tuple[int, bytes], str] = {}
    for app in apps:
        if app.id in out:
            raise CatalogueError(f"application id {app.id!r} appears twice")
        place = (app.sfi, app.record_id)
        if place in places:
            raise CatalogueError(
                f"{app.id} and {places[place]} both use SFI {app.sfi:02X} record {app.record_id.hex().upper()}"
            )
        places[place] = app.id
        out[app.id] = app
    return out


@cache
def catalogue() -> dict[str, Application]:
    """The shipped catalogue, by id (loaded once)."""
    root = resources.files("citycard").joinpath("data", "applications")
    apps = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            apps.append(parse_application(entry.name, tomllib.loads(entry.read_text(encoding="utf-8"))))
    return check_catalogue(apps)


# --- record coding ----------------------------------------------------------------------------


def _bcd(field: Field, digits: str) -> bytes:
    if not digits.isdigit() or not digits.isascii():
        raise RecordError(field.name, f"digits only, got {digits!r}")
    if len(digits) > 2 * field.size:
        raise RecordError(field.name, f"at most {2 * field.size} digits, got {len(digits)}")
    return bytes.fromhex(digits.rjust(2 * field.size, "0"))


def _text(field: Field, raw: bytes) -> bytes:
    if len(raw) > field.size:
        raise RecordError(field.name, f"at most {field.size} bytes, got {len(raw)}")
    return raw.ljust(field.size, b"\x00")


def encode_field(field: Field, value: Any) -> bytes:
    """One field's bytes (module note); :class:`RecordError` names the field and the reason."""
    kind = field.type
    if kind == "fen":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RecordError(field.name, f"an integer amount in fen ≥ 0, got {value!r}")
        return _bcd(field, str(value))
    if kind == "n":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            value = str(value)
        if not isinstance(value, str):
            raise RecordError(field.name, f"a string of digits, got {type(value).__name__}")
        return _bcd(field, value)
    if not isinstance(value, str):
        raise RecordError(field.name, f"a string, got {type(value).__name__}")
    if kind == "an":
        if not value.isascii() or not value.isprintable():
            raise RecordError(field.name, f"printable ASCII only, got {value!r}")
        return _text(field, value.encode("ascii"))
    if kind == "gbk":
        if not value.isprintable():
            raise RecordError(field.name, "printable text only")
        try:
            return _text(field, value.encode("gbk"))
        except UnicodeEncodeError:
            raise RecordError(field.name, f"{value!r} has characters outside GBK") from None
    if kind == "date":
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise RecordError(field.name, f"a date YYYY-MM-DD, got {value!r}") from None
        return _bcd(field, day.strftime("%Y%m%d"))
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise RecordError(field.name, f"hex digits, got {value!r}") from None
    if len(raw) != field.size:
        raise RecordError(field.name, f"exactly {field.size} bytes, got {len(raw)}")
    return raw


def decode_field(field: Field, raw: bytes) -> Any:
    """The value back from a field's bytes (the inverse of :func:`encode_field`)."""
    kind = field.type
    if kind in ("n", "fen"):
        digits = raw.hex()
        if not digits.isdigit():
            raise RecordError(field.name, f"not BCD: {raw.hex().upper()}")
        return int(digits) if kind == "fen" else digits  # n: fixed width, leading zeros kept
    if kind == "an":
        return raw.rstrip(b"\x00").decode("ascii", errors="replace")
    if kind == "gbk":
        return raw.rstrip(b"\x00").decode("gbk", errors="replace")
    if kind == "date":
        text = raw.hex()
        return "" if text == "00000000" else f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return raw.hex().upper()


def check_values(app: Application, data: dict[str, Any]) -> dict[str, Any]:
    """The complete values of a record: ``data`` plus defaults; unknown or missing names refused."""
    known = {f.name for f in app.fields}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecordError(unknown[0], f"not a field of {app.id} (fields: {', '.join(sorted(known))})")
    values = {}
    for f in app.fields:
        value = data.get(f.name, f.default)
        if value is None:
            raise RecordError(f.name, f"required by {app.id}")
        values[f.name] = value
    return values


def encode_record(app: Application, data: dict[str, Any]) -> bytes:
    """The valid record for ``data`` (module note): ID ‖ 01 ‖ fields ‖ zero padding."""
    values = check_values(app, data)
    body = b"".join(encode_field(f, values[f.name]) for f in app.fields)
    return (app.record_id + bytes([STATUS_VALID]) + body).ljust(app.record_bytes, b"\x00")


def invalid_record(app: Application) -> bytes:
    """The record an unload leaves: ID ‖ 00 and zeros — the sector's data erased from the chip too."""
    return (app.record_id + bytes([STATUS_INVALID])).ljust(app.record_bytes, b"\x00")


def decode_record(app: Application, record: bytes) -> dict[str, Any]:
    """``{"valid": bool, <field>: value…}`` from a record read off a card."""
    if record[:RECORD_ID_BYTES] != app.record_id or len(record) < HEADER_BYTES:
        raise RecordError("record_id", f"the record is not {app.id}'s ({record[:2].hex().upper()})")
    out: dict[str, Any] = {"valid": record[RECORD_ID_BYTES] == STATUS_VALID}
    offset = HEADER_BYTES
    for f in app.fields:
        out[f.name] = decode_field(f, record[offset : offset + f.size])
        offset += f.size
    return out
