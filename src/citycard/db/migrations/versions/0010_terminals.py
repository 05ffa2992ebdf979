"""Terminals: the fare-table and CAPK-set versions each validator reports holding.

Revision ID: 0010_terminals
Revises: 0009_clearing_transit
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from citycard.db.base import UTCDateTime

revision = "0010_terminals"
down_revision = "0009_clearing_transit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "terminal_parameters",
        sa.Column("terminal_id", sa.String(32), nullable=False),
        sa.Column("fares_name", sa.String(64), nullable=True),
        sa.Column("fares_version", sa.Integer(), nullable=False),
        sa.Column("capks_version", sa.Integer(), nullable=False),
        sa.Column("reported_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("fares_version >= 0", name="ck_terminal_parameters_fares_version"),
        sa.CheckConstraint("capks_version >= 0", name="ck_terminal_parameters_capks_version"),
        sa.PrimaryKeyConstraint("terminal_id", name="pk_terminal_parameters"),
    )


def downgrade() -> None:
    op.drop_table("terminal_parameters")
