"""The switch's tables on :data:`citycard.db.Base`: the store-and-forward queue and the stand-in log.

* ``switch_saf_items`` — every advice (0220) and reversal (0400) the switch owes an endpoint, stored
  in the same transaction as the decision that created it, sent by the forwarder until the endpoint
  acknowledges it (0230/0410), then marked ``delivered`` with the answer's F39 — never deleted.
* ``switch_standins`` — every stand-in approval (amount, auth code, outage, the advice that reports it).

The message is stored as encoded ISO 8583 without F64 (the link MACs it when sending); the PAN in
the stand-in log is masked (first 6, last 4) — the full PAN lives only inside the queued message.
Migration: ``citycard/db/migrations/versions/0003_switch.py`` (kept identical; autogenerate test).
"""

from __future__ import annotations

import sqlalchemy as sa

from citycard.db import Base, BigIntPK, UTCDateTime

KEY_CHARS_MAX = 96
ENDPOINT_CHARS_MAX = 32
ERROR_CHARS_MAX = 200
STATUS_PENDING = "pending"
STATUS_DELIVERED = "delivered"

_ID = BigIntPK  # BIGINT on PostgreSQL, the INTEGER rowid on SQLite


class SafItem(Base):
    __tablename__ = "switch_saf_items"

    id = sa.Column(_ID, primary_key=True, autoincrement=True)
    key = sa.Column(sa.String(KEY_CHARS_MAX), nullable=False, unique=True)
    endpoint = sa.Column(sa.String(ENDPOINT_CHARS_MAX), nullable=False)
    mti = sa.Column(sa.String(4), nullable=False)
    message = sa.Column(sa.LargeBinary(), nullable=False)
    status = sa.Column(sa.String(12), nullable=False)
    attempts = sa.Column(sa.Integer(), nullable=False)
    next_attempt_at = sa.Column(UTCDateTime(), nullable=False)
    created_at = sa.Column(UTCDateTime(), nullable=False)
    delivered_at = sa.Column(UTCDateTime(), nullable=True)
    response_code = sa.Column(sa.String(2), nullable=True)
    last_error = sa.Column(sa.String(ERROR_CHARS_MAX), nullable=True)

    __table_args__ = (
        sa.CheckConstraint("status IN ('pending', 'delivered')", name="status"),
        sa.CheckConstraint("mti IN ('0220', '0400')", name="mti"),
        sa.CheckConstraint("attempts >= 0", name="attempts"),
        sa.Index("ix_switch_saf_items_due", "status", "next_attempt_at"),
    )


class StandIn(Base):
    __tablename__ = "switch_standins"

    id = sa.Column(_ID, primary_key=True, autoincrement=True)
    key = sa.Column(sa.String(KEY_CHARS_MAX), nullable=False, unique=True)
    endpoint = sa.Column(sa.String(ENDPOINT_CHARS_MAX), nullable=False)
    pan_masked = sa.Column(sa.String(19), nullable=False)
    amount_fen = sa.Column(sa.BigInteger(), nullable=False)
    auth_code = sa.Column(sa.String(6), nullable=False)
    outage = sa.Column(sa.String(8), nullable=False)
    saf_item_id = sa.Column(_ID, sa.ForeignKey("switch_saf_items.id"), nullable=False)
    created_at = sa.Column(UTCDateTime(), nullable=False)

    __table_args__ = (
        sa.CheckConstraint("outage IN ('down', 'timeout')", name="outage"),
        sa.CheckConstraint("amount_fen >= 0", name="amount_fen"),
    )


saf_items: sa.Table = SafItem.__table__  # type: ignore[assignment]
standins: sa.Table = StandIn.__table__  # type: ignore[assignment]
