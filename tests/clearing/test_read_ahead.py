"""The read-ahead of an intake with workers (clearing.store.ReadAhead): card states and EC account
rows read while the parent waits for the workers' first partitions. It reads what load_known_for
would, skips records it cannot name a card for, and an intake with it clears exactly as one
without it: duplicates, a lost card's refunds, unknown cards (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from citycard.clearing import synthetic
from citycard.clearing.batch import CardState, ec_account
from citycard.clearing.parallel import checked_parts, tapered
from citycard.clearing.store import (
    READ_AHEAD_CARDS_PER_STEP,
    ReadAhead,
    intake,
    load_known_for,
    read_card_states,
    register_card,
    report_loss,
)
from citycard.clearing.tables import ExceptionItem, Tap
from citycard.db import write_transaction
from citycard.ledger import AccountCache, AccountKind, Layer, Line, PostingRequest, open_account, post_many

from .conftest import LABELS

BALANCE = 100_000
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _cards(spec, count: int) -> list[synthetic.SyntheticCard]:  # type: ignore[no-untyped-def]
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.open(spec.hsm_path, master_key_file=spec.master_key_file)
    return synthetic.make_cards(hsm, LABELS, count=count, balance_fen=BALANCE, bin_="622100")


def _enrol(engine, cards, *, without_account: int = -1) -> None:  # type: ignore[no-untyped-def]
    """Register the cards and fund their EC accounts (card ``without_account``: registered, no account)."""
    with write_transaction(engine) as conn:
        open_account(conn, "bank:funding", AccountKind.FUNDING, allow_negative=True)
        requests = []
        for i, card in enumerate(cards):
            register_card(conn, pan=card.pan, psn=card.psn, issuer="bank")
            if i == without_account:
                continue
            account = ec_account("bank", card.pan, card.psn)
            open_account(conn, account, AccountKind.EC)
            lines = (Line("bank:funding", debit_fen=BALANCE), Line(account, credit_fen=BALANCE))
            requests.append(PostingRequest(f"load:{card.pan}", lines, Layer.CLEARED))
        post_many(conn, requests)


def test_the_read_ahead_reads_what_load_known_for_reads(engine, spec) -> None:  # type: ignore[no-untyped-def]
    cards = _cards(spec, 12)
    _enrol(engine, cards[:10], without_account=3)  # cards 10, 11: not registered
    uploads: list = list(synthetic.taps(cards, 120, start=NOW - dt.timedelta(hours=1)))
    uploads += [None, {"pan": 6221, "psn": "01"}, {"psn": "01"}, {"pan": "622100", "psn": "01", "x": 1}]
    parts = tapered(uploads, 3)
    with write_transaction(engine) as conn:
        report_loss(conn, pan=cards[0].pan, psn=cards[0].psn, lost_at=NOW - dt.timedelta(minutes=30))
        accounts = AccountCache(one_transaction=True)
        ahead = ReadAhead(conn, uploads, accounts)
        steps = 0
        while ahead(parts):
            steps += 1
            assert steps < 100
        assert not ahead(parts)  # done stays done, reading nothing more
        named = {f"{c.pan}:{c.psn}" for c in cards} | {"622100:01"}
        assert set(ahead.read) == named  # every card an upload names, and only those
        states = read_card_states(conn, named)
        assert {card: state for card, state in ahead.read.items() if state is not None} == states
        assert [card for card, state in ahead.read.items() if state is None] == sorted(
            named - set(states), key=list(ahead.read).index
        )
        assert states[f"{cards[0].pan}:{cards[0].psn}"].lost_at is not None
        # the accounts of the registered cards that have one wait in the transaction's cache
        for i, card in enumerate(cards[:10]):
            row = accounts.get(ec_account("bank", card.pan, card.psn))
            assert (row is None) == (i == 3), i
        # load_known_for with what was read ahead gives what it gives alone
        cards_of = {f"{c.pan}:{c.psn}" for c in cards} | {"6229999999999999:01"}
        taps = [(f"{c.pan}:{c.psn}:{atc:04X}", f"{c.pan}:{c.psn}", atc) for c in cards for atc in (1, 2)]
        alone = load_known_for(conn, (), cards_of, set(), NOW, None, taps)
        with_read = load_known_for(conn, (), cards_of, set(), NOW, AccountCache(), taps, ahead.read)
        assert with_read == alone
        assert len(alone.cards) == 9  # registered with an EC account


def test_the_read_ahead_reads_in_bounded_steps(engine, spec) -> None:  # type: ignore[no-untyped-def]
    cards = _cards(spec, 2)
    _enrol(engine, cards)
    uploads = [{"pan": f"6239{i:012d}", "psn": "01"} for i in range(READ_AHEAD_CARDS_PER_STEP * 3 + 5)]
    parts = [list(range(0, 500)), list(range(500, len(uploads)))]
    with write_transaction(engine) as conn:
        ahead = ReadAhead(conn, uploads, AccountCache(one_transaction=True))
        sizes = []
        more = True
        while more:
            before = len(ahead.read)
            more = ahead(parts)
            sizes.append(len(ahead.read) - before)
    assert max(sizes) == READ_AHEAD_CARDS_PER_STEP  # a step reads at most its share
    assert sum(sizes) == len(uploads) and all(state is None for state in ahead.read.values())


def test_checked_parts_calls_on_wait_until_it_is_done(spec) -> None:  # type: ignore[no-untyped-def]
    uploads = list(synthetic.taps(_cards(spec, 30), 300, start=NOW - dt.timedelta(hours=1)))
    calls: list[int] = []

    def on_wait(parts) -> bool:  # type: ignore[no-untyped-def]
        calls.append(sum(len(p) for p in parts))
        return len(calls) < 3

    plain = list(checked_parts(uploads, keys=spec, workers=2))
    waited = list(checked_parts(uploads, keys=spec, workers=2, on_wait=on_wait))
    assert waited == plain
    # the first partition cannot be ready the instant the tasks go out (fork, a worker's start)
    assert 1 <= len(calls) <= 3 and set(calls) == {len(uploads)}
    assert list(checked_parts(uploads, keys=spec, workers=1, on_wait=on_wait)) and len(calls) <= 3

    def failing(parts) -> bool:  # type: ignore[no-untyped-def]
        raise RuntimeError("read-ahead failed")

    with pytest.raises(RuntimeError, match="read-ahead failed"):
        list(checked_parts(uploads, keys=spec, workers=2, on_wait=failing))


def _outcome(engine) -> tuple:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        taps = conn.execute(sa.select(Tap.key, Tap.refunded, Tap.amount_fen).order_by(Tap.key)).all()
        items = conn.execute(
            sa.select(ExceptionItem.batch_id, ExceptionItem.position, ExceptionItem.reason).order_by(
                ExceptionItem.batch_id, ExceptionItem.position
            )
        ).all()
    return [tuple(t) for t in taps], [tuple(i) for i in items]


def test_an_intake_with_the_read_ahead_clears_as_one_without(engine, spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests import dbtools

    cards = _cards(spec, 24)
    first = list(synthetic.taps(cards, 240, start=NOW - dt.timedelta(hours=2)))
    second = list(synthetic.taps(cards, 240, start=NOW - dt.timedelta(hours=1)))
    second += first[:5]  # cleared before: duplicates
    reference = dbtools.migrated_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    try:
        for db, workers in ((reference, 1), (engine, 2)):
            _enrol(db, cards[:22], without_account=5)  # 22, 23: unknown to clearing
            # cards 5 (no EC account), 22 and 23 (not registered): their 10 taps each are exceptions
            assert intake(db, "first", first, keys=spec, now=NOW, workers=workers).accepted == 210
            with write_transaction(db) as conn:  # lost between the batches: its later taps refunded
                report_loss(conn, pan=cards[1].pan, psn=cards[1].psn, lost_at=NOW - dt.timedelta(hours=1))
            result = intake(db, "second", second, keys=spec, now=NOW, workers=workers)
            assert (result.accepted, result.exceptions) == (210, 35)
        assert _outcome(engine) == _outcome(reference)
        taps, items = _outcome(engine)
        assert sum(refunded for _, refunded, _ in taps) == 10
        assert sorted({reason for _, _, reason in items}) == ["duplicate", "unknown_card"]
    finally:
        reference.dispose()


def test_card_states_of_nothing_are_nothing(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert read_card_states(conn, []) == {}
        assert read_card_states(conn, ["6221000000000000:01"]) == {}
    assert CardState("bank")._fields[0] == "issuer"


@pytest.mark.parametrize("batch_id", ["o'brien's", "a?1;--'", "批次-1"])
def test_a_batch_id_in_the_insert_text_is_stored_as_given(engine, spec, batch_id: str) -> None:  # type: ignore[no-untyped-def]
    """The SQLite insert of worker taps carries the batch id as a string literal (quotes doubled):
    stored exactly, in every variant of the statement (refunded or not)."""
    cards = _cards(spec, 4)
    _enrol(engine, cards)
    with write_transaction(engine) as conn:
        report_loss(conn, pan=cards[2].pan, psn=cards[2].psn, lost_at=NOW - dt.timedelta(hours=2))
    uploads = list(synthetic.taps(cards, 40, start=NOW - dt.timedelta(hours=1)))
    result = intake(engine, batch_id, uploads, keys=spec, now=NOW, workers=2)
    assert (result.accepted, result.exceptions) == (40, 0)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(Tap.batch_id, Tap.card, Tap.refunded)).all()
    assert {row.batch_id for row in rows} == {batch_id}
    lost = f"{cards[2].pan}:{cards[2].psn}"
    assert (
        sorted((row.card == lost, row.refunded) for row in rows)
        == [(False, False)] * 30 + [(True, True)] * 10
    )
    assert intake(engine, batch_id, uploads, keys=spec, now=NOW, workers=2).replayed
