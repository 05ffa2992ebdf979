"""The ledger's tables (issue 5 item 3; docs/ledger.md "Schema").

``ledger_accounts`` the chart of accounts (its row is also the lock that serialises debits of an
account that may not go negative); ``ledger_balances`` the balance per account, layer and *slot*:
a busy account (a merchant credited by every purchase) spreads its balance over several rows so
concurrent postings do not queue on one row lock across their commits; the account's balance in a
layer is the sum of its slots. ``ledger_postings`` the journal headers (unique idempotency key);
``ledger_lines`` their lines. CHECK constraints repeat the invariants the database can see.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

from citycard.db.base import Base, BigIntPK, UTCDateTime

# Limits on stored text; the ledger checks them before writing (TigerBeetle: a limit on everything).
ACCOUNT_CODE_LENGTH_MAX = 64
ACCOUNT_NAME_LENGTH_MAX = 200
POSTING_KEY_LENGTH_MAX = 128
MEMO_LENGTH_MAX = 200
KIND_LENGTH_MAX = 16
BALANCE_SLOTS_MAX = 64  # balance rows per account and layer, at most

_ID = BigInteger().with_variant(Integer(), "sqlite")

ACCOUNT_KINDS = ("cardholder", "ec", "merchant", "operator", "issuer", "fees", "suspense", "funding")
POSTING_KINDS = ("post", "reversal", "promotion")
LAYERS = (0, 1, 2)  # pending, cleared, settled (citycard.ledger.Layer)


def _in(column: str, values: tuple[object, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


ledger_accounts = Table(
    "ledger_accounts",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("code", String(ACCOUNT_CODE_LENGTH_MAX), nullable=False),
    Column("kind", String(KIND_LENGTH_MAX), nullable=False),
    Column("allow_negative", Boolean(), nullable=False),
    Column("balance_slots", SmallInteger(), nullable=False),
    Column("name", String(ACCOUNT_NAME_LENGTH_MAX), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("code"),
    CheckConstraint(_in("kind", ACCOUNT_KINDS), name="kind"),
    CheckConstraint(f"balance_slots BETWEEN 1 AND {BALANCE_SLOTS_MAX}", name="balance_slots"),
)

ledger_balances = Table(
    "ledger_balances",
    Base.metadata,
    Column("account_id", _ID, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("layer", SmallInteger(), nullable=False),
    Column("slot", SmallInteger(), nullable=False),
    Column("balance_fen", BigInteger(), nullable=False),
    PrimaryKeyConstraint("account_id", "layer", "slot"),
    CheckConstraint(_in("layer", LAYERS), name="layer"),
    CheckConstraint(f"slot >= 0 AND slot < {BALANCE_SLOTS_MAX}", name="slot"),
)

ledger_postings = Table(
    "ledger_postings",
    Base.metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("key", String(POSTING_KEY_LENGTH_MAX), nullable=False),
    Column("kind", String(KIND_LENGTH_MAX), nullable=False),
    Column("layer", SmallInteger(), nullable=False),
    # The posting this one reverses or promotes; unique, so a posting is followed at most once
    # (reversed once, or promoted once) even when two transactions race.
    Column("origin_id", _ID, ForeignKey("ledger_postings.id"), nullable=True),
    Column("memo", String(MEMO_LENGTH_MAX), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("key"),
    UniqueConstraint("origin_id"),
    CheckConstraint(_in("kind", POSTING_KINDS), name="kind"),
    CheckConstraint(_in("layer", LAYERS), name="layer"),
    CheckConstraint("(kind = 'post') = (origin_id IS NULL)", name="origin"),
)

ledger_lines = Table(
    "ledger_lines",
    Base.metadata,
    Column("posting_id", _ID, ForeignKey("ledger_postings.id"), nullable=False),
    Column("seq", SmallInteger(), nullable=False),
    Column("account_id", _ID, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("layer", SmallInteger(), nullable=False),
    Column("debit_fen", BigInteger(), nullable=False),
    Column("credit_fen", BigInteger(), nullable=False),
    PrimaryKeyConstraint("posting_id", "seq"),
    CheckConstraint(_in("layer", LAYERS), name="layer"),
    CheckConstraint(
        "(debit_fen > 0 AND credit_fen = 0) OR (debit_fen = 0 AND credit_fen > 0)", name="one_side"
    ),
    Index(None, "account_id", "layer"),
)
