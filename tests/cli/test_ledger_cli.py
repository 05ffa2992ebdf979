"""`citycard ledger check|balances` through a real process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from citycard.db import write_transaction
from citycard.ledger import AccountKind, Layer, Line, PostingRequest, open_account, post, promote


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "ledger", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.fixture
def filled(engine, db_url):  # type: ignore[no-untyped-def]
    with write_transaction(engine) as conn:
        open_account(conn, "funding:cash", AccountKind.FUNDING, allow_negative=True)
        open_account(conn, "ec:6230000000000000001:01", AccountKind.EC)
        open_account(conn, "operator:bus", AccountKind.OPERATOR)
        post(
            conn,
            PostingRequest(
                "load:1",
                (Line("funding:cash", debit_fen=5_000), Line("ec:6230000000000000001:01", credit_fen=5_000)),
            ),
        )
        post(
            conn,
            PostingRequest(
                "fare:1",
                (Line("ec:6230000000000000001:01", debit_fen=200), Line("operator:bus", credit_fen=200)),
            ),
        )
        promote(conn, key="stl:fare:1", original_key="fare:1", to_layer=Layer.SETTLED)
    return engine, db_url


def test_check_ok_json(filled) -> None:  # type: ignore[no-untyped-def]
    _engine, url = filled
    r = _run("check", "--db", url, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert (report["accounts"], report["postings"], report["lines"]) == (3, 3, 8)


def test_check_finds_a_tampered_balance(filled) -> None:  # type: ignore[no-untyped-def]
    engine, url = filled
    with write_transaction(engine) as conn:
        conn.execute(text("UPDATE ledger_balances SET balance_fen = balance_fen + 1 WHERE layer = 2"))
    r = _run("check", "--db", url)
    assert r.returncode == 1
    assert "ledger check: 2 problem(s)" in r.stdout
    assert "account 'ec:6230000000000000001:01' layer settled: stored -199 fen, journal -200 fen" in r.stdout
    assert "account 'operator:bus' layer settled: stored 201 fen, journal 200 fen" in r.stdout


def test_balances_per_layer_and_from_the_environment(filled) -> None:  # type: ignore[no-untyped-def]
    _engine, url = filled
    r = _run("balances", "--layer", "settled", "--json", env={"CITYCARD_DATABASE_URL": url})
    assert r.returncode == 0, r.stderr
    rows = {row["code"]: row for row in json.loads(r.stdout)}
    assert list(rows) == ["ec:6230000000000000001:01", "funding:cash", "operator:bus"]
    assert rows["operator:bus"]["balance_fen"] == 200
    assert rows["ec:6230000000000000001:01"]["balance_fen"] == -200  # spent from the pending top-up
    assert rows["ec:6230000000000000001:01"]["total_fen"] == 4_800
    assert rows["funding:cash"] == {
        "code": "funding:cash",
        "kind": "funding",
        "allow_negative": True,
        "balance_fen": 0,
        "pending_fen": -5_000,
        "cleared_fen": 0,
        "settled_fen": 0,
        "total_fen": -5_000,
    }
    table = _run("balances", "--db", url, "--limit", "2")
    assert table.returncode == 0, table.stderr
    assert "ec:6230000000000000001:01" in table.stdout and "operator:bus" not in table.stdout
    page2 = _run("balances", "--db", url, "--after", "funding:cash", "--json")
    assert [row["code"] for row in json.loads(page2.stdout)] == ["operator:bus"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("balances", "--layer", "posted"),
            "error: --layer: unknown layer 'posted': expected pending, cleared or settled",
        ),
        (("balances", "--limit", "0"), "error: --limit: 0 outside 1…10000"),
        (("check", "--db", "not a url"), "error: --db: Could not parse SQLAlchemy URL"),
        (("check", "--db", "mysql://root@127.0.0.1/x"), "error: unsupported database backend 'mysql'"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, args, message) -> None:  # type: ignore[no-untyped-def]
    r = _run(*args, env={"CITYCARD_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert r.returncode == 2
    assert r.stderr.startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_or_unmigrated_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = _run("check", "--db", f"sqlite:///{tmp_path}/none.db")
    assert (r.returncode, r.stderr.strip()) == (
        2,
        f"error: no database at {tmp_path}/none.db (give --db or set CITYCARD_DATABASE_URL)",
    )
    assert not (tmp_path / "none.db").exists()
    (tmp_path / "empty.db").touch()
    r = _run("check", "--db", f"sqlite:///{tmp_path}/empty.db")
    assert (r.returncode, r.stderr.strip()) == (
        2,
        f"error: sqlite:///{tmp_path}/empty.db holds no citycard tables (never migrated)",
    )
