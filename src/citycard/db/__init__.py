"""Persistence infrastructure every persistent package uses (DESIGN §3 Persistence).

One SQLAlchemy metadata (:class:`Base`), the list of modules that define tables
(:data:`MODEL_MODULES`), engines tuned for SQLite and PostgreSQL, write transactions and the
Alembic migrations shipped in ``citycard/db/migrations``.
"""

from __future__ import annotations

from citycard.db.base import NAMING_CONVENTION, Base, BigIntPK, UTCDateTime, utc_now
from citycard.db.engine import (
    DATABASE_URL_ENV,
    database_url,
    join_checkpoints,
    make_engine,
    normalize_url,
    read_transaction,
    write_transaction,
)
from citycard.db.migrate import current_revision, head_revision, upgrade
from citycard.db.models import MODEL_MODULES, import_models

__all__ = [
    "DATABASE_URL_ENV",
    "MODEL_MODULES",
    "NAMING_CONVENTION",
    "Base",
    "BigIntPK",
    "UTCDateTime",
    "current_revision",
    "database_url",
    "head_revision",
    "import_models",
    "join_checkpoints",
    "make_engine",
    "normalize_url",
    "read_transaction",
    "upgrade",
    "utc_now",
    "write_transaction",
]
