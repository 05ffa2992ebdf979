"""Card profiles: a card product as data (TOML), loaded and checked with precise errors.

A profile (``citycard/data/profiles/NAME.toml``, or any file) names the suite(s), the application,
the card data rules (BIN, PAN length, PSN, validity), the PIN, the limits in fen, the DOLs, the
contact and contactless AIP/AFL, the records and the tags each holds, the log files, the free data
objects (``[data]``: tag = hex, checked against the PBOC tag dictionary), the ODA key sizes, the
HSM labels of the issuer's keys and, for a citizen card, the PBOC Part 14 extended-application
files (docs/card.md §3–§4; pboc-notes §2, §5.2, §6, §7). In short::

    format = "citycard-profile/1"
    name = "pboc-debit-gm"
    suites = ["GM"]                       # or ["INTL"], or both (records then name their suite)
    [application]                         # aid, label, preferred_name, priority, electronic_cash
    [card]                                # bin = "623548", pan_length = 16, psn, validity_months…
    [limits]                              # ec_balance_limit_fen = 100000 (9F77), … in fen
    [dols]                                # cdol1, cdol2, pdol_contact, pdol_contactless, ddol (hex)
    [contact]                             # aip = "3D00", afl = [{ sfi = 2, first = 1, last = 2, oda = 2 }, …]
    [contactless]                         # the same, plus fdda_version
    [[records]]                           # sfi = 2, record = 1, tags = ["5A", "5F24", …]
    [logs]                                # transaction = { sfi = 11, records = 10, format = "9A03…" }
    [data]                                # "9F0D" = "D84000A800", … (tag = hex, placed in records or 0D01)
    [part14] / [[part14.files]]           # citizen card: A001 files, spare ones for sectors

Computed tags (PAN, dates, certificates, DOLs, AIP/AFL…) are never given in ``[data]``: a record
lists them and data preparation fills them (:data:`COMPUTED_TAGS` says from where).

Two levels of checks, both ending in one :class:`ProfileError` line ``FILE: WHERE: WHAT``:

* shape (pydantic): unknown keys, missing keys, wrong types, bad hex, lengths of single fields;
* meaning (:func:`_check`): limits against 9F77, AFLs against the records, the static data to
  authenticate, the last contactless record (9F74 and 9F69 in it, 5F24 not; pboc-notes §5.2),
  DOLs that the card's features need, SFIs that collide, tags placed twice or nowhere.

>>> profile = load_profile("pboc-debit-gm")
>>> profile.suites, profile.application.aid.hex().upper(), profile.limits.ec_balance_limit_fen
(('GM',), 'A000000333010101', 100000)
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from citycard.emv import DOLError, TLVError, normalize_tag, parse_dol, tag_info

FORMAT = "citycard-profile/1"
PROFILE_BYTES_MAX = 64 * 1024
RECORDS_MAX = 64
AFL_ENTRIES_MAX = 16  # 64 bytes of AFL
DATA_TAGS_MAX = 64
PART14_FILES_MAX = 14  # 8020 (16 bytes a file, enciphered with padding) within one STORE DATA block
AMOUNT_FEN_MAX = 999_999_999_999  # n12
SFI_RECORDS_MAX = 10  # SFIs 1–10: EMV AEFs whose records are 70 templates (Book 3 §5.3.2)
SFI_MAX = 30
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
SUITE_NAMES = ("INTL", "GM")
SuiteName = Literal["INTL", "GM"]

# Tags the data preparation computes (never given in [data]) → where the profile sets them.
COMPUTED_TAGS: Mapping[str, str] = {
    "5A": "the PAN (card.bin, card.pan_length, or --pan)",
    "57": "track 2 equivalent data (PAN, expiry, card.service_code)",
    "5F20": "card.cardholder_name",
    "5F24": "the expiry (card.validity_months)",
    "5F25": "the effective date (card.effective_date or today)",
    "5F28": "card.issuer_country",
    "9F57": "card.issuer_country",
    "5F30": "card.service_code",
    "5F34": "card.psn (or --psn)",
    "9F42": "card.currency",
    "9F51": "card.currency",
    "9F08": "application.version",
    "50": "application.label",
    "87": "application.priority",
    "9F12": "application.preferred_name",
    "9F11": "application.code_table",
    "5F2D": "application.language",
    "8C": "dols.cdol1",
    "8D": "dols.cdol2",
    "9F38": "dols.pdol_contact / dols.pdol_contactless",
    "9F49": "dols.ddol",
    "82": "contact.aip / contactless.aip",
    "94": "contact.afl / contactless.afl",
    "8F": "the HSM's test CA (issuer.ca)",
    "90": "the issuer certificate (issuer.oda_key)",
    "92": "the issuer certificate",
    "9F32": "the issuer certificate",
    "9F46": "the ICC certificate",
    "9F47": "the ICC certificate",
    "9F48": "the ICC certificate",
    "93": "oda.sda",
    "9F74": "application.electronic_cash",
    "9F69": "contactless.fdda_version",
    "9F4D": "logs.transaction",
    "9F4F": "logs.transaction.format",
    "DF4D": "logs.load",
    "DF4F": "logs.load.format",
    "DF61": "part14.indicator",
    "9F17": "pin.try_limit",
    "9F36": "the card (ATC starts at 0)",
    "9F13": "the card (last online ATC starts at 0)",
    "DF63": "the card (amount deducted starts at 0)",
}
ODA_TAGS = frozenset({"8F", "90", "92", "9F32", "9F46", "9F47", "9F48", "93"})
ICC_CERTIFICATE_TAGS = frozenset({"9F46", "9F47", "9F48", "93"})  # signed over the static data
OPTIONAL_COMPUTED_TAGS = frozenset({"92", "9F48", "9F32", "9F47"})  # empty for some keys (then left out)

# Limits: field → (tag, unit). Money is integer fen (DESIGN §3); counts are transactions.
LIMIT_TAGS: Mapping[str, str] = {
    "ec_balance_limit_fen": "9F77",
    "ec_single_transaction_limit_fen": "9F78",
    "ec_reset_threshold_fen": "9F6D",
    "ec_initial_balance_fen": "9F79",
    "card_cvm_limit_fen": "9F6B",
    "cumulative_offline_amount_limit_fen": "9F54",
    "cumulative_offline_amount_upper_limit_fen": "9F5C",
    "deduction_limit_fen": "DF62",
    "consecutive_offline_lower_limit": "9F58",
    "consecutive_offline_upper_limit": "9F59",
    "consecutive_offline_limit_international_currency": "9F53",
    "consecutive_offline_limit_international_country": "9F72",
}

EC_LIMIT_TAGS = frozenset({"9F77", "9F78", "9F6D", "9F79"})

# DGI 0D01 (docs/card.md §3): card risk management and GET DATA objects, in this order.
DGI_0D01_TAGS = (
    "9F51", "9F52", "9F53", "9F54", "9F56", "9F57", "9F58", "9F59", "9F5C", "9F72", "9F75", "9F76",
    "9F77", "9F78", "9F6D", "9F4F", "DF4F", "9F68", "9F6B", "9F6C", "9F63", "DF62",
)  # fmt: skip


class ProfileError(ValueError):
    """A profile that cannot be used; the message is ``FILE: WHERE: WHAT`` on one line."""


# --- field types -----------------------------------------------------------------------------


def _hex(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a hex string, got {type(value).__name__}")
    text = "".join(value.split())
    bad = next((c for c in text if c not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise ValueError(f"not hex (bad character {bad!r})")
    if len(text) % 2:
        raise ValueError(f"odd-length hex ({len(text)} digits)")
    return bytes.fromhex(text)


def _hex_of(low: int, high: int | None = None) -> Any:
    high = low if high is None else high

    def check(value: Any) -> bytes:
        data = _hex(value)
        if not low <= len(data) <= high:
            wanted = f"{low} bytes" if low == high else f"{low} to {high} bytes"
            raise ValueError(f"must be {wanted}, got {len(data)}")
        return data

    return BeforeValidator(check)


def _digits(low: int, high: int | None = None) -> Any:
    high = low if high is None else high

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string of digits, got {type(value).__name__}")
        if not value.isdigit() or not value.isascii():
            raise ValueError(f"must be digits, got {value!r}")
        if not low <= len(value) <= high:
            wanted = f"{low} digits" if low == high else f"{low} to {high} digits"
            raise ValueError(f"must be {wanted}, got {len(value)}")
        return value

    return BeforeValidator(check)


def _dol(value: Any) -> bytes:
    data = _hex(value)
    try:
        parse_dol(data)
    except DOLError as exc:
        raise ValueError(str(exc)) from None
    return data


def _ascii(low: int, high: int) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"must be printable ASCII, got {value!r}")
        if not low <= len(value) <= high:
            raise ValueError(f"must be {low} to {high} characters, got {len(value)}")
        return value

    return BeforeValidator(check)


def _label(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,56}", value):
        raise ValueError(f"HSM label prefix must be letters, digits and . _ : / -, got {value!r}")
    return value


Hex = Annotated[bytes, BeforeValidator(_hex)]
Dol = Annotated[bytes, BeforeValidator(_dol)]
Label = Annotated[str, BeforeValidator(_label)]
Fen = Annotated[int, Field(ge=0, le=AMOUNT_FEN_MAX, strict=True)]
Count = Annotated[int, Field(ge=0, le=255, strict=True)]
Sfi = Annotated[int, Field(ge=1, le=SFI_MAX, strict=True)]
RecordNumber = Annotated[int, Field(ge=1, le=255, strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the profile -----------------------------------------------------------------------------


class Application(_Strict):
    aid: Annotated[bytes, _hex_of(5, 16)]
    label: Annotated[str, _ascii(1, 16)]  # 50
    preferred_name: Annotated[str, _ascii(1, 16)] | None = None  # 9F12
    priority: Annotated[int, Field(ge=1, le=15, strict=True)] = 1  # 87 (b4–b1)
    version: Annotated[bytes, _hex_of(2)] = b"\x00\x30"  # 9F08: PBOC 3.0
    language: Annotated[str, Field(pattern=r"^([a-z]{2}){1,4}$")] = "zhen"  # 5F2D
    code_table: Annotated[int, Field(ge=1, le=10, strict=True)] = 1  # 9F11
    electronic_cash: bool = True  # 9F74 "ECC001" in the records (pboc-notes §2.1, §6)


class CardData(_Strict):
    bin: Annotated[str, _digits(3, 8)]  # issuer identifier: the leading PAN digits
    pan_length: Annotated[int, Field(ge=13, le=19, strict=True)] = 16
    psn: Annotated[str, _digits(2)] = "01"  # 5F34
    validity_months: Annotated[int, Field(ge=1, le=240, strict=True)] = 120
    effective_date: dt.date | None = None  # 5F25; None = the day of preparation
    service_code: Annotated[str, _digits(3)] = "220"  # 5F30
    cardholder_name: Annotated[str, _ascii(2, 26)] = "CITYCARD/CARDHOLDER"  # 5F20
    issuer_country: Annotated[str, _digits(3)] = "156"  # 5F28 (n3)
    currency: Annotated[str, _digits(3)] = "156"  # 9F42, 9F51 (n3)
    track2_discretionary: Annotated[str, _digits(0, 13)] = "00000"


class Pin(_Strict):
    default: Annotated[str, _digits(4, 12)] = "123456"  # 8010 (ISO 9564 format 2)
    try_limit: Annotated[int, Field(ge=1, le=15, strict=True)] = 3  # 9010, 9F17


class Limits(_Strict):
    ec_balance_limit_fen: Fen = 0  # 9F77
    ec_single_transaction_limit_fen: Fen = 0  # 9F78
    ec_reset_threshold_fen: Fen = 0  # 9F6D
    ec_initial_balance_fen: Fen = 0  # 9F79
    card_cvm_limit_fen: Fen | None = None  # 9F6B
    cumulative_offline_amount_limit_fen: Fen | None = None  # 9F54
    cumulative_offline_amount_upper_limit_fen: Fen | None = None  # 9F5C
    deduction_limit_fen: Fen | None = None  # DF62 (Part 14 deposit deduction)
    consecutive_offline_lower_limit: Count | None = None  # 9F58
    consecutive_offline_upper_limit: Count | None = None  # 9F59
    consecutive_offline_limit_international_currency: Count | None = None  # 9F53
    consecutive_offline_limit_international_country: Count | None = None  # 9F72


class Dols(_Strict):
    cdol1: Dol  # 8C
    cdol2: Dol  # 8D
    pdol_contact: Dol  # 9F38 in the contact FCI
    pdol_contactless: Dol  # 9F38 in the contactless FCI (qPBOC)
    ddol: Dol = b"\x9f\x37\x04"  # 9F49


class AflEntry(_Strict):
    sfi: Sfi
    first: RecordNumber
    last: RecordNumber
    oda: Count = 0  # records (from first) signed for offline data authentication
    suites: tuple[SuiteName, ...] | None = None  # the suites whose GPO returns this entry (None: all)


class Interface(_Strict):
    aip: Annotated[bytes, _hex_of(2)]
    afl: Annotated[tuple[AflEntry, ...], Field(min_length=1, max_length=AFL_ENTRIES_MAX)]


class Contactless(Interface):
    fdda_version: Literal[0, 1] = 1  # 01: 9F69 in the last record (pboc-notes §4.5, §5.2)


class Record(_Strict):
    sfi: Sfi
    record: RecordNumber
    tags: Annotated[tuple[str, ...], Field(min_length=1, max_length=32)]
    suite: SuiteName | None = None  # for ODA tags on a card with two suites


class Log(_Strict):
    sfi: Annotated[int, Field(ge=11, le=SFI_MAX, strict=True)]  # pboc-notes §2.1: SFI 11–30
    records: Annotated[int, Field(ge=1, le=255, strict=True)]
    format: Dol


class Logs(_Strict):
    transaction: Log  # 9F4D / 9F4F
    load: Log | None = None  # DF4D / DF4F (electronic-cash loads)


class Oda(_Strict):
    sda: bool = False  # tag 93 too (AIP b7 of byte 1 must say so)
    # EMV's largest CA key: its 248-byte certificate makes a 254-byte record, whose DGI spans two
    # STORE DATA blocks (script.py splits it as CPS does; the card OS reassembles it).
    ca_rsa_bits: Annotated[int, Field(ge=1024, le=1984, multiple_of=8, strict=True)] = 1984
    issuer_rsa_bits: Annotated[int, Field(ge=768, le=1984, multiple_of=8, strict=True)] = 1408
    icc_rsa_bits: Annotated[int, Field(ge=512, le=1984, multiple_of=8, strict=True)] = 1024
    rsa_exponent: Literal[3, 65537] = 3


class Issuer(_Strict):
    """HSM labels (a ``-intl``/``-gm`` suffix is added per suite) and whether to create missing keys."""

    imk_ac: Label = "imk-ac"
    imk_mac: Label = "imk-mac"
    imk_enc: Label = "imk-enc"
    imk_capp: Label = "imk-capp"  # Part 14 opening keys: one master per file, "-gm-15" (suite, SFI) added
    oda_key: Label = "issuer"
    ca: Label = "test-ca"
    perso_kek: Label = "perso-kek"
    create_missing: bool = True  # a test/demo issuer: create absent keys in the HSM


class Part14File(_Strict):
    sfi: Sfi
    type: Literal["variable", "cyclic"]
    record_bytes: Annotated[int, Field(ge=1, le=255, strict=True)]
    size_bytes: Annotated[int, Field(ge=0, le=0xFFFF, strict=True)] | None = None  # variable: 0 = unlimited
    records: Annotated[int, Field(ge=1, le=255, strict=True)] | None = None  # cyclic
    read_right: Count = 0  # 00 = READ CAPP DATA
    write_right: Count = 0  # 00 = UPDATE CAPP DATA CACHE
    use: Annotated[str, Field(min_length=1, max_length=200)]
    spare: bool = False  # declared and keyed now, assigned to a sector application later


class Part14(_Strict):
    indicator: Annotated[bytes, _hex_of(1)] = b"\x01"  # DF61 in the contactless FCI
    files: Annotated[tuple[Part14File, ...], Field(min_length=1, max_length=PART14_FILES_MAX)]


class Profile(_Strict):
    format: Literal["citycard-profile/1"]
    name: Annotated[str, Field(pattern=NAME_PATTERN.pattern)]
    description: str = ""
    suites: Annotated[tuple[SuiteName, ...], Field(min_length=1, max_length=2)]
    application: Application
    card: CardData
    pin: Pin = Pin()
    limits: Limits = Limits()
    dols: Dols
    contact: Interface
    contactless: Contactless
    records: Annotated[tuple[Record, ...], Field(min_length=1, max_length=RECORDS_MAX)]
    logs: Logs
    data: Annotated[dict[str, Hex], Field(max_length=DATA_TAGS_MAX)] = {}
    oda: Oda = Oda()
    issuer: Issuer = Issuer()
    part14: Part14 | None = None

    # -- helpers used by data preparation (pure, no HSM) --
    def limit_values(self) -> dict[str, int]:
        """The limits that are set, by tag (9F77 → fen); no EC tags for a card without EC."""
        values = {}
        for name, tag in LIMIT_TAGS.items():
            value = getattr(self.limits, name)
            if value is not None and (self.application.electronic_cash or tag not in EC_LIMIT_TAGS):
                values[tag] = value
        return values

    def record(self, sfi: int, number: int) -> Record | None:
        return next((r for r in self.records if (r.sfi, r.record) == (sfi, number)), None)

    def afl_for(self, interface: str, suite: str) -> tuple[AflEntry, ...]:
        """The AFL entries the GPO on ``interface`` returns when the transaction uses ``suite``."""
        entries = (self.contact if interface == "contact" else self.contactless).afl
        return tuple(e for e in entries if e.suites is None or suite in e.suites)

    def records_read(self, interface: str, suite: str) -> list[Record]:
        """The records a terminal reads on ``interface`` with ``suite``, in AFL order."""
        found = []
        for entry in self.afl_for(interface, suite):
            for number in range(entry.first, entry.last + 1):
                rec = self.record(entry.sfi, number)
                if rec is not None:
                    found.append(rec)
        return found

    def oda_records(self, interface: str, suite: str) -> list[tuple[int, int]]:
        """(SFI, record) of the records signed for ODA, in AFL order (Book 3 §10.3)."""
        out = []
        for entry in self.afl_for(interface, suite):
            out.extend((entry.sfi, n) for n in range(entry.first, entry.first + entry.oda))
        return out

    @property
    def part14_sfis(self) -> tuple[int, ...]:
        return tuple(f.sfi for f in self.part14.files) if self.part14 else ()


# --- loading ---------------------------------------------------------------------------------


def profiles_dir() -> Path:
    return Path(str(resources.files("citycard").joinpath("data", "profiles")))


def list_profiles() -> list[str]:
    """Names of the profiles shipped with citycard."""
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (``citizen-card-gm``) or a TOML file by path, fully checked."""
    path = _resolve(name_or_path)
    try:
        size = path.stat().st_size
        if size > PROFILE_BYTES_MAX:
            raise ProfileError(f"{path.name}: {size} bytes, a profile is at most {PROFILE_BYTES_MAX}")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    return parse_profile(text, source=path.name)


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        return Path(text)
    if not NAME_PATTERN.fullmatch(text):
        raise ProfileError(f"profile name {text!r} is not a name (lower-case letters, digits, -)")
    path = profiles_dir() / f"{text}.toml"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile {text!r}: expected one of {', '.join(list_profiles())} or a path"
        )
    return path


