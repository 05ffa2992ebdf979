"""The workers' half of an intake on a SQLite file (clearing.store.PartitionPlanner): each worker
reads its partitions' state on a read-only connection of its own and decides, the parent only
writes. Its plan equals the one the parent makes from the same state; checked_taps equals the
wire round trip; an error in a worker leaves nothing written; and the path is taken only where
another process can open the database."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from citycard.clearing import store, synthetic
from citycard.clearing.batch import checked_taps, checked_wire, from_wire
from citycard.clearing.parallel import partition
from citycard.clearing.store import (
    PartitionPlanner,
    decide_partition,
    intake,
    report_loss,
    write_plan,
)
from citycard.clearing.tables import Batch, ExceptionItem, Tap
from citycard.db import write_transaction
from citycard.ledger import AccountCache

from .test_read_ahead import _cards, _enrol, _outcome

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _batches(spec, count: int = 16):  # type: ignore[no-untyped-def]
    cards = _cards(spec, count)
    first = list(synthetic.taps(cards, count * 10, start=NOW - dt.timedelta(hours=2)))
    second = list(synthetic.taps(cards, count * 10, start=NOW - dt.timedelta(hours=1)))
    second += first[:3]  # cleared before: duplicates
    second.append({**second[0], "pan": "not a pan"})  # malformed
    return cards, first, second


def test_checked_taps_equal_the_wire_round_trip(spec, verifier) -> None:  # type: ignore[no-untyped-def]
    cards = _cards(spec, 4)
    records = list(synthetic.taps(cards, 20, start=NOW - dt.timedelta(hours=1)))
    field55 = records[3]["field55"]  # 9F26 08 TC first: a TC of zeros is forged
    assert field55.startswith("9F2608")
    records[3] = {**records[3], "field55": field55[:6] + "00" * 8 + field55[22:]}
    records[5] = {**records[5], "pan": "not a pan"}  # malformed
    positions = [100 + 2 * i for i in range(len(records))]
    direct = checked_taps(records, keys=verifier, positions=positions)
    assert direct == from_wire(checked_wire(records, keys=verifier), positions)
    assert [c.position for c in direct] == positions
    assert [c.problem[0] if c.problem else None for c in direct].count("forged") == 1
    assert direct[5].tap is None and direct[5].problem is not None and direct[5].problem[0] == "malformed"
    assert all(c.tap.tap_at.tzinfo is dt.UTC for c in direct if c.tap is not None)


@pytest.fixture
def sqlite_engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The planner path is SQLite's (on PostgreSQL the parent reads): a migrated file of its own."""
    from tests import dbtools

    engine = dbtools.migrated_engine(f"sqlite:///{tmp_path / 'planner.db'}")
    try:
        yield engine
    finally:
        engine.dispose()


def test_the_planner_plans_what_the_parent_would(sqlite_engine, spec, verifier) -> None:  # type: ignore[no-untyped-def]
    engine = sqlite_engine
    cards, first, second = _batches(spec)
    _enrol(engine, cards[:14], without_account=3)  # 14, 15 not registered
    assert intake(engine, "first", first, keys=spec, now=NOW, workers=1).accepted == 130
    with write_transaction(engine) as conn:
        report_loss(conn, pan=cards[1].pan, psn=cards[1].psn, lost_at=NOW - dt.timedelta(hours=1))
    planner = PartitionPlanner(engine, second, NOW, "second")
    for part in partition(second, 3):
        checked = checked_taps([second[i] for i in part], keys=verifier, positions=part)
        with write_transaction(engine) as conn:  # the parent's view of the same state
            known, cleared, rejected = decide_partition(conn, checked, second, NOW, AccountCache())
            expected = write_plan(cleared, rejected, known.cards, "second", postgresql=False)
        planned = planner(checked)
        assert planned._replace(accounts={}) == expected
        # the EC rows it read, for the writer's cache: every card with a fare in the plan
        assert {account for debits in planned.fares.values() for account, _ in debits} <= set(
            planned.accounts
        )


