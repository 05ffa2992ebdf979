"""The daily corrections run: missing exits and daily-cap paybacks, paid once per card and day.

A validator prices each tap with what the card holds; only clearing sees a card's whole day. Once a
day is closed (the next day's early exits are in), :func:`run_corrections` takes every card with
cleared transit taps on that Asia/Shanghai day, rebuilds its :class:`~.correction.PricedTap` list
from the stored transit objects (clearing keeps the validator's decision with each tap), calls the
pure :func:`~.correction.correction` and posts each refund through
``clearing.store.post_correction`` (operator → the card's EC account) under the key
``correction:PAN:PSN:DAY:KIND:OPERATOR``. The key makes a rerun pay nothing twice; the posting and
its ``clearing_corrections`` row are written in one transaction per card.

Taps around the day are read too (the day before and after): an exit after midnight closes the
day's trip, and an exit this morning belongs to yesterday's entry. A tap clearing refunded in full
(a lost card's tap after the report minute) counts as collected 0, so a correction never pays back
money the rider already got back.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from citycard.sectors.transit.correction import PricedTap, correction
from citycard.sectors.transit.pricing import Decision, Tap, TapError
from citycard.sectors.transit.record import SHANGHAI
from citycard.sectors.transit.table import FareTable

CARDS_PER_RUN_MAX = 1_000_000  # one city's cards with a tap on one day
TAPS_PER_CARD_MAX = 10_000  # correction.TAPS_MAX: more is a data error, not a rider


@dataclass(frozen=True, slots=True)
class StoredTap:
    """One cleared tap as the corrections need it (from ``clearing.store.transit_taps``)."""

    key: str
    pan: str
    psn: str
    operator: str
    route: str
    vehicle: str
    tap_at: dt.datetime
    amount_fen: int
    refunded: bool  # refunded in full by clearing (loss report)
    transit: Mapping[str, Any]
    exit_refund_fen: int = 0  # what clearing paid back for this tap (a segmented exit)

    @property
    def card(self) -> str:
        return f"{self.pan}:{self.psn}"


@dataclass(frozen=True, slots=True)
class PostedRefund:
    key: str
    card: str
    kind: str  # missing_exit, cap_payback, overcharge
    operator: str
    amount_fen: int
    created: bool  # False: the key was posted by an earlier run


@dataclass(frozen=True)
class CorrectionSummary:
    """What one run found and paid. ``refund_fen`` is what the day's corrections owe in total;
    ``posted_fen`` what this run paid (a rerun: 0)."""

    day: str
    cards: int
    taps: int
    due_fen: int
    collected_fen: int
    refund_fen: int
    posted_fen: int
    uncollected_fen: int
    refunds: tuple[PostedRefund, ...] = field(default=())
    skipped: tuple[str, ...] = field(default=())  # cards the table could not price, with the reason

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["refunds"] = [asdict(r) for r in self.refunds]
        document["skipped"] = list(self.skipped)
        return document


def _get(row: Any, name: str, default: Any = None) -> Any:
    if isinstance(row, Mapping):
        return row.get(name, default)
    return getattr(row, name, default)


def stored_tap(row: Any) -> StoredTap | None:
    """A row of ``transit_taps`` (mapping or object) as a :class:`StoredTap`; None without transit."""
    transit = _get(row, "transit")
    if isinstance(transit, str):
        transit = json.loads(transit)
    if transit is None:
        return None
    if not isinstance(transit, Mapping):  # clearing.transit.Transit
        transit = transit.as_dict()
    pan, psn = _get(row, "pan"), _get(row, "psn")
    if pan is None:
        pan, psn = str(_get(row, "card")).split(":")
    tap_at = _get(row, "tap_at")
    if isinstance(tap_at, str):
        tap_at = dt.datetime.fromisoformat(tap_at)
    if tap_at.tzinfo is None:
        raise TapError(f"tap {_get(row, 'key')}: tap_at must be aware")
    return StoredTap(
        key=str(_get(row, "key")),
        pan=str(pan),
        psn=str(psn),
        operator=str(_get(row, "operator", "")),
        route=str(_get(row, "route", transit.get("line", ""))),
        vehicle=str(_get(row, "vehicle", "")),
        tap_at=tap_at.astimezone(dt.UTC),
        amount_fen=int(_get(row, "amount_fen", 0)),
        refunded=bool(_get(row, "refunded", False)),
        transit=dict(transit),
        exit_refund_fen=int(_get(row, "exit_refund_fen", transit.get("refund_fen", 0)) or 0),
    )


def priced_tap(tap: StoredTap, table: FareTable) -> PricedTap:
    """Rebuild the validator's (tap, decision) from a stored tap (module note)."""
    t = tap.transit
    kind = str(t["kind"])
    line = table.lines.get(str(t["line"]))
    surcharge = line.surcharge_fen if line is not None and line.fare == "metered" else 0
    metered = max(1, int(t["fare_fen"]) - surcharge) if kind == "taxi" else 0
    collected = 0 if tap.refunded else tap.amount_fen
    refund = 0 if tap.refunded else tap.exit_refund_fen
    decision = Decision(kind, collected, int(t["fare_fen"]), refund, None, tuple(t.get("reasons") or ()))
    return PricedTap(
        Tap(kind, str(t["line"]), tap.vehicle, tap.tap_at, stop=t.get("stop") or "", metered_fen=metered),
        decision,
    )