def parse_profile(text: str, *, source: str = "profile") -> Profile:
    """Parse and check a profile's TOML text; ``source`` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: not TOML: {exc}") from None
    if isinstance(raw.get("data"), dict):  # tags are case-insensitive keys
        raw["data"] = {str(tag).upper(): value for tag, value in raw["data"].items()}
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(f"{source}: {_validation_line(exc)}") from None
    problem = _check(profile)
    if problem:
        raise ProfileError(f"{source}: {problem}")
    return profile


def _where(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "profile"


def _validation_line(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return f"{_where(loc)}: unknown key{hint}{more}"
    if first["type"] == "missing":
        return f"{_where(loc)}: missing{more}"
    message = first["msg"].removeprefix("Value error, ")
    if message[1:2].islower():  # "Input should…" → "input should…", but "DOL…" stays
        message = message[:1].lower() + message[1:]
    return f"{_where(loc)}: {message}{more}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at ``loc`` accepts (for an "unknown key" message)."""
    annotation: Any = Profile
    for part in loc:
        annotation = _model_in(annotation)
        if isinstance(part, str) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
        elif isinstance(part, int):
            args = [a for a in typing.get_args(_unwrap(annotation)) if a is not Ellipsis]
            annotation = args[0] if args else None
    model = _model_in(annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model_in(annotation: Any) -> Any:
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            arg = _unwrap(arg)
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation


# --- meaning checks --------------------------------------------------------------------------


def _check(p: Profile) -> str | None:
    """The first meaning problem of a shape-valid profile as ``WHERE: WHAT``, or None."""
    for check in (_check_suites, _check_limits, _check_data, _check_records, _check_afls, _check_features):
        problem = check(p)
        if problem:
            return problem
    return None


def _check_suites(p: Profile) -> str | None:
    if len(set(p.suites)) != len(p.suites):
        return f"suites: {list(p.suites)} names a suite twice"
    if len(p.card.bin) >= p.card.pan_length:
        return (
            f"card.bin: {len(p.card.bin)} digits leave no account number in a {p.card.pan_length}-digit PAN"
        )
    track2_nibbles = p.card.pan_length + 1 + 4 + 3 + len(p.card.track2_discretionary)
    if track2_nibbles > 37:
        return f"card.track2_discretionary: track 2 would be {track2_nibbles} digits, at most 37"
    return None


def _check_limits(p: Profile) -> str | None:
    lim = p.limits
    ceiling = lim.ec_balance_limit_fen
    for name in ("ec_single_transaction_limit_fen", "ec_reset_threshold_fen", "ec_initial_balance_fen"):
        value = getattr(lim, name)
        if value > ceiling:
            return (
                f"limits.{name}: {value} fen ({LIMIT_TAGS[name]}) is above the EC balance limit "
                f"(9F77) of {ceiling} fen"
            )
    if p.application.electronic_cash and ceiling == 0:
        return (
            "limits.ec_balance_limit_fen: an electronic-cash application needs a balance limit (9F77) above 0"
        )
    if not p.application.electronic_cash and ceiling:
        return "limits.ec_balance_limit_fen: set, but application.electronic_cash is false"
    low, high = lim.consecutive_offline_lower_limit, lim.consecutive_offline_upper_limit
    if low is not None and high is not None and low > high:
        return (
            f"limits.consecutive_offline_lower_limit: {low} (9F58) is above the upper limit (9F59) of {high}"
        )
    total, upper = lim.cumulative_offline_amount_limit_fen, lim.cumulative_offline_amount_upper_limit_fen
    if total is not None and upper is not None and total > upper:
        return (
            f"limits.cumulative_offline_amount_limit_fen: {total} fen (9F54) is above the upper limit "
            f"(9F5C) of {upper} fen"
        )
    if lim.deduction_limit_fen is not None:
        if p.part14 is None:
            return "limits.deduction_limit_fen: a deduction limit (DF62) needs [part14]"
        if lim.deduction_limit_fen > ceiling:
            return (
                f"limits.deduction_limit_fen: {lim.deduction_limit_fen} fen (DF62) is above the EC balance "
                f"limit (9F77) of {ceiling} fen"
            )
    return None


def _tag_problem(tag: str) -> str | None:
    try:
        normal = normalize_tag(tag)
    except TLVError as exc:
        return f"not a tag: {exc}"
    if normal != tag:
        return f"write the tag as {normal}"
    if not tag_info(tag).known:
        return "unknown tag (not in the PBOC or EMV tag dictionary)"
    return None


def _check_data(p: Profile) -> str | None:
    limit_fields = {tag: name for name, tag in LIMIT_TAGS.items()}
    for tag, value in p.data.items():
        where = f"data.{tag}"
        problem = _tag_problem(tag)
        if problem:
            return f"{where}: {problem}"
        if tag in COMPUTED_TAGS:
            return f"{where}: computed by data preparation, set it through {COMPUTED_TAGS[tag]}"
        if tag in limit_fields:
            return f"{where}: set it in [limits] as {limit_fields[tag]} (fen or a count, not hex)"
        info = tag_info(tag)
        if info.constructed:
            return f"{where}: a constructed tag cannot be given as a value"
        if not info.length_min <= len(value) <= info.length_max:
            wanted = (
                f"{info.length_min} bytes"
                if info.length_min == info.length_max
                else f"{info.length_min} to {info.length_max} bytes"
            )
            return f"{where}: {info.name} must be {wanted}, got {len(value)}"
        if info.format == "n" and not value.hex().isdigit():
            return f"{where}: {info.name} is numeric (BCD digits), got {value.hex().upper()}"
        if tag == "8E" and (len(value) < 10 or (len(value) - 8) % 2):
            return f"{where}: a CVM list is X (4) ‖ Y (4) ‖ rules of 2 bytes each, got {len(value)} bytes"
        if tag == "9F4A" and value != b"\x82":
            return f"{where}: the static data authentication tag list may only hold 82, got {value.hex().upper()}"
    return None


def _check_records(p: Profile) -> str | None:
    seen: set[tuple[int, int]] = set()
    for i, rec in enumerate(p.records):
        where = f"records[{i}]"
        key = (rec.sfi, rec.record)
        if key in seen:
            return f"{where}: SFI {rec.sfi} record {rec.record} is declared twice"
        seen.add(key)
        if rec.sfi > SFI_RECORDS_MAX:
            return f"{where}: SFI {rec.sfi}: application records live in SFI 1 to {SFI_RECORDS_MAX}"
        if rec.suite is not None and rec.suite not in p.suites:
            return f"{where}: suite {rec.suite} is not one of the profile's suites {list(p.suites)}"
        if len(set(rec.tags)) != len(rec.tags):
            return f"{where}: a tag is listed twice in one record"
        for tag in rec.tags:
            problem = _tag_problem(tag)
            if problem:
                return f"{where}.tags: {tag}: {problem}"
            if tag == "9F79":
                return f"{where}.tags: 9F79 (EC balance) is read with GET DATA and must not be in a record"
            if tag in ("82", "94", "9F38", "9F36", "9F13", "9F17", "DF63", "9F4D", "DF4D", "DF61"):
                return f"{where}.tags: {tag} is not record data ({COMPUTED_TAGS[tag]})"
            if tag not in COMPUTED_TAGS and tag not in p.data:
                return f"{where}.tags: {tag} has no value: give it in [data]"
            if tag == "9F74" and not p.application.electronic_cash:
                return f"{where}.tags: 9F74 needs application.electronic_cash = true"
            if tag == "93" and not p.oda.sda:
                return f"{where}.tags: 93 needs oda.sda = true"
            if tag == "9F69" and p.contactless.fdda_version != 1:
                return f"{where}.tags: 9F69 needs contactless.fdda_version = 1"
            if tag == "9F12" and p.application.preferred_name is None:
                return f"{where}.tags: 9F12 needs application.preferred_name"
            if tag in ODA_TAGS and len(p.suites) > 1 and rec.suite is None:
                return (
                    f"{where}.tags: {tag} differs per suite on a card with two suites: "
                    "give the record a suite"
                )
            if tag in ("92", "9F32", "9F47", "9F48") and (rec.suite or p.suites[0]) == "GM":
                return f"{where}.tags: {tag} is an RSA-only tag, this record is for the GM suite"
    return _placed_once(p)


def _placed_once(p: Profile) -> str | None:
    placed = {tag for rec in p.records for tag in rec.tags}
    for tag in p.data:
        if tag not in placed and tag not in DGI_0D01_TAGS:
            return f"data.{tag}: not in any record and not a card-internal object (DGI 0D01): place it"
    return None


def _check_afls(p: Profile) -> str | None:
    log_sfis = {p.logs.transaction.sfi} | ({p.logs.load.sfi} if p.logs.load else set())
    if p.logs.load and p.logs.load.sfi == p.logs.transaction.sfi:
        return f"logs.load.sfi: {p.logs.load.sfi} is the transaction log's SFI too"
    for sfi in p.part14_sfis:
        if sfi in log_sfis:
            return f"part14.files: SFI {sfi} is a log file's SFI"
    shared = sorted(set(p.part14_sfis) & {r.sfi for r in p.records})
    if shared:
        return f"part14.files: SFI {shared[0]} holds application records"
    if len(set(p.part14_sfis)) != len(p.part14_sfis):
        return "part14.files: an SFI is declared twice"
    for interface in ("contact", "contactless"):
        problem = _check_afl(p, interface)
        if problem:
            return problem
    used = {(e.sfi, n) for e in (*p.contact.afl, *p.contactless.afl) for n in range(e.first, e.last + 1)}
    for i, rec in enumerate(p.records):
        if (rec.sfi, rec.record) not in used:
            return f"records[{i}]: SFI {rec.sfi} record {rec.record} is in neither AFL"
    for suite in p.suites:
        contact, contactless = p.oda_records("contact", suite), p.oda_records("contactless", suite)
        if contact != contactless:
            return (
                f"contactless.afl: the records signed for ODA ({_records_text(contactless)}) differ from "
                f"contact.afl's ({_records_text(contact)}); one ICC certificate signs one list"
            )
        if not contact:
            return f"contact.afl: no record is signed for ODA (set oda on an entry) for suite {suite}"
        for sfi, number in contact:
            rec = p.record(sfi, number)
            assert rec is not None  # checked by _check_afl
            signed = ICC_CERTIFICATE_TAGS & set(rec.tags)
            if signed:
                return (
                    f"contact.afl: SFI {sfi} record {number} is signed for ODA but holds "
                    f"{', '.join(sorted(signed))}, which are made over the signed records"
                )
    if "9F4A" in p.data and p.contact.aip != p.contactless.aip:
        return (
            f"contactless.aip: {p.contactless.aip.hex().upper()} differs from contact.aip "
            f"{p.contact.aip.hex().upper()}, but 9F4A puts the AIP in the signed static data"
        )
    return None


def _records_text(records: list[tuple[int, int]]) -> str:
    return ", ".join(f"SFI {s} record {n}" for s, n in records) or "none"


def _check_afl(p: Profile, interface: str) -> str | None:
    entries = (p.contact if interface == "contact" else p.contactless).afl
    for i, entry in enumerate(entries):
        where = f"{interface}.afl[{i}]"
        if entry.last < entry.first:
            return f"{where}: last record {entry.last} is before the first {entry.first}"
        if entry.oda > entry.last - entry.first + 1:
            return f"{where}: oda {entry.oda} is more than the {entry.last - entry.first + 1} records of the entry"
        if entry.sfi > SFI_RECORDS_MAX:
            return f"{where}: SFI {entry.sfi}: the AFL reads application records, SFI 1 to {SFI_RECORDS_MAX}"
        for suite in entry.suites or ():
            if suite not in p.suites:
                return f"{where}: suite {suite} is not one of the profile's suites {list(p.suites)}"
        for number in range(entry.first, entry.last + 1):
            rec = p.record(entry.sfi, number)
            if rec is None:
                return f"{where}: SFI {entry.sfi} record {number} is not declared in [[records]]"
            applies = entry.suites or p.suites
            if rec.suite is not None and any(s != rec.suite for s in applies):
                return (
                    f"{where}: SFI {entry.sfi} record {number} is for suite {rec.suite}; "
                    f'give the entry suites = ["{rec.suite}"]'
                )
    for suite in p.suites:
        seen: dict[str, tuple[int, int]] = {}
        for rec in p.records_read(interface, suite):
            for tag in rec.tags:
                if tag in seen:
                    first = seen[tag]
                    return (
                        f"{interface}.afl: {tag} is read twice with suite {suite} (SFI {first[0]} record "
                        f"{first[1]} and SFI {rec.sfi} record {rec.record})"
                    )
                seen[tag] = (rec.sfi, rec.record)
        problem = _check_read_tags(p, interface, suite, set(seen))
        if problem:
            return problem
    return None


def _check_read_tags(p: Profile, interface: str, suite: str, read: set[str]) -> str | None:
    aip = (p.contact if interface == "contact" else p.contactless).aip
    needed = ["5A", "5F24", "8F", "90", "9F46"]
    if suite == "INTL":
        needed += ["9F32", "9F47"]
    if interface == "contact":
        needed += ["8C", "8D", "8E"]
        if aip[0] & 0x20:  # DDA
            needed.append("9F49")
    if p.oda.sda:
        needed.append("93")
    if p.application.electronic_cash:
        needed.append("9F74")
    if interface == "contactless" and p.contactless.fdda_version == 1:
        needed.append("9F69")
    missing = [tag for tag in needed if tag not in read]
    if missing:
        return f"{interface}.afl: with suite {suite} the records read lack {', '.join(missing)}"
    if bool(aip[0] & 0x40) != p.oda.sda:
        return (
            f"{interface}.aip: {aip.hex().upper()} says SDA is {'' if aip[0] & 0x40 else 'not '}supported "
            f"but oda.sda is {str(p.oda.sda).lower()}"
        )
    if interface == "contactless":
        last_entry = p.afl_for("contactless", suite)[-1]
        last = p.record(last_entry.sfi, last_entry.last)
        assert last is not None
        where = f"contactless.afl: the last record (SFI {last.sfi} record {last.record})"
        if "5F24" in last.tags:
            return f"{where} must not hold 5F24 (pboc-notes §5.2)"
        for tag in ("9F74", "9F69"):
            if tag in needed and tag not in last.tags:
                return f"{where} must hold {tag} (pboc-notes §5.2)"
    return None


def _check_features(p: Profile) -> str | None:
    pdols = {
        "dols.pdol_contact": {t for t, _ in parse_dol(p.dols.pdol_contact)},
        "dols.pdol_contactless": {t for t, _ in parse_dol(p.dols.pdol_contactless)},
    }
    if "9F66" not in pdols["dols.pdol_contactless"]:
        return "dols.pdol_contactless: a qPBOC PDOL must ask for the TTQ (9F66)"
    if p.contactless.fdda_version == 1:
        for tag in ("9F37", "9F02", "5F2A"):
            if tag not in pdols["dols.pdol_contactless"]:
                return f"dols.pdol_contactless: fDDA version 01 signs {tag}, the PDOL must ask for it"
    if p.application.electronic_cash:
        for tag in ("9F7A", "9F02"):
            if tag not in pdols["dols.pdol_contact"]:
                return f"dols.pdol_contact: an electronic-cash card needs {tag} in the contact PDOL"
    if len(p.suites) > 1:
        for where, tags in pdols.items():
            if "DF69" not in tags:
                return f"{where}: a card with two suites needs DF69 in the PDOL to choose one"
    if p.part14 is not None and "DF60" not in pdols["dols.pdol_contactless"]:
        return "dols.pdol_contactless: a Part 14 card needs DF60 (CAPP transaction indicator) in the PDOL"
    if p.part14 is None and "DF60" in pdols["dols.pdol_contactless"]:
        return "dols.pdol_contactless: DF60 asks for Part 14 transactions, but there is no [part14]"
    cdol1 = {t for t, _ in parse_dol(p.dols.cdol1)}
    for tag in ("9F02", "9F37"):
        if tag not in cdol1:
            return f"dols.cdol1: the application cryptogram needs {tag} (pboc-notes §4.2)"
    if "9F37" not in {t for t, _ in parse_dol(p.dols.ddol)}:
        return "dols.ddol: the DDOL must ask for the unpredictable number 9F37"
    for where, log in (("logs.transaction", p.logs.transaction), ("logs.load", p.logs.load)):
        if log is not None and log.sfi in {r.sfi for r in p.records}:
            return f"{where}.sfi: SFI {log.sfi} holds application records"
    if p.logs.load is not None and not p.application.electronic_cash:
        return "logs.load: a load log needs application.electronic_cash = true"
    if p.part14 is not None:
        for i, f in enumerate(p.part14.files):
            where = f"part14.files[{i}]"
            if f.type == "variable" and (f.size_bytes is None or f.records is not None):
                return f"{where}: a variable-record file takes size_bytes (0 = unlimited), not records"
            if f.type == "cyclic" and (f.records is None or f.size_bytes is not None):
                return f"{where}: a cyclic file takes records (its record count), not size_bytes"
            if f.type == "variable" and f.size_bytes and f.size_bytes < f.record_bytes:
                return f"{where}: size_bytes {f.size_bytes} cannot hold one {f.record_bytes}-byte record"
    return None


__all__ = [
    "COMPUTED_TAGS",
    "DGI_0D01_TAGS",
    "FORMAT",
    "LIMIT_TAGS",
    "AflEntry",
    "Profile",
    "ProfileError",
    "Record",
    "list_profiles",
    "load_profile",
    "parse_profile",
    "profiles_dir",
]
