"""Transit taps in clearing (issue 7 items 2–3): the transit object, zero-amount taps, exit refunds,
``refund_unbacked``, settlement and reconciliation net of refunds, ``transit_taps`` and corrections.

SQLite and PostgreSQL (``engine``); real TCs and IAD MACs from card keys derived in the real HSM
(synthetic cards: the kernel refuses a zero amount, a segmented exit's), and real kernel taps for
the entry/flat case; ledger invariants after each.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.clearing import synthetic
from citycard.clearing.batch import ec_account, operator_account
from citycard.clearing.errors import MalformedRecord
from citycard.clearing.store import (
    ClearingError,
    handle_exception,
    intake,
    post_correction,
    reconcile,
    register_card,
    settle,
    transit_taps,
)
from citycard.clearing.tables import Correction, ExceptionItem, Tap
from citycard.clearing.transit import TRANSIT_FIELDS, TRANSIT_KINDS, Transit, parse_transit
from citycard.db import write_transaction
from citycard.ledger import (
    AccountKind,
    Layer,
    Line,
    PostingRequest,
    balance_fen,
    check_invariants,
    find_posting,
    open_account,
    post,
)

from .conftest import CHINA, DAY1, ISSUER, LABELS, OPERATOR, START, enrol

BALANCE = 5_000
NOW = START + dt.timedelta(hours=6)


def transit(kind: str, *, fare: int = 0, refund: int = 0, stop: str | None = "S01") -> dict[str, Any]:
    return {
        "kind": kind, "line": "3", "stop": stop, "fare_fen": fare, "refund_fen": refund,
        "reasons": ["segment_fare"] if kind == "exit" else ["max_fare_held"], "holder_kind": "resident",
    }  # fmt: skip


@pytest.fixture
def cards(engine, spec):  # type: ignore[no-untyped-def]
    """Two synthetic cards (one per suite) with keys from the HSM, registered and funded."""
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.open(spec.hsm_path, master_key_file=spec.master_key_file)
    made = synthetic.make_cards(hsm, LABELS, count=2, balance_fen=BALANCE, bin_="621999")
    with write_transaction(engine) as conn:
        open_account(conn, f"{ISSUER}:funding", AccountKind.FUNDING, allow_negative=True)
        for card in made:
            register_card(conn, pan=card.pan, psn=card.psn, issuer=ISSUER)
            account = ec_account(ISSUER, card.pan, card.psn)
            open_account(conn, account, AccountKind.EC)
            post(
                conn,
                PostingRequest(
                    f"load:{card.pan}",
                    (Line(f"{ISSUER}:funding", debit_fen=BALANCE), Line(account, credit_fen=BALANCE)),
                    Layer.CLEARED,
                ),
            )
    return made


def tap(card: Any, amount: int, minutes: int, info: dict[str, Any] | None) -> dict[str, Any]:
    upload = card.tap(
        amount, START + dt.timedelta(minutes=minutes), operator=OPERATOR, route="3", vehicle="V7",
        terminal_id="T0007", rng=random.Random(minutes),
    )  # fmt: skip
    if info is not None:
        upload["transit"] = info
    return upload


def ledger(engine, account: str) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert check_invariants(conn) == []
        return balance_fen(conn, account)


def test_entry_then_exit_refunds_the_held_excess(engine, cards, verifier) -> None:  # type: ignore[no-untyped-def]
    for card in cards:  # both suites
        uploads = [
            tap(card, 500, 0, transit("entry", fare=500)),  # the maximum held at entry
            tap(card, 0, 30, transit("exit", fare=200, refund=300)),  # a zero-amount exit: 300 back
            tap(card, 0, 60, transit("flat", stop=None)),  # a free concession ride
        ]
        result = intake(engine, f"T7-{card.suite.name}", uploads, keys=verifier, now=NOW)
        assert (result.accepted, result.exceptions) == (3, 0)
        account = ec_account(ISSUER, card.pan, card.psn)
        assert card.balance_fen == BALANCE - 500  # the chip paid the maximum …
        assert ledger(engine, account) == BALANCE - 200  # … and the ledger paid 300 back
        with engine.connect() as conn:
            refund = find_posting(conn, f"exitrefund:{card.pan}:{card.psn}:0002")
            assert refund is not None
            assert {(line.account, line.debit_fen, line.credit_fen) for line in refund.lines} == {
                (operator_account(OPERATOR), 300, 0),
                (account, 0, 300),
            }
            fares = find_posting(conn, f"fares:T7-{card.suite.name}:0")  # only the entry's 500 fen:
            assert fares is not None  # the zero-amount taps add nothing to the fare posting
            assert {(line.account, line.debit_fen, line.credit_fen) for line in fares.lines} == {
                (account, 500, 0),
                (operator_account(OPERATOR), 0, 500),
            }
            assert find_posting(conn, f"fares:T7-{card.suite.name}:1") is None
            rows = conn.execute(
                sa.select(Tap).where(Tap.card == f"{card.pan}:{card.psn}").order_by(Tap.atc)
            ).all()
        assert [(r.amount_fen, r.exit_refund_fen) for r in rows] == [(500, None), (0, 300), (0, None)]
        assert json.loads(rows[1].transit) == transit("exit", fare=200, refund=300)
    assert ledger(engine, operator_account(OPERATOR)) == 2 * 200
    report = reconcile(engine)
    assert report["ledger_balanced"] and report["ec_reconciled"], report
    assert report["expected_fen"] == report["collected_fen"] == 400
    (line,) = settle(engine, DAY1)
    assert (line.operator, line.taps, line.gross_fen) == (OPERATOR, 6, 400)
    assert ledger(engine, operator_account(OPERATOR)) == 0
    replay = intake(engine, f"T7-{card.suite.name}", uploads, keys=verifier, now=NOW)  # the last card's
    assert replay.replayed and replay.accepted == 3
    assert ledger(engine, operator_account(OPERATOR)) == 0


def test_zero_amount_tap_still_checks_the_chain_and_the_tc(engine, cards, verifier) -> None:  # type: ignore[no-untyped-def]
    card = cards[0]
    first = tap(card, 300, 0, transit("entry", fare=300))
    free = tap(card, 0, 20, transit("exit", fare=300))
    third = tap(card, 0, 40, transit("flat"))
    forged = dict(free)
    field55 = forged["field55"]
    at = field55.index("9F2608") + 6
    forged["field55"] = field55[:at] + "00" * 8 + field55[at + 16 :]
    result = intake(engine, "T7-zero", [first, forged], keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (1, 1)
    with engine.connect() as conn:
        (item,) = conn.execute(sa.select(ExceptionItem)).all()
    assert item.reason == "forged"
    result = intake(engine, "T7-zero-2", [free, third], keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (2, 0)
    assert ledger(engine, ec_account(ISSUER, card.pan, card.psn)) == card.balance_fen == BALANCE - 300


def test_unbacked_exit_refund_is_held_for_the_operator(engine, cards, verifier) -> None:  # type: ignore[no-untyped-def]
    card = cards[1]
    uploads = [tap(card, 100, 0, transit("entry", fare=100)), tap(card, 0, 30, transit("exit", refund=150))]
    result = intake(engine, "T7-unbacked", uploads, keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (1, 1)
    with engine.connect() as conn:
        (item,) = conn.execute(sa.select(ExceptionItem)).all()
    assert item.reason == "refund_unbacked" and "150 fen > 100 fen" in item.detail, item.detail
    account = ec_account(ISSUER, card.pan, card.psn)
    assert ledger(engine, account) == BALANCE - 100  # nothing refunded
    with pytest.raises(ClearingError, match=r"can only be rejected|must be accept"):
        handle_exception(engine, item.id, action="refund", operator="alice")
    # The operator confirms it (say the entry was on another validator not yet uploaded): but the
    # operator's account holds only 100 fen of this card's fares — the ledger refuses a debit past it.
    with pytest.raises(ClearingError, match="ledger refuses"):
        handle_exception(engine, item.id, action="accept", operator="alice")
    assert handle_exception(engine, item.id, action="reject", operator="alice", note="no entry") == "rejected"
    assert ledger(engine, account) == BALANCE - 100
    # a later exit refund within what was collected clears
    later = tap(card, 0, 90, transit("exit", refund=100))
    assert intake(engine, "T7-unbacked-2", [later], keys=verifier, now=NOW).accepted == 1
    assert ledger(engine, account) == BALANCE
    assert reconcile(engine)["ec_reconciled"]


def test_a_refund_is_backed_by_the_same_batch_and_by_earlier_batches(engine, cards, verifier) -> None:  # type: ignore[no-untyped-def]
    card = cards[0]
    assert (
        intake(engine, "A", [tap(card, 400, 0, transit("entry", fare=400))], keys=verifier, now=NOW).accepted
        == 1
    )
    result = intake(
        engine, "B",
        [tap(card, 0, 30, transit("exit", refund=250)), tap(card, 0, 31, transit("exit", refund=200))],
        keys=verifier, now=NOW,
    )  # fmt: skip
    assert (result.accepted, result.exceptions) == (1, 1)  # 250 of 400; then 200 > the 150 left
    with engine.connect() as conn:
        reasons = conn.execute(sa.select(ExceptionItem.reason)).scalars().all()
    assert reasons == ["refund_unbacked"]


def test_transit_taps_and_corrections_once(engine, cards, verifier) -> None:  # type: ignore[no-untyped-def]
    card, other = cards
    uploads = [tap(card, 600, 0, transit("entry", fare=600)), tap(other, 200, 5, transit("flat", fare=200))]
    uploads.append(tap(card, 150, 50, None))  # a tap without transit object is not listed
    assert intake(engine, "T7-day", uploads, keys=verifier, now=NOW).accepted == 3
    with engine.connect() as conn:
        listed = transit_taps(conn, day=DAY1)
        mine = transit_taps(conn, day=DAY1, pan=card.pan, psn=card.psn)
        other_day = transit_taps(conn, day="2001-01-01")
    assert sorted(t.key for t in listed) == sorted([f"{card.pan}:01:0001", f"{other.pan}:01:0001"])
    assert [(t.amount_fen, t.transit["kind"], t.tap_at.tzinfo is not None) for t in mine] == [
        (600, "entry", True)
    ]
    assert mine[0].tap_at == START and mine[0].day == START.astimezone(CHINA).date().isoformat()
    assert other_day == []
    key = f"correction:{card.pan}:{card.psn}:{DAY1}:missing_exit"
    account = ec_account(ISSUER, card.pan, card.psn)
    with write_transaction(engine) as conn:
        assert post_correction(conn, key=key, pan=card.pan, psn=card.psn, operator=OPERATOR, amount_fen=400,
                               reason="missing exit: maximum fare less the longest segment")  # fmt: skip
    with write_transaction(engine) as conn:  # a rerun posts nothing
        assert not post_correction(conn, key=key, pan=card.pan, psn=card.psn, operator=OPERATOR,
                                   amount_fen=400, reason="missing exit")  # fmt: skip
    assert ledger(engine, account) == BALANCE - 600 - 150 + 400
    with pytest.raises(ClearingError, match="other values"), write_transaction(engine) as conn:
        post_correction(
            conn, key=key, pan=card.pan, psn=card.psn, operator=OPERATOR, amount_fen=1, reason="x"
        )
    with pytest.raises(ClearingError, match="collected"), write_transaction(engine) as conn:
        post_correction(
            conn,
            key=key + ":cap",
            pan=card.pan,
            psn=card.psn,
            operator=OPERATOR,
            amount_fen=351,
            reason="cap",
        )  # fmt: skip  (600 + 150 − 400 = 350 left)
    with pytest.raises(ClearingError, match="must start with"), write_transaction(engine) as conn:
        post_correction(
            conn, key="tc:x", pan=card.pan, psn=card.psn, operator=OPERATOR, amount_fen=1, reason="x"
        )
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Correction)).scalar_one() == 1
        assert conn.execute(sa.select(Correction.day)).scalar_one() == DAY1
    report = reconcile(engine)
    assert report["ledger_balanced"] and report["ec_reconciled"], report
    assert report["expected_fen"] == report["collected_fen"] == 600 + 150 + 200 - 400
    (line,) = settle(engine, DAY1)
    assert (line.taps, line.gross_fen) == (3, 550)
    assert settle(engine, DAY1) == [line]  # once per day
    assert ledger(engine, operator_account(OPERATOR)) == 0


def test_transit_in_workers_equals_one_process(engine, cards, spec, verifier) -> None:  # type: ignore[no-untyped-def]
    uploads = []
    for card in cards:
        uploads += [
            tap(card, 500, 0, transit("entry", fare=500)),
            tap(card, 0, 30, transit("exit", refund=300)),
        ]
        uploads.append(tap(card, 0, 60, transit("exit", refund=300)))  # unbacked: 200 left
    result = intake(engine, "T7-w", uploads, keys=spec, now=NOW, workers=2)
    assert (result.accepted, result.exceptions) == (4, 2)
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(ExceptionItem.reason)).scalars()) == {"refund_unbacked"}
    assert ledger(engine, operator_account(OPERATOR)) == 2 * 200
    assert reconcile(engine)["ec_reconciled"]


def test_real_kernel_taps_carry_their_transit_object(engine, tapper, verifier) -> None:  # type: ignore[no-untyped-def]
    card = tapper("INTL")
    uploads = card.taps([400, 200])
    uploads[0]["transit"] = transit("entry", fare=400)
    uploads[1]["transit"] = transit("flat", fare=200, stop=None)
    enrol(engine, card)
    assert intake(engine, "T7-kernel", uploads, keys=verifier, now=NOW).accepted == 2
    with engine.connect() as conn:
        kinds = [t.transit["kind"] for t in transit_taps(conn, day=DAY1, pan=card.pan, psn=card.psn)]
    assert kinds == ["entry", "flat"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"colour": "red"}, "transit: unknown fields colour"),
        ({"kind": "walk"}, "transit.kind"),
        ({"fare_fen": 100_001}, "transit.fare_fen"),
        ({"fare_fen": 1.5}, "transit.fare_fen"),
        ({"refund_fen": True}, "transit.refund_fen"),
        ({"line": ""}, "transit.line"),
        ({"stop": "x" * 33}, "transit.stop"),
        ({"reasons": ["a b"]}, "transit.reasons[0]"),
        ({"reasons": ["x"] * 9}, "transit.reasons"),
        ({"holder_kind": None}, "transit.holder_kind"),
    ],
)
def test_a_bad_transit_object_is_malformed_naming_the_field(engine, cards, verifier, change, named) -> None:  # type: ignore[no-untyped-def]
    upload = tap(cards[0], 100, 0, transit("entry", fare=100) | change)
    result = intake(engine, "T7-bad", [upload], keys=verifier, now=NOW)
    assert (result.accepted, result.exceptions) == (0, 1)
    with engine.connect() as conn:
        (item,) = conn.execute(sa.select(ExceptionItem)).all()
    assert item.reason == "malformed" and item.detail.startswith(named), item.detail
    assert ledger(engine, ec_account(ISSUER, cards[0].pan, cards[0].psn)) == BALANCE


# --- the parser alone (no database) -------------------------------------------------------------

NAMES = st.from_regex(r"[A-Za-z0-9_.\-]{1,32}", fullmatch=True)
VALID = st.builds(
    lambda kind, line, stop, fare, refund, reasons, holder: {
        "kind": kind,
        "line": line,
        "stop": stop,
        "fare_fen": fare,
        "refund_fen": refund if kind == "exit" else 0,
        "reasons": reasons,
        "holder_kind": holder,
    },
    st.sampled_from(TRANSIT_KINDS),
    NAMES,
    st.none() | NAMES,
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.lists(st.from_regex(r"[A-Za-z0-9_.:\-]{1,48}", fullmatch=True), max_size=8),
    NAMES,
)
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(VALID)
def test_every_valid_object_parses_and_round_trips(value: dict[str, Any]) -> None:
    parsed = parse_transit(value)
    assert isinstance(parsed, Transit) and parsed.as_dict() == value
    assert parse_transit(json.loads(parsed.json())) == parsed


@settings(max_examples=500, deadline=None)
@given(VALID, st.sampled_from(TRANSIT_FIELDS), JUNK)
def test_a_field_replaced_by_anything_parses_or_names_that_field(value, field, junk) -> None:  # type: ignore[no-untyped-def]
    value = value | {field: junk}
    try:
        parsed = parse_transit(value)
    except MalformedRecord as exc:
        assert str(exc).startswith(("transit.", "transit:")), exc
        assert field in str(exc) or "refund_fen" in str(exc), (field, exc)
    else:
        assert parsed.as_dict()[field] == (list(junk) if field == "reasons" else junk)


@settings(max_examples=300, deadline=None)
@given(JUNK)
def test_anything_else_is_refused_cleanly(junk) -> None:  # type: ignore[no-untyped-def]
    try:
        parse_transit(junk)
    except MalformedRecord as exc:
        assert str(exc).startswith("transit")
