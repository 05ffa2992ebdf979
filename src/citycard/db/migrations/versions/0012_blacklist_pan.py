"""Blacklist entries by PAN: the incremental publish (platform.blacklist.publish_changes) looks up
the listed entries of the few PANs that changed, so its cost follows the change, not the list.

Revision ID: 0012_blacklist_pan
Revises: 0011_healthcare
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0012_blacklist_pan"
down_revision = "0011_healthcare"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_platform_blacklist_entries_pan", "platform_blacklist_entries", ["pan"])


def downgrade() -> None:
    op.drop_index("ix_platform_blacklist_entries_pan", table_name="platform_blacklist_entries")
