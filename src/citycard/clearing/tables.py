"""Clearing's tables on :data:`citycard.db.Base` (prefix ``clearing_``; migration ``0008_clearing``).

* ``clearing_batches`` — one row per uploaded batch, by the uploader's batch id (the idempotency key)
  with the SHA-256 of its records: a replay with the same digest changes nothing, another digest is
  refused.
* ``clearing_taps`` — every cleared tap once, unique by card (PAN:PSN) and ATC — the one index a
  tap insert must update besides ``settlement_key``'s (0014: it replaced a unique index on the key
  text PAN:PSN:ATC and an index on the card); ``settlement_key`` is set when a settlement took it.
* ``clearing_cards`` — per card its issuer, last cleared ATC and EC balance (the chain), loss minute.
* ``clearing_exceptions`` — records not accepted, with reason, and the operator's audited handling.
* ``clearing_settlements`` — one row per operator and settlement day: taps, gross, fee, net.
* ``clearing_corrections`` — correction refunds (missing exit, daily cap) by key, settled like taps.

Migrations: ``0008_clearing.py``, ``0009_clearing_transit.py``, ``0013_clearing_max_atc.py`` and
``0014_clearing_taps_card_atc.py`` under ``citycard/db/migrations/versions``
(kept identical; autogenerate test).
"""

from __future__ import annotations

import sqlalchemy as sa

from citycard.db import Base, BigIntPK, UTCDateTime

BATCH_ID_CHARS_MAX = 64
TEXT_CHARS_MAX = 32  # operator, route, vehicle, terminal id (record.TEXT_RE)
KEY_CHARS_MAX = 32  # PAN(19):PSN(2):ATC(4)
CARD_CHARS_MAX = 24
REASON_CHARS_MAX = 16
DETAIL_CHARS_MAX = 200
NOTE_CHARS_MAX = 200
POSTING_KEY_CHARS_MAX = 128
STATUSES_SQL = "('open', 'accepted', 'rejected', 'refunded')"


class Batch(Base):
    __tablename__ = "clearing_batches"

    batch_id = sa.Column(sa.String(BATCH_ID_CHARS_MAX), primary_key=True)
    digest = sa.Column(sa.String(64), nullable=False)
    received_at = sa.Column(UTCDateTime(), nullable=False)
    records = sa.Column(sa.Integer(), nullable=False)
    accepted = sa.Column(sa.Integer(), nullable=False)
    exceptions = sa.Column(sa.Integer(), nullable=False)


class Tap(Base):
    __tablename__ = "clearing_taps"

    id = sa.Column(BigIntPK, primary_key=True, autoincrement=True)
    key = sa.Column(sa.String(KEY_CHARS_MAX), nullable=False)  # f"{card}:{atc:04X}": unique with them
    card = sa.Column(sa.String(CARD_CHARS_MAX), nullable=False)
    atc = sa.Column(sa.Integer(), nullable=False)
    batch_id = sa.Column(sa.String(BATCH_ID_CHARS_MAX), nullable=False)
    operator = sa.Column(sa.String(TEXT_CHARS_MAX), nullable=False)
    route = sa.Column(sa.String(TEXT_CHARS_MAX), nullable=False)
    vehicle = sa.Column(sa.String(TEXT_CHARS_MAX), nullable=False)
    terminal_id = sa.Column(sa.String(TEXT_CHARS_MAX), nullable=False)
    tap_at = sa.Column(UTCDateTime(), nullable=False)
    day = sa.Column(sa.String(10), nullable=False)  # YYYY-MM-DD, Asia/Shanghai (the operator's day)
    amount_fen = sa.Column(sa.BigInteger(), nullable=False)
    balance_after_fen = sa.Column(sa.BigInteger(), nullable=False)
    refunded = sa.Column(sa.Boolean(), nullable=False)
    settlement_key = sa.Column(sa.String(POSTING_KEY_CHARS_MAX), nullable=True, index=True)
    # 0009_clearing_transit: the validator's transit object (canonical JSON, clearing.transit) and
    # the exit refund posted for it (``exitrefund:PAN:PSN:ATC``); NULL for taps without them.
    transit = sa.Column(sa.Text(), nullable=True)
    exit_refund_fen = sa.Column(sa.BigInteger(), nullable=True)

    # (card, atc) finds a tap (its key is their text) and, by its first column, a card's taps
    __table_args__ = (
        sa.UniqueConstraint("card", "atc"),
        sa.CheckConstraint("amount_fen >= 0", name="amount"),
    )


