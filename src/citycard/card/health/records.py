"""The health application's record contents: TLV layouts as data, the visit record and its signature.

Layouts are the project's (WS/T 543 is not public; UNCERTAIN): each record of a record file is a
sequence of primitive BER-TLV objects with context tags 80, 81, … in the order of :data:`LAYOUTS`;
a value longer than its limit, an unknown field or a malformed TLV is refused with the field's
name. Field types: ``an`` printable ASCII, ``text`` UTF-8, ``date`` ``YYYY-MM-DD`` as 4 BCD bytes,
``b`` hex bytes (exact size).

A **visit record** (outpatient ED01–ED05, inpatient EE01–EE03) is one constructed object
``E0 L {C1 … C9, CA}``: its canonical bytes (what the institution signs, what the platform keeps
to compare card and platform) are ``E0 L {C1 … C9}`` — every field but the signature, in tag
order, amounts as n12 BCD fen, the visit time as 7 BCD bytes ``YYYYMMDDhhmmss`` in UTC.

>>> import datetime as dt
>>> v = VisitRecord("H001", dt.datetime(2026, 11, 27, 1, 30, tzinfo=dt.UTC), "内科", "J06.9", 12345, 8000)
>>> v.canonical_bytes()[:2].hex().upper(), VisitRecord.from_dict(v.to_dict()) == v
('E030', True)
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, replace
from typing import Any

from citycard.crypto import record_signature
from citycard.emv.tlv import TLVError, decode, encode_one

FIELD_TYPES = ("an", "text", "date", "b")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


class HealthRecordError(ValueError):
    """A value or a record that does not fit its layout: ``field`` names it."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FieldSpec:
    tag: str
    name: str
    type: str
    max_bytes: int


def _layout(*fields: tuple[str, str, int]) -> tuple[FieldSpec, ...]:
    return tuple(
        FieldSpec(f"{0x80 + i:02X}", name, kind, size) for i, (name, kind, size) in enumerate(fields)
    )


# file name (files.FILES) → layout of each of its records
LAYOUTS: dict[str, tuple[FieldSpec, ...]] = {
    "DDF1/EF05": _layout(
        ("card_type", "an", 1),
        ("spec_version", "an", 4),
        ("issuer_name", "text", 30),
        ("issuer_code", "an", 22),
        ("issue_date", "date", 4),
        ("card_no", "an", 18),
        ("chip_serial", "b", 8),
        ("city_code", "an", 6),
        ("suite", "an", 4),
    ),
    "DDF1/EF06": _layout(
        ("name", "text", 30),
        ("sex", "an", 1),
        ("ethnicity", "an", 2),
        ("birth_date", "date", 4),
        ("id_number", "an", 18),
    ),
    "DDF1/EF07": _layout(("photo_ref", "an", 64)),
    "DDF1/EF08": _layout(("expiry", "date", 4), ("phone1", "an", 20), ("phone2", "an", 20)),
    "DF01/EF05": _layout(("address1", "text", 90), ("address2", "text", 90)),
    "DF01/EF06": _layout(
        ("contact_name", "text", 30), ("contact_relation", "an", 2), ("contact_phone", "an", 20)
    ),
    "DF01/EF07": _layout(("education", "an", 2), ("marriage", "an", 2), ("occupation", "an", 3)),
    "DF01/EF08": _layout(
        ("document_type", "an", 2),
        ("document_no", "an", 20),
        ("health_record_no", "an", 20),
        ("rural_coop_no", "an", 20),
    ),
    "DF02/EF05": _layout(("blood_abo", "an", 1), ("blood_rh", "an", 1), ("alerts", "b", 2)),
    "DF02/EF06": _layout(("psychiatric", "an", 1)),
    "DF02/EF07": _layout(("allergen", "text", 40), ("reaction", "text", 40)),
    "DF02/EF08": _layout(("vaccine", "text", 40), ("date", "date", 4)),
    "DF03/EF05": _layout(("flags", "b", 3), ("last", "b", 1)),
    "DF03/EF06": _layout(("flags", "b", 5), ("last", "b", 1)),
}
# DF02/EF05 alert bits, most significant first (the reader SDKs list these conditions).
ALERT_BITS = (
    "asthma",
    "heart_disease",
    "diabetes",
    "epilepsy",
    "haemophilia",
    "pacemaker",
    "dialysis",
    "glaucoma",
    "organ_transplant",
    "psychotropic_drugs",
)
SEX_CODES = {"M": "1", "F": "2"}  # GB/T 2261.1: 1 male, 2 female


