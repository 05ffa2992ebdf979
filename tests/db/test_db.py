"""citycard.db: URLs, engine settings, transactions, and migrations that match the models."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, inspect, text
from sqlalchemy.exc import StatementError

from citycard.db import (
    MODEL_MODULES,
    Base,
    UTCDateTime,
    current_revision,
    database_url,
    head_revision,
    import_models,
    make_engine,
    read_transaction,
    upgrade,
    write_transaction,
)


def _diff(engine, metadata):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, metadata)


def test_migrations_match_the_models(engine) -> None:  # type: ignore[no-untyped-def]
    """Alembic autogenerate finds no difference between the migrated database and every model."""
    import_models()
    assert "citycard.ledger.tables" in MODEL_MODULES
    assert "ledger_postings" in Base.metadata.tables
    assert _diff(engine, Base.metadata) == []


def test_the_comparison_would_see_a_missing_table(engine) -> None:  # type: ignore[no-untyped-def]
    """The no-diff test above is not vacuous: a table without a migration is reported."""
    import_models()
    extra = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(extra)
    Table("not_migrated", extra, Column("id", Integer, primary_key=True))
    diff = _diff(engine, extra)
    assert [d[0] for d in diff] == ["add_table"]
    assert diff[0][1].name == "not_migrated"


def test_upgrade_twice_is_a_no_op(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        before = sorted(inspect(conn).get_table_names())
        assert current_revision(conn) == head_revision()
    upgrade(engine)
    with engine.connect() as conn:
        assert sorted(inspect(conn).get_table_names()) == before
        assert current_revision(conn) == head_revision()
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_upgrade_from_several_engines_at_once(db_url: str) -> None:
    """Several processes starting together each call upgrade(); exactly one migrates, none fails."""
    engines = [make_engine(db_url) for _ in range(3)]
    try:
        with ThreadPoolExecutor(max_workers=len(engines)) as pool:
            for future in [pool.submit(upgrade, eng) for eng in engines]:
                future.result()  # re-raises any failure
        with engines[0].connect() as conn:
            assert current_revision(conn) == head_revision()
    finally:
        for eng in engines:
            eng.dispose()


def test_database_url_prefers_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CITYCARD_DATABASE_URL", "postgresql://root@db.example:5432/city")
    assert database_url(tmp_path) == "postgresql+psycopg://root@db.example:5432/city"
    monkeypatch.delenv("CITYCARD_DATABASE_URL")
    assert database_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/citycard.db"
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path / "data"))
    assert database_url() == f"sqlite:///{(tmp_path / 'data').resolve()}/citycard.db"


def test_unsupported_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database backend 'mysql'"):
        make_engine("mysql://root@127.0.0.1/x")
    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="in-memory SQLite is not supported"):
            make_engine(url)


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path}/sub/dir/x.db")  # the directory is created
    try:
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30_000
    finally:
        eng.dispose()


def test_engine_settings_per_backend(engine) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            assert engine.dialect.driver == "psycopg"
            assert conn.execute(text("SHOW transaction_isolation")).scalar_one() == "read committed"
        else:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            # Inside a write transaction this connection already holds the write lock (BEGIN IMMEDIATE):
            # another connection cannot start one and gives up after its (short) busy timeout.
            other = sqlite3.connect(engine.url.database, timeout=0.05, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()


def test_write_transaction_commits_or_rolls_back(engine) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(engine) as conn:
        conn.execute(text("CREATE TABLE t_probe (n INTEGER NOT NULL)"))
    with write_transaction(engine) as conn:
        conn.execute(text("INSERT INTO t_probe (n) VALUES (1)"))
    with pytest.raises(RuntimeError, match="boom"), write_transaction(engine) as conn:
        conn.execute(text("INSERT INTO t_probe (n) VALUES (2)"))
        raise RuntimeError("boom")
    with read_transaction(engine) as conn:
        assert conn.execute(text("SELECT n FROM t_probe")).scalars().all() == [1]


def test_sqlite_writers_wait_instead_of_deadlocking(tmp_path: Path) -> None:
    """Read-then-write transactions from many threads: BEGIN IMMEDIATE serialises them; no update lost."""
    eng = make_engine(f"sqlite:///{tmp_path}/c.db")
    try:
        with write_transaction(eng) as conn:
            conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
            conn.execute(text("INSERT INTO counter VALUES (0)"))

        def bump() -> None:
            for _ in range(50):
                with write_transaction(eng) as conn:
                    n = conn.execute(text("SELECT n FROM counter")).scalar_one()
                    conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with read_transaction(eng) as conn:
            assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 200
    finally:
        eng.dispose()


def test_utc_datetime_round_trip(engine) -> None:  # type: ignore[no-untyped-def]
    metadata = MetaData()
    probe = Table("t_time", metadata, Column("id", Integer, primary_key=True), Column("at", UTCDateTime()))
    metadata.create_all(engine)
    shanghai = datetime(2026, 11, 27, 12, 30, tzinfo=timezone(timedelta(hours=8)))
    with write_transaction(engine) as conn:
        conn.execute(probe.insert(), [{"id": 1, "at": shanghai}])
    with read_transaction(engine) as conn:
        stored = conn.execute(probe.select()).one().at
    assert stored == shanghai
    assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    assert stored == datetime(2026, 11, 27, 4, 30, tzinfo=UTC)
    with pytest.raises(StatementError, match="naive datetime"), write_transaction(engine) as conn:
        conn.execute(probe.insert(), [{"id": 2, "at": datetime(2026, 1, 1)}])
