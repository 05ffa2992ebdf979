"""Platform health service: institutions, patient index, registrations, appointments, consents with
their access audit, visit records, payments and insurance settlements (docs/health.md).

Revision ID: 0011_healthcare
Revises: 0010_terminals
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from citycard.db.base import UTCDateTime

revision = "0011_healthcare"
down_revision = "0010_terminals"
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


_VISIT_KINDS = ("outpatient", "inpatient", "emergency")
_APPOINTMENT_STATES = ("booked", "cancelled", "attended")
_SCOPES = ("identity", "visits", "alerts", "allergies", "immunisations")
_SUITES = ("GM", "INTL")


def upgrade() -> None:
    op.create_table(
        "health_institutions",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("suite", sa.String(4), nullable=False),
        sa.Column("public_key_hex", sa.String(1200), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_institutions"),
        sa.CheckConstraint(f"suite IN {_in(_SUITES)}", name="ck_health_institutions_suite"),
    )
    op.create_table(
        "health_institution_keys",
        sa.Column("principal", sa.String(40), nullable=False),
        sa.Column("institution_id", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("principal", name="pk_health_institution_keys"),
        sa.ForeignKeyConstraint(["institution_id"], ["health_institutions.id"],
                                name="fk_health_institution_keys_institution_id_health_institutions"),
    )  # fmt: skip
    op.create_table(
        "health_patients",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("cardholder_id", _ID, nullable=False),
        sa.Column("scheme", sa.String(24), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_patients"),
        sa.ForeignKeyConstraint(["cardholder_id"], ["platform_cardholders.id"],
                                name="fk_health_patients_cardholder_id_platform_cardholders"),
        sa.UniqueConstraint("cardholder_id", name="uq_health_patients_cardholder_id"),
    )  # fmt: skip
    op.create_table(
        "health_registrations",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("institution_id", sa.String(16), nullable=False),
        sa.Column("file_no", sa.String(32), nullable=False),
        sa.Column("card_id", _ID, nullable=False),
        sa.Column("registered_by", sa.String(64), nullable=False),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_registrations"),
        sa.ForeignKeyConstraint(["patient_id"], ["health_patients.id"],
                                name="fk_health_registrations_patient_id_health_patients"),
        sa.ForeignKeyConstraint(["institution_id"], ["health_institutions.id"],
                                name="fk_health_registrations_institution_id_health_institutions"),
        sa.UniqueConstraint("patient_id", "institution_id",
                            name="uq_health_registrations_patient_id_institution_id"),
        sa.UniqueConstraint("institution_id", "file_no", name="uq_health_registrations_institution_id_file_no"),
    )  # fmt: skip
    op.create_table(
        "health_appointments",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("institution_id", sa.String(16), nullable=False),
        sa.Column("department", sa.String(32), nullable=False),
        sa.Column("starts_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_appointments"),
        sa.ForeignKeyConstraint(["patient_id"], ["health_patients.id"],
                                name="fk_health_appointments_patient_id_health_patients"),
        sa.ForeignKeyConstraint(["institution_id"], ["health_institutions.id"],
                                name="fk_health_appointments_institution_id_health_institutions"),
        sa.CheckConstraint(f"state IN {_in(_APPOINTMENT_STATES)}", name="ck_health_appointments_state"),
    )  # fmt: skip
    op.create_index("ix_health_appointments_institution_id_starts_at", "health_appointments",
                    ["institution_id", "starts_at"])  # fmt: skip
    op.create_table(
        "health_consents",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("institution_id", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("granted_by", sa.String(64), nullable=False),
        sa.Column("granted_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_by", sa.String(64), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_health_consents"),
        sa.ForeignKeyConstraint(["patient_id"], ["health_patients.id"],
                                name="fk_health_consents_patient_id_health_patients"),
        sa.ForeignKeyConstraint(["institution_id"], ["health_institutions.id"],
                                name="fk_health_consents_institution_id_health_institutions"),
        sa.CheckConstraint(f"scope IN {_in(_SCOPES)}", name="ck_health_consents_scope"),
    )  # fmt: skip
    op.create_index("ix_health_consents_patient_id_institution_id", "health_consents",
                    ["patient_id", "institution_id"])  # fmt: skip
    op.create_table(
        "health_access_audit",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("institution_id", sa.String(16), nullable=True),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_access_audit"),
    )
    op.create_index("ix_health_access_audit_patient_id_id", "health_access_audit", ["patient_id", "id"])
    op.create_table(
        "health_visits",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("institution_id", sa.String(16), nullable=False),
        sa.Column("visit_no", sa.String(32), nullable=False),
        sa.Column("card_id", _ID, nullable=True),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("department", sa.String(32), nullable=False),
        sa.Column("diagnosis_code", sa.String(16), nullable=False),
        sa.Column("visit_at", UTCDateTime(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("insurance_fen", sa.BigInteger(), nullable=False),
        sa.Column("record", sa.Text(), nullable=True),
        sa.Column("signature_hex", sa.String(1024), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_visits"),
        sa.ForeignKeyConstraint(["patient_id"], ["health_patients.id"],
                                name="fk_health_visits_patient_id_health_patients"),
        sa.ForeignKeyConstraint(["institution_id"], ["health_institutions.id"],
                                name="fk_health_visits_institution_id_health_institutions"),
        sa.UniqueConstraint("institution_id", "visit_no", name="uq_health_visits_institution_id_visit_no"),
        sa.CheckConstraint(f"kind IN {_in(_VISIT_KINDS)}", name="ck_health_visits_kind"),
        sa.CheckConstraint("amount_fen >= 0 AND insurance_fen >= 0 AND insurance_fen <= amount_fen",
                           name="ck_health_visits_amounts"),
    )  # fmt: skip
    op.create_index("ix_health_visits_patient_id_id", "health_visits", ["patient_id", "id"])
    op.create_table(
        "health_payments",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("visit_id", _ID, nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("pan_masked", sa.String(24), nullable=False),
        sa.Column("psn", sa.Integer(), nullable=False),
        sa.Column("terminal_id", sa.String(8), nullable=False),
        sa.Column("stan", sa.String(6), nullable=False),
        sa.Column("response_code", sa.String(2), nullable=False),
        sa.Column("authorisation_code", sa.String(6), nullable=True),
        sa.Column("paid_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_payments"),
        sa.ForeignKeyConstraint(
            ["visit_id"], ["health_visits.id"], name="fk_health_payments_visit_id_health_visits"
        ),
        sa.UniqueConstraint("visit_id", name="uq_health_payments_visit_id"),
        sa.CheckConstraint("amount_fen >= 0", name="ck_health_payments_amount"),
    )
    op.create_table(
        "health_settlements",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("visit_id", _ID, nullable=False),
        sa.Column("scheme", sa.String(24), nullable=False),
        sa.Column("insurance_fen", sa.BigInteger(), nullable=False),
        sa.Column("posting_key", sa.String(64), nullable=False),
        sa.Column("settled_by", sa.String(64), nullable=False),
        sa.Column("settled_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_health_settlements"),
        sa.ForeignKeyConstraint(["visit_id"], ["health_visits.id"],
                                name="fk_health_settlements_visit_id_health_visits"),
        sa.UniqueConstraint("visit_id", name="uq_health_settlements_visit_id"),
        sa.CheckConstraint("insurance_fen >= 0", name="ck_health_settlements_amount"),
    )  # fmt: skip


def downgrade() -> None:
    for table in ("health_settlements", "health_payments", "health_visits", "health_access_audit",
                  "health_consents", "health_appointments", "health_registrations", "health_patients",
                  "health_institution_keys", "health_institutions"):  # fmt: skip
        op.drop_table(table)
