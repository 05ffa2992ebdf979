"""Database URLs, engines and write transactions for SQLite and PostgreSQL (DESIGN §3 Persistence).

SQLite is the embedded default (one file under the data dir); PostgreSQL is chosen by
``CITYCARD_DATABASE_URL``. The engine settings are the ones that make "nothing lost on a crash,
nothing applied twice" hold on each backend; see ``docs/ledger.md`` (Concurrency).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

DATABASE_URL_ENV = "CITYCARD_DATABASE_URL"
DATA_DIR_ENV = "CITYCARD_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.local/share/citycard")
SQLITE_FILE_NAME = "citycard.db"

SQLITE_BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for the write lock before "database is locked"
SQLITE_POOL_SIZE = 8
SQLITE_CACHE_KIB = 65_536  # page cache per connection (PRAGMA cache_size), allocated as pages are used
PG_POOL_SIZE = 10  # steady connections per engine (per process)
PG_POOL_MAX_OVERFLOW = 20  # extra connections under a burst, closed when returned
PG_POOL_TIMEOUT_S = 30  # wait for a free connection before failing
PG_CONNECT_TIMEOUT_S = 10
WAL_SWITCH_RETRY_S = 0.01  # pause between tries to switch a new file to WAL
POOL_RECYCLE_S = 1_800  # replace connections older than this (server-side idle timeouts)

# Execution option that marks a transaction as read-only: SQLite then starts it with a deferred
# BEGIN, so readers do not queue behind the writer (WAL lets them read a consistent snapshot).
READ_ONLY_OPTION = "citycard_read_only"
_log = logging.getLogger(__name__)


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs that name no driver.

    >>> normalize_url("postgresql://root@127.0.0.1:5432/test")
    'postgresql+psycopg://root@127.0.0.1:5432/test'
    >>> normalize_url("sqlite:////tmp/x.db")
    'sqlite:////tmp/x.db'
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def database_url(data_dir: Path | None = None) -> str:
    """``CITYCARD_DATABASE_URL`` if set, otherwise the SQLite file ``citycard.db`` in the data dir.

    The data dir is ``data_dir``, else ``CITYCARD_DATA_DIR``, else ``~/.local/share/citycard``.
    """
    env_url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if env_url:
        return normalize_url(env_url)
    if data_dir is None:
        data_dir = Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    path = Path(data_dir).expanduser().resolve() / SQLITE_FILE_NAME
    return f"sqlite:///{path}"


def _use_wal(cursor: Any) -> None:
    """Put the database file in WAL mode (a property of the file, kept once set).

    Switching needs an exclusive lock, and SQLite answers "database is locked" at once, without
    waiting out the busy timeout, when other connections to a brand-new file are starting at the
    same moment (several processes running ``upgrade`` together). So: read the mode first (a file
    already in WAL needs nothing), and retry the switch for up to the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_SWITCH_RETRY_S)


def make_engine(url: str, *, pre_ping: bool = True, echo: bool = False) -> Engine:
    """An engine configured for safe concurrent writes on SQLite or PostgreSQL.

    SQLite: WAL journal, ``synchronous=FULL`` (a committed transaction survives power loss),
    ``foreign_keys=ON``, a busy timeout, and every write transaction opened with ``BEGIN IMMEDIATE``
    (SQLAlchemy's pysqlite recipe) so the write lock is taken up front: two writers never both hold
    a read lock and deadlock on the upgrade. PostgreSQL: psycopg 3, a bounded pool, READ COMMITTED
    (the ledger's row-level ``UPDATE … RETURNING`` makes that sufficient; see docs/ledger.md).
    ``pre_ping`` checks a pooled connection before use (one round trip) so a restarted server
    costs no failed transaction; benchmarks may turn it off.
    """
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, echo=echo)
    if backend == "postgresql":
        return create_engine(
            url,
            echo=echo,
            isolation_level="READ COMMITTED",
            pool_size=PG_POOL_SIZE,
            max_overflow=PG_POOL_MAX_OVERFLOW,
            pool_timeout=PG_POOL_TIMEOUT_S,
            pool_recycle=POOL_RECYCLE_S,
            pool_pre_ping=pre_ping,
            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "citycard"},
        )
    raise ValueError(f"unsupported database backend {backend!r} in URL (use sqlite or postgresql)")


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    database = make_url(url).database
    if not database or database == ":memory:" or "mode=memory" in url:
        # Each pooled connection would open its own empty database: writes would seem to vanish.
        raise ValueError(
            "in-memory SQLite is not supported (each connection sees its own database); use a file"
        )
    if not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=SQLITE_POOL_SIZE,
        pool_recycle=POOL_RECYCLE_S,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop pysqlite from issuing its own BEGIN (and from committing before DDL): the "begin"
        # listener below decides how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # A page cache that holds a day's clearing indexes: with SQLite's default 2 MiB, the
            # random inserts of a big batch into the tap and ledger indexes miss it on most rows
            # (measured: 9.4 against 12.0 µs a tap row at 200,000 rows). Memory is taken as used.
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB:d}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


