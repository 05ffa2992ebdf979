"""clearing_cards.max_atc: the highest ATC of the card in clearing_taps, whichever way the tap came
(the chain, a late tap, an operator's desk), or NULL while it has none. A tap key above it cannot
be a duplicate, so an intake looks up only the keys at or below it (clearing.store.load_known_for).

Revision ID: 0013_clearing_max_atc
Revises: 0012_blacklist_pan
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_clearing_max_atc"
down_revision = "0012_blacklist_pan"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Additive (ADD COLUMN, nullable), then filled from the taps already cleared.
    with op.batch_alter_table("clearing_cards") as batch:
        batch.add_column(sa.Column("max_atc", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE clearing_cards SET max_atc = "
        "(SELECT MAX(atc) FROM clearing_taps WHERE clearing_taps.card = clearing_cards.card)"
    )


def downgrade() -> None:
    with op.batch_alter_table("clearing_cards") as batch:
        batch.drop_column("max_atc")
