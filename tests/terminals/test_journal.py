"""The tap journal: append-only (SQL triggers), durable before the green light (kill -9 of a child
process in the middle of an append loop, three times: every tap it reported accepted is there),
limits, acknowledgement rules."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from citycard.terminals.journal import JournalError, JournalFull, TapJournal

CHILD = r"""
import sys
from citycard.terminals.journal import TapJournal
j = TapJournal(sys.argv[1])
i = 0
while True:
    i += 1
    seq = j.append({"run": sys.argv[2], "i": i, "pad": "F" * 400})
    print(seq, i, flush=True)  # the green light: only after append returned
"""


def test_every_accepted_tap_survives_kill_9(tmp_path):
    path = tmp_path / "journal.db"
    accepted: dict[int, tuple[str, int]] = {}
    for run in ("a", "b", "c"):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), run], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        lines = 0
        deadline = time.monotonic() + 60
        while lines < 40 + 25 * len(run) and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            seq, i = line.split()
            accepted[int(seq)] = (run, int(i))
            lines += 1
        os.kill(child.pid, signal.SIGKILL)  # mid-loop: an append may be half done
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
        assert lines >= 40
    with TapJournal(path) as journal:
        found = {e.seq: (e.upload["run"], e.upload["i"]) for e in journal.pending(limit=5_000)}
    assert accepted.items() <= found.items()  # every tap that got the green light is journaled
    assert sorted(found) == list(range(1, len(found) + 1))  # no gap, no torn row
    assert len(found) - len(accepted) <= 3  # at most the one in flight per kill


def test_append_only_and_acknowledgement_rules(tmp_path):
    journal = TapJournal(tmp_path / "j.db", pending_max=3)
    assert [journal.append({"n": n}) for n in range(3)] == [1, 2, 3]
    with pytest.raises(JournalFull, match="3 taps await upload"):
        journal.append({"n": 4})
    assert journal.acknowledge([1, 2], "T:1-2") == 2
    assert journal.acknowledge([1, 2], "T:1-2") == 0  # a replayed answer marks nothing new
    with pytest.raises(JournalError, match="1 of the acknowledged seqs are not in the journal"):
        journal.acknowledge([3, 99], "T:3-99")
    assert journal.counts() == {"taps": 3, "pending": 1, "acknowledged": 2, "declined": 0}
    assert journal.append({"n": 5}) == 4
    conn = sqlite3.connect(journal.path)
    for sql, message in (
        ("DELETE FROM taps WHERE seq = 3", "an unacknowledged tap is never deleted"),
        ("UPDATE taps SET upload = '{}' WHERE seq = 1", "a journaled upload never changes"),
        ("UPDATE taps SET batch_id = 'X' WHERE seq = 1", "an acknowledgement never changes"),
    ):
        with pytest.raises(sqlite3.DatabaseError, match=message):
            conn.execute(sql)
    conn.close()
    assert journal.prune_acknowledged(before_seq=100) == 2
    assert [e.seq for e in journal.pending()] == [3, 4]
    assert journal.counts() == {"taps": 4, "pending": 2, "acknowledged": 2, "declined": 0}
    for bad, message in (
        ({"x": object()}, "upload is not JSON"),
        ({"x": "F" * 5_000}, "limit 4000"),
        (["not", "a", "dict"], "upload must be a mapping"),
    ):
        with pytest.raises(JournalError, match=message):
            journal.append(bad)  # type: ignore[arg-type]
    with pytest.raises(JournalError, match="limit must be 1 to 5000"):
        journal.pending(limit=0)
    journal.close()
    with TapJournal(tmp_path / "j.db") as again:  # reopened: same state, WAL + FULL
        assert again.counts()["pending"] == 2
        assert again._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert again._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
