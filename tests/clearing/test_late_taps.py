"""Late taps (issue 7): a tap whose validator uploaded after a later tap of the same card cleared.

Real virtual cards tapped by the real kernel, the real HSM verifier and ledger, SQLite and
PostgreSQL (``engine``). A late tap is not a replay (those are ``duplicate``) and its TC and IAD
MAC verify, so it clears when its balance fits its cleared neighbours (ATC ± 1).
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from citycard.clearing.batch import Known, check_records, decide, ec_account, operator_account
from citycard.clearing.store import intake, load_known, reconcile, settle
from citycard.clearing.tables import Card, ExceptionItem, Tap
from citycard.db import write_transaction
from citycard.ledger import balance_fen, check_invariants, find_posting

from .conftest import BALANCE_FEN, DAY1, ISSUER, START, enrol, make_terminal

NOW = START + dt.timedelta(days=3)


def open_items(engine) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(sa.select(ExceptionItem).order_by(ExceptionItem.id)).all()


def chain(engine, card) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        row = conn.execute(sa.select(Card).where(Card.card == f"{card.pan}:{card.psn}")).one()
    return row.last_atc, row.last_balance_fen


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_bus_a_offline_for_days_clears_after_bus_b(engine, tapper, verifier, capks, blacklist, suite) -> None:  # type: ignore[no-untyped-def]
    card = tapper(suite)
    bus_a = card.tap(200, START, vehicle="A")  # ATC 1 on bus A (offline for days)
    bus_a["terminal_id"] = "BUS-A"
    card.terminal = make_terminal(capks, exceptions=blacklist)  # bus B's own validator
    bus_b = card.tap(150, START + dt.timedelta(minutes=40), vehicle="B")  # ATC 2
    bus_b["terminal_id"] = "BUS-B"
    account = enrol(engine, card)

    assert intake(engine, "BUS-B-1", [bus_b], keys=verifier, now=NOW).accepted == 1
    assert chain(engine, card) == (2, BALANCE_FEN - 350)
    late = intake(engine, "BUS-A-1", [bus_a], keys=verifier, now=NOW)
    assert (late.accepted, late.exceptions) == (1, 0)
    assert open_items(engine) == []
    assert chain(engine, card) == (2, BALANCE_FEN - 350)  # the late tap does not move the chain
    key = f"{card.pan}:{card.psn}:0001"
    with engine.connect() as conn:
        fares = find_posting(conn, "fares:BUS-A-1:0")  # the late tap's fare (batch.fare_postings)
        assert fares is not None and {(line.account, line.debit_fen) for line in fares.lines} == {
            (account, 200),
            (operator_account("bus-1"), 0),
        }
        assert balance_fen(conn, account) == card.balance_fen == BALANCE_FEN - 350  # = the chip's
        assert balance_fen(conn, operator_account("bus-1")) == 350
        assert check_invariants(conn) == []
        assert sorted(conn.execute(sa.select(Tap.key)).scalars()) == [key, f"{card.pan}:{card.psn}:0002"]
    report = reconcile(engine)
    assert report["ledger_balanced"] and report["ec_reconciled"], report
    assert report["expected_fen"] == report["collected_fen"] == 350
    [line] = settle(engine, DAY1)
    assert (line.taps, line.gross_fen) == (2, 350)

    # the late tap uploaded again (bus A resends): a duplicate, nothing posted twice
    again = intake(engine, "BUS-A-2", [bus_a], keys=verifier, now=NOW)
    assert (again.accepted, again.exceptions) == (0, 1)
    [item] = open_items(engine)
    assert (item.reason, item.key) == ("duplicate", key)
    with engine.connect() as conn:
        assert balance_fen(conn, account) == BALANCE_FEN - 350


def test_several_late_taps_chain_with_each_other_and_the_forward_chain(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    card = tapper("GM")
    taps = card.taps([100, 200, 300, 400, 500])  # ATC 1…5
    account = enrol(engine, card)
    intake(engine, "b1", [taps[3]], keys=verifier, now=NOW)  # ATC 4 first
    # ATC 1–3 late (one batch, out of upload order) with ATC 5 moving the chain forward
    result = intake(engine, "b2", [taps[4], taps[2], taps[0], taps[1]], keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (4, 0)
    assert chain(engine, card) == (5, BALANCE_FEN - 1500)
    with engine.connect() as conn:
        assert balance_fen(conn, account) == card.balance_fen == BALANCE_FEN - 1500
        assert check_invariants(conn) == []
    assert reconcile(engine)["ec_reconciled"]


def test_late_tap_that_does_not_fit_its_neighbours_is_balance_chain(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    card = tapper("INTL")
    taps = card.taps([100, 200, 300])  # after: 9900, 9700, 9400 (from 10000)
    account = enrol(engine, card)
    intake(engine, "b1", [taps[0], taps[2]], keys=verifier, now=NOW)  # ATC 1 and 3 (gap: no check)
    # What clearing holds for ATC 1 and ATC 3 no longer fits ATC 2 (its MACed balances are real)
    with write_transaction(engine) as conn:
        conn.execute(sa.update(Tap).where(Tap.atc == 1).values(balance_after_fen=BALANCE_FEN - 101))
    result = intake(engine, "b2", [taps[1]], keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (0, 1)
    [item] = open_items(engine)
    assert (item.reason, item.key) == ("balance_chain", f"{card.pan}:{card.psn}:0002")
    assert "balance before 9900 fen ≠ 9899 fen after ATC 1" in item.detail
    with write_transaction(engine) as conn:  # the ATC+1 side: ATC 1 fits again, ATC 3 does not
        conn.execute(sa.delete(ExceptionItem))
        conn.execute(sa.update(Tap).where(Tap.atc == 1).values(balance_after_fen=BALANCE_FEN - 100))
        conn.execute(sa.update(Tap).where(Tap.atc == 3).values(balance_after_fen=BALANCE_FEN - 601))
    result = intake(engine, "b3", [taps[1]], keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (0, 1)
    [item] = open_items(engine)
    assert item.reason == "balance_chain"
    assert "balance after 9700 fen ≠ 9699 fen before ATC 3" in item.detail
    with engine.connect() as conn:  # nothing posted for ATC 2; the chain is where ATC 3 left it
        assert find_posting(conn, f"tc:{card.pan}:{card.psn}:0002") is None
        assert balance_fen(conn, account) == BALANCE_FEN - 400
        assert check_invariants(conn) == []
    assert chain(engine, card) == (3, BALANCE_FEN - 600)


def test_decide_chains_late_taps_of_one_batch(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    """The pure function with state from load_known: late ATC 2 accepted, then late ATC 3 whose
    balance before (altered after the HSM check) does not fit ATC 2 → balance_chain naming ATC 2."""
    card = tapper("GM")
    taps = card.taps([100, 200, 300, 400])
    enrol(engine, card)
    intake(engine, "b1", [taps[0], taps[3]], keys=verifier, now=NOW)  # ATC 1, ATC 4 (gap)
    uploads = [taps[1], taps[2]]
    with engine.connect() as conn:
        known = load_known(conn, uploads, NOW)
    assert known.cards[f"{card.pan}:{card.psn}"].last_atc == 4
    # neighbours of late ATC 2 and 3: ATC 1 and 4 cleared (2 and 3 are not)
    assert dict(known.neighbours) == {
        f"{card.pan}:{card.psn}:0001": (BALANCE_FEN, BALANCE_FEN - 100),
        f"{card.pan}:{card.psn}:0004": (BALANCE_FEN - 600, BALANCE_FEN - 1000),
    }
    checked = check_records(uploads, keys=verifier, compact=True)
    accepted, rejected = decide(checked, uploads, known=known)
    assert [tap.atc for tap, _ in accepted] == [2, 3] and rejected == []
    bent = [checked[0], checked[1]._replace(tap=checked[1].tap._replace(amount_fen=301))]
    accepted, rejected = decide(bent, uploads, known=known)
    assert [tap.atc for tap, _ in accepted] == [2]
    assert [(e.reason, e.position) for e in rejected] == [("balance_chain", 1)]
    assert "≠ 9700 fen after ATC 2" in rejected[0].detail
    # without the cleared neighbours (Known empty of them) a late tap is not checked against them
    bare = Known(known.cards, known.seen, known.now, known.refundable)
    assert len(decide(checked, uploads, known=bare)[0]) == 2


def test_equal_atc_without_its_tap_row_is_out_of_order(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    """An ATC equal to the last cleared one that is not a duplicate cannot be checked: held."""
    card = tapper("GM")
    taps = card.taps([100, 200])
    enrol(engine, card)
    with write_transaction(engine) as conn:
        conn.execute(sa.update(Card).values(last_atc=2, last_balance_fen=BALANCE_FEN - 300))
    result = intake(engine, "b1", [taps[1]], keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (0, 1)
    assert [i.reason for i in open_items(engine)] == ["out_of_order"]
    with engine.connect() as conn:
        assert balance_fen(conn, ec_account(ISSUER, card.pan, card.psn)) == BALANCE_FEN