def _holder_kind(taps: Iterable[StoredTap], day: dt.date) -> str:
    kinds = Counter(
        str(t.transit["holder_kind"]) for t in taps if t.tap_at.astimezone(SHANGHAI).date() == day
    )
    return kinds.most_common(1)[0][0]


def correction_key(pan: str, psn: str, day: dt.date, kind: str, operator: str) -> str:
    """The ledger key of one correction refund: a rerun finds it and pays nothing.

    >>> correction_key("6235480000000016", "01", dt.date(2026, 11, 27), "cap_payback", "pzh-bus")
    'correction:6235480000000016:01:2026-11-27:cap_payback:pzh-bus'
    """
    return f"correction:{pan}:{psn}:{day.isoformat()}:{kind}:{operator}"


def read_taps(engine: Any, day: dt.date) -> dict[str, list[StoredTap]]:
    """Per card, the cleared transit taps of ``day`` and the days either side; cards with no tap
    on ``day`` itself are left out."""
    from citycard.clearing import store as clearing

    by_card: dict[str, list[StoredTap]] = defaultdict(list)
    with engine.connect() as conn:
        for offset in (-1, 0, 1):
            for row in clearing.transit_taps(conn, day=(day + dt.timedelta(days=offset)).isoformat()):
                tap = stored_tap(row)
                if tap is not None:
                    by_card[tap.card].append(tap)
    active = {
        card: taps
        for card, taps in by_card.items()
        if any(t.tap_at.astimezone(SHANGHAI).date() == day for t in taps)
    }
    if len(active) > CARDS_PER_RUN_MAX:
        raise TapError(f"{len(active)} cards on {day}; one run takes at most {CARDS_PER_RUN_MAX}")
    return active


def run_corrections(engine: Any, *, day: dt.date | str, table: FareTable) -> CorrectionSummary:
    """Correct one closed Asia/Shanghai day (module note); safe to run again."""
    from citycard.clearing import store as clearing
    from citycard.db import write_transaction

    if isinstance(day, str):
        day = dt.date.fromisoformat(day)
    taps_by_card = read_taps(engine, day)
    refunds: list[PostedRefund] = []
    skipped: list[str] = []
    due = collected = owed = posted = uncollected = taps_count = 0
    for card in sorted(taps_by_card):
        taps = taps_by_card[card]
        if len(taps) > TAPS_PER_CARD_MAX:
            skipped.append(f"{card}: {len(taps)} taps, more than {TAPS_PER_CARD_MAX}")
            continue
        operators = {str(t.transit["line"]): t.operator for t in taps}
        try:
            result = correction(
                table, [priced_tap(t, table) for t in taps], holder_kind=_holder_kind(taps, day), day=day
            )
        except TapError as exc:
            skipped.append(f"{card}: {exc}")
            continue
        amounts: dict[tuple[str, str], int] = defaultdict(int)
        for refund in result.refunds:
            operator = operators.get(refund.line) or table.lines[refund.line].operator
            amounts[(refund.kind, operator)] += refund.amount_fen
        pan, psn = card.split(":")
        done: list[PostedRefund] = []
        try:
            if amounts:
                with write_transaction(engine) as conn:  # one card's refunds together, or none
                    for (kind, operator), amount in sorted(amounts.items()):
                        key = correction_key(pan, psn, day, kind, operator)
                        created = clearing.post_correction(
                            conn, key=key, pan=pan, psn=psn, operator=operator, amount_fen=amount,
                            reason=f"{kind} {day.isoformat()}",
                        )  # fmt: skip
                        done.append(PostedRefund(key, card, kind, operator, amount, bool(created)))
        except clearing.ClearingError as exc:
            # e.g. a tap cleared after the day was corrected changes the amount under a final key
            skipped.append(f"{card}: {exc}")
            continue
        refunds.extend(done)
        owed += sum(r.amount_fen for r in done)
        posted += sum(r.amount_fen for r in done if r.created)
        taps_count += sum(1 for t in taps if t.tap_at.astimezone(SHANGHAI).date() == day)
        due, collected, uncollected = (
            due + result.due_fen, collected + result.collected_fen, uncollected + result.uncollected_fen,
        )  # fmt: skip
    return CorrectionSummary(
        day.isoformat(), len(taps_by_card) - len(skipped), taps_count, due, collected, owed, posted,
        uncollected, tuple(refunds), tuple(skipped),
    )  # fmt: skip
