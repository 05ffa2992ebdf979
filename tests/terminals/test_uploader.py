"""The uploader against a real platform server with the clearing tables (SQLite and PostgreSQL):
batches cleared once, a replayed batch changes nothing, an outage then recovery uploads every tap
exactly once, a lost answer is replayed under the same batch id, and (issue 7 acceptance) a
validator offline for 7 simulated days then back: every tap cleared exactly once."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from citycard.terminals.uploader import Uploader

from .validators import BALANCE_AFTER_OPENING, MORNING, Platform, make_validator, open_transit, tap


@pytest.fixture
def platform(engine, hsm):
    p = Platform(engine, hsm)
    p.start()
    yield p
    p.stop()


def ready_card(kind, new_card, hsm, capks, platform, copy="card", concession=0):
    card = new_card(kind, copy=copy)
    open_transit(card, hsm, capks, kind, concession=concession)
    return card


def enrol_from(platform, outcome) -> None:
    platform.enrol(outcome.result.pan, outcome.result.psn, BALANCE_AFTER_OPENING + 1)


def test_upload_replay_outage_and_recovery(platform, new_card, hsm, capks, tmp_path):
    gm = ready_card("CITIZEN", new_card, hsm, capks, platform, copy="gm")
    intl = ready_card("CITIZEN-INTL", new_card, hsm, capks, platform, copy="intl")
    v = make_validator(
        hsm, capks, tmp_path / "journal.db", line="3", vehicle="D30001", terminal_id="BUS-3-001"
    )
    first = [
        tap(v, card, tap_kind="flat", now=MORNING + dt.timedelta(minutes=i))
        for i, card in enumerate((gm, intl))
    ]
    assert all(o.approved for o in first)
    for o in first:
        enrol_from(platform, o)
    uploader = Uploader(v.journal, base_url=platform.base_url, api_key=platform.key_for("BUS-3-001"),
                        terminal_id="BUS-3-001", batch_size=1)  # fmt: skip
    report = uploader.upload_pending()
    assert report.failed is None and (report.batches, report.records, report.acknowledged) == (2, 2, 2)
    assert report.exceptions == 0
    assert [row.batch_id for row in platform.cleared()] == ["BUS-3-001:1-1", "BUS-3-001:2-2"]
    assert v.journal.counts()["pending"] == 0

    # a replayed batch (same id, same records) changes nothing and says so
    body = {"terminal_id": "BUS-3-001", "batch_id": "BUS-3-001:1-1", "records": [first[0].upload]}
    with httpx.Client(base_url=platform.base_url) as client:
        answer = client.post("/v1/clearing/uploads", json=body,
                             headers={"X-API-Key": platform.key_for("BUS-3-001"), "Idempotency-Key": "BUS-3-001:1-1"})  # fmt: skip
    assert answer.status_code == 200 and answer.json()["replayed"] is True
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert len(platform.cleared()) == 2

    # an outage: the taps stay pending, then every one is uploaded once
    platform.stop()
    more = [
        tap(v, card, tap_kind="flat", now=MORNING + dt.timedelta(hours=2, minutes=i))
        for i, card in enumerate((gm, intl, gm))
    ]
    assert all(o.approved for o in more)
    down = uploader.upload_pending()
    assert down.failed is not None and "not reachable" in down.failed and down.acknowledged == 0
    assert v.journal.counts() == {"taps": 5, "pending": 3, "acknowledged": 2, "declined": 0}
    uploader.close()
    base_url = platform.start()  # back, on another port
    with Uploader(
        v.journal, base_url=base_url, api_key=platform.key_for("BUS-3-001"), terminal_id="BUS-3-001"
    ) as up:
        back = up.upload_pending()
        # the batch cut before the outage (seq 3, batch_size 1) goes first, exactly, then 4-5
        assert back.failed is None and (back.batches, back.acknowledged) == (2, 3)
        assert up.upload_pending() == type(back)(0, 0, 0, None)
    assert [row.batch_id for row in platform.cleared()][2:] == ["BUS-3-001:3-3"] + ["BUS-3-001:4-5"] * 2
    keys = [row.key for row in platform.cleared()]
    assert len(keys) == 5 == len(set(keys)) and platform.exceptions() == []
    assert sum(row.amount_fen for row in platform.cleared()) == 5 * 200


def test_a_lost_answer_is_replayed_under_the_same_batch_id(platform, new_card, hsm, capks, tmp_path):
    card = ready_card("CITIZEN", new_card, hsm, capks, platform)
    v = make_validator(
        hsm, capks, tmp_path / "journal.db", line="3", vehicle="D30001", terminal_id="BUS-3-002"
    )
    outs = [tap(v, card, tap_kind="flat", now=MORNING + dt.timedelta(minutes=2 * i)) for i in range(3)]
    enrol_from(platform, outs[0])
    key = platform.key_for("BUS-3-002")
    # the uploader sent 1-3, the platform cleared it, the answer never came back (kill -9 here)
    entries = v.journal.pending()
    v.journal.set_open_batch(entries[0].seq, entries[-1].seq)
    body = {"terminal_id": "BUS-3-002", "batch_id": "BUS-3-002:1-3", "records": [e.upload for e in entries]}
    with httpx.Client(base_url=platform.base_url) as client:
        assert client.post("/v1/clearing/uploads", json=body,
                           headers={"X-API-Key": key, "Idempotency-Key": "BUS-3-002:1-3"}).json()["accepted"] == 3  # fmt: skip
    later = tap(v, card, tap_kind="flat", now=MORNING + dt.timedelta(hours=1))
    assert later.approved
    with Uploader(v.journal, base_url=platform.base_url, api_key=key, terminal_id="BUS-3-002") as up:
        report = up.upload_pending()
    assert report.failed is None and report.replayed == 1 and report.batches == 2 and report.acknowledged == 4
    assert [row.batch_id for row in platform.cleared()] == ["BUS-3-002:1-3"] * 3 + ["BUS-3-002:4-4"]
    assert platform.exceptions() == []


def test_offline_for_seven_days_then_every_tap_cleared_once(platform, new_card, hsm, capks, tmp_path):
    """Issue 7 acceptance: a validator offline for 7 simulated days, then back."""
    cards = [
        ready_card(kind, new_card, hsm, capks, platform, copy=f"c{i}")
        for i, kind in enumerate(["CITIZEN", "CITIZEN-INTL"])
    ]  # fmt: skip (one card per suite)
    v = make_validator(hsm, capks, tmp_path / "journal.db", terminal_id="BUS-K1-009", vehicle="D10009")
    platform.stop()  # the depot's link is down for a week
    approved = []
    for day in range(7):
        for i, card in enumerate(cards):
            start = MORNING + dt.timedelta(days=day, minutes=10 * i)
            entry = tap(v, card, tap_kind="entry", stop="BCG", now=start)
            leave = tap(v, card, tap_kind="exit", stop="HTM", now=start + dt.timedelta(minutes=25))
            assert entry.approved and leave.approved, (entry.reason, leave.reason)
            approved += [entry, leave]
        with Uploader(v.journal, base_url="http://127.0.0.1:9", api_key="x", terminal_id="BUS-K1-009",
                      timeout_s=2) as offline:  # fmt: skip
            assert offline.upload_pending().failed is not None  # every evening's try fails
    assert v.journal.counts()["pending"] == len(approved) == 28
    seen = set()
    for o in approved:
        if (o.result.pan, o.result.psn) not in seen:
            seen.add((o.result.pan, o.result.psn))
            enrol_from(platform, o)
    platform.set_clock(MORNING + dt.timedelta(days=7, hours=1))
    base_url = platform.start()
    key = platform.key_for("BUS-K1-009")
    with Uploader(v.journal, base_url=base_url, api_key=key, terminal_id="BUS-K1-009", batch_size=10) as up:
        report = up.upload_pending()
        # the batch cut by the first evening's try (seqs 1-4) goes first, exactly; then 10 at a time
        assert report.failed is None and report.acknowledged == 28 and report.batches == 4
        assert up.upload_pending().batches == 0
    rows = platform.cleared()
    assert len(rows) == 28 and len({row.key for row in rows}) == 28 and platform.exceptions() == []
    assert sum(row.amount_fen for row in rows) == 14 * 400  # entries hold the maximum; exits debit 0
    assert v.journal.counts() == {"taps": 28, "pending": 0, "acknowledged": 28, "declined": 0}
    from citycard.clearing.store import reconcile

    assert reconcile(platform.engine)["ledger_balanced"] is True


UPLOADER_CHILD = r"""
import sys
from citycard.terminals.journal import TapJournal
from citycard.terminals.uploader import Uploader
with TapJournal(sys.argv[1]) as journal, Uploader(journal, base_url=sys.argv[2], api_key=sys.argv[3],
                                                  terminal_id=sys.argv[4], batch_size=2) as up:
    print(up.upload_pending(), flush=True)
