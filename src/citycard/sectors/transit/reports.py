"""Transit reports (issue 7 item 6): ridership and revenue per route, vehicle and day, and expected
vs collected per operator — from the cleared taps and the transit objects clearing keeps with them.

Definitions (integer fen; days are Asia/Shanghai operator days, as clearing's):

* **taps** — cleared transit taps; **boardings** — the taps that start a ride (segmented entries,
  flat and taxi taps; an exit without entry counts as one too); **riders** — distinct cards;
* **fares_fen** — what the taps debited, less taps clearing refunded in full after a loss report;
  **exit_refunds_fen** — what clearing paid back at segmented exits; **revenue_fen** = fares −
  exit refunds. Correction refunds are per card and day, not per vehicle: they are in the
  operator lines only.
* per operator: **expected_fen** — the fares due under the table after the daily corrections
  (missing exits at their due fare, the cap applied), from the pure
  :func:`~citycard.sectors.transit.correction.correction` over each card's taps;
  **collected_fen** — cleared fares − exit refunds − correction refunds posted (ledger keys
  ``correction:…`` found). ``difference_fen`` = collected − expected: positive while corrections are
  not yet run (``corrections_pending_fen``), negative for what offline taps could not charge
  (``uncollected_fen``, e.g. a lost card's refunded taps).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from citycard.sectors.transit.correction import correction
from citycard.sectors.transit.daily import StoredTap, correction_key, priced_tap, read_taps, stored_tap
from citycard.sectors.transit.pricing import EXIT_WITHOUT_ENTRY, TapError
from citycard.sectors.transit.record import SHANGHAI
from citycard.sectors.transit.table import FareTable

GROUPINGS = ("route", "vehicle", "day")
DAYS_MAX = 92  # one report covers at most a quarter
ROW_COLUMNS = (
    "key",
    "operator",
    "taps",
    "boardings",
    "riders",
    "fares_fen",
    "exit_refunds_fen",
    "revenue_fen",
)


class ReportError(ValueError):
    """A report the arguments do not allow; the message says why."""


@dataclass(frozen=True)
class ReportRow:
    key: str  # the route, the vehicle or the day
    operator: str
    taps: int
    boardings: int
    riders: int
    fares_fen: int
    exit_refunds_fen: int
    revenue_fen: int


@dataclass(frozen=True)
class OperatorLine:
    operator: str
    expected_fen: int
    collected_fen: int
    difference_fen: int
    cleared_fen: int
    exit_refunds_fen: int
    correction_refunds_fen: int
    corrections_pending_fen: int
    uncollected_fen: int
    loss_refunded_fen: int


@dataclass(frozen=True)
class Report:
    first_day: str
    last_day: str
    by: str
    rows: tuple[ReportRow, ...]
    operators: tuple[OperatorLine, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_day": self.first_day,
            "last_day": self.last_day,
            "by": self.by,
            "rows": [asdict(r) for r in self.rows],
            "operators": {
                o.operator: {k: v for k, v in asdict(o).items() if k != "operator"} for o in self.operators
            },
        }

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow((self.by, *ROW_COLUMNS[1:]))
        for row in self.rows:
            writer.writerow([getattr(row, c) for c in ROW_COLUMNS])
        return out.getvalue()


def _boarding(tap: StoredTap) -> bool:
    kind = tap.transit["kind"]
    return kind in ("entry", "flat", "taxi") or (
        kind == "exit" and EXIT_WITHOUT_ENTRY in (tap.transit.get("reasons") or ())
    )


def _local_day(tap: StoredTap) -> str:
    return tap.tap_at.astimezone(SHANGHAI).date().isoformat()


def group_rows(taps: Sequence[StoredTap], by: str) -> list[ReportRow]:
    """Ridership and revenue per route, vehicle or day (pure; module note)."""
    if by not in GROUPINGS:
        raise ReportError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    groups: dict[tuple[str, str], list[StoredTap]] = defaultdict(list)
    for tap in taps:
        key = {"route": str(tap.transit["line"]), "vehicle": tap.vehicle, "day": _local_day(tap)}[by]
        groups[(key, tap.operator)].append(tap)
    rows = []
    for (key, operator), members in sorted(groups.items()):
        fares = sum(t.amount_fen for t in members if not t.refunded)
        refunds = sum(t.exit_refund_fen for t in members if not t.refunded)
        rows.append(
            ReportRow(
                key, operator, len(members), sum(1 for t in members if _boarding(t)),
                len({t.card for t in members}), fares, refunds, fares - refunds,
            )
        )  # fmt: skip
    return rows


def operator_lines(
    taps_by_card: dict[str, list[StoredTap]], days: Sequence[dt.date], table: FareTable, posted: set[str]
) -> list[OperatorLine]:
    """Expected vs collected per operator over ``days`` (module note). ``posted``: the correction
    keys found in the ledger."""
    keep = {d.isoformat() for d in days}
    figures: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for card, taps in sorted(taps_by_card.items()):
        pan, psn = card.split(":")
        operators = {str(t.transit["line"]): t.operator for t in taps}
        for tap in taps:
            if _local_day(tap) not in keep:
                continue
            f = figures[tap.operator]
            if tap.refunded:
                f["loss_refunded_fen"] += tap.amount_fen
            else:
                f["cleared_fen"] += tap.amount_fen
                f["exit_refunds_fen"] += tap.exit_refund_fen
        kinds = {str(t.transit["holder_kind"]) for t in taps}
        for day in days:
            if not any(_local_day(t) == day.isoformat() for t in taps):
                continue
            try:
                result = correction(
                    table, [priced_tap(t, table) for t in taps], holder_kind=sorted(kinds)[0], day=day
                )
            except TapError:
                continue
            paid_by_operator: dict[str, int] = defaultdict(int)
            for t in taps:
                if _local_day(t) == day.isoformat() and not t.refunded:
                    paid_by_operator[t.operator] += t.amount_fen - t.exit_refund_fen
            owed: dict[tuple[str, str], int] = defaultdict(int)
            for refund in result.refunds:
                operator = operators.get(refund.line) or table.lines[refund.line].operator
                owed[(refund.kind, operator)] += refund.amount_fen
            for (kind, operator), amount in owed.items():
                paid_by_operator[operator] -= amount
                key = correction_key(pan, psn, day, kind, operator)
                field = "correction_refunds_fen" if key in posted else "corrections_pending_fen"
                figures[operator][field] += amount
            main = max(paid_by_operator, key=lambda op: (paid_by_operator[op], op), default=None)
            for operator, paid in paid_by_operator.items():
                figures[operator]["expected_fen"] += paid
            if main is not None:
                figures[main]["uncollected_fen"] += result.uncollected_fen
                figures[main]["expected_fen"] += result.uncollected_fen
    lines = []
    for operator, f in sorted(figures.items()):
        collected = f["cleared_fen"] - f["exit_refunds_fen"] - f["correction_refunds_fen"]
        lines.append(
            OperatorLine(
                operator, f["expected_fen"], collected, collected - f["expected_fen"], f["cleared_fen"],
                f["exit_refunds_fen"], f["correction_refunds_fen"], f["corrections_pending_fen"],
                f["uncollected_fen"], f["loss_refunded_fen"],
            )
        )  # fmt: skip
    return lines


def report(engine: Any, *, day: dt.date | str, table: FareTable, by: str = "route", days: int = 1) -> Report:
    """The report for ``days`` operator days from ``day`` (module note)."""
    from citycard.ledger import find_posting

    if isinstance(day, str):
        try:
            day = dt.date.fromisoformat(day)
        except ValueError:
            raise ReportError(f"--day {day!r} must be YYYY-MM-DD") from None
    if by not in GROUPINGS:
        raise ReportError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    if not 1 <= days <= DAYS_MAX:
        raise ReportError(f"--days must be 1…{DAYS_MAX}, got {days}")
    span = [day + dt.timedelta(days=i) for i in range(days)]
    taps_by_card: dict[str, list[StoredTap]] = defaultdict(list)
    seen: set[str] = set()
    for one in span:
        for card, taps in read_taps(engine, one).items():
            for tap in taps:
                if tap.key not in seen:
                    seen.add(tap.key)
                    taps_by_card[card].append(tap)
    keep = {d.isoformat() for d in span}
    in_span = [t for taps in taps_by_card.values() for t in taps if _local_day(t) in keep]
    with engine.connect() as conn:
        posted = {
            correction_key(*card.split(":"), one, kind, operator)
            for card in taps_by_card
            for one in span
            for kind in ("missing_exit", "cap_payback", "overcharge")
            for operator in {t.operator for t in taps_by_card[card]}
        }
        posted = {key for key in posted if find_posting(conn, key) is not None}
    return Report(
        span[0].isoformat(), span[-1].isoformat(), by, tuple(group_rows(in_span, by)),
        tuple(operator_lines(taps_by_card, span, table, posted)),
    )  # fmt: skip


__all__ = [
    "OperatorLine",
    "Report",
    "ReportError",
    "ReportRow",
    "group_rows",
    "operator_lines",
    "report",
    "stored_tap",
]
