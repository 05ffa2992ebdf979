"""Data preparation: a profile and the HSM → the card's DGIs, in STORE DATA order (docs/card.md §3).

Keys never exist outside the HSM except for the moment a card key or the fresh ICC private key is
enciphered under the personalisation transport key (``perso-kek``, ``SoftHSM.encipher_perso_dgi``):
every secret DGI (8000, 8030, 8010, 8201–8205, 8040, 8020) leaves this module enciphered, and
:class:`PreparedCard` shows KCVs, never a key.

For a test or demo issuer (``issuer.create_missing``) the HSM's missing keys are created on first
use, by label with a ``-intl``/``-gm`` suffix: IMK-AC/MAC/ENC (``imk-ac-gm`` …), the test CA
(``test-ca-gm``, CAPK A000000333 E0 for RSA, E1 for SM2), the issuer ODA key, the Part 14
opening-key masters (``imk-capp-gm-15`` …, type IMK-ENC: option A gives each card its opening key)
and ``perso-kek``.

DGI order: records SSRR (SFI, record), FCIs 9102/9103, GPO data 9104/9105 (and 9106/9107), 0D01,
0E01, A001, then per suite the KCVs before the keys (9000 8000 / 9030 8030, so the card can check
each key as it arrives), 9010 8010, the ICC private key (8201–8205 / 8040), 9020 8020.

GPO data (AIP ‖ the AFL entries of the suite, docs/card.md §3): a single-suite card gets 9104
(contact) and 9105 (contactless) for its suite; a card with both suites gets 9104/9105 for INTL and
9106/9107 for GM (*conv.*), whatever the order of ``suites`` in the profile.

Static data to authenticate (Book 3 §10.3): the records the AFL flags for ODA, in AFL order — for
SFI 1–10 the value of the 70 template only — followed by the AIP when 9F4A lists 82. The ICC
certificate (9F46) and SDA (93) are made over exactly that.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from citycard.card.perso.profile import (
    DGI_0D01_TAGS,
    ICC_CERTIFICATE_TAGS,
    ODA_TAGS,
    OPTIONAL_COMPUTED_TAGS,
    Profile,
    Record,
)
from citycard.crypto import rsa
from citycard.crypto.capk import TEST_CA_INDEX, UNIONPAY_RID, Capk
from citycard.crypto.oda import PublicKey
from citycard.crypto.suite import GM, INTL, Suite
from citycard.emv import encode_one
from citycard.hsm import HSMError, SoftHSM
from citycard.hsm.cardimage import PERSO_KEK_TYPE

CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")  # no DST since 1991: a fixed offset
RECORD_TEMPLATE_BYTES_MAX = 254  # EMV's record limit, tag 70 and length included (one short R-APDU)
EC_MARKER = b"ECC001"  # 9F74 (pboc-notes §2.1)
SUITES_BY_NAME = {"INTL": INTL, "GM": GM}

# DGIs enciphered under the transport key (docs/card.md §3).
DGI_CARD_KEYS = {"INTL": (0x9000, 0x8000), "GM": (0x9030, 0x8030)}  # (KCVs, keys)
DGI_PIN = (0x9010, 0x8010)
DGI_RSA_CRT = (0x8201, 0x8202, 0x8203, 0x8204, 0x8205)  # q⁻¹ mod p, d mod (q−1), d mod (p−1), q, p
DGI_SM2_PRIVATE = 0x8040
DGI_CAPP_FILES, DGI_CAPP_KCVS, DGI_CAPP_KEYS = 0xA001, 0x9020, 0x8020  # Part 14
DGI_FCI = {"contact": 0x9102, "contactless": 0x9103}
DGI_GPO = {"contact": 0x9104, "contactless": 0x9105}  # a single-suite card's suite; INTL on a dual one
DGI_GPO_GM = {"contact": 0x9106, "contactless": 0x9107}  # GM on a card with both suites (conv.)
DGI_OBJECTS, DGI_INITIAL = 0x0D01, 0x0E01
ENCIPHERED_DGIS = frozenset({0x8000, 0x8030, 0x8010, *DGI_RSA_CRT, DGI_SM2_PRIVATE, DGI_CAPP_KEYS})
PART14_TYPES = {"variable": 0x01, "cyclic": 0x02}


class PrepareError(ValueError):
    """Data preparation refused: a bad PAN/PSN/PIN, a record that does not fit, an HSM key missing."""


@dataclass(frozen=True, slots=True)
class Dgi:
    """One data grouping: its number, its value (enciphered when ``encrypted``) and what it holds."""

    number: int
    data: bytes = field(repr=False)
    encrypted: bool = False
    what: str = ""

    @property
    def name(self) -> str:
        return f"{self.number:04X}"

    def __repr__(self) -> str:
        mark = ", enciphered" if self.encrypted else ""
        return f"Dgi({self.name}, {len(self.data)} bytes{mark}: {self.what})"


@dataclass(frozen=True)
class PreparedCard:
    """The result of data preparation: DGIs in order and what was chosen. No clear key anywhere."""

    profile: str
    aid: bytes
    suites: tuple[Suite, ...]
    pan: str
    psn: str
    effective: dt.date
    expiry: dt.date
    dgis: tuple[Dgi, ...]
    kcvs: Mapping[str, Mapping[str, str]]  # "GM" → {"AC": …}, "part14" → {"15": …}, "perso-kek" → {"KEK": …}
    capks: Mapping[str, Capk]  # suite name → the test CA's public key (for terminals)
    icc_public_keys: Mapping[str, PublicKey]
    ec_balance_fen: int | None  # None: no electronic cash on this card
    perso_kek_label: str

    @property
    def pan_masked(self) -> str:
        return mask_pan(self.pan)

    @property
    def perso_suite(self) -> Suite:
        """The cipher of the transport key for this card's enciphered DGIs: its first suite."""
        return self.suites[0]

    def dgi(self, number: int) -> Dgi:
        for item in self.dgis:
            if item.number == number:
                return item
        raise KeyError(f"no DGI {number:04X} in the prepared card")

    def __repr__(self) -> str:
        names = "+".join(s.name for s in self.suites)
        return f"PreparedCard({self.profile}, {self.pan_masked}/{self.psn}, {names}, {len(self.dgis)} DGIs)"


