"""API: operator/cardholder logins, bearer tokens (hashed), API keys (hashed), idempotent answers.

Revision ID: 0007_api
Revises: 0006_applications
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_api"
down_revision = "0006_applications"
branch_labels = None
depends_on = None

# The 64-bit key type of citycard.db.BigIntPK (INTEGER on SQLite, so it is the auto-numbered rowid).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ROLES = "('operator', 'bank', 'sector', 'regulator', 'cardholder', 'terminal')"


def upgrade() -> None:
    op.create_table(
        "api_users",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("cardholder_id", sa.BigInteger(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_users"),
        sa.UniqueConstraint("username", name="uq_api_users_username"),
        sa.CheckConstraint(f"role IN {_ROLES}", name="ck_api_users_role"),
        sa.CheckConstraint(
            "(role = 'cardholder') = (cardholder_id IS NOT NULL)", name="ck_api_users_cardholder"
        ),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
        sa.ForeignKeyConstraint(["user_id"], ["api_users.id"], name="fk_api_tokens_user_id_api_users"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(12), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("name", name="uq_api_keys_name"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.CheckConstraint(f"role IN {_ROLES}", name="ck_api_keys_role"),
    )
    op.create_table(
        "api_idempotency",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("principal", sa.String(40), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_idempotency"),
        sa.UniqueConstraint("principal", "key", name="uq_api_idempotency_principal_key"),
    )


def downgrade() -> None:
    op.drop_table("api_idempotency")
    op.drop_table("api_keys")
    op.drop_table("api_tokens")
    op.drop_table("api_users")
