"""Throw-away databases for the benchmarks that run a server (`bench auth`, `bench api`): a SQLite
file in a temporary directory, or a fresh PostgreSQL database ``ccbench_*`` created on
``CITYCARD_TEST_DATABASE_URL`` (or the local default) and dropped afterwards."""

from __future__ import annotations

import os
import secrets
from enum import StrEnum
from pathlib import Path

DEFAULT_ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
ADMIN_URL_ENV = "CITYCARD_TEST_DATABASE_URL"


class DbChoice(StrEnum):
    sqlite = "sqlite"
    postgresql = "postgresql"


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(kind: DbChoice, directory: Path) -> str:
    """A fresh empty database: a SQLite file in ``directory`` or a new PostgreSQL ``ccbench_*``."""
    if kind is DbChoice.sqlite:
        return f"sqlite:///{directory / 'bench.db'}"
    import psycopg
    from sqlalchemy.engine import make_url

    from citycard.db import normalize_url

    admin = normalize_url(os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL)
    name = "ccbench_" + secrets.token_hex(6)
    with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not (parsed.database or "").startswith("ccbench_"):
        return
    import psycopg

    from citycard.db import normalize_url

    admin = normalize_url(os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL)
    with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
