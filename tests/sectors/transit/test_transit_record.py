"""The trip record layout: pack/unpack, the platform catalogue's view of it, and precise errors."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.platform.application_catalogue import catalogue, decode_record, encode_record
from citycard.sectors.transit import RecordError, TripRecord, TripStatus, pack_record, unpack_record

RID = bytes.fromhex("0570")
AT = dt.datetime(2026, 11, 27, 0, 30, 15, tzinfo=dt.UTC)


def _entered() -> TripRecord:
    return TripRecord(
        record_id=RID, city_code="5104", concession=1, status=TripStatus.ENTERED, stop="HTM", at=AT,
        held_fen=400, last_kind="entry", transfer=True, line="K1", vehicle="D10001", charged_fen=300,
        day=dt.date(2026, 11, 27), day_total_fen=950,
    )  # fmt: skip


def test_layout_bytes_and_round_trip():
    raw = pack_record(_entered())
    assert len(raw) == 64
    assert raw.hex().upper() == (
        "0570" "01" "5104" "01" "01" + b"HTM".hex().upper() + "00" * 17 + "20261127083015" + "00000400"
        + "01" "11" + b"K1".hex().upper() + "00" * 4 + b"D10001".hex().upper() + "0000" + "000300"
        + "20261127" + "000950"
    )  # fmt: skip
    assert unpack_record(raw, record_id=RID) == _entered()


def test_the_platform_catalogue_reads_the_same_bytes():
    """Bytes 0–37 are the transit catalogue entry's fields (data/applications/transit.toml)."""
    app = catalogue()["transit"]
    view = decode_record(app, pack_record(_entered()))
    assert view == {
        "valid": True, "city_code": "5104", "concession": "01", "trip_status": "01", "entry_station": "HTM",
        "entry_time": "20261127083015", "fare_cap_fen": 400,
    }  # fmt: skip


def test_a_record_just_opened_by_the_platform_reads_as_no_trip():
    app = catalogue()["transit"]
    fresh = encode_record(app, {"city_code": "5104", "concession": "02"})
    rec = unpack_record(fresh, record_id=RID)
    assert (rec.status, rec.city_code, rec.concession, rec.at, rec.last_kind, rec.day) == (
        TripStatus.NONE, "5104", 2, None, None, None,
    )  # fmt: skip


def test_time_is_stored_in_shanghai_and_read_back_as_utc():
    rec = unpack_record(pack_record(_entered()))
    assert rec.at == AT and rec.at.tzinfo == dt.UTC


def test_day_total_above_the_field_saturates():
    rec = TripRecord(record_id=RID, day=dt.date(2026, 1, 1), day_total_fen=5_000_000)
    assert unpack_record(pack_record(rec)).day_total_fen == 999_999


def _patch(offset: int, hex_bytes: str) -> bytes:
    raw = bytearray(pack_record(_entered()))
    new = bytes.fromhex(hex_bytes)
    raw[offset : offset + len(new)] = new
    return bytes(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (pack_record(_entered())[:63], "trip record must be 64 bytes, got 63"),
        (pack_record(_entered()) + b"\x00", "trip record must be 64 bytes, got 65"),
        (_patch(2, "00"), r"valid \(offset 2\): must be 01"),
        (_patch(3, "5A04"), r"city_code \(offset 3\): not BCD digits: 5A04"),
        (_patch(6, "03"), r"trip_status \(offset 6\): must be 00, 01 or 02, got 03"),
        (_patch(7, "E4B8AD"), r"stop \(offset 7\): not zero-padded printable ASCII"),
        (_patch(7, "4100"), r"stop \(offset 7\): not zero-padded printable ASCII"),  # a gap inside
        (_patch(27, "20261332083015"), r"time \(offset 27\): not a date and time: 20261332083015"),
        (_patch(27, "00000000000000"), r"time \(offset 27\): zero, but the record holds a trip"),
        (_patch(34, "0000040F"), r"held \(offset 34\): not BCD digits"),
        (_patch(38, "02"), r"layout version \(offset 38\): this validator reads 01, got 02"),
        (_patch(38, "00"), r"layout version \(offset 38\): 00 but bytes 38–63 are not all zero"),
        (_patch(39, "43"), r"flags \(offset 39\): reserved bits set: 43"),
        (_patch(39, "51"), r"flags \(offset 39\): tap kind 5 is not 0–4"),
        (_patch(40, "FF"), r"line \(offset 40\): not zero-padded printable ASCII"),
        (_patch(46, "0A"), r"vehicle \(offset 46\): not zero-padded printable ASCII"),
        (_patch(54, "0000AA"), r"charged \(offset 54\): not BCD digits"),
        (_patch(57, "20261131"), r"day \(offset 57\): not a date: 20261131"),
        (_patch(61, "FFFFFF"), r"day_total \(offset 61\): not BCD digits"),
    ],
)
def test_malformed_records(raw, message):
    with pytest.raises(RecordError, match=message):
        unpack_record(raw)


def test_fresh_record_with_a_trip_is_refused():
    raw = bytearray(64)
    raw[0:3] = RID + b"\x01"
    raw[6] = 0x01
    with pytest.raises(RecordError, match=r"00 \(fresh record\) but a trip is recorded"):
        unpack_record(bytes(raw))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(record_id=b"\x05"), "record_id: must be 2 bytes, got 1"),
        (dict(city_code="510"), "city_code: must be 4 digits"),
        (dict(concession=100), "concession: must be 00–99"),
        (dict(line="K1234567"), "line: must be 0–6 printable ASCII"),
        (dict(stop="S" * 21), "stop: must be 0–20 printable ASCII"),
        (dict(at=dt.datetime(2026, 1, 1)), "at: must be an aware datetime"),
        (dict(last_kind="walk"), "last_kind: must be one of entry, exit, flat, taxi"),
        (dict(held_fen=-1), "held_fen: must be 0–99999999"),
        (dict(charged_fen=1_000_000), "charged_fen: must be 0–999999"),
        (dict(day_total_fen=-5), "day_total_fen: must be ≥ 0"),
        (dict(status=TripStatus.ENTERED), "at: a record with a trip needs the tap time"),
    ],
)
def test_bad_record_fields(fields, message):
    with pytest.raises(RecordError, match=message):
        TripRecord(**{"record_id": RID, **fields})
