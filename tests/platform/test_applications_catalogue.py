"""The application catalogue as data (docs/applications.md): six applications, their files and
layouts, record coding both ways, and precise refusals of bad values and bad catalogue files."""

from __future__ import annotations

import tomllib

import pytest

from citycard.card.perso.profile import load_profile
from citycard.platform import applications
from citycard.platform.application_catalogue import (
    FORMAT,
    CatalogueError,
    RecordError,
    catalogue,
    check_catalogue,
    decode_record,
    encode_record,
    invalid_record,
    parse_application,
)

SAMPLES = {
    "transit": {"city_code": "3301", "entry_station": "LINE2/STATION07", "fare_cap_fen": 400},
    "health": {
        "health_record_no": "HR3301002026000117",
        "blood_abo": "3",
        "alerts": "8000",
        "valid_until": "2036-01-01",
    },
    "social_security": {
        "ss_number": "11010519800101001X",
        "insured_region": "330100",
        "valid_until": "2035-12-31",
    },
    "campus": {
        "school_code": "1033500001",
        "member_no": "2026A0042",
        "faculty": "计算机学院",
        "valid_until": "2030-07-31",
    },
    "driver": {
        "licence_no": "330102198001010011",
        "licence_class": "C1",
        "plate": "浙A12345",
        "valid_until": "2032-05-01",
    },
    "tourism": {
        "pass_no": "TP2026000117",
        "valid_from": "2026-01-01",
        "valid_until": "2026-12-31",
        "visits_left": "50",
    },
}


def test_the_catalogue_has_the_six_applications_in_the_citizen_cards_files():
    apps = catalogue()
    assert sorted(apps) == ["campus", "driver", "health", "social_security", "tourism", "transit"]
    files = {f.sfi: f for f in load_profile("citizen-card-gm").part14.files}
    for app in apps.values():
        assert app.sfi in files and files[app.sfi].type == "variable", app.id  # a file the card declares
        assert app.record_bytes <= files[app.sfi].record_bytes
        assert app.name_zh and app.name_en and app.sector in app.readers
        assert app.opening_label("GM") == f"imk-capp-gm-{app.sfi:02x}"  # as personalisation named it
        assert app.record_label("INTL").endswith("-intl")
    assert apps["health"].name_zh == "居民健康卡" and apps["transit"].record_id == bytes.fromhex("0570")
    public = {e["id"]: e for e in applications.catalogue_entries()}
    assert public["campus"]["file"] == {"sfi": 0x17, "record_id": "4301", "record_bytes": 64}
    assert {"name": "faculty", "type": "gbk", "bytes": 16, "required": True} in public["campus"]["fields"]


@pytest.mark.parametrize("app_id", sorted(SAMPLES))
def test_records_round_trip(app_id):
    app = catalogue()[app_id]
    record = encode_record(app, SAMPLES[app_id])
    assert len(record) == app.record_bytes and record[:2] == app.record_id and record[2] == 0x01
    decoded = decode_record(app, record)
    assert decoded["valid"] is True
    for name, value in SAMPLES[app_id].items():
        field = next(f for f in app.fields if f.name == name)
        expected = value.rjust(2 * field.size, "0") if field.type == "n" else value
        assert decoded[name] == expected, name
    blank = invalid_record(app)
    assert decode_record(app, blank)["valid"] is False and blank[3:] == bytes(app.record_bytes - 3)