# --- PAN, dates, PIN ------------------------------------------------------------------------


def luhn_check_digit(digits: str) -> str:
    """The Luhn (ISO/IEC 7812-1 Annex B) check digit to append to ``digits``.

    >>> luhn_check_digit("7992739871")
    '3'
    """
    if not digits.isdigit() or not digits.isascii():
        raise ValueError(f"Luhn input must be digits, got {digits!r}")
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2 == 0:  # doubled: the rightmost digit before the check digit, then every other
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(pan: str) -> bool:
    """True when the last digit of ``pan`` is its Luhn check digit.

    >>> luhn_valid("79927398713"), luhn_valid("79927398710")
    (True, False)
    """
    return len(pan) >= 2 and pan.isdigit() and luhn_check_digit(pan[:-1]) == pan[-1]


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits shown (PCI DSS style): ``623548******1234``.

    >>> mask_pan("6235481234561234")
    '623548******1234'
    """
    return pan[:6] + "*" * max(len(pan) - 10, 0) + pan[-4:]


def choose_pan(profile: Profile, pan: str | None, rng: random.Random) -> str:
    """The given PAN after checks (digits, length, BIN, Luhn), or BIN ‖ random ‖ check digit."""
    card = profile.card
    if pan is None:
        body_digits = card.pan_length - len(card.bin) - 1
        body = card.bin + "".join(str(rng.randrange(10)) for _ in range(body_digits))
        return body + luhn_check_digit(body)
    if not pan.isdigit() or not pan.isascii():
        raise PrepareError(f"PAN must be digits, got {pan!r}")
    if len(pan) != card.pan_length:
        raise PrepareError(f"PAN must be {card.pan_length} digits for profile {profile.name}, got {len(pan)}")
    if not pan.startswith(card.bin):
        raise PrepareError(f"PAN {mask_pan(pan)} does not start with the profile's BIN {card.bin}")
    expected = luhn_check_digit(pan[:-1])
    if pan[-1] != expected:
        raise PrepareError(f"PAN {mask_pan(pan)}: Luhn check digit should be {expected}, got {pan[-1]}")
    return pan


def check_psn(psn: str) -> str:
    if len(psn) != 2 or not psn.isdigit() or not psn.isascii():
        raise PrepareError(f"PSN (5F34) must be 2 digits, got {psn!r}")
    return psn


def pin_block_format_2(pin: str) -> bytes:
    """ISO 9564-1 format 2 PIN block (offline PIN, DGI 8010): 2 ‖ N ‖ PIN ‖ F… (8 bytes).

    >>> pin_block_format_2("1234").hex().upper()
    '241234FFFFFFFFFF'
    """
    if not pin.isdigit() or not pin.isascii() or not 4 <= len(pin) <= 12:
        raise PrepareError(f"PIN must be 4 to 12 digits, got {len(pin)} characters")
    return bytes.fromhex(f"2{len(pin):X}{pin}".ljust(16, "F"))


def add_months_last_day(start: dt.date, months: int) -> dt.date:
    """The last day of the month ``months`` after ``start``'s month.

    >>> add_months_last_day(dt.date(2025, 3, 15), 120)
    datetime.date(2035, 3, 31)
    """
    index = start.year * 12 + start.month - 1 + months
    year, month = divmod(index, 12)
    return dt.date(year, month + 1, calendar.monthrange(year, month + 1)[1])


def n12(amount_fen: int) -> bytes:
    return bytes.fromhex(f"{amount_fen:012d}")


def n3(code: str) -> bytes:
    """A 3-digit numeric code (country, currency) as n3 in 2 bytes: ``156`` → ``0156``."""
    return bytes.fromhex(code.rjust(4, "0"))


def cn(digits: str) -> bytes:
    """Compressed numeric: digits left-justified, padded with F to whole bytes (5A)."""
    return bytes.fromhex(digits + "F" * (len(digits) % 2))


def yymmdd(date: dt.date) -> bytes:
    return bytes.fromhex(f"{date:%y%m%d}")


def mmyy(date: dt.date) -> bytes:
    return bytes.fromhex(f"{date:%m%y}")


def track2(pan: str, expiry: dt.date, service_code: str, discretionary: str) -> bytes:
    """Track 2 equivalent data (57): PAN ‖ D ‖ YYMM ‖ service code ‖ discretionary, F-padded."""
    text = f"{pan}D{expiry:%y%m}{service_code}{discretionary}"
    return bytes.fromhex(text + "F" * (len(text) % 2))


def check_inputs(profile: Profile, *, pan: str | None, psn: str | None, pin: str | None) -> None:
    """The per-card inputs' checks of :func:`prepare_card`, without the HSM (a CLI runs them first)."""
    if pan is not None:
        choose_pan(profile, pan, random.Random(0))
    if psn is not None:
        check_psn(psn)
    if pin is not None:
        pin_block_format_2(pin)


