"""Per-record CPU split of one clearing intake (SQLite unless a URL is given), 1 process.

    .venv/bin/python benchmarks/clearing_split.py 10000 [postgresql+psycopg://…]

Wraps the phases of citycard.clearing (parse, verify, digest, state read, decide, transfers) and the
driver-level SQL statements with CPU-time counters; prints µs of CPU per record for each (docs/clearing.md).
"""

import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from citycard.clearing import batch, store, verify
from citycard.cli.bench_clearing import _prepare

n = int(sys.argv[1])
db = sys.argv[2] if len(sys.argv) > 2 else None
acc = {}


def wrap(mod, name, label=None):
    f = getattr(mod, name)
    label = label or name

    def g(*a, **k):
        t = time.process_time()
        r = f(*a, **k)
        acc[label] = acc.get(label, 0) + time.process_time() - t
        return r

    setattr(mod, name, g)


wrap(batch, "parse_record", "parse (parse_record + transit)")
wrap(verify.HsmVerifier, "forged_many", "verify (TC + IAD MAC, hsm.tc_batch)")
wrap(store, "digest_of", "batch digest (SHA-256 of the JSON)")
wrap(store, "load_known_for", "read state (load_known_for)")
wrap(store, "decide", "decide (duplicates, chain, refunds)")
wrap(store, "transfers_for", "build ledger transfers")
orig = sa.engine.Connection.exec_driver_sql


def timed(self, sql, *a, **k):
    t = time.process_time()
    r = orig(self, sql, *a, **k)
    key = "SQL " + (
        "ledger_postings"
        if "ledger_postings" in sql[:40]
        else "ledger_lines"
        if "ledger_lines" in sql[:40]
        else "ledger_balances"
        if "ledger_balances" in sql[:40]
        else "clearing_taps"
        if "clearing_taps" in sql[:30]
        else "clearing_cards"
        if "clearing_cards" in sql[:30]
        else "other"
    )
    if "WITH first_write" in sql:
        key = "SQL ledger_balances+lines"
    acc[key] = acc.get(key, 0) + time.process_time() - t
    return r


sa.engine.Connection.exec_driver_sql = timed
with tempfile.TemporaryDirectory() as d:
    engine, spec, uploads = _prepare(Path(d), n, db)
    t0 = time.process_time()
    tw = time.perf_counter()
    store.intake(engine, "b", uploads, keys=spec, workers=1)
    total = time.process_time() - t0
    wall = time.perf_counter() - tw
known = sum(acc.values())
print(f"records/s {n / wall:.0f} (wall, loaded machine); CPU per record {total / n * 1e6:.1f} us")
for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
    print(f"{v / n * 1e6:8.1f} us  {k}")
print(f"{(total - known) / n * 1e6:8.1f} us  rest (row building, statements, partitioning, commit)")
