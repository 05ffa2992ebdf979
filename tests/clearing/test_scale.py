"""Workers and crashes: the same ledger whatever the process count, exactly once after kill -9."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import random
import signal
import time

import sqlalchemy as sa

from citycard.clearing import synthetic
from citycard.clearing.batch import ec_account, operator_account
from citycard.clearing.parallel import clear_parallel
from citycard.clearing.store import digest_of, intake, load_known, reconcile, register_card
from citycard.clearing.tables import Batch, Tap
from citycard.db import make_engine, write_transaction
from citycard.ledger import (
    AccountKind,
    Layer,
    Line,
    PostingRequest,
    UnknownAccount,
    balance_fen,
    check_invariants,
    open_account,
    post_many,
)

from .conftest import LABELS

BALANCE = 100_000
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def synthetic_batch(engine, spec, *, cards: int, records: int) -> list[dict]:  # type: ignore[no-untyped-def]
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.open(spec.hsm_path, master_key_file=spec.master_key_file)
    made = synthetic.make_cards(hsm, LABELS, count=cards, balance_fen=BALANCE, bin_="622000")
    with write_transaction(engine) as conn:
        open_account(conn, "bank:funding", AccountKind.FUNDING, allow_negative=True)
        requests = []
        for card in made:
            register_card(conn, pan=card.pan, psn=card.psn, issuer="bank")
            open_account(conn, ec_account("bank", card.pan, card.psn), AccountKind.EC)
            lines = (
                Line("bank:funding", debit_fen=BALANCE),
                Line(ec_account("bank", card.pan, card.psn), credit_fen=BALANCE),
            )
            requests.append(PostingRequest(f"load:{card.pan}", lines, Layer.CLEARED))
        post_many(conn, requests)
    return list(synthetic.taps(made, records, start=NOW - dt.timedelta(hours=3)))


def held(conn, account: str) -> int:  # type: ignore[no-untyped-def]
    try:
        return balance_fen(conn, account)
    except UnknownAccount:  # never opened: the intake that would open it did not commit
        return 0


def ledger_totals(engine) -> dict:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert check_invariants(conn) == []
        taps = conn.execute(sa.select(sa.func.count(), sa.func.sum(Tap.amount_fen)).select_from(Tap)).one()
        return {
            "taps": tuple(taps),
            "bus": held(conn, operator_account("bus-1")),
            "taxi": held(conn, operator_account("taxi-1")),
            "batches": conn.execute(sa.select(sa.func.count()).select_from(Batch)).scalar_one(),
        }


def test_workers_give_the_single_process_result(engine, spec) -> None:  # type: ignore[no-untyped-def]
    uploads = synthetic_batch(engine, spec, cards=40, records=400)
    uploads[5] = dict(uploads[5], amount_fen=uploads[5]["amount_fen"])  # same content, new object
    uploads.append(dict(uploads[7]))  # a duplicate inside the batch
    with engine.connect() as conn:
        known = load_known(conn, uploads, NOW)
    one = clear_parallel(uploads, spec=spec, known=known, workers=1, batch_id="w2")
    two = clear_parallel(uploads, spec=spec, known=known, workers=2, batch_id="w2")

    def moved(postings: list) -> dict[str, int]:  # account → credits − debits over the postings
        out: dict[str, int] = {}
        for posting in postings:
            assert posting.key.startswith("fares:w2:")  # fares only: no refund in this batch
            for line in posting.lines:
                out[line.account] = out.get(line.account, 0) + line.credit_fen - line.debit_fen
        return out

    # the fares are grouped per card partition (1 worker: 4 partitions, 2 workers: 8), so the
    # postings differ in grouping but move exactly the same amounts
    assert moved(one.postings) == moved(two.postings)
    expected: dict[str, int] = {}
    for upload in uploads[:400]:
        card = ec_account(
            known.cards[f"{upload['pan']}:{upload['psn']}"].issuer, upload["pan"], upload["psn"]
        )
        expected[card] = expected.get(card, 0) - upload["amount_fen"]
    assert {a: fen for a, fen in moved(two.postings).items() if not a.startswith("operator:")} == expected
    assert [(e.reason, e.position) for e in two.exceptions] == [("duplicate", 400)]
    result = intake(engine, "w2", uploads, keys=spec, now=NOW, workers=2)
    assert (result.accepted, result.exceptions) == (400, 1)
    # the digest a worker computed is the one digest_of gives (and a replay in either mode matches it)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(Batch.digest).where(Batch.batch_id == "w2")).scalar_one()
    assert stored == digest_of(uploads)
    for workers in (1, 2):
        again = intake(engine, "w2", uploads, keys=spec, now=NOW, workers=workers)
        assert again.replayed and (again.accepted, again.exceptions) == (400, 1)
    totals = ledger_totals(engine)
    assert totals["bus"] + totals["taxi"] == sum(u["amount_fen"] for u in uploads[:400])
    report = reconcile(engine)
    assert report["ledger_balanced"] and report["ec_reconciled"], report


def _intake_in_child(url: str, spec, uploads: list[dict]) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    intake(engine, "crashy-1", uploads, keys=spec, now=NOW)


def test_rerun_after_kill_9_gives_identical_ledger_totals(engine, spec) -> None:  # type: ignore[no-untyped-def]
    uploads = synthetic_batch(engine, spec, cards=60, records=3_000)
    url = engine.url.render_as_string(hide_password=False)
    expected_bus = sum(u["amount_fen"] for u in uploads if u["operator"] == "bus-1")
    context = multiprocessing.get_context("fork")
    rng = random.Random(11)
    kills = 0
    for delay in (0.05, rng.uniform(0.1, 0.3), rng.uniform(0.2, 0.6)):
        child = context.Process(target=_intake_in_child, args=(url, spec, uploads))
        child.start()
        time.sleep(delay)
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.join()
        totals = ledger_totals(engine)  # after a kill: all of the batch or none of it
        assert totals["batches"] in (0, 1)
        assert totals["bus"] in (0, expected_bus)
    result = intake(engine, "crashy-1", uploads, keys=spec, now=NOW)  # the rerun
    assert result.records == 3_000 and result.exceptions == 0 and result.accepted == 3_000
    totals = ledger_totals(engine)
    assert totals["taps"] == (3_000, sum(u["amount_fen"] for u in uploads))
    assert totals["bus"] == expected_bus and totals["batches"] == 1
    assert kills >= 1
