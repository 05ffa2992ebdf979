"""The daily corrections run over real clearing: real virtual cards tapped by the real kernel, the
uploads carrying the validator's transit decisions, cleared (TC verified in the HSM), then
``run_corrections`` pays missing exits and the daily cap back through ``post_correction`` — once.

The day (Asia/Shanghai): an entry on segmented line K1 at HTM that never taps out (held 400, due
300 to the farther end), then four flat rides of 200 on lines 3 and 12 seen by validators that
could not read a day total (a card without the trip record: each charges the full fare). Collected
1,200; due min(300 + 800, cap 1,000) = 1,000 → 100 missing exit + 100 cap payback. A student rides
three flat rides at half fare (300): nothing owed. SQLite and PostgreSQL, both suites.
"""

from __future__ import annotations

import datetime as dt

import pytest
from tests.clearing.conftest import (  # noqa: F401 — pytest fixtures, used by name
    LABELS,
    Tapper,
    blacklist,
    capks,
    enrol,
    hsm,
    hsm_files,
    issued_cards,
    new_card,
    tapper,
)

from citycard.clearing import store as clearing
from citycard.clearing.verify import HsmVerifier
from citycard.ledger import balance_fen, check_invariants, find_posting
from citycard.sectors.transit import CardState, Tap, load_table, price_tap
from citycard.sectors.transit.daily import correction_key, run_corrections

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
OPERATOR = "pzh-bus"


def day_start() -> dt.datetime:
    """Half an hour ago (the taps are a minute apart and must not be in the future), kept on
    today's Asia/Shanghai date."""
    now = dt.datetime.now(dt.UTC)
    midnight = now.astimezone(SHANGHAI).replace(hour=0, minute=1, second=0, microsecond=0)
    return max(now - dt.timedelta(minutes=30), midnight.astimezone(dt.UTC)).replace(microsecond=0)


def ride(rider: Tapper, table, plan, *, holder_kind: str, start: dt.datetime) -> list[dict]:  # type: ignore[no-untyped-def]
    """Tap ``plan`` [(kind, line, stop)] a minute apart; each validator prices with a blank card
    state (it could not read a trip record), the card is debited what it decided."""
    uploads = []
    for index, (kind, line, stop) in enumerate(plan):
        when = start + dt.timedelta(minutes=index)
        vehicle = f"V{line}"
        decision = price_tap(
            table,
            card_state=CardState(),
            tap=Tap(kind, line, vehicle, when, stop=stop),
            holder_kind=holder_kind,
        )
        assert decision.amount_fen > 0  # these taps all debit (no zero-fen tap needed here)
        upload = rider.tap(decision.amount_fen, when, route=line, vehicle=vehicle)
        transit = {
            "kind": decision.kind, "line": line, "stop": stop or None, "fare_fen": decision.fare_fen,
            "refund_fen": decision.refund_fen, "reasons": list(decision.reasons), "holder_kind": holder_kind,
        }  # fmt: skip
        uploads.append({**upload, "operator": OPERATOR, "transit": transit})
    return uploads


RESIDENT_PLAN = [
    ("entry", "K1", "HTM"),
    ("flat", "3", ""),
    ("flat", "12", ""),
    ("flat", "3", ""),
    ("flat", "12", ""),
]
STUDENT_PLAN = [("flat", "3", ""), ("flat", "12", ""), ("flat", "3", "")]


def cleared_day(engine, hsm, tapper, suite):  # type: ignore[no-untyped-def]  # noqa: F811
    """Two cards' day cleared; (resident tapper, student tapper, day, resident EC account)."""
    table = load_table("panzhihua")
    start = day_start()
    resident, student = tapper(suite), tapper("GM" if suite == "INTL" else "INTL")
    uploads = ride(resident, table, RESIDENT_PLAN, holder_kind="resident", start=start)
    uploads += ride(
        student, table, STUDENT_PLAN, holder_kind="student", start=start + dt.timedelta(minutes=10)
    )
    account = enrol(engine, resident)
    enrol(engine, student)
    result = clearing.intake(engine, "pzh-bus:day-1", uploads, keys=HsmVerifier(hsm, LABELS))
    assert (result.accepted, result.exceptions) == (8, 0)
    return resident, student, start.astimezone(SHANGHAI).date(), account


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_missing_exit_and_cap_are_paid_back_once(suite, engine, hsm, tapper):  # noqa: F811
    table = load_table("panzhihua")
    resident, _, day, account = cleared_day(engine, hsm, tapper, suite)
    with engine.connect() as conn:
        before = balance_fen(conn, account)
    summary = run_corrections(engine, day=day, table=table)
    assert (summary.cards, summary.taps) == (2, 8)
    assert summary.collected_fen == 1_200 + 300 and summary.due_fen == 1_000 + 300
    assert [(r.kind, r.operator, r.amount_fen, r.created) for r in summary.refunds] == [
        ("cap_payback", OPERATOR, 100, True),
        ("missing_exit", OPERATOR, 100, True),
    ]
    assert summary.refund_fen == summary.posted_fen == 200 and summary.uncollected_fen == 0
    with engine.connect() as conn:
        assert balance_fen(conn, account) == before + 200
        for kind in ("cap_payback", "missing_exit"):
            assert (
                find_posting(conn, correction_key(resident.pan, resident.psn, day, kind, OPERATOR))
                is not None
            )
        assert check_invariants(conn) == []
    again = run_corrections(engine, day=day.isoformat(), table=table)  # a rerun pays nothing twice
    assert again.refund_fen == 200 and again.posted_fen == 0
    assert [r.created for r in again.refunds] == [False, False]
    with engine.connect() as conn:
        assert balance_fen(conn, account) == before + 200
        assert check_invariants(conn) == []


def test_a_day_without_taps_corrects_nothing(engine):
    summary = run_corrections(engine, day=dt.date(2026, 1, 1), table=load_table("panzhihua"))
    assert (summary.cards, summary.taps, summary.refund_fen, summary.refunds) == (0, 0, 0, ())


def test_a_tap_cleared_after_the_correction_does_not_change_what_was_paid(engine, hsm, tapper):  # noqa: F811
    """A correction key is final: a late tap would change the card's amount under the same key, so
    the rerun skips that card (saying why) and pays nothing; the other cards are unaffected."""
    table = load_table("panzhihua")
    resident, _, day, account = cleared_day(engine, hsm, tapper, "GM")
    assert run_corrections(engine, day=day, table=table).posted_fen == 200
    with engine.connect() as conn:
        paid = balance_fen(conn, account)
    late = ride(
        resident,
        table,
        [("flat", "3", "")],
        holder_kind="resident",
        start=day_start() + dt.timedelta(minutes=20),
    )
    assert clearing.intake(engine, "pzh-bus:late-1", late, keys=HsmVerifier(hsm, LABELS)).accepted == 1
    again = run_corrections(engine, day=day, table=table)
    assert again.posted_fen == 0 and len(again.skipped) == 1
    assert again.skipped[0].startswith(f"{resident.pan}:{resident.psn}: ")
    with engine.connect() as conn:
        assert balance_fen(conn, account) == paid - 200  # the late fare cleared; no correction moved
        assert check_invariants(conn) == []