# --- TLV helpers ---------------------------------------------------------------------------


def tlv_list(items: list[tuple[str, bytes]]) -> bytes:
    return b"".join(encode_one(tag, value) for tag, value in items)


def afl_bytes(profile: Profile, interface: str, suite: str) -> bytes:
    """The AFL: SFI << 3, first record, last record, records for ODA (Book 3 §10.2)."""
    return b"".join(bytes([e.sfi << 3, e.first, e.last, e.oda]) for e in profile.afl_for(interface, suite))


def static_data_to_authenticate(
    records: Mapping[tuple[int, int], bytes], afl: bytes, *, aip: bytes | None
) -> bytes:
    """Book 3 §10.3: the records the AFL flags for ODA (SFI 1–10: the 70 template's value; SFI 11–30:
    the whole record) in AFL order, then the AIP when 9F4A lists 82 (``aip`` given).
    """
    out = b""
    for i in range(0, len(afl), 4):
        sfi, first, oda = afl[i] >> 3, afl[i + 1], afl[i + 3]
        for number in range(first, first + oda):
            template = records[sfi, number]
            if sfi <= 10:
                if template[0] != 0x70:
                    raise PrepareError(f"record {sfi}/{number} signed for ODA is not a 70 template")
                header = 2 if template[1] < 0x80 else 2 + (template[1] & 0x7F)
                out += template[header:]
            else:
                out += template
    return out + (aip or b"")


# --- the HSM side ----------------------------------------------------------------------------


@dataclass
class _SuiteMaterial:
    suite: Suite
    labels: dict[str, str]
    capk: Capk
    issuer_tags: dict[str, bytes]
    kcvs: dict[str, str] = field(default_factory=dict)


def _label(prefix: str, suite: Suite) -> str:
    return f"{prefix}-{suite.name.lower()}"


