"""Fresh databases for tests and for test servers run in a subprocess (they need a URL, not a fixture).

PostgreSQL databases are created through the admin URL ``CITYCARD_TEST_DATABASE_URL`` (default
``postgresql+psycopg://root@127.0.0.1:5432/test``) as ``cc_<random>`` and dropped afterwards.

    from tests.dbtools import fresh_database_url, drop_database, migrated_engine
    url = fresh_database_url("postgresql", tmp_path)   # or "sqlite"
    try:
        engine = migrated_engine(url)                  # Alembic upgrade head, ready to use
        ... start a server with CITYCARD_DATABASE_URL=url ...
    finally:
        engine.dispose(); drop_database(url)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from citycard.db import make_engine, normalize_url, upgrade

ADMIN_URL_ENV = "CITYCARD_TEST_DATABASE_URL"
DEFAULT_ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")
DB_NAME_PREFIX = "cc_"
CONNECT_TIMEOUT_S = 5


def admin_url() -> str:
    return normalize_url(os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL)


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as a libpq URI psycopg accepts (no ``+psycopg`` driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_problem() -> str | None:
    """``None`` when the admin database answers, otherwise why not (for ``require_service``)."""
    url = admin_url()
    try:
        with psycopg.connect(_libpq(url), connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        where = make_url(url).render_as_string(hide_password=True)
        return f"PostgreSQL at {where} unreachable: {str(exc).strip().splitlines()[0]}"
    return None


def create_postgres_database() -> str:
    """Create an empty database ``cc_<random>``; returns its SQLAlchemy URL."""
    name = DB_NAME_PREFIX + secrets.token_hex(6)
    url = admin_url()
    with psycopg.connect(_libpq(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop a database made by :func:`fresh_database_url` (a SQLite file is left to ``tmp_path``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return
    name = parsed.database or ""
    if not name.startswith(DB_NAME_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a test database ({DB_NAME_PREFIX}*)")
    with psycopg.connect(_libpq(admin_url()), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        # Terminate leftover connections (a server killed with -9, a pool not disposed) first.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database_url(backend: str, directory: Path) -> str:
    """The URL of a fresh empty database: a SQLite file in ``directory`` or a new PostgreSQL database."""
    if backend == "sqlite":
        path = Path(directory) / f"{DB_NAME_PREFIX}{secrets.token_hex(4)}.db"
        return f"sqlite:///{path}"
    if backend == "postgresql":
        return create_postgres_database()
    raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")


@contextmanager
def fresh_database(backend: str, directory: Path) -> Iterator[str]:
    """:func:`fresh_database_url` as a context manager that drops the database afterwards."""
    url = fresh_database_url(backend, directory)
    try:
        yield url
    finally:
        drop_database(url)


def migrated_engine(url: str) -> Engine:
    """``make_engine(url)`` after Alembic ``upgrade head``."""
    engine = make_engine(url)
    upgrade(engine)
    return engine
