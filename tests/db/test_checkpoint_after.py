"""write_transaction(checkpoint_after=True) on SQLite: the commit leaves the WAL's pages to a
background checkpoint (the database file grows only then), the pooled connection gets its automatic
checkpoint back, and a failed transaction starts no checkpoint and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from citycard.db import engine as db_engine
from citycard.db import make_engine

ROWS, ROW_BYTES = 400, 10_000  # 4 MB: about 1,000 pages of WAL, SQLite's automatic checkpoint


def _setup(tmp_path: Path) -> sa.Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    return engine


def _fill(conn: sa.Connection) -> None:
    conn.exec_driver_sql(
        "INSERT INTO blobs (data) VALUES (?)", [(bytes([i % 251]) * ROW_BYTES,) for i in range(ROWS)]
    )


def test_the_commit_leaves_the_checkpoint_to_a_background_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _setup(tmp_path)
    database = tmp_path / "x.db"
    started: list[sa.Engine] = []
    monkeypatch.setattr(db_engine, "checkpoint_in_background", started.append)
    with db_engine.write_transaction(engine, checkpoint_after=True) as conn:
        _fill(conn)
    assert started == [engine]
    assert database.stat().st_size < ROWS * ROW_BYTES // 4  # the rows are in the WAL only
    with engine.connect() as conn:  # the same pooled connection, its automatic checkpoint back
        assert conn.connection.dbapi_connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (1_000,)  # type: ignore[union-attr]
    monkeypatch.undo()
    db_engine.checkpoint_in_background(engine).join(timeout=30)
    assert database.stat().st_size > ROWS * ROW_BYTES  # now in the database file
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*), sum(length(data)) FROM blobs").one() == (
            ROWS,
            ROWS * ROW_BYTES,
        )


def test_without_it_sqlite_checkpoints_in_the_commit(tmp_path: Path) -> None:
    engine = _setup(tmp_path)
    with db_engine.write_transaction(engine) as conn:
        _fill(conn)
    assert (tmp_path / "x.db").stat().st_size > ROWS * ROW_BYTES


def test_a_failed_transaction_starts_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _setup(tmp_path)
    started: list[sa.Engine] = []
    monkeypatch.setattr(db_engine, "checkpoint_in_background", started.append)
    with (
        pytest.raises(RuntimeError, match="stop"),
        db_engine.write_transaction(engine, checkpoint_after=True) as conn,
    ):
        _fill(conn)
        raise RuntimeError("stop")
    assert started == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM blobs").scalar() == 0
        assert conn.connection.dbapi_connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (1_000,)  # type: ignore[union-attr]


def test_a_checkpoint_that_cannot_run_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    engine = make_engine(f"sqlite:///{tmp_path / 'gone' / 'x.db'}")
    shutil.rmtree(tmp_path / "gone")  # the file's directory is gone: no connection can open it
    with caplog.at_level("WARNING", logger="citycard.db.engine"):
        db_engine.checkpoint_in_background(engine).join(timeout=30)
    assert "background WAL checkpoint of sqlite:///" in caplog.text
    assert "unable to open database file" in caplog.text