def _ensure_key(hsm: SoftHSM, label: str, key_type: str, suite: Suite, *, create: bool) -> None:
    """The symmetric key ``label`` of ``key_type``/``suite`` exists in the HSM (made if allowed)."""
    try:
        info = hsm.key_info(label)
    except HSMError:
        if not create:
            raise PrepareError(
                f"the HSM has no key {label!r} ({key_type}, {suite.name}); import it, or set "
                "issuer.create_missing for a test issuer"
            ) from None
        hsm.generate_key(label, key_type, suite)
        return
    if info.key_type != key_type or info.suite != suite:
        raise PrepareError(
            f"HSM key {label!r} is {info.key_type}/{info.suite.name}, the profile needs {key_type}/{suite.name}"
        )


def _ensure_oda_keys(hsm: SoftHSM, profile: Profile, suite: Suite) -> tuple[str, str]:
    """The test CA and the issuer ODA key of ``suite``, created when allowed; (CA label, issuer label)."""
    create = profile.issuer.create_missing
    ca_label, issuer_label = _label(profile.issuer.ca, suite), _label(profile.issuer.oda_key, suite)
    known = {info.label: info for info in hsm.list_keys()}
    want = {ca_label: f"CA-{suite.signature.upper()}", issuer_label: f"ISSUER-{suite.signature.upper()}"}
    for label, key_type in want.items():
        info = known.get(label)
        if info is not None and info.key_type != key_type:
            raise PrepareError(f"HSM key {label!r} is {info.key_type}, the profile needs {key_type}")
        if info is None and not create:
            raise PrepareError(
                f"the HSM has no key {label!r} ({key_type}); create it, or set issuer.create_missing"
            )
    try:
        if ca_label not in known:
            hsm.create_test_ca(
                ca_label,
                suite,
                index=TEST_CA_INDEX[suite.signature],
                bits=profile.oda.ca_rsa_bits,
                exponent=profile.oda.rsa_exponent,
            )
        if issuer_label not in known:
            hsm.create_issuer_key(
                issuer_label, suite, bits=profile.oda.issuer_rsa_bits, exponent=profile.oda.rsa_exponent
            )
    except HSMError as exc:
        raise PrepareError(f"HSM: {exc}") from None
    return ca_label, issuer_label


def _suite_material(
    hsm: SoftHSM, profile: Profile, suite: Suite, *, expiry: dt.date, rng: random.Random
) -> _SuiteMaterial:
    create = profile.issuer.create_missing
    labels = {
        "AC": _label(profile.issuer.imk_ac, suite),
        "MAC": _label(profile.issuer.imk_mac, suite),
        "ENC": _label(profile.issuer.imk_enc, suite),
    }
    for kind, label in labels.items():
        _ensure_key(hsm, label, f"IMK-{kind}", suite, create=create)
    ca_label, issuer_label = _ensure_oda_keys(hsm, profile, suite)
    try:
        issuer_tags = hsm.sign_issuer_certificate(
            ca_label,
            issuer_label,
            issuer_identifier=profile.card.bin,
            expiry=mmyy(expiry),
            serial=rng.randbytes(3),
        )
        capk = hsm.get_capk(UNIONPAY_RID, issuer_tags["8F"][0])
    except HSMError as exc:
        raise PrepareError(f"HSM: issuer certificate ({suite.name}): {exc}") from None
    if capk.key != hsm.public_key(ca_label).key:
        raise PrepareError(
            f"CAPK A000000333/{issuer_tags['8F'].hex().upper()} in the HSM is not the key of {ca_label!r}"
        )
    labels.update(ca=ca_label, issuer=issuer_label)
    return _SuiteMaterial(suite, labels, capk, issuer_tags)


# --- preparation -----------------------------------------------------------------------------


