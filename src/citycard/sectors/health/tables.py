"""The platform health service's tables (prefix ``health_``; migration ``0011_healthcare``; docs/health.md).

* ``health_institutions`` — hospitals: an institution id (``H001``), its acquiring merchant id (the
  window's POS is paid through the bank to that merchant), the suite and public key its records are
  signed with (hex; the private key stays in the hospital's SAM/HSM), its ledger account.
* ``health_institution_keys`` — which principal (an API key ``key:<id>`` of role ``sector``, or a
  desk login ``user:<id>``) acts for which institution: the API key table carries no institution,
  so the binding lives here, keyed by the principal's reference.
* ``health_patients`` — the patient index across hospitals, one row per cardholder, found by any of
  the cardholder's cards (platform card id, or PAN + PSN through the platform).
* ``health_registrations`` — a patient file at one hospital (its own file number).
* ``health_appointments`` — booked / cancelled / attended.
* ``health_consents`` — the patient lets an institution read a scope (visits, alerts…); revocable.
* ``health_access_audit`` — every read of a patient's records by an institution (who, when, what,
  allowed or refused), written in the read's own transaction — or its own when the read is refused.
* ``health_visits`` — visit records as signed by the writing institution (canonical JSON, signature).
* ``health_payments`` — the online authorisation that paid a visit's self-pay part.
* ``health_settlements`` — the insurance share of a visit, posted once (``insurer:<scheme>`` →
  ``hospital:<id>``) under the posting key ``health:settle:<visit id>``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from citycard.db import Base, BigIntPK, UTCDateTime

INSTITUTION_ID_CHARS = 16
NAME_CHARS = 64
MERCHANT_ID_CHARS = 15
ACTOR_CHARS = 64
PRINCIPAL_CHARS = 40  # = citycard.api.tables.PRINCIPAL_CHARS_MAX
SCHEME_CHARS = 24
SCOPE_CHARS = 16
DEPARTMENT_CHARS = 32
FILE_NO_CHARS = 32
VISIT_NO_CHARS = 32
DIAGNOSIS_CHARS = 16
PUBLIC_KEY_HEX_CHARS = 1200  # RSA ≤ 4096 DER SubjectPublicKeyInfo as hex, or SM2 x‖y
SIGNATURE_HEX_CHARS = 1024
RECORD_CHARS_MAX = 4_000

VISIT_KINDS = ("outpatient", "inpatient", "emergency")
APPOINTMENT_STATES = ("booked", "cancelled", "attended")
SCOPES = ("identity", "visits", "alerts", "allergies", "immunisations")
SUITES = ("GM", "INTL")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


institutions = Table(
    "health_institutions",
    Base.metadata,
    Column("id", String(INSTITUTION_ID_CHARS), primary_key=True),
    Column("name", String(NAME_CHARS), nullable=False),
    Column("merchant_id", String(MERCHANT_ID_CHARS), nullable=False),
    Column("suite", String(4), nullable=False),
    Column("public_key_hex", String(PUBLIC_KEY_HEX_CHARS), nullable=True),
    Column("key_id", String(64), nullable=True),
    Column("created_by", String(ACTOR_CHARS), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint(f"suite IN {_in(SUITES)}", name="suite"),
)

institution_keys = Table(
    "health_institution_keys",
    Base.metadata,
    Column("principal", String(PRINCIPAL_CHARS), primary_key=True),
    Column(
        "institution_id", String(INSTITUTION_ID_CHARS), ForeignKey("health_institutions.id"), nullable=False
    ),
    Column("created_by", String(ACTOR_CHARS), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

patients = Table(
    "health_patients",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("cardholder_id", BigIntPK, ForeignKey("platform_cardholders.id"), nullable=False),
    Column("scheme", String(SCHEME_CHARS), nullable=True),  # insurance scheme (rules table key)
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("cardholder_id"),
)

registrations = Table(
    "health_registrations",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("patient_id", BigIntPK, ForeignKey("health_patients.id"), nullable=False),
    Column(
        "institution_id", String(INSTITUTION_ID_CHARS), ForeignKey("health_institutions.id"), nullable=False
    ),
    Column("file_no", String(FILE_NO_CHARS), nullable=False),
    Column("card_id", BigIntPK, nullable=False),  # the card shown at registration
    Column("registered_by", String(ACTOR_CHARS), nullable=False),
    Column("registered_at", UTCDateTime, nullable=False),
    UniqueConstraint("patient_id", "institution_id"),
    UniqueConstraint("institution_id", "file_no"),
)

appointments = Table(
    "health_appointments",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("patient_id", BigIntPK, ForeignKey("health_patients.id"), nullable=False),
    Column(
        "institution_id", String(INSTITUTION_ID_CHARS), ForeignKey("health_institutions.id"), nullable=False
    ),
    Column("department", String(DEPARTMENT_CHARS), nullable=False),
    Column("starts_at", UTCDateTime, nullable=False),
    Column("state", String(12), nullable=False),
    Column("created_by", String(ACTOR_CHARS), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(f"state IN {_in(APPOINTMENT_STATES)}", name="state"),
    Index(None, "institution_id", "starts_at"),
)

consents = Table(
    "health_consents",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("patient_id", BigIntPK, ForeignKey("health_patients.id"), nullable=False),
    Column(
        "institution_id", String(INSTITUTION_ID_CHARS), ForeignKey("health_institutions.id"), nullable=False
    ),
    Column("scope", String(SCOPE_CHARS), nullable=False),
    Column("granted_by", String(ACTOR_CHARS), nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
    Column("revoked_by", String(ACTOR_CHARS), nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    CheckConstraint(f"scope IN {_in(SCOPES)}", name="scope"),
    Index(None, "patient_id", "institution_id"),
)

access_audit = Table(
    "health_access_audit",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(ACTOR_CHARS), nullable=False),
    Column("institution_id", String(INSTITUTION_ID_CHARS), nullable=True),
    Column("patient_id", BigIntPK, nullable=False),
    Column("scope", String(SCOPE_CHARS), nullable=False),
    Column("allowed", Boolean, nullable=False),
    Column("reason", String(200), nullable=False),
    Index(None, "patient_id", "id"),
)

visits = Table(
    "health_visits",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("patient_id", BigIntPK, ForeignKey("health_patients.id"), nullable=False),
    Column(
        "institution_id", String(INSTITUTION_ID_CHARS), ForeignKey("health_institutions.id"), nullable=False
    ),
    Column("visit_no", String(VISIT_NO_CHARS), nullable=False),
    Column("card_id", BigIntPK, nullable=True),
    Column("kind", String(12), nullable=False),
    Column("department", String(DEPARTMENT_CHARS), nullable=False),
    Column("diagnosis_code", String(DIAGNOSIS_CHARS), nullable=False),
    Column("visit_at", UTCDateTime, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("insurance_fen", BigInteger, nullable=False),
    Column("record", Text, nullable=True),  # the signed record (canonical JSON), when pushed
    Column("signature_hex", String(SIGNATURE_HEX_CHARS), nullable=True),
    Column("created_by", String(ACTOR_CHARS), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("institution_id", "visit_no"),
    CheckConstraint(f"kind IN {_in(VISIT_KINDS)}", name="kind"),
    CheckConstraint("amount_fen >= 0 AND insurance_fen >= 0 AND insurance_fen <= amount_fen", name="amounts"),
    Index(None, "patient_id", "id"),
)

payments = Table(
    "health_payments",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("visit_id", BigIntPK, ForeignKey("health_visits.id"), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("pan_masked", String(24), nullable=False),
    Column("psn", Integer, nullable=False),
    Column("terminal_id", String(8), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("response_code", String(2), nullable=False),
    Column("authorisation_code", String(6), nullable=True),
    Column("paid_at", UTCDateTime, nullable=False),
    Column("created_by", String(ACTOR_CHARS), nullable=False),
    UniqueConstraint("visit_id"),
    CheckConstraint("amount_fen >= 0", name="amount"),
)

settlements = Table(
    "health_settlements",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("visit_id", BigIntPK, ForeignKey("health_visits.id"), nullable=False),
    Column("scheme", String(SCHEME_CHARS), nullable=False),
    Column("insurance_fen", BigInteger, nullable=False),
    Column("posting_key", String(64), nullable=False),
    Column("settled_by", String(ACTOR_CHARS), nullable=False),
    Column("settled_at", UTCDateTime, nullable=False),
    UniqueConstraint("visit_id"),
    CheckConstraint("insurance_fen >= 0", name="amount"),
)
