"""GB 11643-1999 resident ID numbers and cardholder kinds (issue 6 item 1)."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.platform.errors import InvalidInput
from citycard.platform.identity import age_on, check_character, check_kind, parse_kinds, parse_resident_id

TODAY = dt.date(2026, 11, 27)


@pytest.mark.parametrize(
    ("number", "region", "birth", "sex"),
    [
        ("11010519491231002X", "110105", dt.date(1949, 12, 31), "F"),  # the standard's own example
        ("11010519491231002x", "110105", dt.date(1949, 12, 31), "F"),  # lower-case x accepted
        ("440524188001010014", "440524", dt.date(1880, 1, 1), "M"),  # GB 11643 annex example
        ("110101200002290018", "110101", dt.date(2000, 2, 29), "M"),  # a leap day
    ],
)
def test_valid_numbers_give_region_birth_date_and_sex(number, region, birth, sex) -> None:
    resident = parse_resident_id(number, today=TODAY)
    assert (resident.number, resident.region_code, resident.birth_date, resident.sex) == (
        number.upper(), region, birth, sex,
    )  # fmt: skip
    assert resident.masked == number.upper()[:6] + "********" + number.upper()[-4:]


def test_the_check_character_is_iso_7064_mod_11_2() -> None:
    assert check_character("11010519491231002") == "X"  # remainder giving 10
    assert check_character("44052418800101001") == "4"
    # every single-digit change of the body changes the check character (MOD 11-2 catches it)
    body = "11010519491231002"
    for position in range(17):
        for digit in "0123456789":
            if digit != body[position]:
                changed = body[:position] + digit + body[position + 1 :]
                assert check_character(changed) != "X", (position, digit)


@pytest.mark.parametrize(
    ("number", "code", "words"),
    [
        ("110105194912310021", "identity.check_digit", "should be X, got 1"),
        ("110105194902300027", "identity.birth_date", "no such birth date 19490230"),
        ("110105203001010011", "identity.birth_date", "out of range"),  # born in the future
        ("110105187001010011", "identity.birth_date", "out of range"),  # before 1880
        ("991105194912310021", "identity.region", "unknown province code 99"),
        ("110105491231002", "identity.format", "15-digit"),
        ("1101051949123100", "identity.format", "18 characters, got 16"),
        ("1101051949123100AX", "identity.format", "17 digits"),
        ("11010519491231002Y", "identity.format", "17 digits"),
    ],
)
def test_bad_numbers_are_refused_with_the_reason(number, code, words) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_resident_id(number, today=TODAY)
    assert refused.value.code == code
    assert words in refused.value.detail
    assert refused.value.status == 422 and "id_number" in refused.value.fields


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse_resident_id(11010519491231002, today=TODAY)  # type: ignore[arg-type]


def test_age_counts_completed_years() -> None:
    assert age_on(dt.date(2000, 2, 29), dt.date(2018, 2, 28)) == 17
    assert age_on(dt.date(2000, 2, 29), dt.date(2018, 3, 1)) == 18
    assert age_on(dt.date(1966, 11, 27), TODAY) == 60


def test_kinds_bring_concessions_and_check_eligibility() -> None:
    elderly = parse_resident_id("11010519491231002X", today=TODAY)
    assert "transit_free" in check_kind("elderly", elderly, today=TODAY).concessions
    with pytest.raises(InvalidInput) as young:
        check_kind("elderly", parse_resident_id("110101200002290018", today=TODAY), today=TODAY)
    assert young.value.code == "cardholder.kind_ineligible" and "≥ 60" in young.value.detail
    with pytest.raises(InvalidInput) as old:
        check_kind("child", elderly, today=TODAY)
    assert old.value.code == "cardholder.kind_ineligible"
    with pytest.raises(InvalidInput) as permit:
        check_kind("resident_permit", elderly, today=TODAY)
    assert "810000" in permit.value.detail
    body = "81000019900101001"
    hong_kong = parse_resident_id(body + check_character(body), today=TODAY)
    assert check_kind("resident_permit", hong_kong, today=TODAY).name == "resident_permit"
    with pytest.raises(InvalidInput) as unknown:
        check_kind("astronaut", elderly, today=TODAY)
    assert unknown.value.code == "cardholder.kind"


def test_the_kinds_file_is_checked() -> None:
    with pytest.raises(ValueError, match="format"):
        parse_kinds('format = "other"')
    with pytest.raises(ValueError, match="unknown keys"):
        parse_kinds('format = "citycard-cardholder-kinds/1"\n[kinds.x]\nzh="x"\nen="x"\nrebate=1\n')
    with pytest.raises(ValueError, match="none defined"):
        parse_kinds('format = "citycard-cardholder-kinds/1"\n')