def prepare_card(
    profile: Profile,
    hsm: SoftHSM,
    *,
    pan: str | None = None,
    psn: str | None = None,
    pin: str | None = None,
    seed: int | None = None,
    today: dt.date | None = None,
) -> PreparedCard:
    """Prepare one card of ``profile``: the DGIs in STORE DATA order, keys derived in ``hsm``.

    ``pan``/``psn``/``pin`` default to a fresh PAN (BIN ‖ random ‖ Luhn digit), the profile's PSN
    and PIN; ``seed`` makes the PAN and certificate serials reproducible (keys stay random);
    ``today`` (default: the date in Asia/Shanghai) is the effective date unless the profile fixes one.
    """
    rng = random.Random(seed) if seed is not None else random.Random(secrets.randbits(128))
    suites = tuple(SUITES_BY_NAME[name] for name in profile.suites)
    pan = choose_pan(profile, pan, rng)
    psn = check_psn(psn if psn is not None else profile.card.psn)
    pin_block = pin_block_format_2(pin if pin is not None else profile.pin.default)
    effective = profile.card.effective_date or today or dt.datetime.now(CHINA_TIME).date()
    expiry = add_months_last_day(effective, profile.card.validity_months)
    _ensure_perso_kek(hsm, profile.issuer.perso_kek, suites[0], create=profile.issuer.create_missing)

    materials = {s.name: _suite_material(hsm, profile, s, expiry=expiry, rng=rng) for s in suites}
    values = _common_values(profile, pan=pan, psn=psn, effective=effective, expiry=expiry)
    records, icc = _records_and_icc_keys(profile, hsm, values, materials, pan=pan, expiry=expiry, rng=rng)

    dgis = [
        Dgi(sfi << 8 | number, template, what=f"record SFI {sfi} record {number}")
        for (sfi, number), template in sorted(records.items())
    ]
    dgis += _fci_and_gpo_dgis(profile, values)
    dgis += _object_dgis(profile, values)
    if profile.part14 is not None:
        dgis.append(Dgi(DGI_CAPP_FILES, _a001(profile), what="Part 14 file declarations"))
    secret_dgis, kcvs = _secret_dgis(
        profile,
        hsm,
        materials,
        {name: key for name, (key, _) in icc.items()},
        pan=pan,
        psn=psn,
        pin_block=pin_block,
    )
    dgis += secret_dgis
    _check_dgis(dgis)
    return PreparedCard(
        profile=profile.name,
        aid=profile.application.aid,
        suites=suites,
        pan=pan,
        psn=psn,
        effective=effective,
        expiry=expiry,
        dgis=tuple(dgis),
        kcvs=MappingProxyType({k: MappingProxyType(v) for k, v in kcvs.items()}),
        capks=MappingProxyType({name: m.capk for name, m in materials.items()}),
        icc_public_keys=MappingProxyType({name: public for name, (_, public) in icc.items()}),
        ec_balance_fen=profile.limits.ec_initial_balance_fen if profile.application.electronic_cash else None,
        perso_kek_label=profile.issuer.perso_kek,
    )


def _records_and_icc_keys(
    profile: Profile,
    hsm: SoftHSM,
    values: Mapping[str, bytes],
    materials: Mapping[str, _SuiteMaterial],
    *,
    pan: str,
    expiry: dt.date,
    rng: random.Random,
) -> tuple[dict[tuple[int, int], bytes], dict[str, tuple[rsa.RsaPrivateKey | bytes, PublicKey]]]:
    """The records, and per suite the ICC key pair certified over the static data they make.

    Records holding the ICC certificate tags (9F46, 9F47, 9F48, 93) are built last: the others make
    the static data to authenticate (profile checks keep those tags out of the signed records).
    """
    records: dict[tuple[int, int], bytes] = {}
    ordered = sorted(profile.records, key=lambda r: (r.sfi, r.record))
    deferred = [r for r in ordered if ICC_CERTIFICATE_TAGS & set(r.tags)]
    for rec in ordered:
        if rec not in deferred:
            records[rec.sfi, rec.record] = _record(rec, values, materials, profile)
    aip = profile.contact.aip if "9F4A" in profile.data else None
    icc: dict[str, tuple[rsa.RsaPrivateKey | bytes, PublicKey]] = {}
    for name, material in materials.items():
        static = static_data_to_authenticate(records, afl_bytes(profile, "contact", name), aip=aip)
        issuer_label = material.labels["issuer"]
        try:
            made = hsm.create_icc_key_and_certificate(
                issuer_label,
                pan=pan,
                expiry=mmyy(expiry),
                serial=rng.randbytes(3),
                static_data=static,
                bits=profile.oda.icc_rsa_bits,
                exponent=profile.oda.rsa_exponent,
            )
            material.issuer_tags.update(made.tags)
            if profile.oda.sda:
                material.issuer_tags["93"] = hsm.sign_static_data(issuer_label, static, rng.randbytes(2))
        except HSMError as exc:
            raise PrepareError(f"HSM: ICC key and certificate ({name}): {exc}") from None
        icc[name] = (made.private_key, made.public_key)
    for rec in deferred:
        records[rec.sfi, rec.record] = _record(rec, values, materials, profile)
    return records, icc


