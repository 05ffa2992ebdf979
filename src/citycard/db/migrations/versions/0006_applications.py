"""Platform: sector applications loaded onto cards (platform_card_applications).

Revision ID: 0006_applications
Revises: 0005_exchange
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_applications"
down_revision = "0005_exchange"
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "platform_card_applications",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("card_id", _ID, nullable=False),
        sa.Column("app_id", sa.String(24), nullable=False),
        sa.Column("sector", sa.String(32), nullable=False),
        sa.Column("sfi", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.String(4), nullable=False),
        sa.Column("suite", sa.String(4), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("record_sha256", sa.String(64), nullable=False),
        sa.Column("atc", sa.Integer(), nullable=False),
        sa.Column("loaded_by", sa.String(64), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unloaded_by", sa.String(64), nullable=True),
        sa.Column("unloaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_platform_card_applications"),
        sa.ForeignKeyConstraint(
            ["card_id"], ["platform_cards.id"], name="fk_platform_card_applications_card_id_platform_cards"
        ),
        sa.UniqueConstraint("card_id", "app_id", name="uq_platform_card_applications_card_id_app_id"),
        sa.CheckConstraint(
            "state IN ('loaded', 'unloaded', 'transferred')", name="ck_platform_card_applications_state"
        ),
        sa.CheckConstraint("sfi >= 1 AND sfi <= 30", name="ck_platform_card_applications_sfi"),
        sa.CheckConstraint("atc >= 0 AND atc <= 65535", name="ck_platform_card_applications_atc"),
    )
    op.create_index(
        "ix_platform_card_applications_app_id_state", "platform_card_applications", ["app_id", "state"]
    )


def downgrade() -> None:
    op.drop_index("ix_platform_card_applications_app_id_state", table_name="platform_card_applications")
    op.drop_table("platform_card_applications")
