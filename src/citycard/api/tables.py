"""The API's own tables on :data:`citycard.db.Base` (prefix ``api_``; migration ``0007_api``).

* ``api_users`` — operator logins (and cardholder logins): a per-user salt and an scrypt hash,
  never the password; the role; for the ``cardholder`` role, the cardholder it may see.
* ``api_tokens`` — bearer tokens handed out at login, stored as SHA-256 of the random token,
  with an expiry; the token itself is shown once and never stored.
* ``api_keys`` — keys of sector systems and terminals: SHA-256 of a random 32-byte secret, a short
  prefix so an operator can tell keys apart, the role and the subject (sector name, terminal id).
* ``api_idempotency`` — the first successful answer to each write, by (principal, key), with the
  hash of the request it answered, so a replay returns it unchanged (DESIGN §3 Idempotency).

Migration: ``citycard/db/migrations/versions/0007_api.py`` (kept identical; autogenerate test).
"""

from __future__ import annotations

import sqlalchemy as sa

from citycard.db import Base, BigIntPK, UTCDateTime

NAME_CHARS_MAX = 64
ROLE_CHARS_MAX = 16
HASH_HEX_CHARS = 64  # SHA-256 / scrypt output as hex
PASSWORD_HASH_CHARS_MAX = 200
KEY_PREFIX_CHARS = 12
SUBJECT_CHARS_MAX = 64
IDEMPOTENCY_KEY_CHARS_MAX = 128
PRINCIPAL_CHARS_MAX = 40
ROUTE_CHARS_MAX = 64

ROLES_SQL = "('operator', 'bank', 'sector', 'regulator', 'cardholder', 'terminal')"

_ID = BigIntPK


class User(Base):
    __tablename__ = "api_users"

    id = sa.Column(_ID, primary_key=True, autoincrement=True)
    username = sa.Column(sa.String(NAME_CHARS_MAX), nullable=False, unique=True)
    password_hash = sa.Column(sa.String(PASSWORD_HASH_CHARS_MAX), nullable=False)
    role = sa.Column(sa.String(ROLE_CHARS_MAX), nullable=False)
    cardholder_id = sa.Column(sa.BigInteger(), nullable=True)
    disabled = sa.Column(sa.Boolean(), nullable=False)
    created_at = sa.Column(UTCDateTime(), nullable=False)

    __table_args__ = (
        sa.CheckConstraint(f"role IN {ROLES_SQL}", name="role"),
        sa.CheckConstraint("(role = 'cardholder') = (cardholder_id IS NOT NULL)", name="cardholder"),
    )


class Token(Base):
    __tablename__ = "api_tokens"

    id = sa.Column(_ID, primary_key=True, autoincrement=True)
    token_hash = sa.Column(sa.String(HASH_HEX_CHARS), nullable=False, unique=True)
    user_id = sa.Column(_ID, sa.ForeignKey("api_users.id"), nullable=False)
    created_at = sa.Column(UTCDateTime(), nullable=False)
    expires_at = sa.Column(UTCDateTime(), nullable=False)
    revoked_at = sa.Column(UTCDateTime(), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id = sa.Column(_ID, primary_key=True, autoincrement=True)
    name = sa.Column(sa.String(NAME_CHARS_MAX), nullable=False, unique=True)
    key_hash = sa.Column(sa.String(HASH_HEX_CHARS), nullable=False, unique=True)
    prefix = sa.Column(sa.String(KEY_PREFIX_CHARS), nullable=False)
    role = sa.Column(sa.String(ROLE_CHARS_MAX), nullable=False)
    subject = sa.Column(sa.String(SUBJECT_CHARS_MAX), nullable=True)
    created_at = sa.Column(UTCDateTime(), nullable=False)
    revoked_at = sa.Column(UTCDateTime(), nullable=True)

    __table_args__ = (sa.CheckConstraint(f"role IN {ROLES_SQL}", name="role"),)


class IdempotentAnswer(Base):
    __tablename__ = "api_idempotency"

    id = sa.Column(_ID, primary_key=True, autoincrement=True)
    principal = sa.Column(sa.String(PRINCIPAL_CHARS_MAX), nullable=False)
    key = sa.Column(sa.String(IDEMPOTENCY_KEY_CHARS_MAX), nullable=False)
    route = sa.Column(sa.String(ROUTE_CHARS_MAX), nullable=False)
    request_hash = sa.Column(sa.String(HASH_HEX_CHARS), nullable=False)
    status_code = sa.Column(sa.Integer(), nullable=False)
    body = sa.Column(sa.Text(), nullable=False)
    created_at = sa.Column(UTCDateTime(), nullable=False)

    __table_args__ = (sa.UniqueConstraint("principal", "key", name="uq_api_idempotency_principal_key"),)


users: sa.Table = User.__table__  # type: ignore[assignment]
tokens: sa.Table = Token.__table__  # type: ignore[assignment]
api_keys: sa.Table = ApiKey.__table__  # type: ignore[assignment]
idempotency: sa.Table = IdempotentAnswer.__table__  # type: ignore[assignment]
