"""Price one tap: :func:`price_tap`, the function a bus validator or taxi terminal calls per tap.

Pure: the fare table, the card's state (its trip record and day total, read with READ CAPP DATA
before GPO; pboc-notes §7) and the tap in; a :class:`Decision` out — the amount to debit offline,
the record to write back in the same transaction (``citycard.kernel.capp.CappWrite``), the refund
owed (paid later by clearing) and the reasons. Order of the rules (docs/transit-fares.md):

1. anti-double-tap: the same tap kind on the same vehicle within ``double_tap_seconds`` of the
   card's last tap → refused, nothing charged, nothing written;
2. base fare: flat ``fare_fen``; segmented entry holds the line's maximum; segmented exit the fare
   for the sections crossed; taxi the metered amount + surcharge;
3. concession: × the cardholder kind's payable percent (rounded down, in the rider's favour);
4. transfer: − the first matching rule's ``discount_fen`` when the ride starts within the window
   after the previous ride's last tap (the window's end included), never below 0;
5. daily cap: a capped-mode tap charges at most ``cap − day total`` (the day is Asia/Shanghai's
   calendar day of the tap; a segmented trip counts on its entry's day).

A segmented exit debits nothing: the card paid the maximum on entry, and ``refund_fen`` (held −
fare, after the cap) is what clearing pays back. A missing exit keeps the maximum until
:func:`citycard.sectors.transit.correction.correction` refunds the difference.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from citycard.sectors.transit.record import (
    CHARGED_FEN_MAX,
    SHANGHAI,
    TAP_KINDS,
    VEHICLE_CHARS,
    RecordError,
    TripRecord,
    TripStatus,
    _ascii,
    pack_record,
    unpack_record,
)
from citycard.sectors.transit.table import FareTable, FareTableError, Line

METERED_FEN_MAX = 500_000  # one taxi ride (5,000 yuan); with the surcharge it fits the record's n6
_KIND_FOR_FARE = {"segmented": ("entry", "exit"), "flat": ("flat",), "metered": ("taxi",)}

# Reason codes in Decision.reasons (docs/transit-fares.md lists them)
FLAT_FARE, MAX_FARE_HELD, SEGMENT_FARE, METERED, SURCHARGE = (
    "flat_fare", "max_fare_held", "segment_fare", "metered", "surcharge",
)  # fmt: skip
TRANSFER, CAP_REACHED, DOUBLE_TAP = "transfer", "cap_reached", "double_tap"
PREVIOUS_EXIT_MISSING, EXIT_WITHOUT_ENTRY = "previous_exit_missing", "exit_without_entry"


class TapError(ValueError):
    """A tap the table cannot price (unknown line, stop or kind, bad amount): the validator's bug or
    a stale table — nothing is charged, nothing written."""


@dataclass(frozen=True, slots=True)
class Tap:
    """One tap at a validator. ``at`` aware (UTC inside); ``metered_fen`` only for taxi taps."""

    kind: str
    line: str
    vehicle: str
    at: dt.datetime
    stop: str = ""
    metered_fen: int = 0

    def __post_init__(self) -> None:
        if self.kind not in TAP_KINDS:
            raise TapError(f"tap kind must be one of {', '.join(TAP_KINDS)}, got {self.kind!r}")
        if not isinstance(self.at, dt.datetime) or self.at.tzinfo is None or self.at.utcoffset() is None:
            raise TapError(f"tap time must be an aware datetime, got {self.at!r}")
        try:
            _ascii("vehicle", self.vehicle, VEHICLE_CHARS)
        except RecordError as exc:
            raise TapError(str(exc)) from None
        if not self.vehicle:
            raise TapError("vehicle: must not be empty (the anti-double-tap rule keys on it)")
        if isinstance(self.metered_fen, bool) or not isinstance(self.metered_fen, int):
            raise TapError(f"metered_fen must be an integer number of fen, got {self.metered_fen!r}")
        if self.kind == "taxi" and not 1 <= self.metered_fen <= METERED_FEN_MAX:
            raise TapError(f"a taxi tap needs metered_fen 1–{METERED_FEN_MAX}, got {self.metered_fen}")
        if self.kind != "taxi" and self.metered_fen != 0:
            raise TapError(f"metered_fen is for taxi taps only, got {self.metered_fen} on a {self.kind} tap")


@dataclass(frozen=True, slots=True)
class CardState:
    """What the validator read from the card: the trip record (None = never written) and the day
    total the cap counts (``day`` its Asia/Shanghai date). :meth:`of` takes both from a record."""

    trip: TripRecord | None = None
    day: dt.date | None = None
    day_total_fen: int = 0

    @classmethod
    def of(cls, record: TripRecord | bytes | None, table: FareTable | None = None) -> CardState:
        if isinstance(record, bytes):
            record = unpack_record(record, record_id=table.record_id if table else None)
        if record is None:
            return cls()
        return cls(trip=record, day=record.day, day_total_fen=record.day_total_fen)


@dataclass(frozen=True, slots=True)
class Decision:
    """The validator's answer. ``kind``: entry, exit, flat, taxi or refused. ``amount_fen`` is
    debited now; ``fare_fen`` is the fare due before the daily cap (for an entry, the maximum held);
    ``refund_fen`` is owed back (an exit's held − fare; clearing pays it); ``new_trip_record`` is
    written in the same tap (None when refused: decline the tap, write nothing)."""

    kind: str
    amount_fen: int
    fare_fen: int
    refund_fen: int
    new_trip_record: TripRecord | None
    reasons: tuple[str, ...]

    def __post_init__(self) -> None:
        assert 0 <= self.amount_fen <= CHARGED_FEN_MAX and self.refund_fen >= 0 and self.fare_fen >= 0

    @property
    def record_bytes(self) -> bytes | None:
        """The 64 bytes for UPDATE CAPP DATA CACHE, or None when the tap is refused."""
        return None if self.new_trip_record is None else pack_record(self.new_trip_record)


def fare_after(base_fen: int, *, percent: int, discount_fen: int) -> int:
    """Steps 3–4: concession (rounded down) then transfer discount, never below 0.

    >>> fare_after(125, percent=50, discount_fen=0), fare_after(200, percent=100, discount_fen=250)
    (62, 0)
    """
    return max(0, base_fen * percent // 100 - discount_fen)


def held_discount_fen(line: Line, *, percent: int, held_fen: int) -> int | None:
    """The transfer discount an entry applied, recovered from the held (pre-cap) maximum: the
    record has no room for it. None when the hold is 0 (every fare of the trip is then 0)."""
    if held_fen == 0:
        return None
    return fare_after(line.max_fare_fen, percent=percent, discount_fen=0) - held_fen


def _refused(reason: str) -> Decision:
    return Decision("refused", 0, 0, 0, None, (reason,))


def _transfer(table: FareTable, prev: TripRecord, line: Line, at: dt.datetime) -> int:
    """Step 4: the discount for a ride starting at ``at`` after the card's previous ride, or 0."""
    if prev.status is not TripStatus.EXITED or prev.at is None or prev.line not in table.lines:
        return 0
    if prev.transfer and not table.transfer_chain:
        return 0
    rule = table.transfer_rule(table.lines[prev.line], line)
    if rule is None:
        return 0
    waited_s = (at - prev.at).total_seconds()
    return rule.discount_fen if 0 <= waited_s <= rule.within_minutes * 60 else 0


def _cap(table: FareTable, line: Line, fare_fen: int, day_total_fen: int) -> int:
    """Step 5: the amount to charge of ``fare_fen`` given the day total so far."""
    if not table.capped(line):
        return fare_fen
    assert table.cap_daily_fen is not None
    return min(fare_fen, max(0, table.cap_daily_fen - day_total_fen))


def _check(table: FareTable, tap: Tap, holder_kind: str) -> tuple[Line, int, str | None]:
    line = table.lines.get(tap.line)
    if line is None:
        raise TapError(f"line {tap.line!r} is not in fare table version {table.version}")
    if tap.kind not in _KIND_FOR_FARE[line.fare]:
        raise TapError(
            f"a {tap.kind} tap on {line.fare} line {line.id}: expected {'/'.join(_KIND_FOR_FARE[line.fare])}"
        )
    if line.fare == "segmented" and tap.stop not in line.stops:
        raise TapError(f"stop {tap.stop!r} is not on line {line.id}")
    if line.fare == "flat" and tap.stop and line.stops and tap.stop not in line.stops:
        raise TapError(f"stop {tap.stop!r} is not on line {line.id}")
    if line.fare == "metered" and tap.stop:
        raise TapError(f"a taxi tap has no stop, got {tap.stop!r}")
    try:
        percent = table.payable_percent(holder_kind)
    except FareTableError as exc:
        raise TapError(str(exc)) from None
    if not line.concessions:
        return line, 100, None
    return line, percent, table.concession_name(holder_kind) if percent < 100 else None


def price_tap(table: FareTable, *, card_state: CardState, tap: Tap, holder_kind: str) -> Decision:
    """Price one tap (rules in the module note). Raises :class:`TapError` for a tap the table
    cannot price; a refusal (double tap, exit without entry when the table says so) is a Decision.

    >>> import datetime as dt
    >>> from citycard.sectors.transit.table import load_table
    >>> table = load_table("panzhihua")
    >>> at = dt.datetime(2026, 11, 27, 0, 30, tzinfo=dt.UTC)
    >>> d = price_tap(table, card_state=CardState(), tap=Tap("flat", "3", "D10001", at), holder_kind="student")
    >>> d.kind, d.amount_fen, d.reasons
    ('flat', 100, ('flat_fare', 'concession:transit_half_fare'))
    """
    line, percent, concession = _check(table, tap, holder_kind)
    at = tap.at.astimezone(dt.UTC).replace(microsecond=0)
    prev = card_state.trip or TripRecord(record_id=table.record_id, city_code=table.city_code)
    if (
        prev.last_kind == tap.kind
        and prev.vehicle == tap.vehicle
        and prev.at is not None
        and 0 <= (at - prev.at).total_seconds() < table.double_tap_seconds
    ):
        return _refused(DOUBLE_TAP)
    today = at.astimezone(SHANGHAI).date()
    reasons: list[str] = []
    if tap.kind == "exit" and prev.status is TripStatus.ENTERED and prev.line == line.id:
        return _exit(table, line, card_state, prev, tap, at, percent, concession)
    if prev.status is TripStatus.ENTERED:
        reasons.append(PREVIOUS_EXIT_MISSING)  # that trip keeps its maximum; correction() settles it
    day_total = card_state.day_total_fen if card_state.day == today else 0
    discount = 0
    if tap.kind == "exit":
        if table.exit_without_entry == "refuse":
            return _refused(EXIT_WITHOUT_ENTRY)
        reasons.append(EXIT_WITHOUT_ENTRY)
        base = line.max_fare_fen
    else:
        discount = _transfer(table, prev, line, at)
        base = {
            "entry": line.max_fare_fen,
            "flat": line.fare_fen,
            "taxi": tap.metered_fen + line.surcharge_fen,
        }[tap.kind]
        reasons.append({"entry": MAX_FARE_HELD, "flat": FLAT_FARE, "taxi": METERED}[tap.kind])
        if tap.kind == "taxi" and line.surcharge_fen:
            reasons.append(SURCHARGE)
    if concession:
        reasons.append(f"concession:{concession}")
    if discount:
        reasons.append(TRANSFER)
    fare = fare_after(base, percent=percent, discount_fen=discount)
    charged = _cap(table, line, fare, day_total)
    if charged < fare:
        reasons.append(CAP_REACHED)
    record = dataclasses.replace(
        prev,
        status=TripStatus.ENTERED if tap.kind == "entry" else TripStatus.EXITED,
        stop=tap.stop,
        at=at,
        held_fen=fare if tap.kind == "entry" else 0,
        last_kind=tap.kind,
        transfer=bool(discount),
        line=line.id,
        vehicle=tap.vehicle,
        charged_fen=charged,
        day=today,
        day_total_fen=day_total + (charged if table.capped(line) else 0),
    )
    return Decision(tap.kind, charged, fare, 0, record, tuple(reasons))


def _exit(
    table: FareTable,
    line: Line,
    card_state: CardState,
    prev: TripRecord,
    tap: Tap,
    at: dt.datetime,
    percent: int,
    concession: str | None,
) -> Decision:
    """A segmented exit closing the card's open trip: the fare, and the refund of the held excess."""
    reasons = [SEGMENT_FARE]
    if concession:
        reasons.append(f"concession:{concession}")
    if prev.transfer:
        reasons.append(TRANSFER)
    discount = held_discount_fen(line, percent=percent, held_fen=prev.held_fen)
    seg = line.segment_fare_fen(prev.stop, tap.stop)
    fare = (
        0 if discount is None else min(prev.held_fen, fare_after(seg, percent=percent, discount_fen=discount))
    )
    # The trip counts on its entry's day: the record's day, whose total includes the entry's charge.
    capped = table.capped(line)
    # A state without the entry day's total: take the entry as that day's only capped ride.
    fallback = prev.charged_fen if capped else 0
    day_total = card_state.day_total_fen if card_state.day == prev.day else fallback
    before_entry = max(0, day_total - prev.charged_fen) if capped else 0
    charged = min(_cap(table, line, fare, before_entry), prev.charged_fen)
    if charged < fare:
        reasons.append(CAP_REACHED)
    refund = prev.charged_fen - charged
    record = dataclasses.replace(
        prev,
        status=TripStatus.EXITED,
        stop=tap.stop,
        at=at,
        held_fen=0,
        last_kind="exit",
        vehicle=tap.vehicle,
        charged_fen=0,
        day=prev.day,
        day_total_fen=max(0, day_total - refund) if capped else day_total,
    )
    return Decision("exit", 0, fare, refund, record, tuple(reasons))