def test_exact_bytes_of_a_campus_record():
    record = encode_record(catalogue()["campus"], SAMPLES["campus"])
    assert record.hex().upper() == (
        "4301" "01" "1033500001" + b"2026A0042".ljust(16, b"\0").hex().upper() + "01"
        + "计算机学院".encode("gbk").ljust(16, b"\0").hex().upper() + "20300731" + "00" * 19
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"school_code": "12345678901"}, "school_code", "at most 10 digits, got 11"),
        ({"school_code": "12a"}, "school_code", "digits only, got '12a'"),
        ({"member_no": "学号"}, "member_no", "printable ASCII only, got '学号'"),
        ({"member_no": "X" * 17}, "member_no", "at most 16 bytes, got 17"),
        ({"faculty": "计算机科学与技术学院"}, "faculty", "at most 16 bytes, got 20"),
        ({"faculty": "😀"}, "faculty", "'😀' has characters outside GBK"),
        ({"valid_until": "2030-02-30"}, "valid_until", "a date YYYY-MM-DD, got '2030-02-30'"),
        ({"role": 1.5}, "role", "a string of digits, got float"),
        (
            {"pet": "cat"},
            "pet",
            "not a field of campus (fields: faculty, member_no, role, school_code, valid_until)",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_field(change, field, reason):
    with pytest.raises(RecordError) as refused:
        encode_record(catalogue()["campus"], {**SAMPLES["campus"], **change})
    assert (refused.value.field, refused.value.reason) == (field, reason)


def test_missing_required_and_bad_amounts():
    with pytest.raises(RecordError, match=r"^member_no: required by campus$"):
        encode_record(catalogue()["campus"], {k: v for k, v in SAMPLES["campus"].items() if k != "member_no"})
    for bad in (-1, True, "400"):
        with pytest.raises(RecordError, match="fare_cap_fen: an integer amount in fen"):
            encode_record(catalogue()["transit"], {"fare_cap_fen": bad})
    with pytest.raises(RecordError, match="alerts: exactly 2 bytes, got 1"):
        encode_record(catalogue()["health"], {**SAMPLES["health"], "alerts": "80"})
    with pytest.raises(RecordError, match="record_id"):
        decode_record(catalogue()["campus"], encode_record(catalogue()["tourism"], SAMPLES["tourism"]))


BASE = {
    "format": FORMAT,
    "id": "library",
    "sector": "culture",
    "name": {"zh": "图书馆", "en": "Library"},
    "file": {"sfi": 0x18, "record_id": "4C01", "record_bytes": 32},
    "keys": {"opening": "imk-capp", "record": "sector-library"},
    "fields": [{"name": "reader_no", "type": "an", "bytes": 12}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "x"}, "lib.toml: format must be 'citycard-application/1'"),
        ({"id": "Library!"}, "lib.toml: id 'Library!' must be 2–24 of a-z, 0-9, _ starting with a letter"),
        ({"file": {"sfi": 31, "record_id": "4C01", "record_bytes": 32}}, "file.sfi must be 1–30"),
        ({"file": {"sfi": 24, "record_id": "4C01", "record_bytes": 65}}, "file.record_bytes must be 4–64"),
        (
            {"fields": [{"name": "a", "type": "an", "bytes": 30}]},
            "the fields need 33 bytes, the record has 32",
        ),
        ({"fields": [{"name": "a", "type": "float", "bytes": 4}]}, "type 'float' is not one of"),
        ({"fields": [{"name": "a", "type": "n", "bytes": 1, "default": "123"}]}, "default does not fit"),
        ({"fields": [{"name": "a", "type": "date", "bytes": 3}]}, "a date is 4"),
        ({"keys": {"opening": "imk-capp"}}, "lib.toml: missing 'record'"),
    ],
)
def test_bad_catalogue_files_are_refused(change, message):
    with pytest.raises(CatalogueError, match=message.replace("(", r"\(")):
        parse_application("lib.toml", {**BASE, **change})


def test_two_applications_in_one_record_are_refused():
    library = parse_application("lib.toml", BASE)
    assert check_catalogue([library])["library"] is library
    clash = parse_application("b.toml", {**BASE, "id": "books"})
    with pytest.raises(CatalogueError, match="books and library both use SFI 18 record 4C01"):
        check_catalogue([library, clash])
    with pytest.raises(CatalogueError, match="application id 'library' appears twice"):
        check_catalogue(
            [library, parse_application("c.toml", {**BASE, "file": {**BASE["file"], "record_id": "4C02"}})]
        )


def test_the_shipped_files_are_valid_toml_with_the_format():
    from importlib import resources

    root = resources.files("citycard").joinpath("data", "applications")
    names = sorted(e.name for e in root.iterdir() if e.name.endswith(".toml"))
    assert len(names) == 6
    for name in names:
        assert tomllib.loads(root.joinpath(name).read_text(encoding="utf-8"))["format"] == FORMAT