def _date_bytes(name: str, value: Any) -> bytes:
    try:
        day = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
    except ValueError:
        raise HealthRecordError(name, f"a date is YYYY-MM-DD, got {value!r}") from None
    return bytes.fromhex(day.strftime("%Y%m%d"))


def encode_value(spec: FieldSpec, value: Any) -> bytes:
    if spec.type == "date":
        return _date_bytes(spec.name, value)
    if spec.type == "b":
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
        except (ValueError, TypeError):
            raise HealthRecordError(spec.name, f"hex bytes expected, got {value!r}") from None
        if len(raw) != spec.max_bytes:
            raise HealthRecordError(spec.name, f"exactly {spec.max_bytes} bytes, got {len(raw)}")
        return raw
    if not isinstance(value, str) or not value:
        raise HealthRecordError(spec.name, f"a non-empty string expected, got {value!r}")
    if spec.type == "an" and not _PRINTABLE.match(value):
        raise HealthRecordError(spec.name, "printable ASCII only")
    raw = value.encode("utf-8")
    if len(raw) > spec.max_bytes:
        raise HealthRecordError(spec.name, f"at most {spec.max_bytes} bytes, got {len(raw)}")
    return raw


def decode_value(spec: FieldSpec, raw: bytes) -> Any:
    if spec.type == "date":
        if len(raw) != 4:
            raise HealthRecordError(spec.name, f"a date is 4 BCD bytes, got {len(raw)}")
        try:
            return dt.datetime.strptime(raw.hex(), "%Y%m%d").date().isoformat()
        except ValueError:
            raise HealthRecordError(spec.name, f"not a BCD date: {raw.hex().upper()}") from None
    if spec.type == "b":
        if len(raw) != spec.max_bytes:
            raise HealthRecordError(spec.name, f"exactly {spec.max_bytes} bytes, got {len(raw)}")
        return raw.hex().upper()
    if len(raw) > spec.max_bytes:
        raise HealthRecordError(spec.name, f"at most {spec.max_bytes} bytes, got {len(raw)}")
    try:
        text = raw.decode("utf-8" if spec.type == "text" else "ascii")
    except UnicodeDecodeError:
        raise HealthRecordError(spec.name, "not valid text") from None
    return text


def encode_record(file_name: str, values: dict[str, Any]) -> bytes:
    """One record of ``file_name`` from field values (fields left out are absent)."""
    layout = LAYOUTS[file_name]
    names = {spec.name for spec in layout}
    unknown = sorted(set(values) - names)
    if unknown:
        raise HealthRecordError(unknown[0], f"not a field of {file_name}")
    out = b"".join(
        encode_one(spec.tag, encode_value(spec, values[spec.name]))
        for spec in layout
        if values.get(spec.name) not in (None, "")
    )
    if not out:
        raise HealthRecordError(file_name, "a record needs at least one field")
    return out


def decode_record(file_name: str, record: bytes) -> dict[str, Any]:
    """The field values of one record of ``file_name`` (unknown tags are skipped)."""
    by_tag = {spec.tag: spec for spec in LAYOUTS[file_name]}
    try:
        objects = decode(record, padding=False)
    except TLVError as exc:
        raise HealthRecordError(file_name, f"not TLV: {exc}") from None
    out: dict[str, Any] = {}
    for obj in objects:
        spec = by_tag.get(obj.tag)
        if spec is not None:
            out[spec.name] = decode_value(spec, obj.value)
    return out


def alerts_from_bits(value: str) -> list[str]:
    bits = int(value, 16)
    return [name for i, name in enumerate(ALERT_BITS) if bits & (0x8000 >> i)]


def alerts_to_bits(alerts: list[str]) -> str:
    bits = 0
    for name in alerts:
        if name not in ALERT_BITS:
            raise HealthRecordError("alerts", f"unknown alert {name!r}: one of {', '.join(ALERT_BITS)}")
        bits |= 0x8000 >> ALERT_BITS.index(name)
    return f"{bits:04X}"