def _secret_dgis(
    profile: Profile,
    hsm: SoftHSM,
    materials: Mapping[str, _SuiteMaterial],
    icc_private: Mapping[str, rsa.RsaPrivateKey | bytes],
    *,
    pan: str,
    psn: str,
    pin_block: bytes,
) -> tuple[list[Dgi], dict[str, dict[str, str]]]:
    """Card keys, PIN, ICC private keys and Part 14 opening keys: each secret DGI enciphered under
    the transport key at once, each preceded by its KCV DGI; and the KCVs by group."""
    kek = profile.issuer.perso_kek
    perso_suite = SUITES_BY_NAME[profile.suites[0]]

    def enciphered(number: int, clear: bytes, what: str) -> Dgi:
        try:
            data = hsm.encipher_perso_dgi(kek, perso_suite, clear)
        except HSMError as exc:
            raise PrepareError(f"HSM: DGI {number:04X}: {exc}") from None
        return Dgi(number, data, encrypted=True, what=what)

    dgis: list[Dgi] = []
    kcvs: dict[str, dict[str, str]] = {}
    for name, material in materials.items():
        keys = _card_keys(hsm, material, pan=pan, psn=psn)
        kcvs[name] = keys.kcvs()
        kcv_dgi, key_dgi = DGI_CARD_KEYS[name]
        dgis.append(Dgi(kcv_dgi, b"".join(bytes.fromhex(k) for k in kcvs[name].values()), what="KCVs"))
        dgis.append(
            enciphered(key_dgi, keys["AC"] + keys["MAC"] + keys["ENC"], f"{material.suite.cipher} AC‖MAC‖ENC")
        )
    dgis.append(Dgi(DGI_PIN[0], bytes([profile.pin.try_limit, profile.pin.try_limit]), what="PIN tries"))
    dgis.append(enciphered(DGI_PIN[1], pin_block, "offline PIN block"))
    for private in icc_private.values():
        if isinstance(private, rsa.RsaPrivateKey):
            for number, part in zip(DGI_RSA_CRT, _crt_parts(private), strict=True):
                dgis.append(enciphered(number, part, "ICC RSA private key (CRT)"))
        else:
            dgis.append(enciphered(DGI_SM2_PRIVATE, private, "ICC SM2 private key"))
    if profile.part14 is not None:
        opening_keys, part14_kcvs = _opening_keys(hsm, profile, perso_suite, pan=pan, psn=psn)
        kcvs["part14"] = part14_kcvs
        dgis.append(
            Dgi(DGI_CAPP_KCVS, b"".join(bytes.fromhex(k) for k in part14_kcvs.values()), what="Part 14 KCVs")
        )
        dgis.append(enciphered(DGI_CAPP_KEYS, opening_keys, "Part 14 opening keys"))
    kcvs["perso-kek"] = {"KEK": hsm.key_info(kek).kcv_hex}
    return dgis, kcvs


def _ensure_perso_kek(hsm: SoftHSM, label: str, suite: Suite, *, create: bool) -> None:
    try:
        info = hsm.key_info(label)
    except HSMError:
        if not create:
            raise PrepareError(
                f"the HSM has no personalisation transport key {label!r}; import it, or set "
                "issuer.create_missing"
            ) from None
        hsm.generate_key(label, PERSO_KEK_TYPE, suite)
        return
    if info.key_type != PERSO_KEK_TYPE:
        raise PrepareError(f"HSM key {label!r} is {info.key_type}, a transport key must be {PERSO_KEK_TYPE}")


def _card_keys(hsm: SoftHSM, material: _SuiteMaterial, *, pan: str, psn: str) -> Mapping[str, bytes]:
    labels = {kind: material.labels[kind] for kind in ("AC", "MAC", "ENC")}
    try:
        return hsm.export_card_keys_for_personalisation(
            labels, tag_5a=pan, tag_5f34=psn, suite=material.suite
        )
    except HSMError as exc:
        raise PrepareError(f"HSM: card keys ({material.suite.name}): {exc}") from None


