"""The validator's local tap journal: append-only SQLite, durable before a tap is accepted.

A bus validator or taxi terminal approves taps offline and uploads them later (DESIGN.md §4 flow 1).
Each approved tap's upload (:func:`citycard.clearing.record.upload_dict` plus the ``"transit"``
object) is appended here, and the green light comes only after :meth:`TapJournal.append` returned:
by then the row is committed in WAL mode with ``synchronous=FULL``, i.e. the WAL is fsync'd, so a
power cut or ``kill -9`` right after the green light loses nothing.

- **Append-only**: rows are never updated except to record their acknowledgement; SQL triggers
  refuse any change to an upload and any delete of an unacknowledged row (``journal.*`` errors).
- **Acknowledged** rows (the platform answered their batch) keep their batch id; they may be pruned
  (:meth:`TapJournal.prune_acknowledged`), unacknowledged ones never.
- **Limits** (STYLE.md): at most :data:`PENDING_MAX` unacknowledged taps (a full journal refuses
  further taps with :class:`JournalFull`: the validator shows red rather than lose a record), an
  upload's JSON at most :data:`UPLOAD_CHARS_MAX` characters, :data:`PENDING_READ_MAX` rows per
  :meth:`TapJournal.pending` call.
- Declined taps are not journaled; :meth:`TapJournal.note_decline` counts them (``counts()``).

One connection per journal object, serialised with a lock, so an uploader thread may share it.
Several processes may open the same file (SQLite's locking; ``busy_timeout``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PENDING_MAX = 200_000  # ~30 days of a busy bus's taps; beyond it the validator must stop taking taps
PENDING_READ_MAX = 5_000  # rows per pending() call (the platform's upload limit)
UPLOAD_CHARS_MAX = 4_000  # one tap's upload JSON (field 55 ≤ 510 hex chars + the rest)
ACK_SEQS_MAX = 5_000  # seqs per acknowledge() call
BATCH_ID_CHARS_MAX = 64
BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS taps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    upload TEXT NOT NULL,
    appended_at TEXT NOT NULL,
    batch_id TEXT,
    acknowledged_at TEXT
);
CREATE INDEX IF NOT EXISTS ix_taps_pending ON taps (seq) WHERE batch_id IS NULL;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS open_batch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS taps_upload_is_final BEFORE UPDATE OF upload, seq, appended_at ON taps
BEGIN SELECT RAISE(ABORT, 'journal.append_only: a journaled upload never changes'); END;
CREATE TRIGGER IF NOT EXISTS taps_ack_is_final BEFORE UPDATE OF batch_id ON taps
WHEN OLD.batch_id IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'journal.append_only: an acknowledgement never changes'); END;
CREATE TRIGGER IF NOT EXISTS taps_keep_pending BEFORE DELETE ON taps WHEN OLD.batch_id IS NULL
BEGIN SELECT RAISE(ABORT, 'journal.append_only: an unacknowledged tap is never deleted'); END;
"""


class JournalError(Exception):
    """A journal operation refused (bad input or a full journal); nothing was changed."""