# --- the visit record ------------------------------------------------------------------------------
AMOUNT_FEN_MAX = 10**12 - 1  # n12
INSTITUTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
VISIT_TAGS = {
    "institution_id": "C1",
    "visit_at": "C2",
    "department": "C3",
    "diagnosis_code": "C4",
    "amount_fen": "C5",
    "insurance_fen": "C6",
    "visit_no": "C7",
    "signature_alg": "C8",
    "key_id": "C9",
}
SIGNATURE_TAG = "CA"
VISIT_TEMPLATE = "E0"
TEXT_BYTES_MAX = {"department": 40, "diagnosis_code": 16, "visit_no": 24}


class RecordSignatureError(ValueError):
    """A visit record whose signature does not hold (forged, altered, unsigned, unknown key)."""


def _utc(moment: dt.datetime) -> dt.datetime:
    if not isinstance(moment, dt.datetime) or moment.tzinfo is None:
        raise HealthRecordError("visit_at", "an aware datetime is required (DESIGN.md §3: aware UTC)")
    return moment.astimezone(dt.UTC).replace(microsecond=0)


def _n12(name: str, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= AMOUNT_FEN_MAX:
        raise HealthRecordError(name, f"an integer amount in fen from 0 to {AMOUNT_FEN_MAX}, got {value!r}")
    return bytes.fromhex(f"{value:012d}")


@dataclass(frozen=True)
class VisitRecord:
    """An outpatient (or inpatient) visit written to the card by an institution, with its signature.

    ``signature_alg`` (``SM2-SM3``, ``RSA-PKCS1-SHA256``, ``RSA-PSS-SHA256``), ``key_id`` and
    ``signature`` are empty until the institution signs (``InstitutionSigner.sign``)."""

    institution_id: str
    visit_at: dt.datetime
    department: str
    diagnosis_code: str
    amount_fen: int
    insurance_fen: int = 0
    visit_no: str = ""
    signature_alg: str = ""
    key_id: bytes = b""
    signature: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.institution_id, str) or not INSTITUTION_ID.match(self.institution_id):
            raise HealthRecordError("institution_id", "1 to 16 of A-Z a-z 0-9 _ -")
        object.__setattr__(self, "visit_at", _utc(self.visit_at))
        for name, limit in TEXT_BYTES_MAX.items():
            value = getattr(self, name)
            if not isinstance(value, str) or len(value.encode("utf-8")) > limit:
                raise HealthRecordError(name, f"text of at most {limit} UTF-8 bytes")
        if not self.department or not self.diagnosis_code:
            raise HealthRecordError("department" if not self.department else "diagnosis_code", "required")
        _n12("amount_fen", self.amount_fen)
        _n12("insurance_fen", self.insurance_fen)
        if self.insurance_fen > self.amount_fen:
            raise HealthRecordError("insurance_fen", "the insurance share cannot exceed the amount")
        if self.signature_alg and self.signature_alg not in record_signature.ALGORITHM_IDS:
            raise HealthRecordError("signature_alg", f"one of {', '.join(record_signature.ALGORITHM_IDS)}")

    @property
    def signed(self) -> bool:
        return bool(self.signature_alg and self.key_id and self.signature)

    @property
    def patient_fen(self) -> int:
        return self.amount_fen - self.insurance_fen

    def _body(self) -> bytes:
        parts = [
            encode_one("C1", self.institution_id.encode("ascii")),
            encode_one("C2", bytes.fromhex(self.visit_at.strftime("%Y%m%d%H%M%S"))),
            encode_one("C3", self.department.encode("utf-8")),
            encode_one("C4", self.diagnosis_code.encode("utf-8")),
            encode_one("C5", _n12("amount_fen", self.amount_fen)),
            encode_one("C6", _n12("insurance_fen", self.insurance_fen)),
            encode_one("C7", self.visit_no.encode("utf-8")),
        ]
        if self.signature_alg:
            parts.append(encode_one("C8", bytes([record_signature.ALGORITHM_IDS[self.signature_alg]])))
        if self.key_id:
            parts.append(encode_one("C9", self.key_id))
        return b"".join(parts)

    def canonical_bytes(self) -> bytes:
        """What the institution signs and the platform stores: ``E0 L {C1 … C9}`` (module note)."""
        return encode_one(VISIT_TEMPLATE, self._body())

    def to_bytes(self) -> bytes:
        """The record as the card holds it: ``E0 L {C1 … C9, CA signature}``."""
        signature = encode_one(SIGNATURE_TAG, self.signature) if self.signature else b""
        return encode_one(VISIT_TEMPLATE, self._body() + signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> VisitRecord:
        """Parse the card's form (trailing zero bytes of the file are ignored)."""
        try:
            objects = decode(data, padding=True)
        except TLVError as exc:
            raise HealthRecordError("visit", f"not a visit record TLV: {exc}") from None
        if len(objects) != 1 or objects[0].tag != VISIT_TEMPLATE:
            raise HealthRecordError("visit", f"one {VISIT_TEMPLATE} template expected")
        values = {obj.tag: obj.value for obj in objects[0].children or ()}
        try:
            at = dt.datetime.strptime(values["C2"].hex(), "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
            alg = values.get("C8", b"")
            return cls(
                institution_id=values["C1"].decode("ascii"),
                visit_at=at,
                department=values["C3"].decode("utf-8"),
                diagnosis_code=values["C4"].decode("utf-8"),
                amount_fen=int(values["C5"].hex()),
                insurance_fen=int(values["C6"].hex()),
                visit_no=values.get("C7", b"").decode("utf-8"),
                signature_alg=record_signature.ALGORITHMS.get(alg[0], "?") if len(alg) == 1 else "",
                key_id=values.get("C9", b""),
                signature=values.get(SIGNATURE_TAG, b""),
            )
        except KeyError as exc:
            raise HealthRecordError("visit", f"field {exc} missing") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HealthRecordError("visit", f"bad field: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "institution_id": self.institution_id,
            "visit_at": self.visit_at.isoformat(),
            "department": self.department,
            "diagnosis_code": self.diagnosis_code,
            "amount_fen": self.amount_fen,
            "insurance_fen": self.insurance_fen,
            "visit_no": self.visit_no,
            "signature_alg": self.signature_alg,
            "key_id": self.key_id.hex().upper(),
            "signature": self.signature.hex().upper(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisitRecord:
        try:
            return cls(
                institution_id=data["institution_id"],
                visit_at=dt.datetime.fromisoformat(data["visit_at"]),
                department=data["department"],
                diagnosis_code=data["diagnosis_code"],
                amount_fen=data["amount_fen"],
                insurance_fen=data.get("insurance_fen", 0),
                visit_no=data.get("visit_no", ""),
                signature_alg=data.get("signature_alg", ""),
                key_id=bytes.fromhex(data.get("key_id", "")),
                signature=bytes.fromhex(data.get("signature", "")),
            )
        except KeyError as exc:
            raise HealthRecordError(str(exc.args[0]), "required") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, HealthRecordError):
                raise
            raise HealthRecordError("visit", str(exc)) from None

    def unsigned(self) -> VisitRecord:
        return replace(self, signature_alg="", key_id=b"", signature=b"")


def verify_record(record: VisitRecord, public_key: bytes) -> VisitRecord:
    """Check ``record``'s signature with the institution's ``public_key``; return the record.

    RecordSignatureError (a clear reason) for an unsigned record, a key id that is not this key's,
    or a signature that does not verify (forged or altered)."""
    if not record.signed:
        raise RecordSignatureError(f"visit record of {record.institution_id} is not signed")
    if record.signature_alg not in record_signature.ALGORITHM_IDS:
        raise RecordSignatureError(f"unknown signature algorithm {record.signature_alg!r}")
    algorithm = record_signature.ALGORITHM_IDS[record.signature_alg]
    try:
        expected = record_signature.key_id(public_key, algorithm=algorithm)
    except record_signature.SignatureError as exc:
        raise RecordSignatureError(f"{record.institution_id}: {exc}") from None
    if expected != record.key_id:
        raise RecordSignatureError(
            f"visit record names key {record.key_id.hex().upper()} of {record.institution_id}, "
            f"not the key {expected.hex().upper()} it is checked with"
        )
    if not record_signature.verify(
        public_key, record.canonical_bytes(), record.signature, algorithm=algorithm
    ):
        raise RecordSignatureError(
            f"visit record of {record.institution_id} at {record.visit_at.isoformat()}: "
            f"the {record.signature_alg} signature does not verify (forged or altered)"
        )
    return record
