"""Platform blacklists (flags, versions, entries as version intervals, terminals' reported versions)
and the sector data exchange's subscribers (citycard.platform.exchange_tables).

Revision ID: 0005_exchange
Revises: 0004_platform
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_exchange"
down_revision = "0004_platform"
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "platform_blacklist_flags",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("pan", sa.String(19), nullable=False),
        sa.Column("psn", sa.String(2), nullable=True),
        sa.Column("reason", sa.String(24), nullable=False),
        sa.Column("terminal_class", sa.String(16), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(200), nullable=False),
        sa.Column("flagged_by", sa.String(64), nullable=False),
        sa.Column("flagged_at", _TS, nullable=False),
        sa.Column("cleared_by", sa.String(64), nullable=True),
        sa.Column("cleared_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_platform_blacklist_flags"),
        sa.CheckConstraint(
            "reason IN ('fraud', 'counterfeit', 'negative_balance')",
            name="ck_platform_blacklist_flags_reason",
        ),
        sa.CheckConstraint(
            "amount_fen IS NULL OR amount_fen < 0", name="ck_platform_blacklist_flags_amount_fen"
        ),
    )
    op.create_index("ix_platform_blacklist_flags_pan", "platform_blacklist_flags", ["pan"])
    op.create_table(
        "platform_blacklist_versions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("terminal_class", sa.String(16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("added_count", sa.Integer(), nullable=False),
        sa.Column("removed_count", sa.Integer(), nullable=False),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("published_by", sa.String(64), nullable=False),
        sa.Column("published_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_platform_blacklist_versions"),
        sa.UniqueConstraint(
            "terminal_class", "version", name="uq_platform_blacklist_versions_terminal_class_version"
        ),
        sa.CheckConstraint("version >= 1", name="ck_platform_blacklist_versions_version"),
        sa.CheckConstraint(
            "entry_count >= 0 AND added_count >= 0 AND removed_count >= 0",
            name="ck_platform_blacklist_versions_counts",
        ),
    )
    op.create_table(
        "platform_blacklist_entries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("terminal_class", sa.String(16), nullable=False),
        sa.Column("pan", sa.String(19), nullable=False),
        sa.Column("psn", sa.String(2), nullable=True),
        sa.Column("reason", sa.String(24), nullable=False),
        sa.Column("added_version", sa.BigInteger(), nullable=False),
        sa.Column("removed_version", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_platform_blacklist_entries"),
        sa.CheckConstraint(
            "removed_version IS NULL OR removed_version > added_version",
            name="ck_platform_blacklist_entries_versions",
        ),
    )
    op.create_index(
        "ix_platform_blacklist_entries_added",
        "platform_blacklist_entries",
        ["terminal_class", "added_version"],
    )
    op.create_index(
        "ix_platform_blacklist_entries_removed",
        "platform_blacklist_entries",
        ["terminal_class", "removed_version"],
    )
    op.create_table(
        "platform_terminals",
        sa.Column("terminal_id", sa.String(32), nullable=False),
        sa.Column("terminal_class", sa.String(16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("reported_at", _TS, nullable=False),
        sa.Column("first_seen_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("terminal_id", name="pk_platform_terminals"),
        sa.CheckConstraint("version >= 0", name="ck_platform_terminals_version"),
    )
    op.create_table(
        "platform_subscribers",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sector", sa.String(32), nullable=False),
        sa.Column("kinds", sa.String(1000), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("acked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_platform_subscribers"),
        sa.UniqueConstraint("name", name="uq_platform_subscribers_name"),
        sa.CheckConstraint("cursor >= 0", name="ck_platform_subscribers_cursor"),
    )


def downgrade() -> None:
    op.drop_table("platform_subscribers")
    op.drop_table("platform_terminals")
    op.drop_index("ix_platform_blacklist_entries_removed", table_name="platform_blacklist_entries")
    op.drop_index("ix_platform_blacklist_entries_added", table_name="platform_blacklist_entries")
    op.drop_table("platform_blacklist_entries")
    op.drop_table("platform_blacklist_versions")
    op.drop_index("ix_platform_blacklist_flags_pan", table_name="platform_blacklist_flags")
    op.drop_table("platform_blacklist_flags")
