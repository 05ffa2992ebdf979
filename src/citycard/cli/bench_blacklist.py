"""`citycard bench blacklist`: publishing a one-card change on a list of N entries (default
1,000,000) — the incremental path a loss report takes (the outbox drain) against the full rebuild.

Setup (not timed): a migrated database (a temporary SQLite file, or ``--db URL``), N fraud flags
for the ``bus`` class inserted in bulk, the first full publish of every class, the publisher's
cursor. Timed, ``--rounds`` times each, medians printed:

* ``incremental_publish_ms`` — one new flag (every class) drained: read the change event, look
  the PAN up in each source, a new version of all 7 classes from their lists in memory, commit;
* ``delta_ms`` / ``delta_bytes`` — the delta a validator downloads for that change;
* ``terminal_apply_ms`` — the validator applying it to its 1,000,000-entry list (SHA-256 checked);
* ``full_publish_ms`` — the reconciliation (``blacklist.publish``: every source read) for one
  more change, once;
* ``cold_incremental_publish_ms`` — an incremental publish right after a restart (the list in
  memory rebuilt from the stored intervals first), once.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from citycard.cli.bench import app
from citycard.cli.common import fail, print_json

ENTRIES_DEFAULT = 1_000_000
ENTRIES_MAX = 2_000_000  # the bus class's entries_max
ROUNDS_DEFAULT = 5
ROUNDS_MAX = 100
INSERT_CHUNK = 50_000


def _flag_rows(count: int, at: datetime) -> Any:
    from citycard.kernel.params.exception_file import random_test_entries

    for pan, psn in random_test_entries(count, seed=6):
        yield {"pan": pan, "psn": psn, "reason": "fraud", "terminal_class": "bus", "amount_fen": None,
               "detail": "bench", "flagged_by": "bench", "flagged_at": at}  # fmt: skip


def run(entries: int, rounds: int, db_url: str | None, directory: Path) -> dict[str, Any]:
    from citycard.db import make_engine, read_transaction, upgrade, write_transaction
    from citycard.platform import blacklist, blacklist_outbox
    from citycard.platform.blacklist_format import apply_delta
    from citycard.platform.exchange_tables import blacklist_flags

    engine = make_engine(db_url or f"sqlite:///{directory / 'blacklist.db'}")
    upgrade(engine)
    at = datetime.now(UTC)
    started = time.perf_counter()
    rows = _flag_rows(entries, at)
    while True:
        chunk = [row for _, row in zip(range(INSERT_CHUNK), rows, strict=False)]
        if not chunk:
            break
        with write_transaction(engine) as conn:
            conn.execute(blacklist_flags.insert(), chunk)
    with write_transaction(engine) as conn:
        blacklist.publish_all(conn, actor="bench", at=at)
        blacklist_outbox.drain(conn)
        held = blacklist.full_list(conn, terminal_class="bus")
    setup_s = time.perf_counter() - started
    serial = iter(range(10**6))

    def change() -> None:
        with write_transaction(engine) as conn:
            blacklist.flag(conn, pan=f"6299{next(serial):012d}", psn="01", reason="fraud", detail="bench",
                           actor="bench", at=datetime.now(UTC))  # fmt: skip

    publish_ms, delta_ms, apply_ms, delta_bytes = [], [], [], 0
    for _ in range(rounds):
        change()
        clock = time.perf_counter()
        with write_transaction(engine) as conn:
            drained = blacklist_outbox.drain(conn)
        publish_ms.append((time.perf_counter() - clock) * 1000)
        assert drained.events == 1 and drained.versions["bus"] == held.version + 1
        clock = time.perf_counter()
        with read_transaction(engine) as conn:
            data = blacklist.delta(conn, terminal_class="bus", from_version=held.version)
        delta_ms.append((time.perf_counter() - clock) * 1000)
        delta_bytes = len(data)
        clock = time.perf_counter()
        held = apply_delta(held, data)
        apply_ms.append((time.perf_counter() - clock) * 1000)
    change()
    clock = time.perf_counter()
    with write_transaction(engine) as conn:
        version = blacklist.publish(conn, terminal_class="bus", actor="bench", at=datetime.now(UTC))
    full_ms = (time.perf_counter() - clock) * 1000
    assert version == held.version + 1
    with write_transaction(engine) as conn:
        blacklist_outbox.drain(conn)  # the other classes take the change too
    blacklist.clear_cache()  # as after a restart
    change()
    clock = time.perf_counter()
    with write_transaction(engine) as conn:
        blacklist_outbox.drain(conn)
    cold_ms = (time.perf_counter() - clock) * 1000
    engine.dispose()
    return {
        "entries": len(held),
        "rounds": rounds,
        "backend": engine.dialect.name,
        "incremental_publish_ms": round(statistics.median(publish_ms), 1),
        "delta_ms": round(statistics.median(delta_ms), 2),
        "delta_bytes": delta_bytes,
        "terminal_apply_ms": round(statistics.median(apply_ms), 1),
        "full_publish_ms": round(full_ms, 1),
        "cold_incremental_publish_ms": round(cold_ms, 1),
        "setup_s": round(setup_s, 1),
    }


@app.command("blacklist")
def bench_blacklist(
    entries: Annotated[int, typer.Option("--entries", help="Entries on the bus list.")] = ENTRIES_DEFAULT,
    rounds: Annotated[int, typer.Option("--rounds", help="Timed incremental publishes.")] = ROUNDS_DEFAULT,
    db: Annotated[str | None, typer.Option("--db", help="An empty database URL (default: a temporary SQLite file).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:  # fmt: skip
    """A one-card change published on a list of N entries: incremental (the loss-report path) and full.

    Example: citycard bench blacklist --entries 1000000 --json
    """
    if not 1 <= entries <= ENTRIES_MAX:
        fail(f"--entries must be 1 to {ENTRIES_MAX:,}")
    if not 1 <= rounds <= ROUNDS_MAX:
        fail(f"--rounds must be 1 to {ROUNDS_MAX}")
    with tempfile.TemporaryDirectory(prefix="citycard-bench-blacklist-") as directory:
        result = run(entries, rounds, db, Path(directory))
    if json_output:
        print_json(result)
        return
    for name, value in result.items():
        print(f"{name:30} {value}")
