"""Tables of the platform's blacklists and sector data exchange (issue 6 items 4, 5; migration
``0005_exchange``, kept identical — tests/db has an autogenerate test).

* ``platform_blacklist_flags`` — fraud flags and negative electronic-cash balances raised against a
  card (PAN + PSN, or every PSN of the PAN), optionally for one terminal class only; cleared, never
  deleted (the audit trail).
* ``platform_blacklist_versions`` — one row per published list version of a terminal class: entry
  count, adds/removes against the previous version and the SHA-256 of the exception-file body.
* ``platform_blacklist_entries`` — list membership as intervals: an entry is on the class's list
  from ``added_version`` up to (not including) ``removed_version``. The full list of version V and
  the delta N → M are both range queries; no list snapshot is stored twice.
* ``platform_terminals`` — the list version each terminal last reported holding, and when.
* ``platform_subscribers`` — sector systems reading the event log: name, sector, kinds filter, cursor
  (the last event sequence number they acknowledged). The NATS relay is one of them.

Card numbers are stored in clear here as in ``issuer_cards``: a PAN is an identifier, not a key.
"""

from __future__ import annotations

import sqlalchemy as sa

from citycard.db import Base, BigIntPK, UTCDateTime

PAN_CHARS_MAX = 19
PSN_CHARS = 2
TERMINAL_CLASS_CHARS_MAX = 16
TERMINAL_ID_CHARS_MAX = 32
REASON_CHARS_MAX = 24
DETAIL_CHARS_MAX = 200
ACTOR_CHARS_MAX = 64
SUBSCRIBER_NAME_CHARS_MAX = 64
SECTOR_CHARS_MAX = 32
KINDS_CHARS_MAX = 1000  # comma-separated event kinds of a subscriber's filter
SHA256_HEX_CHARS = 64

FLAG_REASONS = ("fraud", "counterfeit", "negative_balance")

metadata = Base.metadata


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


blacklist_flags = sa.Table(
    "platform_blacklist_flags",
    metadata,
    sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
    sa.Column("pan", sa.String(PAN_CHARS_MAX), nullable=False),
    sa.Column("psn", sa.String(PSN_CHARS), nullable=True),  # NULL = every PSN of the PAN
    sa.Column("reason", sa.String(REASON_CHARS_MAX), nullable=False),
    sa.Column("terminal_class", sa.String(TERMINAL_CLASS_CHARS_MAX), nullable=True),  # NULL = all
    sa.Column("amount_fen", sa.BigInteger(), nullable=True),  # the negative balance, for that reason
    sa.Column("detail", sa.String(DETAIL_CHARS_MAX), nullable=False),
    sa.Column("flagged_by", sa.String(ACTOR_CHARS_MAX), nullable=False),
    sa.Column("flagged_at", UTCDateTime(), nullable=False),
    sa.Column("cleared_by", sa.String(ACTOR_CHARS_MAX), nullable=True),
    sa.Column("cleared_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(_in("reason", FLAG_REASONS), name="reason"),
    sa.CheckConstraint("amount_fen IS NULL OR amount_fen < 0", name="amount_fen"),
    sa.Index("ix_platform_blacklist_flags_pan", "pan"),
)

blacklist_versions = sa.Table(
    "platform_blacklist_versions",
    metadata,
    sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
    sa.Column("terminal_class", sa.String(TERMINAL_CLASS_CHARS_MAX), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("entry_count", sa.Integer(), nullable=False),
    sa.Column("added_count", sa.Integer(), nullable=False),
    sa.Column("removed_count", sa.Integer(), nullable=False),
    sa.Column("body_sha256", sa.String(SHA256_HEX_CHARS), nullable=False),
    sa.Column("published_by", sa.String(ACTOR_CHARS_MAX), nullable=False),
    sa.Column("published_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("terminal_class", "version"),
    sa.CheckConstraint("version >= 1", name="version"),
    sa.CheckConstraint("entry_count >= 0 AND added_count >= 0 AND removed_count >= 0", name="counts"),
)

blacklist_entries = sa.Table(
    "platform_blacklist_entries",
    metadata,
    sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
    sa.Column("terminal_class", sa.String(TERMINAL_CLASS_CHARS_MAX), nullable=False),
    sa.Column("pan", sa.String(PAN_CHARS_MAX), nullable=False),
    sa.Column("psn", sa.String(PSN_CHARS), nullable=True),  # NULL = every PSN of the PAN
    sa.Column("reason", sa.String(REASON_CHARS_MAX), nullable=False),
    sa.Column("added_version", sa.BigInteger(), nullable=False),
    sa.Column("removed_version", sa.BigInteger(), nullable=True),  # NULL = still listed
    sa.CheckConstraint("removed_version IS NULL OR removed_version > added_version", name="versions"),
    sa.Index("ix_platform_blacklist_entries_added", "terminal_class", "added_version"),
    sa.Index("ix_platform_blacklist_entries_removed", "terminal_class", "removed_version"),
    sa.Index("ix_platform_blacklist_entries_pan", "pan"),  # migration 0012: the incremental publish
)

terminals = sa.Table(
    "platform_terminals",
    metadata,
    sa.Column("terminal_id", sa.String(TERMINAL_ID_CHARS_MAX), primary_key=True),
    sa.Column("terminal_class", sa.String(TERMINAL_CLASS_CHARS_MAX), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("reported_at", UTCDateTime(), nullable=False),
    sa.Column("first_seen_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("version >= 0", name="version"),
)

subscribers = sa.Table(
    "platform_subscribers",
    metadata,
    sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(SUBSCRIBER_NAME_CHARS_MAX), nullable=False),
    sa.Column("sector", sa.String(SECTOR_CHARS_MAX), nullable=False),
    sa.Column("kinds", sa.String(KINDS_CHARS_MAX), nullable=False),  # "" = every kind
    sa.Column("cursor", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("acked_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("name"),
    sa.CheckConstraint("cursor >= 0", name="cursor"),
)
