"""The platform core's tables (on :class:`citycard.db.Base`; migration ``0004_platform``).

* ``platform_cardholders`` — who holds cards: name, resident ID number (GB 11643, validated), the
  birth date and sex derived from it, kind (concessions), contact data, a photo reference.
* ``platform_consents`` — which sector may read what about a cardholder; revoked rows stay (audit).
* ``platform_cards`` — one row per physical/virtual card: its lifecycle state, the ``dormant`` flag
  (a warning, never a lock), PAN/PSN once prepared, the report minute ``lost_at``, the deposit,
  the replacement chain.
* ``platform_card_audit`` — every state change: actor, from, to, action, reason, at (UTC).
* ``platform_events`` — the append-only event log (outbox) with a sequence number.
* ``platform_pan_counters`` — the next account serial per BIN (data preparation allocates PANs).

Core tables (no ORM), like the ledger and the issuer.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from citycard.db import Base, BigIntPK, UTCDateTime

NAME_CHARS = 64
ACTOR_CHARS = 64
KIND_CHARS = 24
SECTOR_CHARS = 32
SCOPE_CHARS = 64
EVENT_KIND_CHARS = 48
REASON_CHARS = 200
ADDRESS_CHARS = 200
PHOTO_REF_CHARS = 200
PHONE_CHARS = 20
PATH_CHARS = 400
PROFILE_CHARS = 64
ISSUER_CHARS = 24  # = citycard.host.issuer.tables.ISSUER_NAME_CHARS

CARD_STATES = (
    "applied",
    "approved",
    "prepared",
    "personalised",
    "issued",
    "active",
    "lost_oral",
    "lost",
    "replaced",
    "cancelled",
)
_STATES_SQL = ", ".join(f"'{s}'" for s in CARD_STATES)

metadata = Base.metadata

cardholders = Table(
    "platform_cardholders",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("name", String(NAME_CHARS), nullable=False),
    Column("id_number", String(18), nullable=False, unique=True),
    Column("region_code", String(6), nullable=False),
    Column("birth_date", Date, nullable=False),
    Column("sex", String(1), nullable=False),
    Column("kind", String(KIND_CHARS), nullable=False),
    Column("phone", String(PHONE_CHARS), nullable=True),
    Column("address", String(ADDRESS_CHARS), nullable=True),
    Column("photo_ref", String(PHOTO_REF_CHARS), nullable=True),
    Column("created_by", String(ACTOR_CHARS), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("sex IN ('M', 'F')", name="sex"),
    Index(None, "name"),
    Index(None, "phone"),
)

consents = Table(
    "platform_consents",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("cardholder_id", BigIntPK, ForeignKey("platform_cardholders.id"), nullable=False),
    Column("sector", String(SECTOR_CHARS), nullable=False),
    Column("scope", String(SCOPE_CHARS), nullable=False),
    Column("granted_by", String(ACTOR_CHARS), nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
    Column("revoked_by", String(ACTOR_CHARS), nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Index(None, "cardholder_id", "sector"),
)

cards = Table(
    "platform_cards",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("cardholder_id", BigIntPK, ForeignKey("platform_cardholders.id"), nullable=False),
    Column("profile", String(PROFILE_CHARS), nullable=False),
    Column("issuer", String(ISSUER_CHARS), nullable=False),
    Column("state", String(16), nullable=False),
    Column("dormant", Boolean, nullable=False),
    Column("pan", String(19), nullable=True),
    Column("psn", Integer, nullable=True),
    Column("suite", String(4), nullable=True),
    Column("expiry", Date, nullable=True),
    Column("effective", Date, nullable=True),
    Column("image_path", String(PATH_CHARS), nullable=True),
    Column("deposit_fen", BigInteger, nullable=False),
    Column("ec_initial_fen", BigInteger, nullable=False),  # EC balance the chip is personalised with
    Column("lost_at", UTCDateTime, nullable=True),  # the report minute: no liability after it
    Column("replaces_id", BigIntPK, ForeignKey("platform_cards.id"), nullable=True),
    Column("replaced_by_id", BigIntPK, ForeignKey("platform_cards.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_activity_at", UTCDateTime, nullable=True),
    UniqueConstraint("pan", "psn"),
    CheckConstraint(f"state IN ({_STATES_SQL})", name="state"),
    CheckConstraint("deposit_fen >= 0", name="deposit_fen"),
    CheckConstraint("ec_initial_fen >= 0", name="ec_initial_fen"),
    CheckConstraint("psn IS NULL OR (psn >= 0 AND psn <= 99)", name="psn"),
    Index(None, "cardholder_id"),
    Index(None, "state"),
)

card_audit = Table(
    "platform_card_audit",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("card_id", BigIntPK, ForeignKey("platform_cards.id"), nullable=False),
    Column("action", String(24), nullable=False),
    Column("from_state", String(16), nullable=True),
    Column("to_state", String(16), nullable=False),
    Column("actor", String(ACTOR_CHARS), nullable=False),
    Column("reason", String(REASON_CHARS), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "card_id"),
)

events = Table(
    "platform_events",
    metadata,
    Column("seq", BigIntPK, primary_key=True, autoincrement=True),
    Column("kind", String(EVENT_KIND_CHARS), nullable=False),
    Column("card_id", BigInteger, nullable=True),  # no FK: sectors may report events for any card
    Column("cardholder_id", BigInteger, nullable=True),
    Column("sector", String(SECTOR_CHARS), nullable=True),
    Column("payload", Text, nullable=False),  # compact JSON, keys sorted
    Column("at", UTCDateTime, nullable=False),
    Index(None, "card_id"),
    Index(None, "kind"),
)

pan_counters = Table(
    "platform_pan_counters",
    metadata,
    Column("bin", String(11), primary_key=True),
    Column("next_serial", BigInteger, nullable=False),
    CheckConstraint("next_serial >= 1", name="next_serial"),
)