class JournalFull(JournalError):  # noqa: N818 — a state, like ledger.InsufficientFunds
    """:data:`PENDING_MAX` taps await upload: no more taps until some are acknowledged."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One unacknowledged tap: its sequence number in this journal and its upload dict."""

    seq: int
    upload: dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class TapJournal:
    """The append-only tap journal in the SQLite file ``path`` (created if absent; module note)."""

    def __init__(self, path: str | os.PathLike[str], *, pending_max: int = PENDING_MAX):
        if not 1 <= pending_max <= PENDING_MAX:
            raise JournalError(f"pending_max must be 1 to {PENDING_MAX}, got {pending_max}")
        self.path = Path(path)
        self.pending_max = pending_max
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise JournalError(f"{self.path}: SQLite refused WAL mode (got {mode})")
        self._conn.execute("PRAGMA synchronous = FULL")  # the WAL is fsync'd at every commit
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            self._conn.close()
            raise JournalError(f"{self.path}: journal schema {version}, this program reads {SCHEMA_VERSION}")
        self._conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")

    # --- transactions ---------------------------------------------------------------------------
    class _Tx:
        def __init__(self, journal: TapJournal):
            self.journal = journal

        def __enter__(self) -> sqlite3.Connection:
            self.journal._lock.acquire()
            try:
                self.journal._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.journal._lock.release()
                raise
            return self.journal._conn

        def __exit__(self, kind: object, value: object, tb: object) -> None:
            conn = self.journal._conn
            try:
                conn.execute("COMMIT" if kind is None else "ROLLBACK")
            finally:
                self.journal._lock.release()

    def _write(self) -> TapJournal._Tx:
        return TapJournal._Tx(self)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TapJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the contract ---------------------------------------------------------------------------
    def append(self, upload: Mapping[str, Any]) -> int:
        """Journal one approved tap; returns its sequence number once it is committed and fsync'd."""
        if not isinstance(upload, Mapping):
            raise JournalError(f"upload must be a mapping, got {type(upload).__name__}")
        try:
            text = json.dumps(dict(upload), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise JournalError(f"upload is not JSON: {exc}") from None
        if len(text) > UPLOAD_CHARS_MAX:
            raise JournalError(f"upload is {len(text)} characters of JSON; limit {UPLOAD_CHARS_MAX}")
        with self._write() as conn:
            pending = conn.execute("SELECT count(*) FROM taps WHERE batch_id IS NULL").fetchone()[0]
            if pending >= self.pending_max:
                raise JournalFull(f"{pending} taps await upload (limit {self.pending_max}): upload first")
            cursor = conn.execute("INSERT INTO taps (upload, appended_at) VALUES (?, ?)", (text, _now()))
            seq = cursor.lastrowid
        if seq is None:
            raise AssertionError("SQLite gave no rowid for the appended tap")
        return seq

    def has_room(self) -> bool:
        """Whether one more tap may be appended (checked before a tap touches the card)."""
        with self._lock:
            pending = self._conn.execute("SELECT count(*) FROM taps WHERE batch_id IS NULL").fetchone()[0]
        return pending < self.pending_max

    def pending(self, limit: int = 500) -> list[JournalEntry]:
        """Unacknowledged taps, oldest first, at most ``limit`` (1…:data:`PENDING_READ_MAX`)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= PENDING_READ_MAX:
            raise JournalError(f"limit must be 1 to {PENDING_READ_MAX}, got {limit!r}")
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, upload FROM taps WHERE batch_id IS NULL ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [JournalEntry(seq, json.loads(text)) for seq, text in rows]

    def acknowledge(self, seqs: Iterable[int], batch_id: str) -> int:
        """Mark ``seqs`` as acknowledged by the platform under ``batch_id``; returns how many were
        newly marked. Already acknowledged seqs are left as they are (a replayed answer); a seq the
        journal never held is an error and nothing is marked."""
        wanted = sorted(set(seqs))
        if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= BATCH_ID_CHARS_MAX:
            raise JournalError(f"batch id must be 1 to {BATCH_ID_CHARS_MAX} characters, got {batch_id!r}")
        if len(wanted) > ACK_SEQS_MAX:
            raise JournalError(f"{len(wanted)} seqs in one acknowledgement; limit {ACK_SEQS_MAX}")
        if not wanted:
            return 0
        if any(isinstance(s, bool) or not isinstance(s, int) for s in wanted):
            raise JournalError("seqs must be integers")
        marks = ",".join("?" * len(wanted))
        with self._write() as conn:
            found = conn.execute(f"SELECT count(*) FROM taps WHERE seq IN ({marks})", wanted).fetchone()[0]
            if found != len(wanted):
                raise JournalError(f"{len(wanted) - found} of the acknowledged seqs are not in the journal")
            conn.execute(
                "DELETE FROM open_batch WHERE first_seq = ? AND last_seq = ?", (wanted[0], wanted[-1])
            )
            cursor = conn.execute(
                f"UPDATE taps SET batch_id = ?, acknowledged_at = ? WHERE batch_id IS NULL AND seq IN ({marks})",
                [batch_id, _now(), *wanted],
            )
            return cursor.rowcount

    # --- the batch in flight (the uploader's) -------------------------------------------------
    def open_batch(self) -> tuple[int, int] | None:
        """The (first, last) seq of the batch last sent and not yet acknowledged, if any: it is
        sent again, exactly, before any new batch, so a batch the platform took but whose answer was
        lost is replayed under the same id (and never cut differently)."""
        with self._lock:
            row = self._conn.execute("SELECT first_seq, last_seq FROM open_batch").fetchone()
        return (row[0], row[1]) if row else None

    def set_open_batch(self, first_seq: int, last_seq: int) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO open_batch (id, first_seq, last_seq) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET first_seq = excluded.first_seq, last_seq = excluded.last_seq",
                (first_seq, last_seq),
            )

    def close_open_batch(self) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM open_batch")

    def pending_between(self, first_seq: int, last_seq: int) -> list[JournalEntry]:
        """Unacknowledged taps with first ≤ seq ≤ last, in order (at most :data:`PENDING_READ_MAX`)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, upload FROM taps WHERE batch_id IS NULL AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                (first_seq, last_seq, PENDING_READ_MAX),
            ).fetchall()
        return [JournalEntry(seq, json.loads(text)) for seq, text in rows]

    def counts(self) -> dict[str, int]:
        """``{"taps", "pending", "acknowledged", "declined"}``: taps ever journaled (pruned included)."""
        with self._lock:
            pending = self._conn.execute("SELECT count(*) FROM taps WHERE batch_id IS NULL").fetchone()[0]
            last = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'taps'").fetchone()
            taps = last[0] if last else 0  # every tap ever appended (pruned ones included)
            row = self._conn.execute("SELECT value FROM counters WHERE name = 'declined'").fetchone()
        return {
            "taps": taps,
            "pending": pending,
            "acknowledged": taps - pending,
            "declined": row[0] if row else 0,
        }

    def note_decline(self) -> None:
        """Count one declined tap (declines are not journaled, only counted)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO counters (name, value) VALUES ('declined', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1"
            )

    def prune_acknowledged(self, *, before_seq: int) -> int:
        """Delete acknowledged taps with seq < ``before_seq`` (space on a long-lived device);
        unacknowledged taps are never deleted (a trigger refuses it too). Returns the count."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM taps WHERE batch_id IS NOT NULL AND seq < ?", (before_seq,)
            ).rowcount
