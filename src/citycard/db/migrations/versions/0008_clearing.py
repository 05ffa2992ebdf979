"""Clearing of offline EC transactions: batches, taps, card chains, exceptions, settlements.

Revision ID: 0008_clearing
Revises: 0007_api
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from citycard.db.base import UTCDateTime

revision = "0008_clearing"
down_revision = "0007_api"
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_STATUSES = "('open', 'accepted', 'rejected', 'refunded')"


def upgrade() -> None:
    op.create_table(
        "clearing_batches",
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("exceptions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name="pk_clearing_batches"),
    )
    op.create_table(
        "clearing_taps",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("card", sa.String(24), nullable=False),
        sa.Column("atc", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("operator", sa.String(32), nullable=False),
        sa.Column("route", sa.String(32), nullable=False),
        sa.Column("vehicle", sa.String(32), nullable=False),
        sa.Column("terminal_id", sa.String(32), nullable=False),
        sa.Column("tap_at", UTCDateTime(), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("balance_after_fen", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.Boolean(), nullable=False),
        sa.Column("settlement_key", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_clearing_taps"),
        sa.UniqueConstraint("key", name="uq_clearing_taps_key"),
        sa.CheckConstraint("amount_fen >= 0", name="ck_clearing_taps_amount"),
    )
    op.create_index("ix_clearing_taps_card", "clearing_taps", ["card"])
    op.create_index("ix_clearing_taps_settlement_key", "clearing_taps", ["settlement_key"])
    op.create_table(
        "clearing_cards",
        sa.Column("card", sa.String(24), nullable=False),
        sa.Column("issuer", sa.String(32), nullable=False),
        sa.Column("last_atc", sa.Integer(), nullable=True),
        sa.Column("last_balance_fen", sa.BigInteger(), nullable=True),
        sa.Column("lost_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("card", name="pk_clearing_cards"),
    )
    op.create_table(
        "clearing_exceptions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(200), nullable=False),
        sa.Column("upload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("handled_by", sa.String(32), nullable=True),
        sa.Column("handled_at", UTCDateTime(), nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_clearing_exceptions"),
        sa.UniqueConstraint("batch_id", "position", name="uq_clearing_exceptions_batch_id_position"),
        sa.CheckConstraint(f"status IN {_STATUSES}", name="ck_clearing_exceptions_status"),
    )
    op.create_index("ix_clearing_exceptions_key", "clearing_exceptions", ["key"])
    op.create_table(
        "clearing_settlements",
        sa.Column("operator", sa.String(32), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("taps", sa.Integer(), nullable=False),
        sa.Column("gross_fen", sa.BigInteger(), nullable=False),
        sa.Column("fee_rate_bp", sa.Integer(), nullable=False),
        sa.Column("fee_fen", sa.BigInteger(), nullable=False),
        sa.Column("net_fen", sa.BigInteger(), nullable=False),
        sa.Column("posting_key", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("operator", "day", name="pk_clearing_settlements"),
    )


def downgrade() -> None:
    op.drop_table("clearing_settlements")
    op.drop_index("ix_clearing_exceptions_key", table_name="clearing_exceptions")
    op.drop_table("clearing_exceptions")
    op.drop_table("clearing_cards")
    op.drop_index("ix_clearing_taps_settlement_key", table_name="clearing_taps")
    op.drop_index("ix_clearing_taps_card", table_name="clearing_taps")
    op.drop_table("clearing_taps")
    op.drop_table("clearing_batches")
