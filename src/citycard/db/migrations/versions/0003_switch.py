"""Switch: the store-and-forward queue (advices, reversals) and the stand-in log.

Revision ID: 0003_switch
Revises: 0002_issuer
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_switch"
down_revision = "0002_issuer"
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "switch_saf_items",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(96), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("mti", sa.String(4), nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response_code", sa.String(2), nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_switch_saf_items"),
        sa.UniqueConstraint("key", name="uq_switch_saf_items_key"),
        sa.CheckConstraint("status IN ('pending', 'delivered')", name="ck_switch_saf_items_status"),
        sa.CheckConstraint("mti IN ('0220', '0400')", name="ck_switch_saf_items_mti"),
        sa.CheckConstraint("attempts >= 0", name="ck_switch_saf_items_attempts"),
    )
    op.create_index("ix_switch_saf_items_due", "switch_saf_items", ["status", "next_attempt_at"])
    op.create_table(
        "switch_standins",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(96), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("pan_masked", sa.String(19), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("auth_code", sa.String(6), nullable=False),
        sa.Column("outage", sa.String(8), nullable=False),
        sa.Column("saf_item_id", _ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_switch_standins"),
        sa.UniqueConstraint("key", name="uq_switch_standins_key"),
        sa.ForeignKeyConstraint(
            ["saf_item_id"], ["switch_saf_items.id"], name="fk_switch_standins_saf_item_id_switch_saf_items"
        ),
        sa.CheckConstraint("outage IN ('down', 'timeout')", name="ck_switch_standins_outage"),
        sa.CheckConstraint("amount_fen >= 0", name="ck_switch_standins_amount_fen"),
    )


def downgrade() -> None:
    op.drop_table("switch_standins")
    op.drop_index("ix_switch_saf_items_due", table_name="switch_saf_items")
    op.drop_table("switch_saf_items")