class Card(Base):
    __tablename__ = "clearing_cards"

    card = sa.Column(sa.String(CARD_CHARS_MAX), primary_key=True)  # PAN:PSN
    issuer = sa.Column(sa.String(TEXT_CHARS_MAX), nullable=False)
    last_atc = sa.Column(sa.Integer(), nullable=True)
    last_balance_fen = sa.Column(sa.BigInteger(), nullable=True)
    lost_at = sa.Column(UTCDateTime(), nullable=True)
    # 0013: the highest ATC of the card's taps in clearing_taps (chain, late or desk-accepted), NULL
    # while none: a tap key above it is no duplicate, so intake looks up only the keys at or below it
    max_atc = sa.Column(sa.Integer(), nullable=True)


class ExceptionItem(Base):
    __tablename__ = "clearing_exceptions"

    id = sa.Column(BigIntPK, primary_key=True, autoincrement=True)
    batch_id = sa.Column(sa.String(BATCH_ID_CHARS_MAX), nullable=False)
    position = sa.Column(sa.Integer(), nullable=False)  # index of the record in its batch
    key = sa.Column(sa.String(KEY_CHARS_MAX), nullable=False, index=True)
    reason = sa.Column(sa.String(REASON_CHARS_MAX), nullable=False)
    detail = sa.Column(sa.String(DETAIL_CHARS_MAX), nullable=False)
    upload = sa.Column(sa.Text(), nullable=False)  # the record as uploaded (JSON); no key material
    status = sa.Column(sa.String(REASON_CHARS_MAX), nullable=False)
    created_at = sa.Column(UTCDateTime(), nullable=False)
    handled_by = sa.Column(sa.String(TEXT_CHARS_MAX), nullable=True)
    handled_at = sa.Column(UTCDateTime(), nullable=True)
    note = sa.Column(sa.String(NOTE_CHARS_MAX), nullable=True)

    __table_args__ = (
        sa.UniqueConstraint("batch_id", "position"),
        sa.CheckConstraint(f"status IN {STATUSES_SQL}", name="status"),
    )


class Correction(Base):
    """A correction refund (operator → card EC account) posted once under its key (0009)."""

    __tablename__ = "clearing_corrections"

    key = sa.Column(sa.String(POSTING_KEY_CHARS_MAX), primary_key=True)  # the ledger posting key too
    card = sa.Column(sa.String(CARD_CHARS_MAX), nullable=False, index=True)
    operator = sa.Column(sa.String(TEXT_CHARS_MAX), nullable=False)
    day = sa.Column(sa.String(10), nullable=False)  # the operator's day it corrects (Asia/Shanghai)
    amount_fen = sa.Column(sa.BigInteger(), nullable=False)
    reason = sa.Column(sa.String(NOTE_CHARS_MAX), nullable=False)
    created_at = sa.Column(UTCDateTime(), nullable=False)
    settlement_key = sa.Column(sa.String(POSTING_KEY_CHARS_MAX), nullable=True, index=True)

    __table_args__ = (sa.CheckConstraint("amount_fen > 0", name="amount"),)


class Settlement(Base):
    __tablename__ = "clearing_settlements"

    operator = sa.Column(sa.String(TEXT_CHARS_MAX), primary_key=True)
    day = sa.Column(sa.String(10), primary_key=True)
    taps = sa.Column(sa.Integer(), nullable=False)
    gross_fen = sa.Column(sa.BigInteger(), nullable=False)
    fee_rate_bp = sa.Column(sa.Integer(), nullable=False)
    fee_fen = sa.Column(sa.BigInteger(), nullable=False)
    net_fen = sa.Column(sa.BigInteger(), nullable=False)
    posting_key = sa.Column(sa.String(POSTING_KEY_CHARS_MAX), nullable=True)
    created_at = sa.Column(UTCDateTime(), nullable=False)
