"""`citycard blacklist ...` and `citycard exchange subscribers` in real processes on a migrated SQLite
database: flag → publish → export → the terminal's own `citycard terminal blacklist check` reads it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from tests import dbtools

from citycard.db import write_transaction
from citycard.kernel.params import ExceptionFile
from citycard.platform import blacklist, exchange
from citycard.platform.blacklist_format import apply_delta


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_flag_publish_export_and_check_on_the_terminal_side(tmp_path):
    with dbtools.fresh_database("sqlite", tmp_path) as url:
        engine = dbtools.migrated_engine(url)
        db = ["--db", url]
        flagged = run("blacklist", "flag", "6235480000000011", "--psn", "01", "--reason", "fraud", *db)
        assert flagged.returncode == 0, flagged.stderr
        published = run("blacklist", "publish", "--class", "bus", "--json", *db)
        assert published.returncode == 0, published.stderr
        assert json.loads(published.stdout)["version"] == 1
        full = tmp_path / "bus-1.ccxf"
        assert run("blacklist", "export", "--class", "bus", "--out", str(full), *db).returncode == 0
        check = run("terminal", "blacklist", "check", str(full), "6235480000000011", "--psn", "01")
        assert (check.returncode, check.stdout.strip()) == (1, "blocked")

        run("blacklist", "flag", "6235480000000029", "--reason", "counterfeit", "--class", "bus", *db)
        assert json.loads(run("blacklist", "publish", "--class", "bus", "--json", *db).stdout)["version"] == 2
        delta = tmp_path / "bus-1-2.ccxd"
        exported = run(
            "blacklist", "export", "--class", "bus", "--from", "1", "--out", str(delta), "--json", *db
        )
        assert json.loads(exported.stdout)["version"] == 2
        updated = apply_delta(ExceptionFile.load(full), delta.read_bytes())
        assert updated.contains("6235480000000029", "07") and len(updated) == 2

        shown = json.loads(run("blacklist", "show", "--class", "bus", "--json", *db).stdout)
        assert [(v["version"], v["entry_count"]) for v in shown] == [(2, 2), (1, 1)]
        with write_transaction(engine) as conn:
            blacklist.report_version(conn, "BUS-7", "bus", 1, datetime.now(UTC) - timedelta(days=2))
            exchange.subscribe(conn, name="his", sector="health", kinds="card.lost", at=datetime.now(UTC))
        stale = run("blacklist", "stale", "--json", *db)
        assert stale.returncode == 1
        assert [(t["terminal_id"], t["reasons"]) for t in json.loads(stale.stdout)] == [
            ("BUS-7", ["behind", "silent"])
        ]
        subs = json.loads(run("exchange", "subscribers", "--json", *db).stdout)
        assert [(s["name"], s["kinds"], s["lag"]) for s in subs] == [("his", ["card.lost"], 0)]
        engine.dispose()

        every = json.loads(run("blacklist", "publish", "--all", "--json", *db).stdout)
        assert {r["terminal_class"]: r["version"] for r in every} == {
            "bus": 2, "metro": 1, "taxi": 1, "pos": 1, "hospital": 1, "campus": 1, "gate": 1,
        }  # fmt: skip
        neither = run("blacklist", "publish", *db)
        assert (neither.returncode, neither.stderr) == (2, "error: give either --class NAME or --all\n")
        bad = run("blacklist", "publish", "--class", "ferry", *db)
        assert bad.returncode == 2
        assert bad.stderr.startswith(
            "error: blacklist.unknown_terminal_class: terminal class 'ferry' is unknown"
        )
        assert run("blacklist", "flag", "12", "--reason", "fraud", *db).returncode == 2
        missing = run("blacklist", "show", "--class", "bus", "--db", f"sqlite:///{tmp_path}/none.db")
        assert missing.returncode == 2 and "no database" in missing.stderr


def test_drain_publishes_the_changes_since_the_last_drain(tmp_path):
    with dbtools.fresh_database("sqlite", tmp_path) as url:
        dbtools.migrated_engine(url).dispose()
        db = ["--db", url]
        first = json.loads(run("blacklist", "drain", "--json", *db).stdout)
        assert first["events"] == 0
        assert run("blacklist", "publish", "--all", *db).returncode == 0
        assert (
            run("blacklist", "flag", "6235480000000037", "--psn", "01", "--reason", "fraud", *db).returncode
            == 0
        )
        drained = run("blacklist", "drain", "--json", *db)
        assert drained.returncode == 0, drained.stderr
        answer = json.loads(drained.stdout)
        assert answer["events"] == 1 and answer["versions"] == dict.fromkeys(blacklist.TERMINAL_CLASSES, 2)
        delta = tmp_path / "gate-1-2.ccxd"
        assert (
            run("blacklist", "export", "--class", "gate", "--from", "1", "--out", str(delta), *db).returncode
            == 0
        )
        updated = apply_delta(ExceptionFile.build([], version=1), delta.read_bytes())
        assert updated.contains("6235480000000037", "01") and updated.version == 2
        again = run("blacklist", "drain", *db)
        assert again.returncode == 0 and again.stdout.startswith("nothing to publish")
