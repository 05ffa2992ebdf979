"""price_tap: every rule of the fare table, through the card record as 64 bytes (docs/transit-fares.md)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from citycard.sectors.transit import CardState, Tap, TapError, TripStatus, parse_table, price_tap
from citycard.sectors.transit.record import RecordError, pack_record

T0 = dt.datetime(2026, 11, 27, 0, 0, tzinfo=dt.UTC)  # 08:00 Asia/Shanghai
DAY = dt.date(2026, 11, 27)


# --- flat, taxi, concessions -------------------------------------------------------------------


def test_flat_fare_writes_a_closed_trip(rider):
    r = rider()
    d = r.tap("flat", "3", vehicle="D10001")
    assert (d.kind, d.amount_fen, d.fare_fen, d.refund_fen, d.reasons) == (
        "flat",
        200,
        200,
        0,
        ("flat_fare",),
    )
    rec = d.new_trip_record
    assert (rec.status, rec.last_kind, rec.line, rec.vehicle, rec.charged_fen) == (
        TripStatus.EXITED, "flat", "3", "D10001", 200,
    )  # fmt: skip
    assert (rec.day, rec.day_total_fen, rec.city_code, rec.record_id.hex()) == (DAY, 200, "5104", "0570")


@pytest.mark.parametrize(
    ("kind", "amount", "reason"),
    [
        ("resident", 200, None),
        ("resident_permit", 200, None),
        ("elderly", 0, "concession:transit_free"),
        ("disabled", 0, "concession:transit_free"),
        ("student", 100, "concession:transit_half_fare"),
        ("child", 100, "concession:transit_half_fare"),
    ],
)
def test_concessions_by_cardholder_kind(rider, kind, amount, reason):
    d = rider(kind).tap("flat", "3")
    assert d.amount_fen == amount
    assert (reason in d.reasons) if reason else not any(x.startswith("concession") for x in d.reasons)


def test_half_fare_rounds_down_in_the_riders_favour():
    text = _MINI.replace("fare_fen = 200", "fare_fen = 125")
    table = parse_table(text)
    d = price_tap(table, card_state=CardState(), tap=Tap("flat", "F", "V1", T0), holder_kind="student")
    assert d.amount_fen == 62


def test_taxi_metered_amount_plus_surcharge_no_concession_no_cap(rider):
    r = rider("elderly")
    d = r.tap("taxi", "TAXI", metered_fen=2350, vehicle="T8888")
    assert (d.kind, d.amount_fen, d.fare_fen, d.reasons) == ("taxi", 2450, 2450, ("metered", "surcharge"))
    assert d.new_trip_record.day_total_fen == 0  # taxis are not in cap.modes


def test_taxi_not_capped_even_after_cap(table):
    state = CardState(day=DAY, day_total_fen=1000)
    d = price_tap(
        table, card_state=state, tap=Tap("taxi", "TAXI", "T1", T0, metered_fen=900), holder_kind="resident"
    )
    assert d.amount_fen == 1000 and "cap_reached" not in d.reasons
    assert d.new_trip_record.day_total_fen == 1000


# --- segmented entry / exit ---------------------------------------------------------------------


def test_entry_holds_the_maximum_and_exit_refunds_the_difference(rider):
    r = rider()
    entry = r.tap("entry", "K1", 0, stop="BCG")
    assert (entry.kind, entry.amount_fen, entry.fare_fen, entry.reasons) == (
        "entry",
        400,
        400,
        ("max_fare_held",),
    )
    assert entry.new_trip_record.status is TripStatus.ENTERED and entry.new_trip_record.held_fen == 400
    exit_ = r.tap("exit", "K1", 20, stop="QFG", vehicle="V1")  # sections 0 → 1
    assert (exit_.kind, exit_.amount_fen, exit_.fare_fen, exit_.refund_fen) == ("exit", 0, 200, 200)
    rec = exit_.new_trip_record
    assert (rec.status, rec.stop, rec.held_fen, rec.charged_fen, rec.day_total_fen) == (
        TripStatus.EXITED, "QFG", 0, 0, 200,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "exit_", "fare"), [("BCG", "DDK", 100), ("JJ", "BCG", 400), ("HTM", "NSG", 200)]
)
def test_segment_fares_both_directions(rider, entry, exit_, fare):
    r = rider()
    r.tap("entry", "K1", 0, stop=entry)
    d = r.tap("exit", "K1", 30, stop=exit_)
    assert (d.fare_fen, d.refund_fen) == (fare, 400 - fare)


def test_exit_after_midnight_counts_on_the_entry_day(rider):
    r = rider()
    r.tap("entry", "K1", at=dt.datetime(2026, 11, 27, 15, 50, tzinfo=dt.UTC), stop="BCG")  # 23:50 Shanghai
    d = r.tap("exit", "K1", at=dt.datetime(2026, 11, 27, 16, 20, tzinfo=dt.UTC), stop="DDK")  # 00:20 next day
    assert (d.fare_fen, d.refund_fen) == (100, 300)
    assert (d.new_trip_record.day, d.new_trip_record.day_total_fen) == (DAY, 100)
    nxt = r.tap("flat", "3", at=dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC))
    assert (nxt.new_trip_record.day, nxt.new_trip_record.day_total_fen) == (dt.date(2026, 11, 28), 200)


def test_uncapped_segmented_line_leaves_the_day_total_alone():
    table = parse_table(_MINI)  # no [cap]
    entry = price_tap(
        table, card_state=CardState(), tap=Tap("entry", "K", "V1", T0, stop="A"), holder_kind="resident"
    )
    assert (entry.amount_fen, entry.new_trip_record.day_total_fen) == (200, 0)
    state = CardState(trip=entry.new_trip_record)  # no day total given: the exit must not invent one
    exit_ = price_tap(table, card_state=state, tap=Tap("exit", "K", "V1", T0 + dt.timedelta(minutes=9), stop="B"),
                      holder_kind="resident")  # fmt: skip
    assert (exit_.fare_fen, exit_.refund_fen, exit_.new_trip_record.day_total_fen) == (150, 50, 0)


def test_exit_without_entry_charges_the_maximum(rider):
    d = rider().tap("exit", "K1", stop="NSG")
    assert (d.kind, d.amount_fen, d.refund_fen, d.reasons) == ("exit", 400, 0, ("exit_without_entry",))


def test_exit_without_entry_refused_when_the_table_says_so():
    table = parse_table(_MINI.replace('exit_without_entry = "charge_max"', 'exit_without_entry = "refuse"'))
    d = price_tap(
        table, card_state=CardState(), tap=Tap("exit", "K", "V1", T0, stop="A"), holder_kind="resident"
    )
    assert (d.kind, d.amount_fen, d.new_trip_record, d.record_bytes, d.reasons) == (
        "refused", 0, None, None, ("exit_without_entry",),
    )  # fmt: skip


def test_entry_over_an_open_trip_keeps_its_maximum(rider):
    r = rider()
    r.tap("entry", "K1", 0, stop="HTM")
    d = r.tap("entry", "K1", 180, stop="BCG", vehicle="V2")
    assert d.amount_fen == 400 and d.reasons[0] == "previous_exit_missing"
    assert d.new_trip_record.day_total_fen == 800  # the first trip's maximum stays until correction()


# --- transfers ----------------------------------------------------------------------------------


def test_transfer_exactly_at_the_window_end_is_discounted(rider):
    r = rider()
    r.tap("flat", "3", 0)
    d = r.tap("flat", "12", 60, vehicle="V2")
    assert (d.amount_fen, d.reasons) == (100, ("flat_fare", "transfer"))
    assert d.new_trip_record.transfer is True


def test_transfer_one_second_late_is_full_fare(rider):
    r = rider()
    r.tap("flat", "3", 0)
    d = r.tap("flat", "12", at=T0 + dt.timedelta(minutes=60, seconds=1), vehicle="V2")
    assert (d.amount_fen, d.reasons) == (200, ("flat_fare",))


def test_no_transfer_on_the_same_line_nor_from_taxi_nor_chained(rider):
    r = rider()
    r.tap("flat", "3", 0)
    assert r.tap("flat", "3", 10, vehicle="V2").amount_fen == 200  # same line: no rule
    r.tap("flat", "12", 20, vehicle="V3")  # transfer (from 3)
    assert r.log[-1][1].amount_fen == 100
    assert r.tap("flat", "3", 30, vehicle="V4").amount_fen == 200  # transfer_chain = false
    r.tap("taxi", "TAXI", 40, vehicle="T1", metered_fen=1000)
    assert r.tap("flat", "12", 50, vehicle="V5").amount_fen == 200  # no rule from taxi


def test_transfer_measured_from_a_segmented_exit(rider):
    r = rider()
    r.tap("entry", "K1", 0, stop="BCG")
    r.tap("exit", "K1", 50, stop="JJ")
    d = r.tap("flat", "3", 105, vehicle="V2")  # 55 min after the exit, 105 after the entry
    assert (d.amount_fen, "transfer" in d.reasons) == (100, True)


def test_transfer_into_a_segmented_line_discounts_hold_and_fare(rider):
    r = rider()
    r.tap("flat", "3", 0)
    entry = r.tap("entry", "K1", 10, stop="BCG", vehicle="V2")
    assert (entry.amount_fen, entry.fare_fen, entry.reasons) == (300, 300, ("max_fare_held", "transfer"))
    exit_ = r.tap("exit", "K1", 30, stop="DDK", vehicle="V2")
    assert (exit_.fare_fen, exit_.refund_fen, exit_.reasons) == (0, 300, ("segment_fare", "transfer"))
    assert exit_.new_trip_record.day_total_fen == 200


def test_no_transfer_after_a_missing_exit(rider):
    r = rider()
    r.tap("entry", "K1", 0, stop="BCG")
    d = r.tap("flat", "3", 10, vehicle="V2")
    assert d.amount_fen == 200 and d.reasons == ("previous_exit_missing", "flat_fare")


# --- daily cap ----------------------------------------------------------------------------------


def test_cap_reached_mid_tap(table):
    state = CardState(day=DAY, day_total_fen=900)
    d = price_tap(table, card_state=state, tap=Tap("flat", "3", "V1", T0), holder_kind="resident")
    assert (d.amount_fen, d.fare_fen, d.reasons) == (100, 200, ("flat_fare", "cap_reached"))
    assert d.new_trip_record.day_total_fen == 1000
    after = price_tap(table, card_state=CardState.of(d.record_bytes, table),
                      tap=Tap("flat", "12", "V2", T0 + dt.timedelta(hours=2)), holder_kind="resident")  # fmt: skip
    assert (after.amount_fen, after.fare_fen) == (0, 200)


def test_cap_resets_at_shanghai_midnight(table):
    state = CardState(day=DAY, day_total_fen=1000)
    before = Tap("flat", "3", "V1", dt.datetime(2026, 11, 27, 15, 59, 59, tzinfo=dt.UTC))
    after = Tap("flat", "3", "V1", dt.datetime(2026, 11, 27, 16, 0, 0, tzinfo=dt.UTC))
    assert price_tap(table, card_state=state, tap=before, holder_kind="resident").amount_fen == 0
    d = price_tap(table, card_state=state, tap=after, holder_kind="resident")
    assert d.amount_fen == 200 and d.new_trip_record.day == dt.date(2026, 11, 28)


def test_cap_over_a_segmented_trip(rider):
    r = rider()
    for i, line in enumerate(["3", "3", "3"]):
        r.tap("flat", line, i * 70, vehicle=f"V{i}")  # 600, no transfers (same line)
    entry = r.tap("entry", "K1", 300, stop="BCG", vehicle="V9")
    assert (entry.amount_fen, entry.fare_fen, "cap_reached" in entry.reasons) == (400, 400, False)
    exit_ = r.tap("exit", "K1", 330, stop="JJ", vehicle="V9")
    assert (exit_.fare_fen, exit_.refund_fen, exit_.new_trip_record.day_total_fen) == (400, 0, 1000)


def test_concession_transfer_and_cap_together(rider):
    r = rider("student")
    for i in range(9):
        r.tap("flat", "3", i * 70, vehicle=f"V{i}")  # 9 × 100 = 900 (student half fare, same line)
    assert r.state.day_total_fen == 900
    entry = r.tap("entry", "K1", 600, stop="BCG", vehicle="K")  # 400/2 − 100 transfer = 100; room 100
    assert (entry.amount_fen, entry.fare_fen) == (100, 100)
    assert entry.reasons == ("max_fare_held", "concession:transit_half_fare", "transfer")
    exit_ = r.tap("exit", "K1", 620, stop="JJ", vehicle="K")
    assert (exit_.fare_fen, exit_.refund_fen, exit_.new_trip_record.day_total_fen) == (100, 0, 1000)
    flat = r.tap("flat", "12", 700, vehicle="W")
    assert (flat.amount_fen, flat.fare_fen, flat.reasons) == (
        0, 100, ("flat_fare", "concession:transit_half_fare", "cap_reached"),
    )  # fmt: skip


def test_cap_clamped_entry_refunds_only_what_was_charged(rider):
    r = rider()
    for i in range(4):
        r.tap("flat", "3", i * 70, vehicle=f"V{i}")  # 800
    entry = r.tap("entry", "K1", 300, stop="BCG", vehicle="K")
    assert (entry.amount_fen, entry.fare_fen, entry.reasons[-1]) == (200, 400, "cap_reached")
    exit_ = r.tap("exit", "K1", 320, stop="DDK", vehicle="K")  # fare 100 < room 200
    assert (exit_.fare_fen, exit_.refund_fen, exit_.new_trip_record.day_total_fen) == (100, 100, 900)


# --- anti-double-tap ----------------------------------------------------------------------------


def test_double_tap_refused_within_the_window_and_accepted_at_its_end(rider):
    r = rider()
    r.tap("flat", "3", 0)
    before = r.raw
    d = r.tap("flat", "3", at=T0 + dt.timedelta(seconds=59))
    assert (d.kind, d.amount_fen, d.new_trip_record, d.reasons) == ("refused", 0, None, ("double_tap",))
    assert r.raw == before  # nothing written
    assert r.tap("flat", "3", at=T0 + dt.timedelta(seconds=60)).amount_fen == 200


def test_double_tap_needs_the_same_vehicle_and_kind(rider):
    r = rider()
    r.tap("flat", "3", 0, vehicle="V1")
    assert r.tap("flat", "3", at=T0 + dt.timedelta(seconds=5), vehicle="V2").kind == "flat"
    r2 = rider()
    r2.tap("entry", "K1", 0, stop="BCG", vehicle="V1")
    assert r2.tap("entry", "K1", at=T0 + dt.timedelta(seconds=5), stop="BCG", vehicle="V1").kind == "refused"
    exit_ = r2.tap("exit", "K1", at=T0 + dt.timedelta(seconds=10), stop="BCG", vehicle="V1")
    assert (exit_.kind, exit_.fare_fen) == ("exit", 100)  # got off at once: the minimum fare
    assert r2.tap("exit", "K1", at=T0 + dt.timedelta(seconds=15), stop="BCG", vehicle="V1").kind == "refused"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tap", "kind", "message"),
    [
        (dict(kind="flat", line="99"), "resident", "line '99' is not in fare table version 1"),
        (dict(kind="entry", line="3"), "resident", "a entry tap on flat line 3: expected flat"),
        (dict(kind="flat", line="K1"), "resident", "a flat tap on segmented line K1: expected entry/exit"),
        (dict(kind="entry", line="K1", stop="XX"), "resident", "stop 'XX' is not on line K1"),
        (dict(kind="flat", line="3"), "tourist", "unknown cardholder kind 'tourist'"),
        (dict(kind="taxi", line="TAXI", stop="A", metered_fen=5), "resident", "a taxi tap has no stop"),
    ],
)
def test_taps_the_table_cannot_price(table, tap, kind, message):
    with pytest.raises(TapError, match=message):
        price_tap(table, card_state=CardState(), tap=Tap(vehicle="V1", at=T0, **tap), holder_kind=kind)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(kind="walk"), "tap kind must be one of entry, exit, flat, taxi"),
        (dict(at=dt.datetime(2026, 11, 27, 8, 0)), "tap time must be an aware datetime"),
        (dict(vehicle=""), "vehicle: must not be empty"),
        (dict(vehicle="ABCDEFGHI"), "vehicle: must be 0–8 printable ASCII"),
        (dict(kind="taxi"), "a taxi tap needs metered_fen 1–500000, got 0"),
        (dict(kind="taxi", metered_fen=500_001), "a taxi tap needs metered_fen 1–500000, got 500001"),
        (dict(metered_fen=100), "metered_fen is for taxi taps only"),
        (dict(kind="taxi", metered_fen=1.5), "metered_fen must be an integer"),
    ],
)
def test_malformed_taps(args, message):
    base = dict(kind="flat", line="3", vehicle="V1", at=T0)
    with pytest.raises(TapError, match=message):
        Tap(**{**base, **args})


def test_card_state_from_another_record_id(table, rider):
    raw = rider().tap("flat", "3").record_bytes
    bad = bytes.fromhex("0571") + raw[2:]
    with pytest.raises(RecordError, match="record_id \\(offset 0\\): expected 0570, got 0571"):
        CardState.of(bad, table)


def test_the_record_keeps_the_cards_city_and_concession(table):
    from citycard.sectors.transit import TripRecord

    card = TripRecord(record_id=bytes.fromhex("0570"), city_code="5101", concession=2)
    d = price_tap(table, card_state=CardState.of(pack_record(card), table), tap=Tap("flat", "3", "V1", T0),
                  holder_kind=table.holder_kind_of_code(card.concession))  # fmt: skip
    assert (d.amount_fen, d.new_trip_record.city_code, d.new_trip_record.concession) == (0, "5101", 2)
    assert dataclasses.replace(d.new_trip_record, city_code="5104").city_code == "5104"


_MINI = """
format = "citycard-fares/1"
version = 7
city_code = "5104"
record_id = "0570"
double_tap_seconds = 30
exit_without_entry = "charge_max"
[operators.op]
en = "Operator"
[concessions]
transit_half_fare = 50
[[lines]]
id = "F"
operator = "op"
mode = "bus"
fare = "flat"
fare_fen = 200
[[lines]]
id = "K"
operator = "op"
mode = "bus"
fare = "segmented"
stops = ["A", "B", "C"]
sections = [0, 1, 2]
fares_fen = [100, 150, 200]
"""
