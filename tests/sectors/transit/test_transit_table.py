"""The fare table as data: the shipped table, and every malformed table refused with a precise error."""

from __future__ import annotations

from importlib import resources

import pytest

from citycard.sectors.transit import FareTableError, load_table, parse_table

SHIPPED = (resources.files("citycard.data") / "transit" / "panzhihua.toml").read_text(encoding="utf-8")


def _with(old: str, new: str) -> str:
    assert SHIPPED.count(old) >= 1, old
    return SHIPPED.replace(old, new, 1)


def test_shipped_table(table):
    assert (table.version, table.city_code, table.record_id.hex(), table.double_tap_seconds) == (
        1,
        "5104",
        "0570",
        60,
    )
    assert sorted(table.lines) == ["12", "3", "K1", "TAXI"]
    k1 = table.lines["K1"]
    assert (k1.fare, k1.max_fare_fen, k1.segment_fare_fen("BCG", "HTM"), k1.farthest_fare_fen("HTM")) == (
        "segmented", 400, 300, 300,
    )  # fmt: skip
    assert (table.lines["TAXI"].surcharge_fen, table.lines["TAXI"].concessions) == (100, False)
    assert (table.cap_daily_fen, table.cap_modes) == (1000, frozenset({"bus"}))
    assert table.holder_kind_of_code(2) == "elderly"
    assert table.operators == {"pzh-bus": "Panzhihua Bus Group", "pzh-taxi": "Panzhihua Taxi"}


