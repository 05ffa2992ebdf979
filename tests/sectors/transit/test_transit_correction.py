"""correction(): missing exits and daily-cap paybacks computed from a card's priced taps (clearing)."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.sectors.transit import CardState, PricedTap, Tap, TapError, correction, parse_table, price_tap

T0 = dt.datetime(2026, 11, 27, 0, 0, tzinfo=dt.UTC)  # 08:00 Asia/Shanghai
DAY = dt.date(2026, 11, 27)
NEXT = dt.date(2026, 11, 28)


def _priced(r) -> list[PricedTap]:  # type: ignore[no-untyped-def]
    return [PricedTap(tap, decision) for tap, decision in r.log]


def test_missing_exit_then_next_day_correction(rider, table):
    r = rider()
    entry = r.tap("entry", "K1", 0, stop="HTM")  # section 2: the farther end is 2 sections away
    assert entry.amount_fen == 400
    nxt = r.tap("entry", "K1", at=T0 + dt.timedelta(days=1), stop="BCG", vehicle="V2")
    assert "previous_exit_missing" in nxt.reasons
    c = correction(table, _priced(r), holder_kind="resident", day=DAY)
    assert (c.due_fen, c.collected_fen, c.refund_fen, c.uncollected_fen) == (300, 400, 100, 0)
    assert [(x.kind, x.amount_fen, x.line, x.at) for x in c.refunds] == [("missing_exit", 100, "K1", T0)]
    # the next day's open entry (from BCG: the whole line is its farther end) is that day's business
    later = correction(table, _priced(r), holder_kind="resident", day=NEXT)
    assert (later.due_fen, later.collected_fen, later.refunds) == (400, 400, ())


def test_missing_exit_keeps_the_maximum_under_line_maximum_policy(rider):
    from importlib import resources

    text = (resources.files("citycard.data") / "transit" / "panzhihua.toml").read_text(encoding="utf-8")
    table = parse_table(text.replace('"farthest_from_entry"', '"line_maximum"'))
    entry = Tap("entry", "K1", "V1", T0, stop="HTM")
    d = price_tap(table, card_state=CardState(), tap=entry, holder_kind="resident")
    c = correction(table, [PricedTap(entry, d)], holder_kind="resident", day=DAY)
    assert (c.due_fen, c.refund_fen) == (400, 0)


def test_missing_exit_after_a_transfer_and_a_concession(rider, table):
    r = rider("student")
    r.tap("flat", "3", 0)  # 100
    e = r.tap("entry", "K1", 10, stop="BCG", vehicle="V2")  # 400/2 − 100 = 100 held
    assert e.amount_fen == 100
    c = correction(table, _priced(r), holder_kind="student", day=DAY)
    # the farther end from BCG is the whole line: 400/2 − 100 = 100 due, nothing to refund
    assert (c.due_fen, c.collected_fen, c.refund_fen) == (200, 200, 0)


def test_a_closed_trip_needs_no_correction(rider, table):
    r = rider()
    r.tap("entry", "K1", 0, stop="BCG")
    r.tap("exit", "K1", 30, stop="DDK")
    r.tap("taxi", "TAXI", 60, vehicle="T1", metered_fen=1500)
    c = correction(table, _priced(r), holder_kind="resident", day=DAY)
    assert (c.due_fen, c.collected_fen, c.refunds, c.uncollected_fen) == (1700, 1700, (), 0)


def test_an_exit_after_midnight_closes_the_entry_days_trip(rider, table):
    r = rider()
    r.tap("entry", "K1", at=dt.datetime(2026, 11, 27, 15, 50, tzinfo=dt.UTC), stop="BCG")
    r.tap("exit", "K1", at=dt.datetime(2026, 11, 27, 16, 20, tzinfo=dt.UTC), stop="DDK")
    c = correction(table, _priced(r), holder_kind="resident", day=DAY)
    assert (c.due_fen, c.collected_fen, c.refund_fen) == (100, 100, 0)
    assert correction(table, _priced(r), holder_kind="resident", day=NEXT).due_fen == 0


def test_cap_payback_when_the_validators_could_not_see_the_day_total(table):
    """Six rides priced each on a blank state (e.g. the record was rewritten by an old validator):
    1,200 collected, the cap is 1,000: 200 paid back automatically."""
    priced = []
    for i in range(6):
        tap = Tap("flat", "3", f"V{i}", T0 + dt.timedelta(minutes=70 * i))
        priced.append(
            PricedTap(tap, price_tap(table, card_state=CardState(), tap=tap, holder_kind="resident"))
        )
    c = correction(table, priced, holder_kind="resident", day=DAY)
    assert (c.due_fen, c.collected_fen, c.refund_fen) == (1000, 1200, 200)
    assert [(x.kind, x.amount_fen, x.at) for x in c.refunds] == [("cap_payback", 200, priced[-1].tap.at)]


def test_missing_exit_refund_comes_before_the_payback(table):
    priced = []
    taps = [Tap("entry", "K1", "K", T0, stop="HTM")] + [
        Tap("flat", "3", f"V{i}", T0 + dt.timedelta(minutes=70 * (i + 1))) for i in range(4)
    ]
    for tap in taps:
        priced.append(
            PricedTap(tap, price_tap(table, card_state=CardState(), tap=tap, holder_kind="resident"))
        )
    c = correction(table, priced, holder_kind="resident", day=DAY)
    # due 300 + 800 = 1100 → capped 1000; collected 400 + 800 = 1200; refund 200 = 100 exit + 100 cap
    assert [(x.kind, x.amount_fen) for x in c.refunds] == [("missing_exit", 100), ("cap_payback", 100)]
    assert c.collected_fen - c.refund_fen == 1000


def test_the_cap_absorbs_a_missing_exit(rider, table):
    r = rider()
    r.tap("entry", "K1", 0, stop="HTM")  # 400 held; 300 due
    for i in range(5):
        r.tap("flat", "3", 70 * (i + 1), vehicle=f"V{i}")  # 600 more until the cap
    c = correction(table, _priced(r), holder_kind="resident", day=DAY)
    assert (c.due_fen, c.collected_fen, c.refund_fen) == (1000, 1000, 0)  # 300 + 1000 due → cap 1000


def test_refused_taps_are_ignored_and_a_rerun_gives_the_same_answer(rider, table):
    r = rider()
    r.tap("entry", "K1", 0, stop="HTM")
    r.tap("entry", "K1", at=T0 + dt.timedelta(seconds=10), stop="HTM")  # double tap
    assert r.log[-1][1].kind == "refused"
    first = correction(table, _priced(r), holder_kind="resident", day=DAY)
    assert first == correction(table, list(reversed(_priced(r))), holder_kind="resident", day=DAY)
    assert first.refund_fen == 100


def test_correction_errors(table, rider):
    r = rider()
    r.tap("flat", "3", 0)
    with pytest.raises(TapError, match="unknown cardholder kind 'tourist'"):
        correction(table, _priced(r), holder_kind="tourist", day=DAY)
    with pytest.raises(TapError, match="correction takes at most 10000 taps per card, got 10001"):
        correction(table, _priced(r) * 10_001, holder_kind="resident", day=DAY)
    other = parse_table(
        (__import__("importlib").resources.files("citycard.data") / "transit" / "panzhihua.toml")
        .read_text(encoding="utf-8").replace('id = "3"', 'id = "33"')
    )  # fmt: skip
    with pytest.raises(TapError, match="line '3' is not in fare table version 1"):
        correction(other, _priced(r), holder_kind="resident", day=DAY)
