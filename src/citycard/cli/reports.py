"""`citycard transit`: transit reports and the daily corrections run (docs/transit-reports.md).

``transit report --day D [--days N] [--by route|vehicle|day] [--json|--csv]`` — ridership and
revenue per route, vehicle or day, and expected vs collected per operator, from the cleared taps.
``transit correct --day D`` — the daily corrections (missing exits, daily cap), once per card/day.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citycard.cli.common import fail, print_json

app = typer.Typer(help="Transit: reports and the daily corrections.", no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL; default CITYCARD_DATABASE_URL.")]
FaresOption = Annotated[str, typer.Option("--fares", help="Shipped fare table name (data/transit).")]
DayOption = Annotated[str, typer.Option("--day", help="Operator day (Asia/Shanghai), YYYY-MM-DD.")]


def _engine(db: str | None) -> Any:
    from citycard.db import database_url, make_engine, normalize_url, upgrade

    engine = make_engine(normalize_url(db) if db else database_url())
    upgrade(engine)
    return engine


def _table(name: str) -> Any:
    from citycard.sectors.transit import FareTableError, load_table

    try:
        return load_table(name)
    except (FareTableError, FileNotFoundError, OSError) as exc:
        fail(f"--fares {name!r}: {exc}")


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


@app.command("report")
def report_command(
    day: DayOption,
    by: Annotated[str, typer.Option("--by", help="route, vehicle or day.")] = "route",
    days: Annotated[int, typer.Option("--days", help="Number of days from --day (1–92).")] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="The rows as CSV.")] = False,
    fares: FaresOption = "panzhihua",
    db: DbOption = None,
) -> None:
    """Ridership and revenue per route/vehicle/day; expected vs collected per operator.

    Example: citycard transit report --day 2026-11-27 --by vehicle --csv
    """
    from citycard.sectors.transit.reports import ReportError, report

    if json_output and csv_output:
        fail("give at most one of --json and --csv")
    try:
        result = report(_engine(db), day=day, table=_table(fares), by=by, days=days)
    except ReportError as exc:
        fail(str(exc))
    if json_output:
        print_json(result.as_dict())
        return
    if csv_output:
        print(result.csv(), end="")
        return
    console = Console()
    span = (
        result.first_day if result.first_day == result.last_day else f"{result.first_day} … {result.last_day}"
    )
    table = Table(title=f"transit by {result.by}, {span}")
    for column in (
        result.by,
        "operator",
        "taps",
        "boardings",
        "riders",
        "fares ¥",
        "exit refunds ¥",
        "revenue ¥",
    ):
        table.add_column(column, justify="left" if column in (result.by, "operator") else "right")
    for r in result.rows:
        table.add_row(
            r.key, r.operator, str(r.taps), str(r.boardings), str(r.riders),
            _yuan(r.fares_fen), _yuan(r.exit_refunds_fen), _yuan(r.revenue_fen),
        )  # fmt: skip
    console.print(table)
    money = Table(title="expected vs collected")
    for column in (
        "operator",
        "expected ¥",
        "collected ¥",
        "difference ¥",
        "corrections pending ¥",
        "uncollected ¥",
    ):
        money.add_column(column, justify="left" if column == "operator" else "right")
    for o in result.operators:
        money.add_row(
            o.operator, _yuan(o.expected_fen), _yuan(o.collected_fen), _yuan(o.difference_fen),
            _yuan(o.corrections_pending_fen), _yuan(o.uncollected_fen),
        )  # fmt: skip
    console.print(money)


@app.command("correct")
def correct_command(
    day: DayOption,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    fares: FaresOption = "panzhihua",
    db: DbOption = None,
) -> None:
    """Pay the day's missing-exit and daily-cap refunds (once per card, day and kind; a rerun pays nothing).

    Example: citycard transit correct --day 2026-11-27 --json
    """
    import datetime as dt

    from citycard.sectors.transit.daily import run_corrections

    try:
        dt.date.fromisoformat(day)
    except ValueError:
        fail(f"--day {day!r} must be YYYY-MM-DD")
    summary = run_corrections(_engine(db), day=day, table=_table(fares))
    if json_output:
        print(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False))
        return
    console = Console()
    console.print(
        f"{summary.day}: {summary.cards} cards, {summary.taps} taps; due {_yuan(summary.due_fen)}, "
        f"collected {_yuan(summary.collected_fen)}; refunds {_yuan(summary.refund_fen)} "
        f"(paid now {_yuan(summary.posted_fen)}); uncollected {_yuan(summary.uncollected_fen)}"
    )
    for line in summary.skipped:
        console.print(f"[yellow]skipped[/] {line}")
