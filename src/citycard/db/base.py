"""The one SQLAlchemy ``MetaData`` for every package's tables, and the column types they share.

Each persistent package declares its tables on :class:`Base` in its own module and lists that module
in :data:`citycard.db.models.MODEL_MODULES`, so Alembic's autogenerate comparison sees them all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# Constraint names are deterministic, so migrations can name (and later drop) them on both backends.
NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

# A 64-bit surrogate key on PostgreSQL; on SQLite only ``INTEGER PRIMARY KEY`` is the auto-numbered
# rowid (already 64-bit there), so the variant keeps auto-numbering working on both.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of every citycard table (one metadata, one naming convention)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC ``datetime`` on both backends (DESIGN §3: time is aware UTC inside).

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as UTC and
    given back with ``tzinfo=UTC``. A naive datetime is refused: its zone would be a guess.

    >>> UTCDateTime().process_bind_param(datetime(2026, 1, 1, 8, tzinfo=UTC), None)
    datetime.datetime(2026, 1, 1, 8, 0, tzinfo=datetime.timezone.utc)
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: times are aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # defensive: a value written by another SQLite client
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)