def _opening_keys(
    hsm: SoftHSM, profile: Profile, suite: Suite, *, pan: str, psn: str
) -> tuple[bytes, dict[str, str]]:
    """Part 14 opening keys (8020), one per file in A001 order, each by option A from its master."""
    assert profile.part14 is not None
    keys, kcvs = b"", {}
    for f in profile.part14.files:
        label = f"{_label(profile.issuer.imk_capp, suite)}-{f.sfi:02x}"
        _ensure_key(hsm, label, "IMK-ENC", suite, create=profile.issuer.create_missing)
        try:
            derived = hsm.export_card_keys_for_personalisation(
                {"ENC": label}, tag_5a=pan, tag_5f34=psn, suite=suite
            )
        except HSMError as exc:
            raise PrepareError(f"HSM: Part 14 opening key of SFI {f.sfi:02X}: {exc}") from None
        keys += derived["ENC"]
        kcvs[f"{f.sfi:02X}"] = derived.kcvs()["ENC"]
    return keys, kcvs


def _crt_parts(key: rsa.RsaPrivateKey) -> list[bytes]:
    """8201–8205: q⁻¹ mod p, d mod (q−1), d mod (p−1), q, p, each as long as half the modulus."""
    half = (key.size_bytes + 1) // 2
    numbers = (key.coefficient, key.exponent_q, key.exponent_p, key.prime_q, key.prime_p)
    return [n.to_bytes(half, "big") for n in numbers]


def _common_values(
    profile: Profile, *, pan: str, psn: str, effective: dt.date, expiry: dt.date
) -> dict[str, bytes]:
    """Every tag value that is the same for all suites: computed ones, limits, [data]."""
    app, card = profile.application, profile.card
    values: dict[str, bytes] = {
        "5A": cn(pan),
        "5F34": bytes.fromhex(psn),
        "5F24": yymmdd(expiry),
        "5F25": yymmdd(effective),
        "57": track2(pan, expiry, card.service_code, card.track2_discretionary),
        "5F20": card.cardholder_name.encode("ascii"),
        "5F28": n3(card.issuer_country),
        "9F57": n3(card.issuer_country),
        "5F30": n3(card.service_code),
        "9F42": n3(card.currency),
        "9F51": n3(card.currency),
        "9F08": app.version,
        "50": app.label.encode("ascii"),
        "87": bytes([app.priority]),
        "5F2D": app.language.encode("ascii"),
        "8C": profile.dols.cdol1,
        "8D": profile.dols.cdol2,
        "9F49": profile.dols.ddol,
        "9F4F": profile.logs.transaction.format,
    }
    if app.preferred_name is not None:
        values["9F12"] = app.preferred_name.encode("ascii")
        values["9F11"] = bytes([app.code_table])
    if app.electronic_cash:
        values["9F74"] = EC_MARKER
    if profile.logs.load is not None:
        values["DF4F"] = profile.logs.load.format
    if profile.contactless.fdda_version == 1:
        ctq = profile.data.get("9F6C", b"\x00\x00")
        ext = profile.part14.indicator if profile.part14 else b"\x00"
        # fDDA version ‖ card unpredictable number (the card fills it per transaction) ‖ CTQ ‖ DF61
        values["9F69"] = b"\x01" + bytes(4) + ctq + ext
    for tag, amount in profile.limit_values().items():
        is_count = tag in ("9F53", "9F58", "9F59", "9F72")
        values[tag] = bytes([amount]) if is_count else n12(amount)
    values.update(profile.data)
    return values


def _record(
    rec: Record, values: Mapping[str, bytes], materials: Mapping[str, _SuiteMaterial], profile: Profile
) -> bytes:
    suite_name = rec.suite or profile.suites[0]
    own = materials[suite_name].issuer_tags
    items = []
    for tag in rec.tags:
        value = own.get(tag) if tag in ODA_TAGS else values.get(tag)
        if not value:
            if tag in OPTIONAL_COMPUTED_TAGS:
                continue  # no remainder / not this suite's tag: left out
            raise PrepareError(f"record SFI {rec.sfi} record {rec.record}: no value for {tag}")
        items.append((tag, value))
    if not items:
        raise PrepareError(f"record SFI {rec.sfi} record {rec.record} would be empty")
    template = encode_one("70", tlv_list(items))
    if len(template) > RECORD_TEMPLATE_BYTES_MAX:
        raise PrepareError(
            f"record SFI {rec.sfi} record {rec.record} is {len(template)} bytes, at most "
            f"{RECORD_TEMPLATE_BYTES_MAX}: move a tag to another record"
        )
    return template


