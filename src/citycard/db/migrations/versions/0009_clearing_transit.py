"""Clearing of transit taps: the validator's transit object and exit refund on each tap, and
correction refunds (missing exits, daily caps) posted once by key.

Revision ID: 0009_clearing_transit
Revises: 0008_clearing
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from citycard.db.base import UTCDateTime

revision = "0009_clearing_transit"
down_revision = "0008_clearing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Additive only (ADD COLUMN, nullable): SQLite and PostgreSQL both migrate in place.
    with op.batch_alter_table("clearing_taps") as batch:
        batch.add_column(sa.Column("transit", sa.Text(), nullable=True))
        batch.add_column(sa.Column("exit_refund_fen", sa.BigInteger(), nullable=True))
    op.create_table(
        "clearing_corrections",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("card", sa.String(24), nullable=False),
        sa.Column("operator", sa.String(32), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("settlement_key", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_clearing_corrections"),
        sa.CheckConstraint("amount_fen > 0", name="ck_clearing_corrections_amount"),
    )
    op.create_index("ix_clearing_corrections_card", "clearing_corrections", ["card"])
    op.create_index("ix_clearing_corrections_settlement_key", "clearing_corrections", ["settlement_key"])


def downgrade() -> None:
    op.drop_index("ix_clearing_corrections_settlement_key", table_name="clearing_corrections")
    op.drop_index("ix_clearing_corrections_card", table_name="clearing_corrections")
    op.drop_table("clearing_corrections")
    with op.batch_alter_table("clearing_taps") as batch:
        batch.drop_column("exit_refund_fen")
        batch.drop_column("transit")