"""


def _batched(path: str) -> int:
    """Taps the uploader has put in a batch so far (its journal, read-only, beside the writer)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM taps WHERE batch_id IS NOT NULL").fetchone()[0]
    except sqlite3.OperationalError:  # busy for a moment: read again
        return 0


def test_kill_9_of_the_uploader_then_a_rerun_clears_every_tap_once(platform, new_card, hsm, capks, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cards = [ready_card(kind, new_card, hsm, capks, platform, copy=f"k{i}")
             for i, kind in enumerate(["CITIZEN", "CITIZEN-INTL"])]  # fmt: skip
    v = make_validator(
        hsm, capks, tmp_path / "journal.db", line="3", vehicle="D30001", terminal_id="BUS-3-009"
    )
    outs = []
    for i in range(12):
        for j, card in enumerate(cards):
            outs.append(tap(v, card, tap_kind="flat", now=MORNING + dt.timedelta(minutes=3 * i + j)))
    assert all(o.approved for o in outs)
    enrol_from(platform, outs[0])
    enrol_from(platform, outs[1])
    key = platform.key_for("BUS-3-009")
    path = str(tmp_path / "journal.db")
    v.journal.close()
    kills = 0
    # Kill the uploader once it has batched at least `target` taps (read from its journal, WAL, by a
    # second connection): a time delay no longer works, clearing answers a batch in milliseconds.
    for target in (2, 8, 14):
        child = subprocess.Popen([sys.executable, "-c", UPLOADER_CHILD, path, platform.base_url, key, "BUS-3-009"],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline and _batched(path) < target:
            time.sleep(0.002)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.wait(timeout=30)
    from citycard.terminals.journal import TapJournal

    with TapJournal(path) as journal, Uploader(journal, base_url=platform.base_url, api_key=key,
                                               terminal_id="BUS-3-009", batch_size=2) as up:  # fmt: skip
        final = up.upload_pending()
        assert final.failed is None
        assert journal.counts() == {"taps": 24, "pending": 0, "acknowledged": 24, "declined": 0}
    rows = platform.cleared()
    assert len(rows) == 24 == len({row.key for row in rows}) and platform.exceptions() == []
    assert sum(row.amount_fen for row in rows) == sum(o.amount_fen for o in outs)
    assert kills >= 2  # killed mid-upload (a fast child may finish the last round before the kill)
    from citycard.clearing.store import reconcile

    assert reconcile(platform.engine)["ledger_balanced"] is True
