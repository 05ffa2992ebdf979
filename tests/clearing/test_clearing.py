"""Clearing end to end on SQLite and PostgreSQL: real cards, real TCs, real HSM, real ledger."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from citycard.clearing.batch import ec_account, operator_account
from citycard.clearing.store import (
    ClearingError,
    handle_exception,
    intake,
    reconcile,
    report_loss,
    settle,
    settlement_csv,
    settlement_json,
)
from citycard.clearing.tables import Card, ExceptionItem, Tap
from citycard.db import write_transaction
from citycard.ledger import balance_fen, check_invariants, find_posting, journal_counts

from .conftest import BALANCE_FEN, DAY1, DAY2, ISSUER, OPERATOR, START, enrol

NOW = START + dt.timedelta(days=1)
AMOUNTS = [200, 150, 300, 100, 250, 200, 120, 180, 90, 200, 300, 110]  # a dozen bus fares, fen


def totals(engine) -> dict:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        problems = check_invariants(conn)
        counts = journal_counts(conn)
        operator = balance_fen(conn, operator_account(OPERATOR))
    assert problems == []
    return {"counts": counts, "operator": operator}


def exceptions(engine) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(sa.select(ExceptionItem).order_by(ExceptionItem.id)).all()


@pytest.mark.parametrize("suites", [("GM", "INTL")])
def test_real_taps_clear_in_both_suites(engine, tapper, verifier, suites) -> None:  # type: ignore[no-untyped-def]
    uploads, cards = [], []
    for suite in suites:
        card = tapper(suite)
        uploads += card.taps(AMOUNTS)
        cards.append(card)
    for card in cards:
        enrol(engine, card)
    result = intake(engine, "T0001-0001", uploads, keys=verifier, now=NOW)
    assert (result.records, result.accepted, result.exceptions, result.replayed) == (24, 24, 0, False)
    with engine.connect() as conn:
        assert balance_fen(conn, operator_account(OPERATOR)) == 2 * sum(AMOUNTS)
        for card in cards:
            assert balance_fen(conn, ec_account(ISSUER, card.pan, card.psn)) == card.balance_fen
        # Grouped fare postings (batch.fare_postings): per card partition and operator, each card's
        # EC account debited with its fares, the operator credited with their sum; none per tap.
        lines = []
        for number in range(3):
            posting = find_posting(conn, f"fares:T0001-0001:{number}")
            if posting is not None:
                assert sum(line.credit_fen for line in posting.lines) == sum(
                    line.debit_fen for line in posting.lines
                )
                lines += [(line.account, line.debit_fen) for line in posting.lines if line.debit_fen]
        assert sorted(lines) == sorted((ec_account(ISSUER, c.pan, c.psn), sum(AMOUNTS)) for c in cards)
        assert find_posting(conn, f"tc:{card.pan}:{card.psn}:0001") is None
        assert conn.execute(sa.select(sa.func.count()).select_from(Tap)).scalar_one() == 24
    report = reconcile(engine)
    assert report["ledger_balanced"] and report["ec_reconciled"], report
    assert report["expected_fen"] == report["collected_fen"] == 2 * sum(AMOUNTS)
    totals(engine)


def test_forged_tc_is_rejected_with_its_reason(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    card = tapper("GM")
    good, victim, raised = card.taps([200, 150, 300])
    enrol(engine, card)
    flipped = dict(victim)
    tc_at = flipped["field55"].index("9F2608") + 6  # the 8 TC bytes follow the tag and length
    flipped["field55"] = flipped["field55"][:tc_at] + "00" * 8 + flipped["field55"][tc_at + 16 :]
    # a different fare with the real TC: the AC input changes, so the TC no longer verifies
    fare_at = raised["field55"].index("9F0206") + 6
    dearer = dict(
        raised,
        amount_fen=5,
        field55=raised["field55"][:fare_at] + "000000000005" + raised["field55"][fare_at + 12 :],
    )
    result = intake(engine, "b1", [good, flipped, dearer], keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (1, 2)
    items = exceptions(engine)
    assert [(i.reason, i.status) for i in items] == [("forged", "open"), ("forged", "open")]
    assert all("TC 9F26 does not verify (GM)" in i.detail for i in items)
    with pytest.raises(ClearingError, match="can only be rejected"):
        handle_exception(engine, items[0].id, action="accept", operator="alice")
    assert (
        handle_exception(engine, items[0].id, action="reject", operator="alice", note="forged") == "rejected"
    )
    with engine.connect() as conn:
        assert balance_fen(conn, operator_account(OPERATOR)) == 200
        assert (
            conn.execute(
                sa.select(ExceptionItem.handled_by).where(ExceptionItem.id == items[0].id)
            ).scalar_one()
            == "alice"
        )
    totals(engine)


def test_duplicate_upload_changes_nothing(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    card = tapper("INTL")
    uploads = card.taps(AMOUNTS[:6])
    enrol(engine, card)
    first = intake(engine, "T0001-0007", uploads, keys=verifier, now=NOW)
    before = totals(engine)
    again = intake(engine, "T0001-0007", uploads, keys=verifier, now=NOW)
    assert again.replayed and (again.accepted, again.exceptions) == (first.accepted, first.exceptions) == (
        6,
        0,
    )
    assert totals(engine) == before and exceptions(engine) == []
    with pytest.raises(ClearingError, match="other records"):
        intake(engine, "T0001-0007", uploads[:3], keys=verifier, now=NOW)
    # the same taps under a new batch id (an uploader that lost its ack): every one a duplicate
    copy = intake(engine, "T0001-0008", uploads + uploads[:1], keys=verifier, now=NOW)
    assert (copy.accepted, copy.exceptions) == (0, 7)
    assert {i.reason for i in exceptions(engine)} == {"duplicate"}
    assert totals(engine)["operator"] == before["operator"] == sum(AMOUNTS[:6])


def test_balance_chain_break_and_a_late_tap(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    card = tapper("GM")
    uploads = card.taps([100, 200, 300, 400])
    enrol(engine, card)
    intake(engine, "b1", [uploads[1]], keys=verifier, now=NOW)  # ATC 2 first
    # What clearing believes the chip held after ATC 2 differs from what ATC 3 reports before it
    with write_transaction(engine) as conn:
        conn.execute(sa.update(Card).values(last_balance_fen=BALANCE_FEN - 300 + 1))
    result = intake(engine, "b2", [uploads[0], uploads[2], uploads[3]], keys=verifier, now=NOW)
    # ATC 1 is a late tap that fits cleared ATC 2 (tests/clearing/test_late_taps.py); ATC 4
    # restarts the chain after the gap
    assert (result.accepted, result.exceptions) == (2, 1)
    items = {i.reason: i for i in exceptions(engine)}
    assert set(items) == {"balance_chain"}
    assert items["balance_chain"].key.endswith(":0003")
    assert "≠ 9701 fen after ATC 2" in items["balance_chain"].detail
    # the operator accepts ATC 3 after checking it: it posts once
    assert handle_exception(engine, items["balance_chain"].id, action="accept", operator="bob") == "accepted"
    with pytest.raises(ClearingError, match="already handled"):
        handle_exception(engine, items["balance_chain"].id, action="accept", operator="bob")
    with engine.connect() as conn:
        assert balance_fen(conn, operator_account(OPERATOR)) == 100 + 200 + 300 + 400
    totals(engine)


def test_taps_after_the_loss_report_are_refunded(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    card = tapper("INTL")
    uploads = card.taps([200, 300, 400])  # at START, +7 min, +14 min
    account = enrol(engine, card)
    with write_transaction(engine) as conn:
        report_loss(conn, pan=card.pan, psn=card.psn, lost_at=START + dt.timedelta(minutes=7, seconds=40))
    result = intake(engine, "b1", uploads, keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (3, 0)
    with engine.connect() as conn:
        refunded = (
            conn.execute(sa.select(Tap.atc).where(Tap.refunded.is_(True)).order_by(Tap.atc)).scalars().all()
        )
        assert refunded == [2, 3]  # the minute of the report counts: ATC 2 was tapped in it
        assert balance_fen(conn, account) == BALANCE_FEN - 200
        assert balance_fen(conn, operator_account(OPERATOR)) == 200
        assert find_posting(conn, f"refund:{card.pan}:{card.psn}:0003") is not None
    report = reconcile(engine)
    assert report["ec_reconciled"] and report["expected_fen"] == report["collected_fen"] == 200
    totals(engine)


def test_settlement_per_operator_and_day_with_fee_split(engine, tapper, verifier, tmp_path) -> None:  # type: ignore[no-untyped-def]
    card = tapper("GM")
    day1 = card.taps([1000, 2000], start=START)
    day2 = card.taps([3000], start=START + dt.timedelta(days=1))
    enrol(engine, card)
    intake(engine, "b1", day1 + day2, keys=verifier, now=NOW + dt.timedelta(days=1))
    rates = (60, {OPERATOR: 100})
    first = settle(engine, DAY1, rates=rates)
    assert [(s.operator, s.taps, s.gross_fen, s.fee_fen, s.net_fen) for s in first] == [
        (OPERATOR, 2, 3000, 30, 2970)
    ]
    assert settle(engine, DAY1, rates=rates) == first  # once per operator and day
    second = settle(engine, DAY2, rates=rates)
    assert [(s.gross_fen, s.fee_fen, s.net_fen) for s in second] == [(3000, 30, 2970)]
    assert settlement_csv(first).splitlines() == [
        "operator,day,taps,gross_fen,fee_rate_bp,fee_fen,net_fen",
        f"{OPERATOR},{DAY1},2,3000,100,30,2970",
    ]
    assert json.loads(settlement_json(second))[0]["net_fen"] == 2970
    with engine.connect() as conn:
        assert balance_fen(conn, operator_account(OPERATOR)) == 0
        assert balance_fen(conn, f"operator:{OPERATOR}:payable") == 5940
        assert balance_fen(conn, "clearing:fees") == 60
    report = reconcile(engine)
    assert report["operators"][OPERATOR] == {"expected_fen": 6000, "collected_fen": 6000, "equal": True}
    totals(engine)


def test_late_and_malformed_records(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    card = tapper("INTL")
    old, fresh = card.taps([100, 100])
    enrol(engine, card)
    broken = dict(fresh, field55=fresh["field55"][:-4])
    result = intake(
        engine, "b1", [old, broken, {"pan": "x"}], keys=verifier, now=START + dt.timedelta(days=31)
    )
    assert (result.accepted, result.exceptions) == (0, 3)
    assert [i.reason for i in exceptions(engine)] == ["late", "malformed", "malformed"]
    late = exceptions(engine)[0]
    assert handle_exception(engine, late.id, action="refund", operator="carol") == "refunded"
    with engine.connect() as conn:
        assert balance_fen(conn, operator_account(OPERATOR)) == 0  # charged and refunded
    totals(engine)


def test_a_card_without_an_ec_account_is_an_exception_not_a_failed_batch(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    from citycard.clearing.store import register_card

    known_card, stranger = tapper("GM"), tapper("INTL")
    uploads = known_card.taps([100, 200]) + stranger.taps([300])
    enrol(engine, known_card)
    with write_transaction(engine) as conn:  # registered, but the issuer never opened its EC account
        register_card(conn, pan=stranger.pan, psn=stranger.psn, issuer=ISSUER)
    result = intake(engine, "b1", uploads, keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (2, 1)
    assert [(i.reason, i.key.split(":")[0]) for i in exceptions(engine)] == [("unknown_card", stranger.pan)]
    assert totals(engine)["operator"] == 300