def _fci_and_gpo_dgis(profile: Profile, values: Mapping[str, bytes]) -> list[Dgi]:
    out = []
    for interface, pdol in (
        ("contact", profile.dols.pdol_contact),
        ("contactless", profile.dols.pdol_contactless),
    ):
        discretionary = [("9F4D", bytes([profile.logs.transaction.sfi, profile.logs.transaction.records]))]
        if profile.logs.load is not None:
            discretionary.append(("DF4D", bytes([profile.logs.load.sfi, profile.logs.load.records])))
        if interface == "contactless" and profile.part14 is not None:
            discretionary.append(("DF61", profile.part14.indicator))
        items = [("50", values["50"]), ("87", values["87"]), ("9F38", pdol), ("5F2D", values["5F2D"])]
        if "9F12" in values:
            items += [("9F11", values["9F11"]), ("9F12", values["9F12"])]
        items.append(("BF0C", tlv_list(discretionary)))
        out.append(Dgi(DGI_FCI[interface], tlv_list(items), what=f"{interface} FCI (A5 value)"))
    gpo = []
    for suite in profile.suites:
        for interface in ("contact", "contactless"):
            aip = (profile.contact if interface == "contact" else profile.contactless).aip
            data = aip + afl_bytes(profile, interface, suite)
            number = gpo_dgi(interface, suite, dual=len(profile.suites) > 1)
            gpo.append(Dgi(number, data, what=f"{interface} AIP‖AFL ({suite})"))
    return out + sorted(gpo, key=lambda d: d.number)


def gpo_dgi(interface: str, suite: str, *, dual: bool) -> int:
    """The DGI of the AIP‖AFL of ``interface`` and ``suite`` (docs/card.md §3).

    >>> [f"{gpo_dgi(i, s, dual=d):04X}" for i, s, d in
    ...  [("contact", "GM", False), ("contactless", "INTL", True), ("contact", "GM", True)]]
    ['9104', '9105', '9106']
    """
    return (DGI_GPO_GM if dual and suite == "GM" else DGI_GPO)[interface]


def _object_dgis(profile: Profile, values: Mapping[str, bytes]) -> list[Dgi]:
    objects = [(tag, values[tag]) for tag in DGI_0D01_TAGS if tag in values]
    initial = [("9F36", b"\x00\x00"), ("9F13", b"\x00\x00"), ("9F17", bytes([profile.pin.try_limit]))]
    if profile.application.electronic_cash:
        initial.append(("9F79", n12(profile.limits.ec_initial_balance_fen)))
    if profile.limits.deduction_limit_fen is not None:
        initial.append(("DF63", n12(0)))
    return [
        Dgi(DGI_OBJECTS, tlv_list(objects), what="card risk management and GET DATA objects"),
        Dgi(DGI_INITIAL, tlv_list(initial), what="initial counters and EC balance"),
    ]


def _a001(profile: Profile) -> bytes:
    """A001: SFI ‖ type ‖ read right ‖ write right ‖ max record length ‖ size (2) per file (pboc-notes §7)."""
    assert profile.part14 is not None
    out = b""
    for f in profile.part14.files:
        size = (
            f.size_bytes.to_bytes(2, "big")
            if f.type == "variable" and f.size_bytes is not None
            else bytes([f.records or 0, f.record_bytes])
        )
        out += bytes([f.sfi, PART14_TYPES[f.type], f.read_right, f.write_right, f.record_bytes]) + size
    return out


def _check_dgis(dgis: list[Dgi]) -> None:
    """Invariants of the result: each DGI once, every secret DGI enciphered, nothing empty."""
    seen = set()
    for item in dgis:
        if item.number in seen:
            raise AssertionError(f"DGI {item.name} prepared twice")
        seen.add(item.number)
        if (item.number in ENCIPHERED_DGIS) != item.encrypted:
            raise AssertionError(f"DGI {item.name}: enciphered={item.encrypted} breaks docs/card.md §3")
        if not item.data:
            raise AssertionError(f"DGI {item.name} is empty")


__all__ = [
    "ENCIPHERED_DGIS",
    "Dgi",
    "PrepareError",
    "PreparedCard",
    "check_inputs",
    "luhn_check_digit",
    "luhn_valid",
    "mask_pan",
    "pin_block_format_2",
    "prepare_card",
    "static_data_to_authenticate",
]
