"""A city's transit fare table as data (DESIGN.md §3 "specs as data"; docs/transit-fares.md).

One TOML file per city in ``citycard/data/transit/``: operators, lines (segmented bus lines with
ordered stops, a section per stop and a fare per number of sections crossed; flat-fare lines;
metered taxis with an optional surcharge), concessions by cardholder kind (the platform's kinds,
``citycard/data/platform/cardholder_kinds.toml``), transfer discounts, a daily cap, the anti-double-
tap window and the missing-exit policy. :func:`parse_table` checks everything and raises
:class:`FareTableError` naming the key; the result is immutable and used by :mod:`.pricing`.

UNCERTAIN: fare policy (sections, caps, transfer windows, concessions, missing-exit rules) is set
by each city and operator; the shipped table has typical values, not a regulation.

>>> table = load_table("panzhihua")
>>> (table.city_code, table.lines["K1"].max_fare_fen, table.lines["3"].fare_fen)
('5104', 400, 200)
>>> table.payable_percent("elderly"), table.payable_percent("student"), table.payable_percent("resident")
(0, 50, 100)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from citycard.sectors.transit.record import LINE_CHARS, STOP_CHARS

FORMAT = "citycard-fares/1"
LINES_MAX = 2_000  # lines in one table (a big city has ~1,000 bus lines)
STOPS_MAX = 250  # stops on one line
FARE_FEN_MAX = 100_000  # one ride's fare (1,000 yuan): a typo guard
SURCHARGE_FEN_MAX = 10_000
CAP_FEN_MAX = 999_999  # the record's day total is 6 BCD digits (record.DAY_TOTAL_FEN_MAX)
DOUBLE_TAP_SECONDS_MAX = 3_600
TRANSFER_MINUTES_MAX = 24 * 60
TRANSFER_RULES_MAX = 50
FARE_KINDS = ("segmented", "flat", "metered")
EXIT_WITHOUT_ENTRY = ("charge_max", "refuse")
MISSING_EXIT_FARE = ("farthest_from_entry", "line_maximum")
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_MODE = re.compile(r"^[a-z][a-z0-9_]{0,23}$")


class FareTableError(ValueError):
    """A fare table is malformed: the message names the key (``lines[K1].sections[3]: …``)."""


@dataclass(frozen=True, slots=True)
class Line:
    """One line: ``fare`` is ``segmented`` (entry/exit taps), ``flat`` (one tap) or ``metered`` (taxi).

    Segmented: ``stops`` in order, ``sections[i]`` the section of stop i (non-decreasing from 0),
    ``fares_fen[n]`` the fare for crossing n section boundaries (either direction).
    """

    id: str
    operator: str
    mode: str
    fare: str
    concessions: bool
    fare_fen: int = 0
    surcharge_fen: int = 0
    stops: tuple[str, ...] = ()
    sections: tuple[int, ...] = ()
    fares_fen: tuple[int, ...] = ()

    @property
    def max_fare_fen(self) -> int:
        """The most a ride can cost (held on entry for segmented lines); 0 for metered."""
        if self.fare == "segmented":
            return self.fares_fen[-1]
        return self.fare_fen

    def section_of(self, stop: str) -> int:
        return self.sections[self.stops.index(stop)]

    def segment_fare_fen(self, entry: str, exit_: str) -> int:
        """The fare between two stops of a segmented line (sections crossed, either direction)."""
        return self.fares_fen[abs(self.section_of(exit_) - self.section_of(entry))]

    def farthest_fare_fen(self, entry: str) -> int:
        """The fare from ``entry`` to the farther end of the line (missing-exit policy)."""
        s = self.section_of(entry)
        return self.fares_fen[max(s, self.sections[-1] - s)]


@dataclass(frozen=True, slots=True)
class TransferRule:
    """A discount off the next ride when it starts within ``within_minutes`` of the previous tap."""

    from_modes: frozenset[str]
    from_lines: frozenset[str]
    to_modes: frozenset[str]
    to_lines: frozenset[str]
    within_minutes: int
    discount_fen: int
    same_line: bool

    def matches(self, previous: Line, following: Line) -> bool:
        if previous.id == following.id and not self.same_line:
            return False
        from_ok = previous.mode in self.from_modes or previous.id in self.from_lines
        return from_ok and (following.mode in self.to_modes or following.id in self.to_lines)


@dataclass(frozen=True, slots=True)
class FareTable:
    """A validated fare table (see the module note); build it with :func:`parse_table`."""

    version: int
    city_code: str
    record_id: bytes
    double_tap_seconds: int
    exit_without_entry: str
    missing_exit_fare: str
    transfer_chain: bool
    operators: Mapping[str, str]
    lines: Mapping[str, Line]
    transfers: tuple[TransferRule, ...]
    cap_daily_fen: int | None
    cap_modes: frozenset[str]
    concessions: Mapping[str, int]
    kind_concessions: Mapping[str, tuple[str, ...]] = field(repr=False)
    concession_codes: Mapping[int, str] = field(default_factory=dict)

    def payable_percent(self, holder_kind: str) -> int:
        """Percent of the fare a cardholder kind pays: the best of its concessions this table lists."""
        if holder_kind not in self.kind_concessions:
            raise FareTableError(
                f"unknown cardholder kind {holder_kind!r}; one of {sorted(self.kind_concessions)}"
            )
        listed = [self.concessions[c] for c in self.kind_concessions[holder_kind] if c in self.concessions]
        return min(listed, default=100)

    def concession_name(self, holder_kind: str) -> str | None:
        """The concession that sets :meth:`payable_percent` (for the decision's reasons)."""
        best = None
        for name in self.kind_concessions.get(holder_kind, ()):
            if name in self.concessions and (best is None or self.concessions[name] < self.concessions[best]):
                best = name
        return best

    def capped(self, line: Line) -> bool:
        return self.cap_daily_fen is not None and line.mode in self.cap_modes

    def transfer_rule(self, previous: Line, following: Line) -> TransferRule | None:
        """The first rule matching (previous line → following line), in table order."""
        return next((r for r in self.transfers if r.matches(previous, following)), None)

    def holder_kind_of_code(self, code: int) -> str:
        """The cardholder kind the card record's concession byte names (``[concession_codes]``)."""
        if code not in self.concession_codes:
            raise FareTableError(f"concession code {code:02d} is not in [concession_codes]")
        return self.concession_codes[code]


# --- parsing ---------------------------------------------------------------------------------------


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FareTableError(f"{where}: must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise FareTableError(f"{where}: must be {lo}–{hi}, got {value}")
    return value


def _keys(where: str, table: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    if not isinstance(table, Mapping):
        raise FareTableError(f"{where}: must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise FareTableError(f"{where}: unknown keys {sorted(unknown)}")
    missing = required - set(table)
    if missing:
        raise FareTableError(f"{where}: missing keys {sorted(missing)}")


def _ident(where: str, value: Any, size: int) -> str:
    if not isinstance(value, str) or not _ID.match(value) or len(value) > size:
        raise FareTableError(f"{where}: must be 1–{size} characters of A-Z a-z 0-9 _ . -, got {value!r}")
    return value


def _names(where: str, value: Any, pattern: re.Pattern[str] | None = None) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FareTableError(f"{where}: must be a list of strings")
    if pattern is not None:
        bad = [v for v in value if not pattern.match(v)]
        if bad:
            raise FareTableError(f"{where}: bad names {bad}")
    return frozenset(value)


_LINE_KEYS = {"id", "operator", "mode", "fare", "concessions", "fare_fen", "surcharge_fen", "stops"}
_LINE_KEYS |= {"sections", "fares_fen", "zh", "en"}


def _line(where: str, raw: Mapping[str, Any], operators: Mapping[str, str]) -> Line:
    _keys(where, raw, _LINE_KEYS, {"id", "operator", "mode", "fare"})
    line_id = _ident(f"{where}.id", raw["id"], LINE_CHARS)
    where = f"lines[{line_id}]"
    if raw["operator"] not in operators:
        raise FareTableError(f"{where}.operator: {raw['operator']!r} is not in [operators]")
    if not isinstance(raw["mode"], str) or not _MODE.match(raw["mode"]):
        raise FareTableError(f"{where}.mode: must be a lower-case name like 'bus', got {raw['mode']!r}")
    fare = raw["fare"]
    if fare not in FARE_KINDS:
        raise FareTableError(f"{where}.fare: must be one of {', '.join(FARE_KINDS)}, got {fare!r}")
    concessions = raw.get("concessions", fare != "metered")
    if not isinstance(concessions, bool):
        raise FareTableError(f"{where}.concessions: must be true or false")
    common = {"id": line_id, "operator": raw["operator"], "mode": raw["mode"], "fare": fare}
    extra = {
        "segmented": {"stops", "sections", "fares_fen"},
        "flat": {"fare_fen", "stops"},
        "metered": {"surcharge_fen"},
    }[fare]
    misplaced = set(raw) - extra - {"id", "operator", "mode", "fare", "concessions", "zh", "en"}
    if misplaced:
        raise FareTableError(f"{where}: keys {sorted(misplaced)} do not apply to a {fare} line")
    if fare == "flat":
        if "fare_fen" not in raw:
            raise FareTableError(f"{where}: a flat line needs fare_fen")
        stops = _stops(where, raw.get("stops", []), required=False)
        fen = _int(f"{where}.fare_fen", raw["fare_fen"], 0, FARE_FEN_MAX)
        return Line(**common, concessions=concessions, fare_fen=fen, stops=stops)
    if fare == "metered":
        fen = _int(f"{where}.surcharge_fen", raw.get("surcharge_fen", 0), 0, SURCHARGE_FEN_MAX)
        return Line(**common, concessions=concessions, surcharge_fen=fen)
    for key in ("stops", "sections", "fares_fen"):
        if key not in raw:
            raise FareTableError(f"{where}: a segmented line needs {key}")
    stops = _stops(where, raw["stops"], required=True)
    sections = raw["sections"]
    if not isinstance(sections, list) or len(sections) != len(stops):
        raise FareTableError(f"{where}.sections: needs one section per stop ({len(stops)})")
    for i, s in enumerate(sections):
        _int(f"{where}.sections[{i}]", s, 0, STOPS_MAX)
        if i == 0 and s != 0:
            raise FareTableError(f"{where}.sections[0]: the first stop is section 0, got {s}")
        if i and s < sections[i - 1]:
            raise FareTableError(f"{where}.sections[{i}]: sections must not decrease along the line")
    fares = raw["fares_fen"]
    if not isinstance(fares, list) or len(fares) != sections[-1] + 1:
        raise FareTableError(
            f"{where}.fares_fen: needs one fare per sections crossed, 0…{sections[-1]} ({sections[-1] + 1})"
        )
    for i, f in enumerate(fares):
        _int(f"{where}.fares_fen[{i}]", f, 0, FARE_FEN_MAX)
        if i and f < fares[i - 1]:
            raise FareTableError(
                f"{where}.fares_fen[{i}]: a longer ride must not cost less ({f} < {fares[i - 1]})"
            )
    return Line(
        **common, concessions=concessions, stops=stops, sections=tuple(sections), fares_fen=tuple(fares)
    )


def _stops(where: str, stops: Any, *, required: bool) -> tuple[str, ...]:
    if not isinstance(stops, list) or (required and len(stops) < 2) or len(stops) > STOPS_MAX:
        raise FareTableError(f"{where}.stops: must be a list of {2 if required else 0}–{STOPS_MAX} stop ids")
    out = tuple(_ident(f"{where}.stops[{i}]", s, STOP_CHARS) for i, s in enumerate(stops))
    if len(set(out)) != len(out):
        dup = sorted({s for s in out if out.count(s) > 1})
        raise FareTableError(f"{where}.stops: repeated stop ids {dup}")
    return out


def _transfer(where: str, raw: Mapping[str, Any], lines: Mapping[str, Line]) -> TransferRule:
    allowed = {
        "from_modes",
        "from_lines",
        "to_modes",
        "to_lines",
        "within_minutes",
        "discount_fen",
        "same_line",
    }
    _keys(where, raw, allowed, {"within_minutes", "discount_fen"})
    sets = {
        k: _names(f"{where}.{k}", raw.get(k, []))
        for k in ("from_modes", "from_lines", "to_modes", "to_lines")
    }
    for side in ("from", "to"):
        if not sets[f"{side}_modes"] and not sets[f"{side}_lines"]:
            raise FareTableError(f"{where}: needs {side}_modes or {side}_lines")
        unknown = sets[f"{side}_lines"] - set(lines)
        if unknown:
            raise FareTableError(f"{where}.{side}_lines: unknown lines {sorted(unknown)}")
    same_line = raw.get("same_line", False)
    if not isinstance(same_line, bool):
        raise FareTableError(f"{where}.same_line: must be true or false")
    return TransferRule(
        **sets,
        within_minutes=_int(f"{where}.within_minutes", raw["within_minutes"], 1, TRANSFER_MINUTES_MAX),
        discount_fen=_int(f"{where}.discount_fen", raw["discount_fen"], 1, FARE_FEN_MAX),
        same_line=same_line,
    )


_TOP = {"format", "version", "city_code", "record_id", "double_tap_seconds", "exit_without_entry"}
_TOP |= {"missing_exit_fare", "transfer_chain", "operators", "lines", "transfers", "cap", "concessions"}
_TOP |= {"concession_codes", "zh", "en"}


def parse_table(text: str, *, kinds: Mapping[str, tuple[str, ...]] | None = None) -> FareTable:
    """A fare table from TOML text; ``kinds`` maps cardholder kind → its concessions (default: the
    platform's shipped kinds). Any problem raises :class:`FareTableError` naming the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FareTableError(f"fare table: not TOML: {exc}") from None
    if kinds is None:
        from citycard.platform.identity import kinds as platform_kinds

        kinds = {name: k.concessions for name, k in platform_kinds().items()}
    _keys("fare table", doc, _TOP, {"format", "version", "city_code", "record_id", "operators", "lines"})
    if doc["format"] != FORMAT:
        raise FareTableError(f"format: must be {FORMAT!r}, got {doc['format']!r}")
    version = _int("version", doc["version"], 1, 2**31 - 1)
    city = doc["city_code"]
    if not isinstance(city, str) or not re.fullmatch(r"\d{4}", city):
        raise FareTableError(f"city_code: must be 4 digits (the record's n4), got {city!r}")
    rid = doc["record_id"]
    if not isinstance(rid, str) or not re.fullmatch(r"[0-9A-Fa-f]{4}", rid):
        raise FareTableError(f"record_id: must be 4 hex digits (2 bytes), got {rid!r}")
    double_tap = _int("double_tap_seconds", doc.get("double_tap_seconds", 0), 0, DOUBLE_TAP_SECONDS_MAX)
    ewe = doc.get("exit_without_entry", "charge_max")
    if ewe not in EXIT_WITHOUT_ENTRY:
        raise FareTableError(
            f"exit_without_entry: must be one of {', '.join(EXIT_WITHOUT_ENTRY)}, got {ewe!r}"
        )
    mef = doc.get("missing_exit_fare", "farthest_from_entry")
    if mef not in MISSING_EXIT_FARE:
        raise FareTableError(f"missing_exit_fare: must be one of {', '.join(MISSING_EXIT_FARE)}, got {mef!r}")
    chain = doc.get("transfer_chain", False)
    if not isinstance(chain, bool):
        raise FareTableError("transfer_chain: must be true or false")

    operators: dict[str, str] = {}
    if not isinstance(doc["operators"], Mapping) or not doc["operators"]:
        raise FareTableError("operators: needs at least one [operators.<id>] table")
    for op_id, op in doc["operators"].items():
        _ident(f"operators.{op_id}", op_id, 32)
        _keys(f"operators.{op_id}", op, {"zh", "en"}, {"en"})
        operators[op_id] = str(op["en"])

    raw_lines = doc["lines"]
    if not isinstance(raw_lines, list) or not 1 <= len(raw_lines) <= LINES_MAX:
        raise FareTableError(f"lines: must be 1–{LINES_MAX} [[lines]] tables")
    lines: dict[str, Line] = {}
    for i, raw in enumerate(raw_lines):
        line = _line(f"lines[{i}]", raw, operators)
        if line.id in lines:
            raise FareTableError(f"lines[{i}].id: line {line.id!r} is defined twice")
        lines[line.id] = line

    raw_transfers = doc.get("transfers", [])
    if not isinstance(raw_transfers, list) or len(raw_transfers) > TRANSFER_RULES_MAX:
        raise FareTableError(f"transfers: must be 0–{TRANSFER_RULES_MAX} [[transfers]] tables")
    transfers = tuple(_transfer(f"transfers[{i}]", r, lines) for i, r in enumerate(raw_transfers))

    cap_fen, cap_modes = None, frozenset[str]()
    if "cap" in doc:
        _keys("cap", doc["cap"], {"daily_fen", "modes"}, {"daily_fen", "modes"})
        cap_fen = _int("cap.daily_fen", doc["cap"]["daily_fen"], 1, CAP_FEN_MAX)
        cap_modes = _names("cap.modes", doc["cap"]["modes"], _MODE)
        if not cap_modes:
            raise FareTableError("cap.modes: name at least one mode")

    concessions: dict[str, int] = {}
    all_concessions = {c for cs in kinds.values() for c in cs}
    for name, pct in doc.get("concessions", {}).items():
        if name not in all_concessions:
            raise FareTableError(f"concessions.{name}: no cardholder kind has this concession")
        concessions[name] = _int(f"concessions.{name}", pct, 0, 100)

    codes: dict[int, str] = {}
    for code, kind in doc.get("concession_codes", {}).items():
        if not re.fullmatch(r"\d{2}", code):
            raise FareTableError(f"concession_codes.{code}: must be 2 digits (the record's n2)")
        if kind not in kinds:
            raise FareTableError(f"concession_codes.{code}: unknown cardholder kind {kind!r}")
        codes[int(code)] = kind

    return FareTable(
        version=version,
        city_code=city,
        record_id=bytes.fromhex(rid),
        double_tap_seconds=double_tap,
        exit_without_entry=ewe,
        missing_exit_fare=mef,
        transfer_chain=chain,
        operators=operators,
        lines=lines,
        transfers=transfers,
        cap_daily_fen=cap_fen,
        cap_modes=cap_modes,
        concessions=concessions,
        kind_concessions={k: tuple(v) for k, v in kinds.items()},
        concession_codes=codes,
    )


def load_table(name: str) -> FareTable:
    """A shipped fare table, ``citycard/data/transit/<name>.toml`` (the only I/O in this package)."""
    if not re.fullmatch(r"[a-z0-9_-]{1,64}", name):
        raise FareTableError(f"fare table name must be 1–64 of a-z 0-9 _ -, got {name!r}")
    path = resources.files("citycard.data") / "transit" / f"{name}.toml"
    if not path.is_file():
        raise FareTableError(f"no shipped fare table {name!r}")
    return parse_table(path.read_text(encoding="utf-8"))
