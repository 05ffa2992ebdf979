"""Which sector applications are on which card (migration ``0006_applications``; docs/applications.md).

``platform_card_applications``: one row per (card, application) ever loaded. ``state`` is
``loaded`` (the record is on the card and valid), ``unloaded`` (the platform marked it invalid on
the card) or ``transferred`` (the card was replaced; the application now lives on the new card,
the old chip is out of reach). The row keeps the values the record was built from (``data``, JSON)
so a replacement card gets the same record, the SHA-256 of the record as written, and the ATC of
the transaction that wrote it (the card's own evidence of the write). No key material: the keys
live in the HSM and are named by label in the catalogue.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from citycard.db import Base, BigIntPK, UTCDateTime

APP_ID_CHARS = 24
SECTOR_CHARS = 32  # = citycard.platform.tables.SECTOR_CHARS
ACTOR_CHARS = 64  # = citycard.platform.tables.ACTOR_CHARS
APPLICATION_STATES = ("loaded", "unloaded", "transferred")
_STATES_SQL = ", ".join(f"'{s}'" for s in APPLICATION_STATES)

card_applications = Table(
    "platform_card_applications",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("card_id", BigIntPK, ForeignKey("platform_cards.id"), nullable=False),
    Column("app_id", String(APP_ID_CHARS), nullable=False),
    Column("sector", String(SECTOR_CHARS), nullable=False),
    Column("sfi", Integer, nullable=False),
    Column("record_id", String(4), nullable=False),  # hex, upper case
    Column("suite", String(4), nullable=False),
    Column("state", String(12), nullable=False),
    Column("data", Text, nullable=False),  # compact JSON, keys sorted: the values of the layout's fields
    Column("record_sha256", String(64), nullable=False),
    Column("atc", Integer, nullable=False),
    Column("loaded_by", String(ACTOR_CHARS), nullable=False),
    Column("loaded_at", UTCDateTime, nullable=False),
    Column("unloaded_by", String(ACTOR_CHARS), nullable=True),
    Column("unloaded_at", UTCDateTime, nullable=True),
    UniqueConstraint("card_id", "app_id"),
    CheckConstraint(f"state IN ({_STATES_SQL})", name="state"),
    CheckConstraint("sfi >= 1 AND sfi <= 30", name="sfi"),
    CheckConstraint("atc >= 0 AND atc <= 65535", name="atc"),
    Index(None, "app_id", "state"),
)
