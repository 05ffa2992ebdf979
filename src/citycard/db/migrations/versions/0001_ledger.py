"""Ledger: accounts, per-layer balances, postings (journal) and their lines.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ACCOUNT_KINDS = (
    "kind IN ('cardholder', 'ec', 'merchant', 'operator', 'issuer', 'fees', 'suspense', 'funding')"
)


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("allow_negative", sa.Boolean(), nullable=False),
        sa.Column("balance_slots", sa.SmallInteger(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_accounts"),
        sa.UniqueConstraint("code", name="uq_ledger_accounts_code"),
        sa.CheckConstraint(_ACCOUNT_KINDS, name="ck_ledger_accounts_kind"),
        sa.CheckConstraint("balance_slots BETWEEN 1 AND 64", name="ck_ledger_accounts_balance_slots"),
    )
    op.create_table(
        "ledger_balances",
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("balance_fen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "layer", "slot", name="pk_ledger_balances"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name="fk_ledger_balances_account_id_ledger_accounts"
        ),
        sa.CheckConstraint("layer IN (0, 1, 2)", name="ck_ledger_balances_layer"),
        sa.CheckConstraint("slot >= 0 AND slot < 64", name="ck_ledger_balances_slot"),
    )
    op.create_table(
        "ledger_postings",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("origin_id", _ID, nullable=True),
        sa.Column("memo", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_postings"),
        sa.UniqueConstraint("key", name="uq_ledger_postings_key"),
        sa.UniqueConstraint("origin_id", name="uq_ledger_postings_origin_id"),
        sa.ForeignKeyConstraint(
            ["origin_id"], ["ledger_postings.id"], name="fk_ledger_postings_origin_id_ledger_postings"
        ),
        sa.CheckConstraint("kind IN ('post', 'reversal', 'promotion')", name="ck_ledger_postings_kind"),
        sa.CheckConstraint("layer IN (0, 1, 2)", name="ck_ledger_postings_layer"),
        sa.CheckConstraint("(kind = 'post') = (origin_id IS NULL)", name="ck_ledger_postings_origin"),
    )
    op.create_table(
        "ledger_lines",
        sa.Column("posting_id", _ID, nullable=False),
        sa.Column("seq", sa.SmallInteger(), nullable=False),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("layer", sa.SmallInteger(), nullable=False),
        sa.Column("debit_fen", sa.BigInteger(), nullable=False),
        sa.Column("credit_fen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("posting_id", "seq", name="pk_ledger_lines"),
        sa.ForeignKeyConstraint(
            ["posting_id"], ["ledger_postings.id"], name="fk_ledger_lines_posting_id_ledger_postings"
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_accounts.id"], name="fk_ledger_lines_account_id_ledger_accounts"
        ),
        sa.CheckConstraint("layer IN (0, 1, 2)", name="ck_ledger_lines_layer"),
        sa.CheckConstraint(
            "(debit_fen > 0 AND credit_fen = 0) OR (debit_fen = 0 AND credit_fen > 0)",
            name="ck_ledger_lines_one_side",
        ),
    )
    op.create_index("ix_ledger_lines_account_id_layer", "ledger_lines", ["account_id", "layer"])


def downgrade() -> None:
    op.drop_index("ix_ledger_lines_account_id_layer", table_name="ledger_lines")
    op.drop_table("ledger_lines")
    op.drop_table("ledger_postings")
    op.drop_table("ledger_balances")
    op.drop_table("ledger_accounts")
