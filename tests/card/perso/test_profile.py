"""Profiles: the shipped ones load and mean what they say; broken ones fail with one precise line."""

from __future__ import annotations

from pathlib import Path

import pytest

from citycard.card.perso import ProfileError, list_profiles, load_profile, parse_profile
from citycard.card.perso.profile import profiles_dir

from .conftest import PROFILES


def test_the_shipped_profiles_are_listed() -> None:
    assert list_profiles() == sorted(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profile_loads_and_names_itself(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.suites == (("INTL",) if name.endswith("intl") else ("GM",))
    assert profile.limits.ec_balance_limit_fen == 100_000  # 1000 yuan, the PBOC rule
    last = profile.afl_for("contactless", profile.suites[0])[-1]
    last_record = profile.record(last.sfi, last.last)
    assert last_record is not None
    assert {"9F74", "9F69"} <= set(last_record.tags) and "5F24" not in last_record.tags


def test_profile_facts() -> None:
    ec_only = load_profile("pboc-ec-only-gm")
    assert ec_only.application.aid.hex().upper() == "A000000333010106"
    citizen = load_profile("citizen-card-gm")
    assert citizen.part14 is not None
    files = {f.sfi: f for f in citizen.part14.files}
    assert files[0x15].type == "variable" and files[0x15].record_bytes == 64
    assert files[0x1E].type == "cyclic" and files[0x1E].records == 10
    assert [f.sfi for f in citizen.part14.files if f.spare] == [0x16, 0x17, 0x18]
    assert b"\xdf\x60" in citizen.dols.pdol_contactless
    # the INTL citizen card has the same Part 14 files (its opening keys from imk-capp-intl-SFI)
    citizen_intl = load_profile("citizen-card-intl")
    assert citizen_intl.part14 is not None and citizen_intl.suites == ("INTL",)
    assert [(f.sfi, f.type, f.spare) for f in citizen_intl.part14.files] == [
        (f.sfi, f.type, f.spare) for f in citizen.part14.files
    ]
    assert b"\xdf\x60" in citizen_intl.dols.pdol_contactless
    intl = load_profile("pboc-debit-intl")
    assert intl.oda.sda and intl.contact.aip.hex().upper() == "7D00"


def test_profile_by_path(tmp_path: Path) -> None:
    text = (
        (profiles_dir() / "pboc-debit-gm.toml").read_text().replace('name = "pboc-debit-gm"', 'name = "mine"')
    )
    path = tmp_path / "mine.toml"
    path.write_text(text)
    assert load_profile(str(path)).name == "mine"


def test_unknown_profile_names_the_shipped_ones() -> None:
    with pytest.raises(ProfileError) as error:
        load_profile("pboc-platinum")
    assert str(error.value) == (
        "unknown profile 'pboc-platinum': expected one of citizen-card-gm, citizen-card-intl, pboc-debit-gm, "
        "pboc-debit-intl, pboc-ec-only-gm or a path"
    )


def test_missing_file() -> None:
    with pytest.raises(ProfileError, match=r"nowhere\.toml: no such file"):
        load_profile("/nowhere.toml")


BASE = (profiles_dir() / "citizen-card-gm.toml").read_text()
FIVE_F24_LAST = BASE.replace('"5A", "5F24", "5F25"', '"5A", "5F25"').replace(
    'tags = ["9F74"]', 'tags = ["9F74", "5F24"]'
)
BROKEN = [
    (
        "unknown key",
        ('psn = "01"', 'psn = "01"\ncolour = "blue"'),
        "card.colour: unknown key (expected one of: bin, pan_length, psn, validity_months, effective_date, "
        "service_code, cardholder_name, issuer_country, currency, track2_discretionary)",
    ),
    (
        "unknown key in an AFL entry",
        ("{ sfi = 1, first = 1, last = 1 },", "{ sfi = 1, first = 1, last = 1, odd = 1 },"),
        "contact.afl[0].odd: unknown key (expected one of: sfi, first, last, oda, suites)",
    ),
    ("bad hex", ('"9F0D" = "D84000A800"', '"9F0D" = "D84000A8G0"'), "data.9F0D: not hex (bad character 'G')"),
    (
        "wrong length",
        ('"9F0D" = "D84000A800"', '"9F0D" = "D84000A8"'),
        "data.9F0D: Issuer Action Code - Default must be 5 bytes, got 4",
    ),
    ("wrong AIP length", ('aip = "3D00"', 'aip = "3D"'), "contact.aip: must be 2 bytes, got 1"),
    (
        "single-transaction limit above 9F77",
        ("ec_single_transaction_limit_fen = 100000", "ec_single_transaction_limit_fen = 100001"),
        "limits.ec_single_transaction_limit_fen: 100001 fen (9F78) is above the EC balance limit (9F77) of 100000 fen",
    ),
    (
        "initial balance above 9F77",
        ("ec_initial_balance_fen = 0", "ec_initial_balance_fen = 200000"),
        "limits.ec_initial_balance_fen: 200000 fen (9F79) is above the EC balance limit (9F77) of 100000 fen",
    ),
    (
        "deduction limit above 9F77",
        ("deduction_limit_fen = 2000", "deduction_limit_fen = 100001"),
        "limits.deduction_limit_fen: 100001 fen (DF62) is above the EC balance limit (9F77) of 100000 fen",
    ),
    (
        "float money",
        ("ec_balance_limit_fen = 100000", "ec_balance_limit_fen = 1000.0"),
        "limits.ec_balance_limit_fen: input should be a valid integer",
    ),
    (
        "lower above upper consecutive limit",
        ("consecutive_offline_lower_limit = 3", "consecutive_offline_lower_limit = 9"),
        "limits.consecutive_offline_lower_limit: 9 (9F58) is above the upper limit (9F59) of 5",
    ),
    (
        "unknown tag",
        ('"9F56" = "80"', '"9F56" = "80"\n"DF7E" = "00"'),
        "data.DF7E: unknown tag (not in the PBOC or EMV tag dictionary)",
    ),
    (
        "computed tag in [data]",
        ('"9F56" = "80"', '"9F56" = "80"\n"5A" = "6235480000000000"'),
        "data.5A: computed by data preparation, set it through the PAN (card.bin, card.pan_length, or --pan)",
    ),
    (
        "limit as hex",
        ('"9F56" = "80"', '"9F56" = "80"\n"9F77" = "000000100000"'),
        "data.9F77: set it in [limits] as ec_balance_limit_fen (fen or a count, not hex)",
    ),
    (
        "EC balance in a record",
        ('tags = ["57", "5F20"]', 'tags = ["57", "5F20", "9F79"]'),
        "records[0].tags: 9F79 (EC balance) is read with GET DATA and must not be in a record",
    ),
    (
        "tag without a value",
        ('tags = ["57", "5F20"]', 'tags = ["57", "5F20", "9F61"]'),
        "records[0].tags: 9F61 has no value: give it in [data]",
    ),
    (
        "a tag read twice",
        ('tags = ["9F74", "9F69"]', 'tags = ["9F74", "9F69", "5F25"]'),
        "contactless.afl: 5F25 is read twice with suite GM (SFI 2 record 1 and SFI 4 record 2)",
    ),
    (
        "9F74 not in the last contactless record",
        ('tags = ["9F74", "9F69"]', 'tags = ["9F69"]'),
        "contactless.afl: with suite GM the records read lack 9F74",
    ),
    (
        "AFL names an undeclared record",
        ("{ sfi = 4, first = 2, last = 2 },", "{ sfi = 4, first = 2, last = 3 },"),
        "contactless.afl[3]: SFI 4 record 3 is not declared in [[records]]",
    ),
    (
        "ODA records differ between the interfaces",
        (
            "{ sfi = 2, first = 1, last = 2, oda = 2 },\n  { sfi = 3, first = 1, last = 2 },\n  { sfi = 4, first = 2",
            "{ sfi = 2, first = 1, last = 2, oda = 1 },\n  { sfi = 3, first = 1, last = 2 },\n  { sfi = 4, first = 2",
        ),
        "contactless.afl: the records signed for ODA (SFI 2 record 1) differ from contact.afl's "
        "(SFI 2 record 1, SFI 2 record 2); one ICC certificate signs one list",
    ),
    ("Part 14 SFI on a log", ("sfi = 0x16", "sfi = 0x0B"), "part14.files: SFI 11 is a log file's SFI"),
    (
        "Part 14 without DF60 in the PDOL",
        ("DF6001DF6901", "DF6901"),
        "dols.pdol_contactless: a Part 14 card needs DF60 (CAPP transaction indicator) in the PDOL",
    ),
    ("PSN of one digit", ('psn = "01"', 'psn = "1"'), "card.psn: must be 2 digits, got 1"),
    (
        "malformed DOL",
        ('ddol = "9F3704"', 'ddol = "9F37"'),
        "dols.ddol: DOL entry malformed, length byte missing: tag '9F37', offset 2",
    ),
    (
        "missing DOL",
        ('cdol1 = "9F02069F03069F1A0295055F2A029A039C019F37049F21039F4E14"', ""),
        "dols.cdol1: missing",
    ),
    (
        "suite unknown",
        ('suites = ["GM"]', 'suites = ["GM", "RSA"]'),
        "suites[1]: input should be 'INTL' or 'GM'",
    ),
    (
        "two suites, certificate record without a suite",
        ('suites = ["GM"]', 'suites = ["GM", "INTL"]'),
        "records[3].tags: 8F differs per suite on a card with two suites: give the record a suite",
    ),
    (
        "not TOML",
        ("[card]", "[card"),
        "not TOML: Expected ']' at the end of a table declaration (at line 18, column 6)",
    ),
]


@pytest.mark.parametrize(("case", "edit", "message"), BROKEN, ids=[case for case, _, _ in BROKEN])
def test_broken_profile_gives_the_precise_error(case: str, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in BASE, f"test edit for {case!r} no longer applies"
    with pytest.raises(ProfileError) as error:
        parse_profile(BASE.replace(old, new, 1), source="broken.toml")
    assert str(error.value) == f"broken.toml: {message}"


def test_5f24_in_the_last_contactless_record_is_refused() -> None:
    text = FIVE_F24_LAST.replace('tags = ["9F74", "9F69"]', 'tags = ["9F74", "9F69", "5F24"]')
    with pytest.raises(ProfileError) as error:
        parse_profile(text, source="x.toml")
    assert str(error.value) == (
        "x.toml: contactless.afl: the last record (SFI 4 record 2) must not hold 5F24 (pboc-notes §5.2)"
    )


def test_a_dual_suite_profile_validates() -> None:
    """Two suites: certificate records per suite, AFL entries filtered by suite, DF69 in both PDOLs."""
    profile = parse_profile(dual_suite_profile(), source="dual.toml")
    assert profile.suites == ("GM", "INTL")
    assert [(e.sfi, e.first) for e in profile.afl_for("contact", "INTL")] == [(1, 1), (2, 1), (5, 1), (4, 1)]
    assert [(e.sfi, e.first) for e in profile.afl_for("contact", "GM")] == [(1, 1), (2, 1), (3, 1), (4, 1)]


def dual_suite_profile() -> str:
    """pboc-debit-gm with a second suite: INTL certificates in SFI 5, selected by suite in the AFLs."""
    text = (profiles_dir() / "pboc-debit-gm.toml").read_text()
    text = text.replace('name = "pboc-debit-gm"', 'name = "dual"').replace(
        'suites = ["GM"]', 'suites = ["GM", "INTL"]'
    )
    text = text.replace(
        "  { sfi = 3, first = 1, last = 2 },\n",
        '  { sfi = 3, first = 1, last = 2, suites = ["GM"] },\n  { sfi = 5, first = 1, last = 3, suites = ["INTL"] },\n',
    )
    text = text.replace('tags = ["8F", "90"]', 'tags = ["8F", "90"]\nsuite = "GM"')
    text = text.replace('tags = ["9F46", "9F49"]', 'tags = ["9F46", "9F49"]\nsuite = "GM"')
    text += """
[[records]]
sfi = 5
record = 1
tags = ["90"]
suite = "INTL"

[[records]]
sfi = 5
record = 2
tags = ["8F", "9F32", "92"]
suite = "INTL"

[[records]]
sfi = 5
record = 3
tags = ["9F46", "9F47", "9F48", "9F49"]
suite = "INTL"
"""
    return text
