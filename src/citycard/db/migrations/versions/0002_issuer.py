"""Issuer host: cards, the message log, the script queue, script results and advices.

Matches citycard.host.issuer.tables exactly (the autogenerate test in tests/db checks it).

Revision ID: 0002_issuer
Revises: 0001_ledger
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_issuer"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "issuer_cards",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(24), nullable=False),
        sa.Column("pan", sa.String(19), nullable=False),
        sa.Column("psn", sa.Integer(), nullable=False),
        sa.Column("expiry", sa.Date(), nullable=False),
        sa.Column("suite", sa.String(4), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("pvv", sa.String(4), nullable=True),
        sa.Column("pin_tries", sa.Integer(), nullable=False),
        sa.Column("atc_max", sa.Integer(), nullable=False),
        sa.Column("ec_balance_fen", sa.BigInteger(), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("ec_account", sa.String(64), nullable=False),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("day_total_fen", sa.BigInteger(), nullable=False),
        sa.Column("scripts_pending", sa.Integer(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_issuer_cards"),
        sa.UniqueConstraint("pan", "psn", name="uq_issuer_cards_pan_psn"),
        sa.CheckConstraint(
            "status IN ('active', 'blocked', 'lost', 'stolen')", name="ck_issuer_cards_status"
        ),
        sa.CheckConstraint("suite IN ('INTL', 'GM')", name="ck_issuer_cards_suite"),
        sa.CheckConstraint("pin_tries >= 0", name="ck_issuer_cards_pin_tries"),
        sa.CheckConstraint("atc_max >= 0 AND atc_max <= 65535", name="ck_issuer_cards_atc_max"),
        sa.CheckConstraint("ec_balance_fen >= 0", name="ck_issuer_cards_ec_balance"),
        sa.CheckConstraint("day_total_fen >= 0", name="ck_issuer_cards_day_total"),
        sa.CheckConstraint("scripts_pending >= 0", name="ck_issuer_cards_scripts_pending"),
    )
    op.create_table(
        "issuer_messages",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(24), nullable=False),
        sa.Column("key", sa.String(96), nullable=False),
        sa.Column("mti", sa.String(4), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("pan", sa.String(19), nullable=True),
        sa.Column("psn", sa.Integer(), nullable=True),
        sa.Column("terminal_id", sa.String(8), nullable=False),
        sa.Column("merchant_id", sa.String(15), nullable=False),
        sa.Column("stan", sa.String(6), nullable=False),
        sa.Column("batch", sa.String(6), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("rc", sa.String(2), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("ledger_key", sa.String(128), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_issuer_messages"),
        sa.UniqueConstraint("key", name="uq_issuer_messages_key"),
        sa.CheckConstraint("amount_fen >= 0", name="ck_issuer_messages_amount"),
    )
    op.create_index(
        "ix_issuer_messages_terminal_id_merchant_id_stan",
        "issuer_messages",
        ["terminal_id", "merchant_id", "stan"],
    )
    op.create_index("ix_issuer_messages_ledger_key", "issuer_messages", ["ledger_key"])
    op.create_table(
        "issuer_scripts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(24), nullable=False),
        sa.Column("pan", sa.String(19), nullable=False),
        sa.Column("psn", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("queued_at", _WHEN, nullable=False),
        sa.Column("delivered_key", sa.String(96), nullable=True),
        sa.Column("delivered_at", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_issuer_scripts"),
    )
    op.create_index("ix_issuer_scripts_pan_psn", "issuer_scripts", ["pan", "psn"])
    op.create_table(
        "issuer_script_results",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(24), nullable=False),
        sa.Column("pan", sa.String(19), nullable=False),
        sa.Column("psn", sa.Integer(), nullable=False),
        sa.Column("message_key", sa.String(96), nullable=False),
        sa.Column("script_id", sa.String(8), nullable=False),
        sa.Column("result", sa.Integer(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_issuer_script_results"),
    )
    op.create_index("ix_issuer_script_results_pan_psn", "issuer_script_results", ["pan", "psn"])
    op.create_table(
        "issuer_advices",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(24), nullable=False),
        sa.Column("message_key", sa.String(96), nullable=False),
        sa.Column("pan", sa.String(19), nullable=False),
        sa.Column("psn", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("ic_data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_issuer_advices"),
        sa.UniqueConstraint("message_key", name="uq_issuer_advices_message_key"),
    )


def downgrade() -> None:
    op.drop_table("issuer_advices")
    op.drop_index("ix_issuer_script_results_pan_psn", table_name="issuer_script_results")
    op.drop_table("issuer_script_results")
    op.drop_index("ix_issuer_scripts_pan_psn", table_name="issuer_scripts")
    op.drop_table("issuer_scripts")
    op.drop_index("ix_issuer_messages_ledger_key", table_name="issuer_messages")
    op.drop_index("ix_issuer_messages_terminal_id_merchant_id_stan", table_name="issuer_messages")
    op.drop_table("issuer_messages")
    op.drop_table("issuer_cards")