def test_a_worker_that_fails_leaves_nothing(sqlite_engine, spec, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = sqlite_engine
    cards, first, _ = _batches(spec, 8)
    _enrol(engine, cards)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk gone")

    monkeypatch.setattr(store, "decide_partition", broken)  # the forked workers inherit it
    with pytest.raises(RuntimeError, match="disk gone"):
        intake(engine, "first", first, keys=spec, now=NOW, workers=2)
    with engine.connect() as conn:
        for table in (Tap, Batch, ExceptionItem):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0
    monkeypatch.undo()
    assert intake(engine, "first", first, keys=spec, now=NOW, workers=2).accepted == 80


def test_workers_on_a_file_clear_as_one_process(engine, spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests import dbtools

    cards, first, second = _batches(spec)
    reference = dbtools.migrated_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    try:
        for db, workers in ((reference, 1), (engine, 3)):
            _enrol(db, cards[:14], without_account=3)
            assert intake(db, "first", first, keys=spec, now=NOW, workers=workers).accepted == 130
            with write_transaction(db) as conn:
                report_loss(conn, pan=cards[1].pan, psn=cards[1].psn, lost_at=NOW - dt.timedelta(hours=1))
            result = intake(db, "second", second, keys=spec, now=NOW, workers=workers)
            assert (result.accepted, result.exceptions) == (130, 34)
        assert _outcome(engine) == _outcome(reference)
        _, items = _outcome(engine)
        assert sorted({reason for _, _, reason in items}) == ["duplicate", "malformed", "unknown_card"]
    finally:
        reference.dispose()


def test_only_a_shared_file_takes_the_planner_path(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert store._file_sqlite(engine) == (engine.dialect.name == "sqlite")
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"):
        memory = sa.create_engine(
            url, poolclass=sa.pool.StaticPool
        )  # make_engine refuses these; an engine made elsewhere may not
        try:
            assert not store._file_sqlite(memory)
        finally:
            memory.dispose()


def test_fare_debits_and_chain_ends_sum_the_accepted_taps(spec, verifier) -> None:  # type: ignore[no-untyped-def]
    """The plan's per-account fares and chain ends, against a plain recount of the accepted taps."""
    from citycard.clearing.batch import CardState, Known, chain_ends, decide, ec_account, fare_debits

    cards = _cards(spec, 6)
    records = list(
        synthetic.taps(cards, 60, start=NOW - dt.timedelta(hours=1), operators=("bus-1", "bus-2", "taxi-1"))
    )
    checked = checked_taps(records, keys=verifier, positions=range(len(records)))
    # card 0 cleared up to ATC 3 before (its taps 1…3 are late or out of order), the others new
    states = {c.tap.card: CardState("bank") for c in checked}
    first = checked[0].tap.card
    states[first] = CardState("bank", 3, 99_999)
    cleared, _ = decide(checked, records, known=Known(states, set(), NOW))
    expected: dict[str, dict[str, int]] = {}
    ends: dict[str, tuple[int, int]] = {}
    for tap, _ in cleared:
        account = ec_account("bank", tap.pan, tap.psn)
        per = expected.setdefault(tap.operator, {})
        per[account] = per.get(account, 0) + tap.amount_fen
        if tap.atc >= (states[tap.card].last_atc or 0) and tap.atc > ends.get(tap.card, (-1, 0))[0]:
            ends[tap.card] = (tap.atc, tap.balance_after_fen)
    assert fare_debits(cleared, states) == {op: sorted(per.items()) for op, per in sorted(expected.items())}
    assert chain_ends(cleared, states) == [(atc, after, card) for card, (atc, after) in sorted(ends.items())]
    assert first not in {card for _, _, card in chain_ends(cleared, states)} or ends[first][0] > 3


def test_workers_decide_only_with_no_other_thread(sqlite_engine, spec) -> None:  # type: ignore[no-untyped-def]
    """A thread inside SQLite when the pool forks would leave SQLite's mutexes locked in the
    workers: they decide only when this process has no other thread (the background checkpoint of
    the batch before is waited for), else the parent reads and decides, and the batch clears alike."""
    import threading

    from citycard.clearing.store import workers_decide

    assert workers_decide(sqlite_engine, 2) and not workers_decide(sqlite_engine, 1)
    cards, first, second = _batches(spec, 8)
    _enrol(sqlite_engine, cards)
    assert intake(sqlite_engine, "first", first, keys=spec, now=NOW, workers=2).accepted == 80
    # its commit left a checkpoint running in the background: waited for, not a reason to refuse
    assert workers_decide(sqlite_engine, 2)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, name="a server's thread")
    other.start()
    try:
        assert not workers_decide(sqlite_engine, 2)
        result = intake(sqlite_engine, "second", second[:80], keys=spec, now=NOW, workers=2)
        assert (result.accepted, result.exceptions) == (80, 0)
    finally:
        stop.set()
        other.join()
    assert workers_decide(sqlite_engine, 2)


def test_consecutive_batches_with_deciding_workers(sqlite_engine, spec) -> None:  # type: ignore[no-untyped-def]
    """Batch after batch in one process (each commit starting a background checkpoint), as the
    bench's --batch-size and a clearing server's queue do: every batch clears, none hangs."""
    cards = _cards(spec, 12)
    _enrol(sqlite_engine, cards)
    uploads = list(synthetic.taps(cards, 360, start=NOW - dt.timedelta(hours=2)))
    for number, start in enumerate(range(0, 360, 24)):
        result = intake(
            sqlite_engine, f"b{number}", uploads[start : start + 24], keys=spec, now=NOW, workers=2
        )
        assert (result.accepted, result.exceptions) == (24, 0)
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Tap)).scalar_one() == 360
