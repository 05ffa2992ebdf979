"""Offline data authentication: certificates and signed data for both suites, written once.

Sources: EMV Book 2 v4.3 §5 (SDA), §6 (DDA, CDA), Annex A2 (formats 02/03/04/05); JR/T 0025.17
as reproduced in public test tools and verified against their samples (pboc-notes §4.5) for the
SM2 formats 12/13/14/15; qPBOC fDDA terminal data (pboc-notes §4.5, §5).

One flow, two signature mechanisms, eight layouts:

* **RSA (INTL), signature with message recovery**: the signer's block is
  ``6A ‖ body ‖ SHA-1(body ‖ extra) ‖ BC`` raised to d, exactly as long as the signer's modulus;
  the terminal recovers it with e and checks header, trailer and hash.
* **SM2 (GM), signature with appendix**: the object is ``body ‖ r‖s`` where r‖s is the SM2
  signature (GB/T 32918, e = SM3(Z_A ‖ M), user ID "1234567812345678") over ``body ‖ extra``.

``body`` starts with the format byte and is laid out by :data:`LAYOUTS` (data, one line per
field); ``extra`` is what is signed but not stored: key remainder ‖ exponent ‖ static data for a
certificate, static data for SDA, terminal dynamic data for DDA/fDDA, the unpredictable number
for CDA. Everything else — key extraction, PAN and expiry checks, the ICC dynamic data — is
common code driven by those tables.

Terminal-side functions return an :class:`OdaResult` (a valid flag and every reason it failed;
expiry reported separately); input that cannot be processed at all (a certificate whose length
does not match its signer's key, a key of the wrong suite) raises :class:`ODAError`.
A corrupted certificate and a certificate recovered with the wrong CA key of the right length
look the same to RSA recovery (header/trailer/hash fail), so both are reported as invalid.

SM2 SDA (format 13) is UNCERTAIN: the only public sample (CardPlatform ``SM_SDA``) signs a 3-byte
header ‖ static data and stores header ‖ r‖s without checking the header bytes after 13. We lay
the header out as ``13 ‖ DAC (2)`` (EMV's data authentication code, 9F45) — 67 bytes in all.

>>> layout = LAYOUTS["sm2", "issuer"]
>>> layout.format, layout.body_bytes, layout.body_bytes + SM2_SIGNATURE_BYTES
(18, 78, 142)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from citycard.crypto import rsa, sm2
from citycard.crypto.capk import Capk
from citycard.crypto.suite import Suite

RSA_HEADER = 0x6A
RSA_TRAILER = 0xBC
RSA_PAD = 0xBB
SM2_KEY_BYTES = 64
SM2_SIGNATURE_BYTES = 64
SM2_USER_ID = b"1234567812345678"  # JR/T 0025.17: the GB/T 32918 default user ID
IDN_BYTES_MIN, IDN_BYTES_MAX = 2, 8  # ICC dynamic number (9F4C), Book 2 Table 17
AC_BYTES = 8
UN_BYTES = 4  # terminal unpredictable number (9F37)
DYNAMIC_DATA_BYTES_MAX = 255  # one length byte
STATIC_DATA_BYTES_MAX = 64 * 1024  # a card's static data to authenticate is a few hundred bytes
RESPONSE_TLVS_BYTES_MAX = 1024

REST = -1  # field size: (RSA) the rest of the recovered block before the hash, padded with BB


class ODAError(ValueError):
    """Input that cannot be checked at all: wrong length for the key, wrong suite, bad argument."""


# --- keys ------------------------------------------------------------------------------------


def _key_problem(suite: Suite, key: bytes, exponent: bytes) -> str | None:
    """Why ``key``/``exponent`` is not a usable public key of ``suite`` (None when it is)."""
    if suite.signature == "sm2":
        if len(key) != SM2_KEY_BYTES:
            return f"SM2 public key must be {SM2_KEY_BYTES} bytes (x‖y), got {len(key)}"
        if exponent:
            return "an SM2 public key has no exponent"
        return None if sm2.is_on_curve(key) else "SM2 public key is not a point of the SM2 curve"
    if not key or key[0] == 0:
        return f"RSA modulus must be non-empty with a non-zero first byte, got {len(key)} bytes"
    if int.from_bytes(exponent, "big") not in rsa.PUBLIC_EXPONENTS:
        return f"RSA exponent must be 03 or 010001, got {exponent.hex().upper() or 'none'}"
    return None


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A recovered issuer or ICC public key: RSA modulus + exponent, or SM2 point x‖y."""

    suite: Suite
    key: bytes
    exponent: bytes = b""

    def __post_init__(self) -> None:
        problem = _key_problem(self.suite, self.key, self.exponent)
        if problem:
            raise ODAError(problem)

    @classmethod
    def of(cls, private_key: rsa.RsaPrivateKey | bytes, suite: Suite) -> PublicKey:
        """The public half of an RSA private key or of a 32-byte SM2 private key."""
        if suite.signature == "sm2":
            return cls(suite, sm2.public_key(_sm2_private(private_key)))
        rsa_key = _rsa_private(private_key)
        return cls(suite, rsa_key.modulus_bytes, rsa_key.exponent_bytes)


VerifyingKey = PublicKey | Capk
SigningKey = rsa.RsaPrivateKey | bytes


def _rsa_private(private_key: SigningKey) -> rsa.RsaPrivateKey:
    if not isinstance(private_key, rsa.RsaPrivateKey):
        raise ODAError(f"the INTL suite signs with an RSA private key, got {type(private_key).__name__}")
    return private_key


def _sm2_private(private_key: SigningKey) -> bytes:
    if not isinstance(private_key, bytes) or len(private_key) != 32:
        raise ODAError("the GM suite signs with a 32-byte SM2 private key")
    return private_key


