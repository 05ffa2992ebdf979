"""Cardholder identity: the resident ID number (GB 11643-1999) and cardholder kinds (issue 6 item 1).

A citizen identity number has 18 characters (GB 11643-1999 §4): a 6-digit address code (GB/T 2260
region), the birth date YYYYMMDD, a 3-digit order code whose last digit is odd for men and even
for women, and a check character computed with ISO 7064 MOD 11-2 (weights 2^(17−i) mod 11;
check = (12 − Σ mod 11) mod 11, written ``X`` for 10).

>>> r = parse_resident_id("11010519491231002X")
>>> (r.region_code, r.birth_date.isoformat(), r.sex)
('110105', '1949-12-31', 'F')
>>> check_character("11010519491231002")
'X'

Kinds (resident, residence-permit holder, student, elderly, disabled, child) and the concessions
they bring are data: ``citycard/data/platform/cardholder_kinds.toml``.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo

from citycard.platform.errors import InvalidInput

ID_LENGTH = 18
WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
CHECK_CHARACTERS = "0123456789X"
BIRTH_YEAR_MIN = 1880
CHINA_TIME = ZoneInfo("Asia/Shanghai")
# First two digits of GB/T 2260 province-level codes; 81/82/83 are the residence permits of Hong
# Kong, Macao and Taiwan residents (GB 11643 numbering since 2018). UNCERTAIN: 91 (the 2023
# foreigners' permanent residence ID in the same 18-character layout) is accepted on that basis.
PROVINCE_CODES = frozenset(
    {
        "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
        "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
        "65", "71", "81", "82", "83", "91",
    }
)  # fmt: skip
KINDS_FORMAT = "citycard-cardholder-kinds/1"


@dataclass(frozen=True, slots=True)
class ResidentId:
    """A validated GB 11643 identity number and what it says."""

    number: str
    region_code: str
    birth_date: dt.date
    sex: str  # "M" | "F"

    @property
    def masked(self) -> str:
        """First 6 and last 4 characters shown: ``110105********002X``."""
        return self.number[:6] + "*" * 8 + self.number[-4:]


def check_character(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits (GB 11643-1999 §5.4)."""
    total = sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARACTERS[(12 - total % 11) % 11]


def parse_resident_id(number: str, *, today: dt.date | None = None) -> ResidentId:
    """Validate an 18-character identity number; :class:`InvalidInput` (code ``identity.*``) says why.

    >>> parse_resident_id("110105194912310021")
    Traceback (most recent call last):
    ...
    citycard.platform.errors.InvalidInput: check character should be X, got 1
    """
    if not isinstance(number, str):
        raise _bad("identity.format", "the ID number must be a string")
    text = number.strip().upper()
    if len(text) == 15 and text.isascii() and text.isdigit():
        raise _bad(
            "identity.format", "15-digit ID numbers (GB 11643-1989) are not accepted; use the 18-digit one"
        )
    if len(text) != ID_LENGTH:
        raise _bad("identity.format", f"the ID number must have {ID_LENGTH} characters, got {len(text)}")
    body, check = text[:17], text[17]
    if not (body.isascii() and body.isdigit()) or check not in CHECK_CHARACTERS:
        raise _bad("identity.format", "the ID number must be 17 digits and a digit or X")
    if body[:2] not in PROVINCE_CODES:
        raise _bad("identity.region", f"unknown province code {body[:2]} in the address code {body[:6]}")
    try:
        birth = dt.date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        raise _bad("identity.birth_date", f"no such birth date {body[6:14]}") from None
    today = today or dt.datetime.now(CHINA_TIME).date()
    if birth.year < BIRTH_YEAR_MIN or birth > today:
        raise _bad("identity.birth_date", f"birth date {birth.isoformat()} is out of range")
    expected = check_character(body)
    if check != expected:
        raise _bad("identity.check_digit", f"check character should be {expected}, got {check}")
    sex = "M" if int(body[16]) % 2 else "F"
    return ResidentId(number=text, region_code=body[:6], birth_date=birth, sex=sex)


def age_on(birth: dt.date, day: dt.date) -> int:
    """Completed years of age on ``day`` (a 29 February birthday counts on 1 March in other years).

    >>> age_on(dt.date(1949, 12, 31), dt.date(2026, 11, 27))
    76
    """
    before_birthday = (day.month, day.day) < (birth.month, birth.day)
    return day.year - birth.year - (1 if before_birthday else 0)


# --- kinds ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardholderKind:
    """A kind of cardholder with its concessions and eligibility rules (data)."""

    name: str
    zh: str
    en: str
    concessions: tuple[str, ...]
    age_min: int | None = None
    age_max: int | None = None
    id_prefixes: tuple[str, ...] = ()


@cache
def kinds() -> dict[str, CardholderKind]:
    """The shipped cardholder kinds, by name (``cardholder_kinds.toml``)."""
    raw = (resources.files("citycard.data") / "platform" / "cardholder_kinds.toml").read_text(
        encoding="utf-8"
    )
    return parse_kinds(raw)


def parse_kinds(text: str) -> dict[str, CardholderKind]:
    """Parse a kinds file; a wrong key or value is a ``ValueError`` naming the kind."""
    data = tomllib.loads(text)
    if data.get("format") != KINDS_FORMAT:
        raise ValueError(f"cardholder kinds: format must be {KINDS_FORMAT!r}")
    allowed = {"zh", "en", "concessions", "age_min", "age_max", "id_prefixes"}
    found: dict[str, CardholderKind] = {}
    for name, table in data.get("kinds", {}).items():
        unknown = set(table) - allowed
        if unknown:
            raise ValueError(f"cardholder kind {name}: unknown keys {sorted(unknown)}")
        found[name] = CardholderKind(
            name=name,
            zh=str(table["zh"]),
            en=str(table["en"]),
            concessions=tuple(table.get("concessions", ())),
            age_min=table.get("age_min"),
            age_max=table.get("age_max"),
            id_prefixes=tuple(table.get("id_prefixes", ())),
        )
    if not found:
        raise ValueError("cardholder kinds: none defined")
    return found


def check_kind(kind: str, resident: ResidentId, *, today: dt.date | None = None) -> CardholderKind:
    """The kind, after checking the cardholder is eligible for it (age, ID prefix).

    >>> check_kind("elderly", parse_resident_id("11010519491231002X")).concessions[0]
    'transit_free'
    """
    table = kinds()
    if kind not in table:
        raise InvalidInput(
            "cardholder.kind", f"unknown cardholder kind {kind!r}; one of {', '.join(sorted(table))}",
            fields={"kind": "unknown"},
        )  # fmt: skip
    chosen = table[kind]
    age = age_on(resident.birth_date, today or dt.datetime.now(CHINA_TIME).date())
    if chosen.age_min is not None and age < chosen.age_min:
        raise _kind(f"kind {kind} needs age ≥ {chosen.age_min}; the ID number gives {age}")
    if chosen.age_max is not None and age > chosen.age_max:
        raise _kind(f"kind {kind} needs age ≤ {chosen.age_max}; the ID number gives {age}")
    if chosen.id_prefixes and not resident.number.startswith(chosen.id_prefixes):
        raise _kind(f"kind {kind} needs an ID number starting with {', '.join(chosen.id_prefixes)}")
    return chosen


def _kind(detail: str) -> InvalidInput:
    return InvalidInput("cardholder.kind_ineligible", detail, fields={"kind": detail})


def _bad(code: str, detail: str) -> InvalidInput:
    return InvalidInput(code, detail, fields={"id_number": detail})
