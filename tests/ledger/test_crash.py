"""kill -9 a process in the middle of posting: every committed posting survives, nothing half-written.

The child posts one transfer per transaction and prints each key after its commit returns; the
parent kills it with SIGKILL mid-stream. Afterwards the journal holds every printed key, at most one
more (committed, not yet printed), and every invariant holds — on SQLite (WAL, synchronous=FULL)
and PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from sqlalchemy import Engine, select

from citycard.db import read_transaction, write_transaction
from citycard.ledger import AccountKind, balances, check_invariants, open_account
from citycard.ledger.tables import ledger_postings

KILL_AFTER = 150  # committed postings seen before the kill
AMOUNT_FEN = 3

CHILD = """
import sys
from citycard.db import make_engine, write_transaction
from citycard.ledger import Line, PostingRequest, post
engine = make_engine(sys.argv[1])
for i in range(1_000_000):
    key = f"crash:{i}"
    with write_transaction(engine) as conn:
        post(conn, PostingRequest(key, (Line("funding:crash", debit_fen=3), Line("ec:crash", credit_fen=3))))
    print(key, flush=True)
"""


def test_kill_9_while_posting_loses_no_committed_posting(engine: Engine, db_url: str) -> None:
    with write_transaction(engine) as conn:
        open_account(conn, "funding:crash", AccountKind.FUNDING, allow_negative=True)
        open_account(conn, "ec:crash", AccountKind.EC)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    printed: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            printed.append(line.strip())
            if len(printed) >= KILL_AFTER:
                os.kill(child.pid, signal.SIGKILL)
                break
        printed.extend(line.strip() for line in child.stdout if line.strip())  # already in the pipe
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    assert len(printed) >= KILL_AFTER

    with read_transaction(engine) as conn:
        stored = set(
            conn.execute(select(ledger_postings.c.key).where(ledger_postings.c.key.like("crash:%"))).scalars()
        )
        assert set(printed) <= stored
        extra = stored - set(printed)
        assert extra <= {f"crash:{len(printed)}"}  # committed just before the kill, not yet printed
        assert balances(conn, ["ec:crash", "funding:crash"]) == {
            "ec:crash": AMOUNT_FEN * len(stored),
            "funding:crash": -AMOUNT_FEN * len(stored),
        }
        assert check_invariants(conn) == []
