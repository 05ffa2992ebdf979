"""Transit reports against the taps a test made (tests/sectors/test_daily.py's day, cleared for
real): ridership and revenue per route, vehicle and day; expected vs collected before and after the
daily corrections; the CLI in JSON and CSV. SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import pytest
from tests.clearing.conftest import (  # noqa: F401 — pytest fixtures, used by name
    blacklist,
    capks,
    hsm,
    hsm_files,
    issued_cards,
    new_card,
    tapper,
)
from tests.sectors.test_daily import OPERATOR, cleared_day
from typer.testing import CliRunner

from citycard.sectors.transit import load_table
from citycard.sectors.transit.daily import run_corrections
from citycard.sectors.transit.reports import ReportError, group_rows, report


def test_ridership_revenue_and_expected_vs_collected(engine, hsm, tapper):  # noqa: F811
    table = load_table("panzhihua")
    _, _, day, _ = cleared_day(engine, hsm, tapper, "GM")
    by_route = report(engine, day=day, table=table, by="route")
    rows = {(r.key, r.operator): r for r in by_route.rows}
    assert set(rows) == {("K1", OPERATOR), ("3", OPERATOR), ("12", OPERATOR)}
    k1, three, twelve = rows[("K1", OPERATOR)], rows[("3", OPERATOR)], rows[("12", OPERATOR)]
    assert (k1.taps, k1.boardings, k1.riders, k1.fares_fen, k1.revenue_fen) == (1, 1, 1, 400, 400)
    # line 3: the resident twice at 200, the student twice at 100
    assert (three.taps, three.boardings, three.riders, three.fares_fen) == (4, 4, 2, 600)
    assert (twelve.taps, twelve.riders, twelve.fares_fen) == (3, 2, 500)
    assert sum(r.fares_fen for r in by_route.rows) == 1_500

    by_vehicle = report(engine, day=day, table=table, by="vehicle")
    assert {r.key: r.taps for r in by_vehicle.rows} == {"VK1": 1, "V3": 4, "V12": 3}
    by_day = report(engine, day=day, table=table, by="day")
    assert [(r.key, r.taps, r.riders, r.fares_fen) for r in by_day.rows] == [(day.isoformat(), 8, 2, 1_500)]

    (line,) = by_route.operators  # before the corrections: 200 still owed back
    assert (line.expected_fen, line.collected_fen, line.difference_fen) == (1_300, 1_500, 200)
    assert (line.corrections_pending_fen, line.correction_refunds_fen) == (200, 0)
    run_corrections(engine, day=day, table=table)
    (line,) = report(engine, day=day, table=table).operators
    assert (line.expected_fen, line.collected_fen, line.difference_fen) == (1_300, 1_300, 0)
    assert (line.corrections_pending_fen, line.correction_refunds_fen, line.uncollected_fen) == (0, 200, 0)


def test_group_rows_refuses_an_unknown_grouping():
    with pytest.raises(ReportError, match="--by must be one of route, vehicle, day"):
        group_rows([], "stop")


def test_transit_report_cli_json_and_csv(engine, db_url, hsm, tapper, monkeypatch):  # noqa: F811
    from citycard.cli.main import app

    _, _, day, _ = cleared_day(engine, hsm, tapper, "INTL")
    monkeypatch.setenv("CITYCARD_DATABASE_URL", db_url)
    runner = CliRunner()
    done = runner.invoke(app, ["transit", "report", "--day", day.isoformat(), "--by", "route", "--json"])
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert {r["key"]: r["fares_fen"] for r in document["rows"]} == {"K1": 400, "3": 600, "12": 500}
    assert document["operators"][OPERATOR]["expected_fen"] == 1_300
    done = runner.invoke(app, ["transit", "report", "--day", day.isoformat(), "--by", "vehicle", "--csv"])
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["vehicle"]: int(r["taps"]) for r in rows} == {"VK1": 1, "V3": 4, "V12": 3}
    done = runner.invoke(app, ["transit", "report", "--day", "27/11/2026"])
    assert done.exit_code == 2 and "must be YYYY-MM-DD" in done.output