def test_concessions_come_from_the_platform_kinds():
    kinds = {"resident": (), "veteran": ("transit_veteran",), "pupil": ("transit_half_fare",)}
    text = SHIPPED.replace("transit_free = 0\n", "transit_veteran = 20\n").replace(
        '"00" = "resident"\n"01" = "student"\n"02" = "elderly"\n"03" = "disabled"\n"04" = "child"\n', ""
    )
    table = parse_table(text, kinds=kinds)
    assert (table.payable_percent("veteran"), table.payable_percent("pupil"), table.payable_percent("resident")) == (
        20, 50, 100,
    )  # fmt: skip
    with pytest.raises(
        FareTableError, match=r"concessions\.transit_free: no cardholder kind has this concession"
    ):
        parse_table(SHIPPED, kinds=kinds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("format = [", "fare table: not TOML"),
        (
            _with('format = "citycard-fares/1"', 'format = "citycard-fares/2"'),
            "format: must be 'citycard-fares/1'",
        ),
        (_with("version = 1", "version = 1\nspeed = 3"), r"fare table: unknown keys \['speed'\]"),
        (_with("version = 1", "version = true"), "version: must be an integer, got True"),
        (_with("version = 1", "version = 0"), "version: must be 1–2147483647, got 0"),
        (_with('city_code = "5104"', 'city_code = "510400"'), "city_code: must be 4 digits"),
        (_with('record_id = "0570"', 'record_id = "05Z0"'), "record_id: must be 4 hex digits"),
        (
            _with("double_tap_seconds = 60", "double_tap_seconds = 3601"),
            "double_tap_seconds: must be 0–3600, got 3601",
        ),
        (
            _with('exit_without_entry = "charge_max"', 'exit_without_entry = "free"'),
            "exit_without_entry: must be one of",
        ),
        (
            _with('missing_exit_fare = "farthest_from_entry"', 'missing_exit_fare = "x"'),
            "missing_exit_fare: must be one",
        ),
        (_with("transfer_chain = false", "transfer_chain = 0"), "transfer_chain: must be true or false"),
        (
            _with('[operators.pzh-taxi]\nzh = "攀枝花出租汽车"\nen = "Panzhihua Taxi"', ""),
            r"lines\[TAXI\].operator: 'pzh-taxi' is not in \[operators\]",
        ),
        (
            _with('en = "Panzhihua Taxi"', 'en = "Panzhihua Taxi"\nphone = "1"'),
            r"operators.pzh-taxi: unknown keys \['phone'\]",
        ),
        (_with('id = "K1"', 'id = "K1234567"'), r"lines\[0\].id: must be 1–6 characters"),
        (_with('id = "12"', 'id = "3"'), r"lines\[2\].id: line '3' is defined twice"),
        (
            _with('fare = "segmented"', 'fare = "zone"'),
            r"lines\[K1\].fare: must be one of segmented, flat, metered",
        ),
        (_with('mode = "taxi"', 'mode = "Taxi"'), r"lines\[TAXI\].mode: must be a lower-case name"),
        (_with('fare = "flat"\nfare_fen = 200', 'fare = "flat"'), r"lines\[3\]: a flat line needs fare_fen"),
        (
            _with("fare_fen = 200", "fare_fen = 200\nsections = [0]"),
            r"lines\[3\]: keys \['sections'\] do not apply to a flat line",
        ),
        (_with("fare_fen = 200", "fare_fen = 100001"), r"lines\[3\].fare_fen: must be 0–100000, got 100001"),
        (_with("surcharge_fen = 100", "surcharge_fen = -1"), r"lines\[TAXI\].surcharge_fen: must be 0–10000"),
        (
            _with("sections = [0,     0,     1,     1,     2,     2,     3,     3]", "sections = [0, 0, 1]"),
            r"lines\[K1\].sections: needs one section per stop \(8\)",
        ),
        (
            _with(
                "sections = [0,     0,     1,     1,     2,     2,     3,     3]",
                "sections = [0, 0, 2, 1, 2, 2, 3, 3]",
            ),
            r"lines\[K1\].sections\[3\]: sections must not decrease",
        ),
        (
            _with(
                "sections = [0,     0,     1,     1,     2,     2,     3,     3]",
                "sections = [1, 1, 1, 1, 2, 2, 3, 3]",
            ),
            r"lines\[K1\].sections\[0\]: the first stop is section 0, got 1",
        ),
        (
            _with("fares_fen = [100, 200, 300, 400]", "fares_fen = [100, 200, 300]"),
            r"lines\[K1\].fares_fen: needs one fare per sections crossed, 0…3 \(4\)",
        ),
        (
            _with("fares_fen = [100, 200, 300, 400]", "fares_fen = [100, 300, 200, 400]"),
            r"lines\[K1\].fares_fen\[2\]: a longer ride must not cost less \(200 < 300\)",
        ),
        (_with('"NSG", "QFG"', '"NSG", "NSG"'), r"lines\[K1\].stops: repeated stop ids \['NSG'\]"),
        (_with('"NSG", "QFG"', '"NSG", "Q FG"'), r"lines\[K1\].stops\[3\]: must be 1–20 characters"),
        (_with('stops    = ["BCG"', 'stoops = ["BCG"'), r"lines\[0\]: unknown keys \['stoops'\]"),
        (
            _with('from_modes = ["bus"]', 'from_lines = ["99"]'),
            r"transfers\[0\].from_lines: unknown lines \['99'\]",
        ),
        (_with('to_modes = ["bus"]', ""), r"transfers\[0\]: needs to_modes or to_lines"),
        (
            _with("within_minutes = 60 ", "within_minutes = 0 "),
            r"transfers\[0\].within_minutes: must be 1–1440",
        ),
        (_with("discount_fen = 100", "discount_fen = 0"), r"transfers\[0\].discount_fen: must be 1–100000"),
        (_with("daily_fen = 1000", "daily_fen = 1000000"), "cap.daily_fen: must be 1–999999"),
        (_with('modes = ["bus"]', "modes = []"), "cap.modes: name at least one mode"),
        (_with('modes = ["bus"]', ""), r"cap: missing keys \['modes'\]"),
        (
            _with("transit_half_fare = 50", "transit_half_fare = 150"),
            "concessions.transit_half_fare: must be 0–100",
        ),
        (
            _with("transit_half_fare = 50", "transit_quarter = 25"),
            "concessions.transit_quarter: no cardholder kind",
        ),
        (
            _with('"04" = "child"', '"04" = "tourist"'),
            "concession_codes.04: unknown cardholder kind 'tourist'",
        ),
        (_with('"04" = "child"', '"4" = "child"'), r"concession_codes.4: must be 2 digits"),
    ],
)
def test_malformed_tables(text, message):
    with pytest.raises(FareTableError, match=message):
        parse_table(text)


def test_a_table_needs_lines_and_operators():
    head = 'format = "citycard-fares/1"\nversion = 1\ncity_code = "5104"\nrecord_id = "0570"\n'
    with pytest.raises(FareTableError, match=r"fare table: missing keys \['lines', 'operators'\]"):
        parse_table(head)
    with pytest.raises(FareTableError, match="operators: needs at least one"):
        parse_table(head + "operators = {}\nlines = []\n")
    with pytest.raises(FareTableError, match=r"lines: must be 1–2000 \[\[lines\]\] tables"):
        parse_table(head + "lines = []\n[operators.a]\nen = 'A'\n")


def test_unknown_holder_kind_and_code(table):
    with pytest.raises(FareTableError, match="unknown cardholder kind 'tourist'"):
        table.payable_percent("tourist")
    with pytest.raises(FareTableError, match=r"concession code 09 is not in \[concession_codes\]"):
        table.holder_kind_of_code(9)


@pytest.mark.parametrize(
    ("name", "message"), [("../etc", "fare table name must be"), ("atlantis", "no shipped fare")]
)
def test_load_table_names(name, message):
    with pytest.raises(FareTableError, match=message):
        load_table(name)