# --- layouts (data) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """One signed object: its format byte and fields after it. A size is a byte count, REST, or
    the name of an earlier one-byte field that holds the length."""

    name: str
    tag: str
    format: int
    fields: tuple[tuple[str, int | str], ...]
    constants: Mapping[str, int] = field(default_factory=dict)  # one-byte fields fixed by the format

    @property
    def title(self) -> str:
        return f"{self.name} ({self.tag})"

    @property
    def body_bytes(self) -> int | None:
        """Body length (format byte included) when every field has a fixed size, else None."""
        sizes = [size for _, size in self.fields]
        if all(isinstance(size, int) and size >= 0 for size in sizes):
            return 1 + sum(size for size in sizes if isinstance(size, int))
        return None

    def fixed_bytes(self) -> int:
        """Format byte plus every fixed-size field (what REST and variable fields leave)."""
        return 1 + sum(size for _, size in self.fields if isinstance(size, int) and size >= 0)


_ISSUER_HEAD = (("issuer_identifier", 4), ("expiry", 2), ("serial", 3))
_ICC_HEAD = (("pan", 10), ("expiry", 2), ("serial", 3))
_RSA_KEY = (
    ("hash_algorithm", 1),
    ("key_algorithm", 1),
    ("key_length", 1),
    ("exponent_length", 1),
    ("key", REST),
)
_SM2_KEY = (
    ("signature_algorithm", 1),
    ("encryption_algorithm", 1),
    ("curve", 1),
    ("key_length", 1),
    ("key", SM2_KEY_BYTES),
)
_RSA_ALGORITHMS = MappingProxyType({"hash_algorithm": 0x01, "key_algorithm": 0x01})  # SHA-1, RSA
_SM2_ALGORITHMS = MappingProxyType(
    {"signature_algorithm": 0x04, "encryption_algorithm": 0x00, "curve": 0x11, "key_length": SM2_KEY_BYTES}
)
_RSA_DYNAMIC = (("hash_algorithm", 1), ("dynamic_data_length", 1), ("dynamic_data", "dynamic_data_length"))
_SM2_DYNAMIC = (("dynamic_data_length", 1), ("dynamic_data", "dynamic_data_length"))
_RSA_HASH = MappingProxyType({"hash_algorithm": 0x01})  # SHA-1
_RSA_SDA = (("hash_algorithm", 1), ("dac", 2), ("padding", REST))
_ISSUER, _ICC = "issuer public key certificate", "ICC public key certificate"
_SDA, _DYNAMIC = "signed static application data", "signed dynamic application data"

LAYOUTS: Mapping[tuple[str, str], Layout] = MappingProxyType(
    {  # (signature mechanism, object) → layout; Book 2 Tables 6, 7, 13, 14, 17; pboc-notes §4.5
        ("rsa", "issuer"): Layout(_ISSUER, "90", 0x02, _ISSUER_HEAD + _RSA_KEY, _RSA_ALGORITHMS),
        ("sm2", "issuer"): Layout(_ISSUER, "90", 0x12, _ISSUER_HEAD + _SM2_KEY, _SM2_ALGORITHMS),
        ("rsa", "icc"): Layout(_ICC, "9F46", 0x04, _ICC_HEAD + _RSA_KEY, _RSA_ALGORITHMS),
        ("sm2", "icc"): Layout(_ICC, "9F46", 0x14, _ICC_HEAD + _SM2_KEY, _SM2_ALGORITHMS),
        ("rsa", "sda"): Layout(_SDA, "93", 0x03, _RSA_SDA, _RSA_HASH),
        ("sm2", "sda"): Layout(_SDA, "93", 0x13, (("dac", 2),)),  # UNCERTAIN (module note)
        ("rsa", "dynamic"): Layout(_DYNAMIC, "9F4B", 0x05, (*_RSA_DYNAMIC, ("padding", REST)), _RSA_HASH),
        ("sm2", "dynamic"): Layout(_DYNAMIC, "9F4B", 0x15, _SM2_DYNAMIC),
    }
)

FIELD_NAMES = MappingProxyType(
    {
        "format": "certificate format",
        "issuer_identifier": "issuer identifier",
        "pan": "application PAN",
        "expiry": "certificate expiration date",
        "serial": "certificate serial number",
        "hash_algorithm": "hash algorithm indicator",
        "key_algorithm": "public key algorithm indicator",
        "signature_algorithm": "public key signature algorithm indicator",
        "encryption_algorithm": "public key encryption algorithm indicator",
        "curve": "public key parameter indicator",
        "key_length": "public key length",
        "exponent_length": "public key exponent length",
        "key": "public key",
        "dac": "data authentication code",
        "dynamic_data_length": "ICC dynamic data length",
        "dynamic_data": "ICC dynamic data",
        "padding": "pad pattern",
    }
)


def _pack(layout: Layout, values: Mapping[str, bytes], rest_bytes: int = 0) -> bytes:
    """Format byte ‖ fields in layout order; a REST field is padded with BB to ``rest_bytes``."""
    body = bytearray([layout.format])
    for name, size in layout.fields:
        value = values[name]
        if size == REST:
            if len(value) > rest_bytes:
                raise ODAError(f"{FIELD_NAMES[name]} is {len(value)} bytes, room for {rest_bytes}")
            value = value + bytes([RSA_PAD]) * (rest_bytes - len(value))
        elif isinstance(size, str):
            if len(value) != values[size][0]:
                raise AssertionError(f"{name}: length field {values[size][0]} != {len(value)} bytes")
        elif len(value) != size:
            raise ODAError(f"{FIELD_NAMES[name]} must be {size} bytes, got {len(value)}")
        body += value
    return bytes(body)


def _unpack(layout: Layout, body: bytes) -> tuple[dict[str, bytes], list[str]]:
    """Split a recovered or stored body into its fields; list every way it breaks the layout."""
    fields = {"format": body[:1]}
    reasons = []
    if not body or body[0] != layout.format:
        got = f"{body[0]:02X}" if body else "missing"
        reasons.append(f"{layout.title}: format is {got}, expected {layout.format:02X}")
    position = 1
    for name, size in layout.fields:
        count = len(body) - position if size == REST else fields[size][0] if isinstance(size, str) else size
        if position + count > len(body):
            reasons.append(
                f"{layout.title}: {FIELD_NAMES[name]} needs {count} bytes at offset {position}, "
                f"only {len(body) - position} left"
            )
            return fields, reasons
        fields[name] = body[position : position + count]
        position += count
    if position != len(body):
        reasons.append(f"{layout.title}: {len(body) - position} bytes follow the last field")
    for name, expected in layout.constants.items():
        if fields[name] != bytes([expected]):
            reasons.append(
                f"{layout.title}: {FIELD_NAMES[name]} is {fields[name].hex().upper()}, expected {expected:02X}"
            )
    return fields, reasons


# --- the two signature mechanisms ------------------------------------------------------------


class _RsaRecovery:
    """EMV RSA signature with message recovery (Book 2 Annex A2.1)."""

    @staticmethod
    def body_bytes(layout: Layout, signer_bytes: int, suite: Suite) -> int:
        return signer_bytes - 2 - suite.hash_bytes

    @staticmethod
    def seal(private_key: SigningKey, suite: Suite, body: bytes, extra: bytes) -> bytes:
        key = _rsa_private(private_key)
        block = bytes([RSA_HEADER]) + body + suite.hash(body + extra) + bytes([RSA_TRAILER])
        return rsa.sign_raw(key, block)

    @staticmethod
    def open(
        key: VerifyingKey, layout: Layout, stored: bytes, extra: bytes, *, cache: bool
    ) -> tuple[bytes | None, list[str]]:
        if len(stored) != len(key.key):
            raise ODAError(
                f"{layout.title} must be {len(key.key)} bytes like its signer's modulus, got {len(stored)}"
                + _suite_hint(stored)
            )
        if int.from_bytes(stored, "big") >= int.from_bytes(key.key, "big"):
            return None, [
                f"{layout.title}: value is not below the signer's modulus (not signed with this key)"
            ]
        block = rsa.recover(key.key, key.exponent, stored)
        reasons = []
        if block[0] != RSA_HEADER:
            reasons.append(f"{layout.title}: recovered data header is {block[0]:02X}, expected 6A")
        if block[-1] != RSA_TRAILER:
            reasons.append(f"{layout.title}: recovered data trailer is {block[-1]:02X}, expected BC")
        if reasons:  # not a block this key signed: nothing inside can be trusted
            return None, reasons
        hash_bytes = key.suite.hash_bytes
        body, digest = block[1 : -1 - hash_bytes], block[-1 - hash_bytes : -1]
        if key.suite.hash(body + extra) != digest:
            reasons.append(f"{layout.title}: hash of the recovered data does not match")
        return body, reasons


class _Sm2Appendix:
    """SM2 signature r‖s appended to the body (JR/T 0025.17; pboc-notes §4.5)."""

    @staticmethod
    def body_bytes(layout: Layout, signer_bytes: int, suite: Suite) -> int | None:
        return layout.body_bytes

    @staticmethod
    def seal(private_key: SigningKey, suite: Suite, body: bytes, extra: bytes) -> bytes:
        signature = sm2.sign(_sm2_private(private_key), body + extra, user_id=SM2_USER_ID)
        return body + signature

    @staticmethod
    def open(
        key: VerifyingKey, layout: Layout, stored: bytes, extra: bytes, *, cache: bool
    ) -> tuple[bytes | None, list[str]]:
        fixed = layout.body_bytes
        if fixed is not None and len(stored) != fixed + SM2_SIGNATURE_BYTES:
            raise ODAError(f"{layout.title} must be {fixed + SM2_SIGNATURE_BYTES} bytes, got {len(stored)}")
        if fixed is None and len(stored) < layout.fixed_bytes() + SM2_SIGNATURE_BYTES:
            raise ODAError(
                f"{layout.title} must be at least {layout.fixed_bytes() + SM2_SIGNATURE_BYTES} bytes, "
                f"got {len(stored)}"
            )
        body, signature = stored[:-SM2_SIGNATURE_BYTES], stored[-SM2_SIGNATURE_BYTES:]
        try:
            good = sm2.verify(key.key, body + extra, signature, user_id=SM2_USER_ID, cache=cache)
        except sm2.SM2Error as exc:
            return body, [f"{layout.title}: SM2 signature check failed: {exc}"]
        return body, [] if good else [f"{layout.title}: SM2 signature does not verify"]


_MECHANISMS = MappingProxyType({"rsa": _RsaRecovery, "sm2": _Sm2Appendix})


def _suite_hint(stored: bytes) -> str:
    for (signature, _), layout in LAYOUTS.items():
        fixed = layout.body_bytes
        if (
            signature == "sm2"
            and fixed
            and len(stored) == fixed + SM2_SIGNATURE_BYTES
            and stored[0] == layout.format
        ):
            return f" (it looks like an SM2 format {layout.format:02X} object: is the CA key RSA by mistake?)"
    return ""


def _seal(
    kind: str, private_key: SigningKey, suite: Suite, values: Mapping[str, bytes], extra: bytes
) -> bytes:
    """Build and sign one object of ``kind`` for ``suite`` (the signer's side, common to both)."""
    layout = LAYOUTS[suite.signature, kind]
    mechanism = _MECHANISMS[suite.signature]
    values = {**values, **{name: bytes([value]) for name, value in layout.constants.items()}}
    signer_bytes = signer_bytes_of(private_key, suite)
    body_bytes = mechanism.body_bytes(layout, signer_bytes, suite)
    rest = 0
    if body_bytes is not None:
        variable = sum(len(values[name]) for name, size in layout.fields if isinstance(size, str))
        rest = body_bytes - layout.fixed_bytes() - variable
        if rest < 0:
            raise ODAError(
                f"{layout.title} does not fit a {signer_bytes}-byte signer key ({-rest} bytes over)"
            )
    return mechanism.seal(private_key, suite, _pack(layout, values, rest), extra)


def _open(
    kind: str, key: VerifyingKey, stored: bytes, extra: bytes
) -> tuple[Layout, dict[str, bytes], list[str]]:
    """Verify one object of ``kind`` with the signer's ``key``; fields are {} when unreadable."""
    layout = LAYOUTS[key.suite.signature, kind]
    # CA and issuer keys verify again and again (SM2 keeps a table for them); ICC keys do not
    body, reasons = _MECHANISMS[key.suite.signature].open(key, layout, stored, extra, cache=kind != "dynamic")
    if body is None:
        return layout, {}, reasons
    fields, layout_reasons = _unpack(layout, body)
    return layout, fields, reasons + layout_reasons


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OdaResult:
    """Outcome of one ODA check: ``valid`` with every reason it is not, plus what was recovered.

    ``fields`` holds the certificate or signature fields by name (see :data:`FIELD_NAMES`; the
    dynamic-data checks add ``icc_dynamic_number`` (9F4C), and CDA ``cid`` (9F27), ``ac`` (9F26)
    and ``transaction_data_hash``). ``expired`` is the separate expiry check against the date
    given (None when no date was given or the object has no expiry); ``ok`` combines both.
    """

    name: str
    valid: bool
    reasons: tuple[str, ...] = ()
    fields: Mapping[str, bytes] = field(default_factory=dict)
    public_key: PublicKey | None = None  # certificates only, and only when valid
    expired: bool | None = None

    def __post_init__(self) -> None:
        if self.valid == bool(self.reasons):
            raise AssertionError(f"{self.name}: valid={self.valid} but reasons={self.reasons}")
        if self.public_key is not None and not self.valid:
            raise AssertionError(f"{self.name}: a key from an invalid certificate must not be returned")

    @property
    def ok(self) -> bool:
        return self.valid and self.expired is not True

    @property
    def expiry(self) -> str | None:
        """Certificate expiration date as MMYY digits, when the object has one."""
        value = self.fields.get("expiry")
        return value.hex().upper() if value else None


def _result(
    layout: Layout,
    fields: Mapping[str, bytes],
    reasons: list[str],
    public_key: PublicKey | None = None,
    expired: bool | None = None,
) -> OdaResult:
    valid = not reasons
    return OdaResult(
        name=layout.title,
        valid=valid,
        reasons=tuple(reasons),
        fields=MappingProxyType(dict(fields)),
        public_key=public_key if valid else None,
        expired=expired,
    )


# --- PAN, identifiers, dates -----------------------------------------------------------------


def _pan_digits(pan: str | bytes) -> str:
    """PAN digits from tag 5A bytes (cn, F-padded) or a digit string."""
    text = pan.hex().upper() if isinstance(pan, bytes) else pan.upper()
    digits = text.rstrip("F")
    if not digits.isdigit() or not 12 <= len(digits) <= 19:
        raise ODAError(f"PAN (5A) must be 12 to 19 digits, got {text!r}")
    return digits


def _cn_digits(value: bytes) -> str | None:
    """Digits of a compressed-numeric field (right-padded with F); None if malformed."""
    text = value.hex().upper()
    digits = text.rstrip("F")
    return digits if digits.isdigit() else None


def _expiry_month(mmyy: bytes) -> tuple[int, int] | None:
    """(year, month) of an MMYY expiry; years 00–49 are 20YY and 50–99 are 19YY (Book 3 Annex)."""
    text = mmyy.hex()
    if len(text) != 4 or not text.isdigit() or not 1 <= int(text[:2]) <= 12:
        return None
    yy = int(text[2:])
    return (2000 + yy if yy < 50 else 1900 + yy), int(text[:2])


def _expiry_checks(
    layout: Layout, fields: Mapping[str, bytes], today: dt.date | None
) -> tuple[list[str], bool | None]:
    month = _expiry_month(fields.get("expiry", b""))
    if month is None:
        return [
            f"{layout.title}: expiration date {fields.get('expiry', b'').hex().upper()} is not MMYY"
        ], None
    if today is None:
        return [], None
    return [], (today.year, today.month) > month


def _mmyy(expiry: str | bytes) -> bytes:
    value = bytes.fromhex(expiry) if isinstance(expiry, str) else expiry
    if _expiry_month(value) is None:
        raise ODAError(f"certificate expiry must be MMYY, got {value.hex().upper()!r}")
    return value


def issuer_identifier(pan: str | bytes, digits: int = 6) -> bytes:
    """Issuer identifier (4 bytes cn): the leftmost 3–8 PAN digits, padded with F (Book 2 Table 13).

    >>> issuer_identifier("6231234567890123456").hex().upper()
    '623123FF'
    """
    if not 3 <= digits <= 8:
        raise ODAError(f"issuer identifier is the leftmost 3 to 8 PAN digits, got {digits}")
    return bytes.fromhex(_pan_digits(pan)[:digits].ljust(8, "F"))


def _pan_field(pan: str | bytes) -> bytes:
    return bytes.fromhex(_pan_digits(pan).ljust(20, "F"))


# --- certificates: the common flow -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate as the card stores it: certificate, key remainder and exponent (RSA only)."""

    certificate: bytes
    remainder: bytes = b""
    exponent: bytes = b""

    def as_tags(self, kind: str = "issuer") -> dict[str, bytes]:
        """The card's tags: 90/92/9F32 (issuer) or 9F46/9F48/9F47 (ICC); empty ones left out."""
        names = {"issuer": ("90", "92", "9F32"), "icc": ("9F46", "9F48", "9F47")}[kind]
        values = (self.certificate, self.remainder, self.exponent)
        return {tag: value for tag, value in zip(names, values, strict=True) if value}


def _issue(
    kind: str,
    signer_private_key: SigningKey,
    subject: PublicKey,
    head: Mapping[str, bytes],
    static_data: bytes,
    suite: Suite,
) -> IssuedCertificate:
    if subject.suite != suite:
        raise ODAError(f"the certified key is {subject.suite.name}, the certificate {suite.name}")
    layout = LAYOUTS[suite.signature, kind]
    key_field = dict(layout.fields)["key"]
    signer_bytes = signer_bytes_of(signer_private_key, suite)
    if key_field == REST:  # RSA: the key's leftmost digits fill the block, the rest is the remainder
        capacity = _MECHANISMS[suite.signature].body_bytes(layout, signer_bytes, suite) - layout.fixed_bytes()
    else:
        capacity = key_field
    if len(subject.key) > signer_bytes:
        raise ODAError(
            f"the certified key ({len(subject.key)} bytes) is longer than its signer's ({signer_bytes} bytes)"
        )
    digits, remainder = subject.key[:capacity], subject.key[capacity:]
    values = {
        **head,
        "key_length": bytes([len(subject.key)]),
        "exponent_length": bytes([len(subject.exponent)]),
        "key": digits,
    }
    extra = remainder + subject.exponent + static_data
    certificate = _seal(kind, signer_private_key, suite, values, extra)
    return IssuedCertificate(certificate, remainder, subject.exponent)


def signer_bytes_of(private_key: SigningKey, suite: Suite) -> int:
    """Key length N of a signer (RSA modulus bytes; 64 for an SM2 point)."""
    return _rsa_private(private_key).size_bytes if suite.signature == "rsa" else SM2_KEY_BYTES


def _recover_key(
    kind: str,
    signer: VerifyingKey,
    certificate: bytes,
    remainder: bytes,
    exponent: bytes,
    static_data: bytes,
) -> tuple[Layout, dict[str, bytes], list[str], PublicKey | None]:
    """Verify a certificate and rebuild the key it certifies (Book 2 §5.3 / §6.3 steps 1–7)."""
    suite = signer.suite
    remainder_tag, exponent_tag = {"issuer": ("92", "9F32"), "icc": ("9F48", "9F47")}[kind]
    if suite.signature == "sm2" and (remainder or exponent):
        raise ODAError(
            f"SM2 certificates have no key remainder or exponent: {remainder_tag} and {exponent_tag} must be absent"
        )
    _check_static_data(static_data)
    layout, fields, reasons = _open(kind, signer, certificate, remainder + exponent + static_data)
    if suite.signature == "rsa" and not 1 <= len(exponent) <= 3:  # after _open: its length error comes first
        raise ODAError(f"{exponent_tag} (public key exponent) must be 1 to 3 bytes, got {len(exponent)}")
    if "key" not in fields:
        return layout, fields, reasons, None
    key_length, key_field = fields["key_length"][0], fields["key"]
    if key_length <= len(key_field):
        key = key_field[:key_length]
        if any(b != RSA_PAD for b in key_field[key_length:]):
            reasons.append(f"{layout.title}: the bytes after the {key_length}-byte key are not BB padding")
        if remainder:
            reasons.append(f"{layout.title}: a key remainder is given but the key fits in the certificate")
    else:
        key = key_field + remainder
        if len(key) != key_length:
            reasons.append(
                f"{layout.title}: key length is {key_length} bytes but certificate + remainder "
                f"hold {len(key)} ({len(remainder)} in the remainder, {key_length - len(key_field)} needed)"
            )
    if "exponent_length" in fields and fields["exponent_length"][0] != len(exponent):
        reasons.append(
            f"{layout.title}: exponent length is {fields['exponent_length'][0]}, "
            f"the exponent tag holds {len(exponent)} bytes"
        )
    if len(key) > len(signer.key):
        reasons.append(
            f"{layout.title}: certified key ({len(key)} bytes) is longer than its signer's ({len(signer.key)})"
        )
    problem = _key_problem(suite, key, exponent)
    if problem and not reasons:
        reasons.append(f"{layout.title}: {problem}")
    public_key = None if reasons or problem else PublicKey(suite, key, exponent)
    return layout, fields, reasons, public_key


def _check_static_data(static_data: bytes) -> None:
    if len(static_data) > STATIC_DATA_BYTES_MAX:
        raise ODAError(
            f"static data to authenticate is at most {STATIC_DATA_BYTES_MAX} bytes, got {len(static_data)}"
        )


# --- issuer side: building -------------------------------------------------------------------


def issuer_certificate(
    ca_private_key: SigningKey,
    issuer_key: PublicKey,
    *,
    issuer_id: bytes,
    expiry: str | bytes,
    serial: bytes,
    suite: Suite,
) -> IssuedCertificate:
    """The CA certifies an issuer key: tag 90 (+ 92, 9F32 for RSA). Book 2 §5.1 Table 6; format 12.

    ``issuer_id`` is 4 bytes cn (see :func:`issuer_identifier`); ``expiry`` MMYY; ``serial`` 3 bytes.
    """
    digits = _cn_digits(issuer_id)
    if len(issuer_id) != 4 or digits is None or not 3 <= len(digits) <= 8:
        raise ODAError(
            f"issuer identifier must be 4 bytes: 3 to 8 digits padded with F, got {issuer_id.hex().upper()}"
        )
    head = {"issuer_identifier": issuer_id, "expiry": _mmyy(expiry), "serial": serial}
    return _issue("issuer", ca_private_key, issuer_key, head, b"", suite)


def icc_certificate(
    issuer_private_key: SigningKey,
    icc_key: PublicKey,
    *,
    pan: str | bytes,
    expiry: str | bytes,
    serial: bytes,
    static_data: bytes,
    suite: Suite,
) -> IssuedCertificate:
    """The issuer certifies an ICC key over the static data: 9F46 (+ 9F48, 9F47). Book 2 §6.1; format 14.

    ``static_data`` is the static data to be authenticated (records flagged by the AFL, then the
    AIP when 9F4A lists 82).
    """
    _check_static_data(static_data)
    head = {"pan": _pan_field(pan), "expiry": _mmyy(expiry), "serial": serial}
    return _issue("icc", issuer_private_key, icc_key, head, static_data, suite)


def sign_static_data(
    issuer_private_key: SigningKey, static_data: bytes, *, tag_9f45: bytes, suite: Suite
) -> bytes:
    """Signed static application data, tag 93 (SDA; Book 2 §5.2 Table 7; SM2 format 13)."""
    if len(tag_9f45) != 2:
        raise ODAError(f"data authentication code (9F45) must be 2 bytes, got {len(tag_9f45)}")
    _check_static_data(static_data)
    return _seal("sda", issuer_private_key, suite, {"dac": tag_9f45, "padding": b""}, static_data)


def icc_dynamic_data(tag_9f4c: bytes) -> bytes:
    """ICC dynamic data for DDA/fDDA: length ‖ ICC dynamic number (Book 2 Table 17).

    >>> icc_dynamic_data(bytes.fromhex("1234ABCD")).hex().upper()
    '041234ABCD'
    """
    if not IDN_BYTES_MIN <= len(tag_9f4c) <= IDN_BYTES_MAX:
        raise ODAError(
            f"ICC dynamic number (9F4C) must be {IDN_BYTES_MIN} to {IDN_BYTES_MAX} bytes, got {len(tag_9f4c)}"
        )
    return bytes([len(tag_9f4c)]) + tag_9f4c


def cda_icc_dynamic_data(
    *, tag_9f4c: bytes, tag_9f27: bytes, tag_9f26: bytes, transaction_data_hash: bytes
) -> bytes:
    """ICC dynamic data for CDA: length ‖ IDN ‖ CID ‖ AC ‖ transaction data hash (Book 2 Table 19)."""
    if len(tag_9f27) != 1:
        raise ODAError(f"cryptogram information data (9F27) must be 1 byte, got {len(tag_9f27)}")
    if len(tag_9f26) != AC_BYTES:
        raise ODAError(f"application cryptogram (9F26) must be {AC_BYTES} bytes, got {len(tag_9f26)}")
    return icc_dynamic_data(tag_9f4c) + tag_9f27 + tag_9f26 + transaction_data_hash


def sign_dynamic_data(
    icc_private_key: SigningKey, dynamic_data: bytes, terminal_dynamic_data: bytes, *, suite: Suite
) -> bytes:
    """Signed dynamic application data, tag 9F4B (DDA, fDDA, CDA; Book 2 §6.5 Table 17; format 15).

    ``dynamic_data`` is the ICC dynamic data (:func:`icc_dynamic_data` or
    :func:`cda_icc_dynamic_data`); ``terminal_dynamic_data`` the DDOL data, the fDDA data
    (:func:`fdda_terminal_dynamic_data`) or, for CDA, the unpredictable number.
    """
    if len(dynamic_data) > DYNAMIC_DATA_BYTES_MAX:
        raise ODAError(
            f"ICC dynamic data must be at most {DYNAMIC_DATA_BYTES_MAX} bytes, got {len(dynamic_data)}"
        )
    values = {"dynamic_data_length": bytes([len(dynamic_data)]), "dynamic_data": dynamic_data, "padding": b""}
    return _seal("dynamic", icc_private_key, suite, values, terminal_dynamic_data)


def sign_cda(
    icc_private_key: SigningKey,
    *,
    tag_9f4c: bytes,
    tag_9f27: bytes,
    tag_9f26: bytes,
    tag_9f37: bytes,
    pdol_data: bytes,
    cdol1_data: bytes,
    response_tlvs: bytes,
    suite: Suite,
    cdol2_data: bytes = b"",
) -> bytes:
    """The card's CDA signature (9F4B) over its GENERATE AC response (Book 2 §6.6.1)."""
    _check_un(tag_9f37)
    digest = transaction_data_hash(
        pdol_data=pdol_data,
        cdol1_data=cdol1_data,
        cdol2_data=cdol2_data,
        response_tlvs=response_tlvs,
        suite=suite,
    )
    dynamic_data = cda_icc_dynamic_data(
        tag_9f4c=tag_9f4c, tag_9f27=tag_9f27, tag_9f26=tag_9f26, transaction_data_hash=digest
    )
    return sign_dynamic_data(icc_private_key, dynamic_data, tag_9f37, suite=suite)


# --- terminal dynamic data -------------------------------------------------------------------

FDDA_TERMINAL_DATA = MappingProxyType(  # qPBOC fDDA versions → the terminal tags signed (pboc-notes §4.5)
    {0x00: (("9F37", 4),), 0x01: (("9F37", 4), ("9F02", 6), ("5F2A", 2), ("9F69", None))}
)
TAG_9F69_BYTES_MAX = 16


def fdda_terminal_dynamic_data(
    *,
    version: int,
    tag_9f37: bytes,
    tag_9f02: bytes = b"",
    tag_5f2a: bytes = b"",
    tag_9f69: bytes = b"",
) -> bytes:
    """Terminal dynamic data signed by a qPBOC fDDA signature: 00 = 9F37; 01 = 9F37‖9F02‖5F2A‖9F69.

    >>> fdda_terminal_dynamic_data(version=0, tag_9f37=bytes.fromhex("11223344")).hex().upper()
    '11223344'
    """
    if version not in FDDA_TERMINAL_DATA:
        raise ODAError(f"fDDA version must be 00 or 01, got {version:02X}")
    given = {"9F37": tag_9f37, "9F02": tag_9f02, "5F2A": tag_5f2a, "9F69": tag_9f69}
    out = b""
    for tag, size in FDDA_TERMINAL_DATA[version]:
        value = given[tag]
        if size is not None and len(value) != size:
            raise ODAError(f"fDDA version {version:02X}: {tag} must be {size} bytes, got {len(value)}")
        if size is None and not 1 <= len(value) <= TAG_9F69_BYTES_MAX:
            raise ODAError(
                f"fDDA version {version:02X}: {tag} must be 1 to {TAG_9F69_BYTES_MAX} bytes, got {len(value)}"
            )
        out += value
    unused = [tag for tag, value in given.items() if value and tag not in dict(FDDA_TERMINAL_DATA[version])]
    if unused:
        raise ODAError(f"fDDA version {version:02X} does not sign {', '.join(unused)}")
    return out


def _check_un(tag_9f37: bytes) -> None:
    if len(tag_9f37) != UN_BYTES:
        raise ODAError(f"unpredictable number (9F37) must be {UN_BYTES} bytes, got {len(tag_9f37)}")


# --- CDA transaction data --------------------------------------------------------------------


def _tlv_objects(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """Top-level BER-TLV objects as (tag, whole object, value). Strict; for GENERATE AC responses.

    A minimal reader because ``crypto`` imports nothing above it (DESIGN §2); the kernel's full TLV
    parser lives in ``citycard.emv``.
    """
    objects, position = [], 0
    while position < len(data):
        start = position
        if data[position] in (0x00, 0xFF):  # padding between objects (Book 3 Annex B)
            position += 1
            continue
        position += 1
        if data[start] & 0x1F == 0x1F:
            while position < len(data) and data[position] & 0x80:
                position += 1
            position += 1
        if position >= len(data):
            raise ODAError(f"response TLVs: object at offset {start} ends before its length")
        tag = data[start:position]
        first = data[position]
        position += 1
        if first & 0x80:
            count = first & 0x7F
            if not 1 <= count <= 2 or position + count > len(data):
                raise ODAError(f"response TLVs: bad length field at offset {position - 1}")
            length = int.from_bytes(data[position : position + count], "big")
            position += count
        else:
            length = first
        if position + length > len(data):
            raise ODAError(
                f"response TLVs: {tag.hex().upper()} needs {length} bytes, {len(data) - position} left"
            )
        objects.append((tag, data[start : position + length], data[position : position + length]))
        position += length
    return objects


def _response_objects(response_tlvs: bytes) -> list[tuple[bytes, bytes, bytes]]:
    if len(response_tlvs) > RESPONSE_TLVS_BYTES_MAX:
        raise ODAError(
            f"response TLVs must be at most {RESPONSE_TLVS_BYTES_MAX} bytes, got {len(response_tlvs)}"
        )
    objects = _tlv_objects(response_tlvs)
    if len(objects) == 1 and objects[0][0] == b"\x77":  # the whole template 77: use its contents
        objects = _tlv_objects(objects[0][2])
    return objects


def transaction_data_hash(
    *, pdol_data: bytes, cdol1_data: bytes, response_tlvs: bytes, suite: Suite, cdol2_data: bytes = b""
) -> bytes:
    """CDA transaction data hash: hash(PDOL data ‖ CDOL1 data [‖ CDOL2 data] ‖ response TLVs but 9F4B).

    Book 2 §6.6.1: the response data objects in the order returned, tag and length included,
    without the signed dynamic application data (9F4B); a template 77 is unwrapped.
    """
    kept = b"".join(whole for tag, whole, _ in _response_objects(response_tlvs) if tag != b"\x9f\x4b")
    return suite.hash(pdol_data + cdol1_data + cdol2_data + kept)


# --- terminal side: verifying ----------------------------------------------------------------


def recover_issuer_public_key(
    capk: VerifyingKey,
    tag_90: bytes,
    tag_92: bytes = b"",
    tag_9f32: bytes = b"",
    *,
    pan: str | bytes | None = None,
    today: dt.date | None = None,
    revocation_list: Collection[tuple[bytes, int, bytes]] = (),
) -> OdaResult:
    """Retrieve the issuer public key from its certificate (Book 2 §5.3; PBOC format 12).

    Checks: length vs the CA key (ODAError), header 6A / trailer BC / format 02 / hash (RSA) or
    format 12 / SM2 signature (GM), algorithm indicators, issuer identifier vs ``pan`` (skipped
    when None), key length and remainder, exponent 3 or 65537, revocation by (RID, index,
    serial). Expiry against ``today`` goes to ``expired``.
    """
    layout, fields, reasons, key = _recover_key("issuer", capk, tag_90, tag_92, tag_9f32, b"")
    expired = None
    if fields.get("serial") is not None:
        if pan is not None:
            reasons += _issuer_identifier_checks(layout, fields["issuer_identifier"], _pan_digits(pan))
        date_reasons, expired = _expiry_checks(layout, fields, today)
        reasons += date_reasons
        rid, index = getattr(capk, "rid", None), getattr(capk, "index", None)
        if (rid, index, fields["serial"]) in set(revocation_list):
            reasons.append(
                f"{layout.title}: serial {fields['serial'].hex().upper()} is on the revocation list"
            )
    return _result(layout, fields, reasons, key, expired)


def _issuer_identifier_checks(layout: Layout, identifier: bytes, pan_digits: str) -> list[str]:
    digits = _cn_digits(identifier)
    if digits is None or not 3 <= len(digits) <= 8:
        return [
            f"{layout.title}: issuer identifier {identifier.hex().upper()} is not 3 to 8 digits padded with F"
        ]
    if not pan_digits.startswith(digits):
        return [f"{layout.title}: issuer identifier {digits} does not match the PAN's leftmost digits"]
    return []


def recover_icc_public_key(
    issuer_key: PublicKey,
    tag_9f46: bytes,
    tag_9f48: bytes = b"",
    tag_9f47: bytes = b"",
    static_data: bytes = b"",
    *,
    pan: str | bytes | None = None,
    today: dt.date | None = None,
) -> OdaResult:
    """Retrieve the ICC public key from its certificate (Book 2 §6.4; PBOC format 14).

    ``static_data`` is the static data to be authenticated (records ‖ AIP when 9F4A lists 82).
    Checks as for the issuer certificate, with the certificate PAN equal to ``pan`` (5A).
    """
    layout, fields, reasons, key = _recover_key("icc", issuer_key, tag_9f46, tag_9f48, tag_9f47, static_data)
    expired = None
    if fields.get("serial") is not None:
        if pan is not None:
            certified = _cn_digits(fields["pan"])
            if certified != _pan_digits(pan):
                shown = certified or fields["pan"].hex().upper()
                reasons.append(f"{layout.title}: certified PAN {shown} is not the application PAN (5A)")
        date_reasons, expired = _expiry_checks(layout, fields, today)
        reasons += date_reasons
    return _result(layout, fields, reasons, key, expired)


def verify_sda(issuer_key: PublicKey, tag_93: bytes, static_data: bytes) -> OdaResult:
    """Verify signed static application data, tag 93 (Book 2 §5.4; PBOC format 13, UNCERTAIN)."""
    _check_static_data(static_data)
    layout, fields, reasons = _open("sda", issuer_key, tag_93, static_data)
    return _result(layout, fields, reasons)


def _dynamic_fields(
    fields: dict[str, bytes], reasons: list[str], layout: Layout, *, cda_hash_bytes: int = 0
) -> None:
    """Split ICC dynamic data into 9F4C (and for CDA CID, AC, transaction data hash) in ``fields``."""
    data = fields.get("dynamic_data")
    if data is None:
        return
    idn_length = data[0] if data else 0
    if not data or not IDN_BYTES_MIN <= idn_length <= IDN_BYTES_MAX or 1 + idn_length > len(data):
        reasons.append(
            f"{layout.title}: ICC dynamic data does not start with a 2- to 8-byte ICC dynamic number"
        )
        return
    fields["icc_dynamic_number"] = data[1 : 1 + idn_length]
    if not cda_hash_bytes:
        return
    rest = data[1 + idn_length :]
    if len(rest) != 1 + AC_BYTES + cda_hash_bytes:
        reasons.append(
            f"{layout.title}: CDA ICC dynamic data must hold CID, AC and a {cda_hash_bytes}-byte hash "
            f"after the ICC dynamic number ({1 + AC_BYTES + cda_hash_bytes} bytes), got {len(rest)}"
        )
        return
    fields["cid"], fields["ac"], fields["transaction_data_hash"] = (
        rest[:1],
        rest[1 : 1 + AC_BYTES],
        rest[1 + AC_BYTES :],
    )


def _check_suite(key: PublicKey, suite: Suite | None) -> None:
    if suite is not None and suite != key.suite:
        raise ODAError(f"the ICC key is {key.suite.name} but the {suite.name} suite was asked for")


def verify_dynamic_signature(
    icc_key: PublicKey, tag_9f4b: bytes, terminal_dynamic_data: bytes, suite: Suite | None = None
) -> OdaResult:
    """Verify DDA or fDDA signed dynamic data, tag 9F4B (Book 2 §6.5.2; PBOC format 15).

    ``terminal_dynamic_data``: the DDOL data for DDA; for fDDA version 00 the 9F37 value and for
    version 01 9F37 ‖ 9F02 ‖ 5F2A ‖ 9F69 (:func:`fdda_terminal_dynamic_data`).
    """
    _check_suite(icc_key, suite)
    layout, fields, reasons = _open("dynamic", icc_key, tag_9f4b, terminal_dynamic_data)
    _dynamic_fields(fields, reasons, layout)
    return _result(layout, fields, reasons)


def verify_cda(
    icc_key: PublicKey,
    tag_9f4b: bytes,
    *,
    tag_9f37: bytes,
    pdol_data: bytes,
    cdol1_data: bytes,
    response_tlvs: bytes,
    cdol2_data: bytes = b"",
    suite: Suite | None = None,
) -> OdaResult:
    """Verify a CDA signature on a GENERATE AC response (Book 2 §6.6.2).

    ``tag_9f37`` is the terminal's unpredictable number; ``response_tlvs`` the response data
    objects (9F4B among them is skipped, a template 77 unwrapped). Checks the signature, the CID
    inside it against 9F27 in the response, and the transaction data hash. The AC is in
    ``fields["ac"]``.
    """
    _check_suite(icc_key, suite)
    _check_un(tag_9f37)
    objects = _response_objects(response_tlvs)
    layout, fields, reasons = _open("dynamic", icc_key, tag_9f4b, tag_9f37)
    _dynamic_fields(fields, reasons, layout, cda_hash_bytes=icc_key.suite.hash_bytes)
    if "cid" in fields:
        cid = next((value for tag, _, value in objects if tag == b"\x9f\x27"), None)
        if cid is None:
            reasons.append("CDA: the GENERATE AC response has no CID (9F27)")
        elif cid != fields["cid"]:
            reasons.append(
                f"CDA: signed CID {fields['cid'].hex().upper()} differs from 9F27 {cid.hex().upper()} in the response"
            )
        digest = transaction_data_hash(
            pdol_data=pdol_data,
            cdol1_data=cdol1_data,
            cdol2_data=cdol2_data,
            response_tlvs=response_tlvs,
            suite=icc_key.suite,
        )
        if digest != fields["transaction_data_hash"]:
            reasons.append("CDA: transaction data hash does not match PDOL/CDOL data and the response")
    return _result(layout, fields, reasons)
