"""`citycard bench clearing`: offline TC records cleared per second, verification and posting included.

Setup (not timed; nor are the process's one-time costs, :func:`_warm_up`): a file-backed SoftHSM with IMK-AC/IMK-MAC in both suites, synthetic cards
(``clearing.synthetic``: real card keys from the HSM, real TCs and IAD balance MACs; half INTL,
half GM), a migrated SQLite database (or ``--db URL``) with every card's EC account funded, and
the uploads. Timed: one :func:`citycard.clearing.store.intake` of all records (or, with
``--batch-size B``, one intake per B consecutive records, one after another) — parse and field-55
checks, TC and IAD-MAC verification in the HSM, duplicate and balance-chain checks, the ledger
postings (``post_many``), taps, chains — and its commit. ``--workers W`` runs the pure function in
W processes (the parent reads state, decides and writes in bulk). Prints {"records", "records_per_s",
"cpu_us_per_record": {"parent", "workers"}, ...}.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from citycard.cli.bench import app
from citycard.cli.common import fail

RECORDS_DEFAULT = 20_000
RECORDS_MAX = 2_000_000
TAPS_PER_CARD = 10
BALANCE_FEN = 1_000_000


def _prepare(directory: Path, records: int, db_url: str | None) -> tuple[Any, Any, list[dict[str, Any]]]:
    import sqlalchemy as sa

    from citycard.clearing import synthetic
    from citycard.clearing.batch import ec_account
    from citycard.clearing.tables import Card
    from citycard.clearing.verify import SuiteLabels, VerifierSpec
    from citycard.crypto import GM, INTL
    from citycard.db import make_engine, upgrade, write_transaction
    from citycard.hsm import SoftHSM
    from citycard.ledger import AccountKind, Layer, Line, PostingRequest, open_account, post_many

    hsm_path, master = directory / "hsm-keys.json", directory / "hsm-master.key"
    hsm = SoftHSM.open(hsm_path, master_key_file=master)
    labels = {}
    for suite in (INTL, GM):
        name = suite.name.lower()
        hsm.generate_key(f"imk-ac-{name}", "IMK-AC", suite)
        hsm.generate_key(f"imk-mac-{name}", "IMK-MAC", suite)
        labels[suite.name] = SuiteLabels(f"imk-ac-{name}", f"imk-mac-{name}")
    cards = synthetic.make_cards(hsm, labels, count=max(1, records // TAPS_PER_CARD), balance_fen=BALANCE_FEN)
    engine = make_engine(db_url or f"sqlite:///{directory / 'clearing.db'}")
    upgrade(engine)
    with write_transaction(engine) as conn:
        open_account(conn, "bank:funding", AccountKind.FUNDING, allow_negative=True)
        conn.execute(sa.insert(Card), [{"card": f"{c.pan}:{c.psn}", "issuer": "bank"} for c in cards])
        requests = []
        for card in cards:
            account = ec_account("bank", card.pan, card.psn)
            open_account(conn, account, AccountKind.EC)
            lines = (Line("bank:funding", debit_fen=BALANCE_FEN), Line(account, credit_fen=BALANCE_FEN))
            requests.append(PostingRequest(f"load:{card.pan}", lines, Layer.CLEARED))
        for start in range(0, len(requests), 1_000):
            post_many(conn, requests[start : start + 1_000])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    uploads = list(synthetic.taps(cards, records, start=now - dt.timedelta(hours=2)))
    _warm_up()
    return engine, VerifierSpec(hsm_path, master, labels), uploads


def _warm_up() -> None:
    """What a process does once, whatever it then clears, as a clearing server does at its start:
    the ORM's mapper configuration (≈ 15 ms at the first ORM statement), the worker module's import
    and libcrypto's checks. Kept out of the timing as the imports are; per batch costs (partition,
    forking the workers, their first touches of memory) stay in it."""
    import importlib

    from sqlalchemy.orm import configure_mappers

    from citycard.crypto import libcrypto

    importlib.import_module("citycard.clearing.parallel")  # intake imports it at its first call
    configure_mappers()
    libcrypto.load()


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@app.command("clearing")
def clearing_command(
    records: Annotated[int, typer.Option("--records", help="Records in the batch.")] = RECORDS_DEFAULT,
    workers: Annotated[int, typer.Option("--workers", help="Processes for the pure clearing function.")] = 1,
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default: a temporary SQLite file).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="Records per uploaded batch: the records go as consecutive batches, cleared one "
            "after another into the same database (default: all in one batch).",
        ),
    ] = None,
) -> None:
    """Clear N synthetic offline TCs (both suites) in one intake (or in batches of --batch-size,
    one after another) and print records per second."""
    from citycard.clearing.store import RECORDS_PER_BATCH_MAX, intake

    if not 1 <= records <= RECORDS_MAX:
        fail(f"--records must be 1…{RECORDS_MAX}, got {records}")
    if not 1 <= workers <= 64:
        fail(f"--workers must be 1…64, got {workers}")
    size = records if batch_size is None else batch_size
    if not 1 <= size <= RECORDS_PER_BATCH_MAX:
        fail(f"--batch-size must be 1…{RECORDS_PER_BATCH_MAX}, got {size}")
    with tempfile.TemporaryDirectory(prefix="citycard-bench-clearing-") as name:
        if not json_output:
            print(f"preparing {records:,} records …")
        engine, spec, uploads = _prepare(Path(name), records, db)
        # consecutive slices: each card's taps stay in ATC order from one batch to the next
        batches = [uploads[start : start + size] for start in range(0, records, size)]
        accepted = exceptions = 0
        try:
            cpu, children = time.process_time(), _children_cpu()
            started = time.perf_counter()
            for number, batch in enumerate(batches, start=1):
                result = intake(engine, f"bench-{number}", batch, keys=spec, workers=workers)
                accepted, exceptions = accepted + result.accepted, exceptions + result.exceptions
            seconds = time.perf_counter() - started
            cpu, children = time.process_time() - cpu, _children_cpu() - children
        finally:
            engine.dispose()
    if accepted != records:
        fail(f"only {accepted} of {records} records cleared ({exceptions} exceptions)")
    figures = {
        "records": records,
        "records_per_s": round(records / seconds),
        "workers": workers,
        "seconds": round(seconds, 3),
        "accepted": accepted,
        "batches": len(batches),
        "db": engine.dialect.name,
        # CPU per record: the parent (reads, decides, writes; with --workers 1 also parses and
        # verifies) and the worker processes (parse, TC and IAD MAC); the database server's own
        # CPU (PostgreSQL) is in neither. On a shared machine these say more than records_per_s.
        "cpu_us_per_record": {
            "parent": round(cpu / records * 1e6, 1),
            "workers": round(children / records * 1e6, 1),
        },
    }
    print(json.dumps(figures))
