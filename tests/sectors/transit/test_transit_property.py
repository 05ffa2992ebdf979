"""Properties over random days of riding (hypothesis): after correction() a day's capped total never
exceeds the cap, nothing is negative, and the card's own accounting never passes the cap."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.sectors.transit import CardState, PricedTap, Tap, correction, load_table, price_tap
from citycard.sectors.transit.record import SHANGHAI, pack_record, unpack_record

TABLE = load_table("panzhihua")
K1 = TABLE.lines["K1"].stops
T0 = dt.datetime(2026, 11, 27, 0, 0, tzinfo=dt.UTC)

step = st.tuples(
    st.sampled_from(["entry", "exit", "flat3", "flat12", "taxi"]),
    st.sampled_from(K1),
    st.sampled_from(["V1", "V2", "V3"]),
    st.integers(min_value=0, max_value=240 * 60),  # seconds since the previous tap
    st.integers(min_value=1, max_value=20_000),  # metered fen
    st.booleans(),  # the validator saw a blank card state (record lost / stale validator)
)


def _tap(kind, stop, vehicle, at, metered):  # type: ignore[no-untyped-def]
    if kind in ("entry", "exit"):
        return Tap(kind, "K1", vehicle, at, stop=stop)
    if kind == "taxi":
        return Tap("taxi", "TAXI", vehicle, at, metered_fen=metered)
    return Tap("flat", kind[4:], vehicle, at)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    holder_kind=st.sampled_from(["resident", "student", "elderly", "child"]),
    steps=st.lists(step, min_size=1, max_size=40),
    blind=st.booleans(),
)
def test_a_day_after_paybacks_never_exceeds_the_cap(holder_kind, steps, blind):
    raw: bytes | None = None
    at = T0
    priced: list[PricedTap] = []
    for kind, stop, vehicle, wait_s, metered, lost in steps:
        at += dt.timedelta(seconds=wait_s)
        tap = _tap(kind, stop, vehicle, at, metered)
        state = CardState() if raw is None or (blind and lost) else CardState.of(raw, TABLE)
        d = price_tap(TABLE, card_state=state, tap=tap, holder_kind=holder_kind)
        assert d.amount_fen >= 0 and d.refund_fen >= 0 and d.fare_fen >= 0
        assert d.refund_fen <= (state.trip.charged_fen if state.trip else 0)
        if d.new_trip_record is not None:
            raw = d.record_bytes
            assert unpack_record(raw) == d.new_trip_record and pack_record(d.new_trip_record) == raw
            if not blind:  # the card's own accounting holds the cap
                assert d.new_trip_record.day_total_fen <= TABLE.cap_daily_fen
        priced.append(PricedTap(tap, d))

    days = {p.tap.at.astimezone(SHANGHAI).date() for p in priced}
    for day in days:
        c = correction(TABLE, priced, holder_kind=holder_kind, day=day)
        assert all(r.amount_fen > 0 for r in c.refunds)
        assert 0 <= c.refund_fen <= c.collected_fen and c.uncollected_fen >= 0 and c.due_fen >= 0
        capped_collected, capped_refund = _capped(priced, c, day)
        assert capped_collected - capped_refund <= TABLE.cap_daily_fen
        assert c == correction(TABLE, list(reversed(priced)), holder_kind=holder_kind, day=day)


def _capped(priced: list[PricedTap], c, day):  # type: ignore[no-untyped-def]
    """The day's collected and refunded fen on capped lines, computed independently of correction()."""
    collected = defaultdict(int)
    open_entry = None
    live = sorted((p for p in priced if p.decision.kind != "refused"), key=lambda p: p.tap.at)
    for p in live:
        if p.tap.kind == "exit" and open_entry is not None and "exit_without_entry" not in p.decision.reasons:
            trip_day = open_entry.tap.at.astimezone(SHANGHAI).date()
        else:
            trip_day = p.tap.at.astimezone(SHANGHAI).date()
        open_entry = p if p.tap.kind == "entry" else None
        if TABLE.capped(TABLE.lines[p.tap.line]):
            collected[trip_day] += p.decision.amount_fen - p.decision.refund_fen
    refunded = sum(r.amount_fen for r in c.refunds if TABLE.capped(TABLE.lines[r.line]))
    return collected[day], refunded
