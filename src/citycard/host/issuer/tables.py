"""The issuer host's tables (on :class:`citycard.db.Base`; migration ``0002_issuer``).

* ``issuer_cards`` — one row per card (PAN + PSN): status, expiry, suite, the PVV (never the PIN),
  online PIN tries, the highest ATC seen, the EC balance shadow, the day's spend, ledger accounts.
* ``issuer_messages`` — every answered request by idempotency key (F32/F41/F11/F7/MTI): the
  response (compact JSON, binary fields hex), the decision, and the ledger key it posted; a
  repeat gets the stored answer.
* ``issuer_scripts`` — scripts the platform queued per card, delivered once (then ``delivered_key``).
* ``issuer_script_results`` — DF31 results reported by terminals, one row per script.
* ``issuer_advices`` — 0220 advices (offline TC uploads, script-result notifications) as received.

Core tables (no ORM) so the hot path is plain executemany SQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
)

from citycard.db import Base, BigIntPK, UTCDateTime

CARD_STATUSES = ("active", "blocked", "lost", "stolen")
ISSUER_NAME_CHARS = 24
ACCOUNT_CODE_CHARS = 64
MESSAGE_KEY_CHARS = 96
LEDGER_KEY_CHARS = 128

metadata = Base.metadata

cards = Table(
    "issuer_cards",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("issuer", String(ISSUER_NAME_CHARS), nullable=False),
    Column("pan", String(19), nullable=False),
    Column("psn", Integer, nullable=False),
    Column("expiry", Date, nullable=False),
    Column("suite", String(4), nullable=False),
    Column("status", String(8), nullable=False),
    Column("pvv", String(4), nullable=True),  # Visa PVV of the PIN (hsm/pin.py), never the PIN
    Column("pin_tries", Integer, nullable=False),
    Column("atc_max", Integer, nullable=False),
    Column("ec_balance_fen", BigInteger, nullable=False),
    Column("account", String(ACCOUNT_CODE_CHARS), nullable=False),
    Column("ec_account", String(ACCOUNT_CODE_CHARS), nullable=False),
    Column("day", Date, nullable=True),  # the UTC day day_total_fen counts
    Column("day_total_fen", BigInteger, nullable=False),
    Column("scripts_pending", Integer, nullable=False),  # queued scripts not delivered: 0 = skip the query
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("pan", "psn"),
    CheckConstraint("status IN ('active', 'blocked', 'lost', 'stolen')", name="status"),
    CheckConstraint("suite IN ('INTL', 'GM')", name="suite"),
    CheckConstraint("pin_tries >= 0", name="pin_tries"),
    CheckConstraint("atc_max >= 0 AND atc_max <= 65535", name="atc_max"),
    CheckConstraint("ec_balance_fen >= 0", name="ec_balance"),
    CheckConstraint("day_total_fen >= 0", name="day_total"),
    CheckConstraint("scripts_pending >= 0", name="scripts_pending"),
)

messages = Table(
    "issuer_messages",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("issuer", String(ISSUER_NAME_CHARS), nullable=False),
    Column("key", String(MESSAGE_KEY_CHARS), nullable=False, unique=True),
    Column("mti", String(4), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("pan", String(19), nullable=True),
    Column("psn", Integer, nullable=True),
    Column("terminal_id", String(8), nullable=False),
    Column("merchant_id", String(15), nullable=False),
    Column("stan", String(6), nullable=False),
    Column("batch", String(6), nullable=True),
    Column("amount_fen", BigInteger, nullable=False),
    Column("rc", String(2), nullable=False),
    Column("approved", Boolean, nullable=False),
    Column("ledger_key", String(LEDGER_KEY_CHARS), nullable=True, index=True),
    Column("response", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("amount_fen >= 0", name="amount"),
    Index(None, "terminal_id", "merchant_id", "stan"),
)

scripts = Table(
    "issuer_scripts",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("issuer", String(ISSUER_NAME_CHARS), nullable=False),
    Column("pan", String(19), nullable=False),
    Column("psn", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("queued_at", UTCDateTime, nullable=False),
    Column("delivered_key", String(MESSAGE_KEY_CHARS), nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Index(None, "pan", "psn"),
)

script_results = Table(
    "issuer_script_results",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("issuer", String(ISSUER_NAME_CHARS), nullable=False),
    Column("pan", String(19), nullable=False),
    Column("psn", Integer, nullable=False),
    Column("message_key", String(MESSAGE_KEY_CHARS), nullable=False),
    Column("script_id", String(8), nullable=False),  # 9F18, hex
    Column("result", Integer, nullable=False),  # DF31 first byte: 0x20 done, 0x1n failed at command n
    Column("created_at", UTCDateTime, nullable=False),
    Index(None, "pan", "psn"),
)

advices = Table(
    "issuer_advices",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("issuer", String(ISSUER_NAME_CHARS), nullable=False),
    Column("message_key", String(MESSAGE_KEY_CHARS), nullable=False, unique=True),
    Column("pan", String(19), nullable=False),
    Column("psn", Integer, nullable=True),
    Column("kind", String(16), nullable=False),  # "tc_upload" or "script_result"
    Column("amount_fen", BigInteger, nullable=False),
    Column("ic_data", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
