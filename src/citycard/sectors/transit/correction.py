"""Corrections for clearing: missing exits and daily-cap paybacks, from a card's priced taps.

The validator decides each tap with what the card holds; clearing sees the whole day. For one card
and one Asia/Shanghai calendar day, :func:`correction` rebuilds the day's trips from the priced taps
(each tap with the :class:`~citycard.sectors.transit.pricing.Decision` it got):

* a segmented entry followed by an exit on the same line is a closed trip: due = the exit's fare;
* an entry with no such exit is a **missing exit**: due = the fare to the farther end of the line
  from the entry stop (``missing_exit_fare = "farthest_from_entry"``) or the held maximum
  (``"line_maximum"``), after the same concession and transfer discount the entry had;
* flat, taxi and exit-without-entry taps are trips of their own: due = their ``fare_fen``.

A trip belongs to the day of its first tap (an exit after midnight closes the previous day's trip).
Then per group — capped modes (the cap applies to the sum) and the rest — the refund owed is
``collected − due`` when positive, where collected = debited − refunded at the tap. It is itemised
as missing-exit refunds first (up to each open trip's excess) and the rest as a ``cap_payback``.
So after the refunds a day's capped total never exceeds the cap and no amount is negative.
A shortfall (due > collected: an offline tap could not charge it) is reported, never re-debited.

Call it once per card per closed day (after the next day's early exits are in); the refunds are
keyed by card, day and kind by the caller, so a rerun pays nothing twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from citycard.sectors.transit.pricing import (
    EXIT_WITHOUT_ENTRY,
    Decision,
    Tap,
    TapError,
    fare_after,
    held_discount_fen,
)
from citycard.sectors.transit.record import SHANGHAI, TAP_KINDS
from citycard.sectors.transit.table import FareTable, FareTableError, Line

TAPS_MAX = 10_000  # one card's taps in one correction run: more is a data error, not a rider


@dataclass(frozen=True, slots=True)
class PricedTap:
    """A tap with the decision the validator made (as journaled and uploaded)."""

    tap: Tap
    decision: Decision


@dataclass(frozen=True, slots=True)
class Refund:
    """One refund record: ``kind`` ``missing_exit``, ``cap_payback`` or ``overcharge`` (an uncapped
    trip charged above its due: not expected, kept so the sums always hold); ``at`` the trip's first
    tap (missing exits) or the group's last trip (the others)."""

    kind: str
    amount_fen: int
    line: str
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Correction:
    day: dt.date
    due_fen: int  # what the day's trips cost under the table, the cap applied
    collected_fen: int  # debited − refunded at the taps
    refunds: tuple[Refund, ...]
    uncollected_fen: int  # due − (collected − refunds) when positive: reported, never re-debited

    @property
    def refund_fen(self) -> int:
        return sum(r.amount_fen for r in self.refunds)


@dataclass(slots=True)
class _Trip:
    line: Line
    at: dt.datetime
    due_fen: int
    collected_fen: int
    open_excess_fen: int = 0  # a missing exit's held − due (what its refund may be)


def _missing_exit_due(table: FareTable, line: Line, entry: PricedTap, percent: int) -> int:
    held = entry.decision.fare_fen
    if table.missing_exit_fare == "line_maximum":
        return held
    discount = held_discount_fen(line, percent=percent, held_fen=held)
    if discount is None:
        return 0
    return min(
        held, fare_after(line.farthest_fare_fen(entry.tap.stop), percent=percent, discount_fen=discount)
    )


def _order(p: PricedTap) -> tuple[object, ...]:
    """Time order; taps in the same second (a clock has 1 s resolution) in a fixed order — entry,
    exit, flat, taxi, then by line, vehicle, stop and amounts — so any upload order gives one answer."""
    t, d = p.tap, p.decision
    return (t.at, TAP_KINDS.index(t.kind), t.line, t.vehicle, t.stop, d.amount_fen, d.refund_fen, d.fare_fen)


