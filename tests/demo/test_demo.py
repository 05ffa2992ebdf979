"""`citycard demo`: the whole city once (real TCP to the switch and the bank, real HTTP to the
platform API, real virtual cards on the kernel, clearing with the HSM), its summary checked against
what the story made happen, and the CLI's --json giving the same document for the same seed."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from citycard.cli.main import app
from citycard.demo.city import DEVICES, PLAN, run_demo

DEMO_WALL_S_MAX = 60.0  # issue 7: `make demo` in under 60 s on this machine


@pytest.fixture(scope="module")
def city(tmp_path_factory):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    document, state = run_demo(tmp_path_factory.mktemp("city"), seed=11)
    return document, state, time.monotonic() - started


def test_the_day_balances_and_every_count_is_consistent(city):  # type: ignore[no-untyped-def]
    document, state, wall_s = city
    assert document["ledger_balanced"] is True and document["ec_reconciled"] is True
    assert document["taps"] == len(PLAN) == document["taps_approved"] + document["taps_declined"]
    assert document["cards_issued"] == 6 and document["online_authorisations"] == 6  # one 圈存 per card
    # declined: the elderly rider's double tap, the lost card on the updated validator (and the INTL
    # card when no INTL citizen card with the trip file is issued)
    assert document["taps_declined"] >= 2
    assert document["duplicates_rejected"] >= 1 and document["forged_rejected"] == 1
    assert document["refunds_after_loss"] >= 1
    # after the loss report only line 12's validator downloaded the new list: line 3's is stale (and
    # let the lost card ride: that tap is the one refunded)
    assert "BUS-3-001" in state.stale_after_loss and "BUS-12-001" not in state.stale_after_loss
    # every approved tap cleared once; uploaded = approved + the resent and the forged records
    assert document["records_cleared"] == document["taps_approved"]
    injected = sum(u["records"] for u in state.uploads if u.get("injected") and not u["replayed"])
    # the same batch sent again under its id is answered from the first summary: nothing new
    assert [u["replayed"] for u in state.uploads if u.get("injected") == "same batch again"] == [1]
    assert document["records_uploaded"] == document["taps_approved"] + injected
    assert document["duplicates_rejected"] + document["forged_rejected"] == injected
    # the settled gross is what the settlement rows say, and it splits into net + fees
    fees = sum(s["fee_fen"] for s in state.settlements)
    assert sum(document["settlement"].values()) + fees == document["fares_total"]
    assert document["fares_total"] == sum(s["gross_fen"] for s in state.settlements)
    assert set(document["settlement"]) == {d.operator for d in DEVICES}
    # the offline bus's taps of the day before and of D cleared in the later settlement
    assert len({s["day"] for s in state.settlements}) == 2
    # the student's missing exit was paid back by the daily corrections, once
    refunds = [r for c in state.corrections for r in c["refunds"]]
    assert [(r["kind"], r["amount_fen"], r["created"]) for r in refunds] == [("missing_exit", 50, True)]
    assert wall_s < DEMO_WALL_S_MAX


def test_the_cli_json_is_the_same_document_for_the_same_seed(city, tmp_path):  # type: ignore[no-untyped-def]
    document, _, _ = city
    done = CliRunner().invoke(app, ["demo", "--json", "--seed", "11", "--data-dir", str(tmp_path / "again")])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == document
    assert list(json.loads(done.stdout)) == [
        "cards_issued", "taps", "taps_approved", "taps_declined", "online_authorisations", "records_uploaded",
        "records_cleared", "duplicates_rejected", "forged_rejected", "refunds_after_loss", "fares_total",
        "settlement", "ledger_balanced", "ec_reconciled",
    ]  # fmt: skip


def test_the_cli_refuses_a_data_dir_that_holds_something(tmp_path):
    (tmp_path / "city.db").write_text("x")
    done = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path)])
    assert done.exit_code == 2
    assert "must be a new or empty directory" in done.output
