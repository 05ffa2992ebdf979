"""Alembic ``upgrade head`` run from code, with the migrations shipped inside the package.

Safe on every start and from several processes at once: on PostgreSQL the whole upgrade runs in
one transaction under an advisory lock (DDL is transactional there); on SQLite it runs in one
``BEGIN IMMEDIATE`` transaction, which excludes every other writer until it commits.
"""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

# pg_advisory_xact_lock key that serialises migrations across processes ("CCDB" in ASCII).
MIGRATION_LOCK_ID = 0x43434442


def alembic_config() -> Config:
    """An Alembic ``Config`` pointing at ``citycard/db/migrations`` (works from an installed package)."""
    cfg = Config()
    location = resources.files("citycard.db") / "migrations"
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str:
    """The newest revision shipped with this package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no Alembic revisions found in citycard/db/migrations/versions")
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision; a no-op when it is already there."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Released at commit; a second process waits here, then finds the database at head.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