def _trips(table: FareTable, taps: Sequence[PricedTap], percent_of: dict[str, int]) -> list[_Trip]:
    live = sorted((p for p in taps if p.decision.kind != "refused"), key=_order)
    trips: list[_Trip] = []
    i = 0
    while i < len(live):
        p = live[i]
        line = table.lines.get(p.tap.line)
        if line is None:
            raise TapError(f"line {p.tap.line!r} is not in fare table version {table.version}")
        nxt = live[i + 1] if i + 1 < len(live) else None
        if p.tap.kind == "entry":
            if (
                nxt is not None
                and nxt.tap.kind == "exit"
                and nxt.tap.line == p.tap.line
                and EXIT_WITHOUT_ENTRY not in nxt.decision.reasons
            ):
                collected = p.decision.amount_fen - nxt.decision.refund_fen
                trips.append(_Trip(line, p.tap.at, nxt.decision.fare_fen, collected))
                i += 2
                continue
            due = _missing_exit_due(table, line, p, percent_of[line.id])
            collected = p.decision.amount_fen
            trips.append(_Trip(line, p.tap.at, due, collected, max(0, collected - due)))
        else:
            collected = p.decision.amount_fen - p.decision.refund_fen
            trips.append(_Trip(line, p.tap.at, p.decision.fare_fen, collected))
        i += 1
    return trips


def correction(table: FareTable, taps: Sequence[PricedTap], *, holder_kind: str, day: dt.date) -> Correction:
    """The refunds owed to one card for the trips starting on ``day`` (module note).

    ``taps`` are that card's priced taps around the day (any order; refused taps are ignored).

    >>> from citycard.sectors.transit import CardState, Tap, load_table, price_tap
    >>> table = load_table("panzhihua")
    >>> entry = Tap("entry", "K1", "D10001", dt.datetime(2026, 11, 27, 1, 0, tzinfo=dt.UTC), stop="HTM")
    >>> held = price_tap(table, card_state=CardState(), tap=entry, holder_kind="resident")
    >>> held.amount_fen                      # the line's maximum; the rider never taps out
    400
    >>> c = correction(table, [PricedTap(entry, held)], holder_kind="resident", day=dt.date(2026, 11, 27))
    >>> [(r.kind, r.amount_fen) for r in c.refunds]   # HTM → the farther end costs 300
    [('missing_exit', 100)]
    """
    if len(taps) > TAPS_MAX:
        raise TapError(f"correction takes at most {TAPS_MAX} taps per card, got {len(taps)}")
    try:
        percent = table.payable_percent(holder_kind)
    except FareTableError as exc:
        raise TapError(str(exc)) from None
    percent_of = {lid: (percent if ln.concessions else 100) for lid, ln in table.lines.items()}
    trips = [t for t in _trips(table, taps, percent_of) if t.at.astimezone(SHANGHAI).date() == day]
    refunds: list[Refund] = []
    due_total = collected_total = 0
    for capped in (True, False):
        group = [t for t in trips if table.capped(t.line) == capped]
        if not group:
            continue
        due = sum(t.due_fen for t in group)
        if capped:
            assert table.cap_daily_fen is not None
            due = min(due, table.cap_daily_fen)
        collected = sum(t.collected_fen for t in group)
        due_total += due
        collected_total += collected
        owed = max(0, collected - due)
        for t in group:
            part = min(owed, t.open_excess_fen)
            if part:
                refunds.append(Refund("missing_exit", part, t.line.id, t.at))
                owed -= part
        if owed:
            last = max(group, key=lambda t: t.at)
            refunds.append(Refund("cap_payback" if capped else "overcharge", owed, last.line.id, last.at))
    paid = collected_total - sum(r.amount_fen for r in refunds)
    return Correction(day, due_total, collected_total, tuple(refunds), max(0, due_total - paid))
