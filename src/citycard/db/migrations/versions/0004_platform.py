"""Platform core: cardholders, consents, cards with their audit trail, the event log, PAN counters.

Matches citycard.platform.tables exactly (the autogenerate test in tests/db checks it).

Revision ID: 0004_platform
Revises: 0003_switch
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_platform"
down_revision = "0003_switch"
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)
_STATES = (
    "'applied', 'approved', 'prepared', 'personalised', 'issued', 'active', 'lost_oral', 'lost', "
    "'replaced', 'cancelled'"
)


def upgrade() -> None:
    op.create_table(
        "platform_cardholders",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("id_number", sa.String(18), nullable=False),
        sa.Column("region_code", sa.String(6), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("sex", sa.String(1), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("phone", sa.String(20), nullable=True),
        sa.Column("address", sa.String(200), nullable=True),
        sa.Column("photo_ref", sa.String(200), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_platform_cardholders"),
        sa.UniqueConstraint("id_number", name="uq_platform_cardholders_id_number"),
        sa.CheckConstraint("sex IN ('M', 'F')", name="ck_platform_cardholders_sex"),
    )
    op.create_index("ix_platform_cardholders_name", "platform_cardholders", ["name"])
    op.create_index("ix_platform_cardholders_phone", "platform_cardholders", ["phone"])
    op.create_table(
        "platform_consents",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("cardholder_id", _ID, nullable=False),
        sa.Column("sector", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("granted_by", sa.String(64), nullable=False),
        sa.Column("granted_at", _WHEN, nullable=False),
        sa.Column("revoked_by", sa.String(64), nullable=True),
        sa.Column("revoked_at", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_platform_consents"),
        sa.ForeignKeyConstraint(
            ["cardholder_id"],
            ["platform_cardholders.id"],
            name="fk_platform_consents_cardholder_id_platform_cardholders",
        ),
    )
    op.create_index(
        "ix_platform_consents_cardholder_id_sector", "platform_consents", ["cardholder_id", "sector"]
    )
    op.create_table(
        "platform_cards",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("cardholder_id", _ID, nullable=False),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(24), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("dormant", sa.Boolean(), nullable=False),
        sa.Column("pan", sa.String(19), nullable=True),
        sa.Column("psn", sa.Integer(), nullable=True),
        sa.Column("suite", sa.String(4), nullable=True),
        sa.Column("expiry", sa.Date(), nullable=True),
        sa.Column("effective", sa.Date(), nullable=True),
        sa.Column("image_path", sa.String(400), nullable=True),
        sa.Column("deposit_fen", sa.BigInteger(), nullable=False),
        sa.Column("ec_initial_fen", sa.BigInteger(), nullable=False),
        sa.Column("lost_at", _WHEN, nullable=True),
        sa.Column("replaces_id", _ID, nullable=True),
        sa.Column("replaced_by_id", _ID, nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.Column("last_activity_at", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_platform_cards"),
        sa.UniqueConstraint("pan", "psn", name="uq_platform_cards_pan_psn"),
        sa.ForeignKeyConstraint(
            ["cardholder_id"],
            ["platform_cardholders.id"],
            name="fk_platform_cards_cardholder_id_platform_cardholders",
        ),
        sa.ForeignKeyConstraint(
            ["replaces_id"], ["platform_cards.id"], name="fk_platform_cards_replaces_id_platform_cards"
        ),
        sa.ForeignKeyConstraint(
            ["replaced_by_id"], ["platform_cards.id"], name="fk_platform_cards_replaced_by_id_platform_cards"
        ),
        sa.CheckConstraint(f"state IN ({_STATES})", name="ck_platform_cards_state"),
        sa.CheckConstraint("deposit_fen >= 0", name="ck_platform_cards_deposit_fen"),
        sa.CheckConstraint("ec_initial_fen >= 0", name="ck_platform_cards_ec_initial_fen"),
        sa.CheckConstraint("psn IS NULL OR (psn >= 0 AND psn <= 99)", name="ck_platform_cards_psn"),
    )
    op.create_index("ix_platform_cards_cardholder_id", "platform_cards", ["cardholder_id"])
    op.create_index("ix_platform_cards_state", "platform_cards", ["state"])
    op.create_table(
        "platform_card_audit",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("card_id", _ID, nullable=False),
        sa.Column("action", sa.String(24), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_platform_card_audit"),
        sa.ForeignKeyConstraint(
            ["card_id"], ["platform_cards.id"], name="fk_platform_card_audit_card_id_platform_cards"
        ),
    )
    op.create_index("ix_platform_card_audit_card_id", "platform_card_audit", ["card_id"])
    op.create_table(
        "platform_events",
        sa.Column("seq", _ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(48), nullable=False),
        sa.Column("card_id", sa.BigInteger(), nullable=True),
        sa.Column("cardholder_id", sa.BigInteger(), nullable=True),
        sa.Column("sector", sa.String(32), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_platform_events"),
    )
    op.create_index("ix_platform_events_card_id", "platform_events", ["card_id"])
    op.create_index("ix_platform_events_kind", "platform_events", ["kind"])
    op.create_table(
        "platform_pan_counters",
        sa.Column("bin", sa.String(11), nullable=False),
        sa.Column("next_serial", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bin", name="pk_platform_pan_counters"),
        sa.CheckConstraint("next_serial >= 1", name="ck_platform_pan_counters_next_serial"),
    )


def downgrade() -> None:
    op.drop_table("platform_pan_counters")
    op.drop_index("ix_platform_events_kind", table_name="platform_events")
    op.drop_index("ix_platform_events_card_id", table_name="platform_events")
    op.drop_table("platform_events")
    op.drop_index("ix_platform_card_audit_card_id", table_name="platform_card_audit")
    op.drop_table("platform_card_audit")
    op.drop_index("ix_platform_cards_state", table_name="platform_cards")
    op.drop_index("ix_platform_cards_cardholder_id", table_name="platform_cards")
    op.drop_table("platform_cards")
    op.drop_index("ix_platform_consents_cardholder_id_sector", table_name="platform_consents")
    op.drop_table("platform_consents")
    op.drop_index("ix_platform_cardholders_phone", table_name="platform_cardholders")
    op.drop_index("ix_platform_cardholders_name", table_name="platform_cardholders")
    op.drop_table("platform_cardholders")
