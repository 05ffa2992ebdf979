"""Properties of the pure report grouping over random cleared taps: whatever the grouping, the rows
add up to the taps (counts, fares, exit refunds), revenue = fares − exit refunds, riders ≤ taps,
boardings ≤ taps; and a stored tap rebuilds the validator's decision (the correction's input)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.sectors.transit import load_table
from citycard.sectors.transit.daily import StoredTap, priced_tap, stored_tap
from citycard.sectors.transit.reports import GROUPINGS, group_rows

TABLE = load_table("panzhihua")
T0 = dt.datetime(2026, 11, 26, 16, 0, tzinfo=dt.UTC)  # 00:00 on 11-27 in Asia/Shanghai
LINES = {"K1": ("entry", "exit"), "3": ("flat",), "12": ("flat",), "TAXI": ("taxi",)}


@st.composite
def taps(draw):  # type: ignore[no-untyped-def]
    line = draw(st.sampled_from(sorted(LINES)))
    kind = draw(st.sampled_from(LINES[line]))
    amount = draw(st.integers(0, 5_000))
    refund = draw(st.integers(0, 400)) if kind == "exit" else 0
    transit = {
        "kind": kind, "line": line, "stop": "HTM" if line == "K1" else None, "fare_fen": max(1, amount),
        "refund_fen": refund, "reasons": [], "holder_kind": draw(st.sampled_from(["resident", "student"])),
    }  # fmt: skip
    return StoredTap(
        key=f"{draw(st.integers(0, 10**6))}",
        pan=draw(st.sampled_from(["6235480000000016", "6235480000000024", "6235480000000032"])),
        psn="01",
        operator="pzh-taxi" if line == "TAXI" else "pzh-bus",
        route=line,
        vehicle=draw(st.sampled_from(["D10001", "D30001", "DT0001"])),
        tap_at=T0 + dt.timedelta(minutes=draw(st.integers(0, 3 * 24 * 60))),
        amount_fen=amount,
        refunded=draw(st.booleans()),
        transit=transit,
        exit_refund_fen=refund,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(taps(), max_size=40), st.sampled_from(GROUPINGS))
def test_rows_add_up_to_the_taps(sample, by):  # type: ignore[no-untyped-def]
    rows = group_rows(sample, by)
    assert sum(r.taps for r in rows) == len(sample)
    assert sum(r.fares_fen for r in rows) == sum(t.amount_fen for t in sample if not t.refunded)
    assert sum(r.exit_refunds_fen for r in rows) == sum(t.exit_refund_fen for t in sample if not t.refunded)
    for r in rows:
        assert r.revenue_fen == r.fares_fen - r.exit_refunds_fen
        assert 1 <= r.riders <= r.taps and 0 <= r.boardings <= r.taps
    assert len({(r.key, r.operator) for r in rows}) == len(rows)


@settings(max_examples=200, deadline=None)
@given(taps())
def test_a_stored_tap_rebuilds_the_decision(tap):  # type: ignore[no-untyped-def]
    again = stored_tap({"key": tap.key, "pan": tap.pan, "psn": tap.psn,
                        "operator": tap.operator, "route": tap.route, "vehicle": tap.vehicle,
                        "tap_at": tap.tap_at.isoformat(), "amount_fen": tap.amount_fen, "refunded": tap.refunded,
                        "transit": dict(tap.transit), "exit_refund_fen": tap.exit_refund_fen})  # fmt: skip
    assert again == tap
    priced = priced_tap(tap, TABLE)
    assert (priced.tap.kind, priced.tap.line, priced.tap.vehicle, priced.tap.at) == (
        tap.transit["kind"], tap.transit["line"], tap.vehicle, tap.tap_at,
    )  # fmt: skip
    collected = 0 if tap.refunded else tap.amount_fen
    assert (priced.decision.amount_fen, priced.decision.fare_fen) == (collected, tap.transit["fare_fen"])
    assert priced.decision.refund_fen == (0 if tap.refunded else tap.exit_refund_fen)


def test_a_row_without_a_transit_object_is_not_a_transit_tap():
    assert stored_tap({"key": "k", "pan": "6235480000000016", "psn": "01", "transit": None}) is None