SQLITE_WAL_AUTOCHECKPOINT_PAGES = 1_000  # SQLite's default: a commit that leaves more checkpoints


@contextmanager
def write_transaction(engine: Engine, *, checkpoint_after: bool = False) -> Iterator[Connection]:
    """A ``Connection`` inside a write transaction: commit on success, roll back on an exception.

    ``checkpoint_after`` (SQLite; for a big transaction such as a clearing batch): the commit does
    not copy the WAL into the database file itself — SQLite's automatic checkpoint would, inside the
    committing call, ~60 ms per 10 MB of WAL — and a background thread checkpoints right after, on a
    connection of its own (:func:`checkpoint_in_background`). The commit is as durable either way
    (the WAL is synced at commit); the checkpoint only moves pages. Elsewhere it changes nothing."""
    if not checkpoint_after or engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.execute("PRAGMA wal_autocheckpoint=0")
        try:
            with conn.begin():
                yield conn
        finally:  # the pooled connection goes back as it came, or not at all
            try:
                raw.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES:d}")
            except sqlite3.Error:
                conn.invalidate()
    checkpoint_in_background(engine)


def checkpoint_in_background(engine: Engine) -> threading.Thread:
    """A passive WAL checkpoint of a SQLite engine's file in a daemon thread (it waits for no lock:
    what readers still need stays in the WAL, for a later checkpoint). The thread is returned (a
    caller may join it); an error there is logged, never raised — the next commits of the file's
    other connections checkpoint anyway."""
    thread = threading.Thread(target=_checkpoint, args=(engine,), name="citycard-wal-checkpoint", daemon=True)
    with _checkpoints_lock:
        _checkpoints[:] = [t for t in _checkpoints if t.is_alive()]
        _checkpoints.append(thread)
    thread.start()
    return thread


_checkpoints: list[threading.Thread] = []  # background checkpoints started (the live ones matter)
_checkpoints_lock = threading.Lock()


def join_checkpoints(timeout_s: float = 60.0) -> bool:
    """Wait for this process's background checkpoints (:func:`checkpoint_in_background`) to end;
    ``True`` when none is left running. Before a fork whose children open SQLite: a thread inside
    SQLite when the process forks leaves SQLite's own mutexes locked in the child forever."""
    with _checkpoints_lock:
        running = [t for t in _checkpoints if t.is_alive()]
    for thread in running:
        thread.join(timeout_s)
    return not any(t.is_alive() for t in running)


def _checkpoint(engine: Engine) -> None:
    try:
        raw = engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
        finally:
            raw.close()
    except (sqlite3.Error, SQLAlchemyError, OSError) as exc:
        _log.warning("background WAL checkpoint of %s failed: %s", engine.url, exc)


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A ``Connection`` inside a read-only transaction (deferred BEGIN on SQLite); rolled back at the end."""
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin() as trans:
            yield conn
            trans.rollback()
