"""`citycard validator` in real processes: a service desk opens the trip record of a new citizen
card, a free (elderly) flat tap is approved for 0 fen and journaled, the double tap is refused
(exit 1), the status counts, an upload with the platform down stops with exit 1 and keeps the tap
pending, bad input exits 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CITYCARD_HSM_MASTER_KEY", raising=False)
    return tmp_path


def test_open_tap_status_upload(citycard, data_dir):
    card, journal = str(data_dir / "card.json"), str(data_dir / "bus.db")
    assert citycard("card", "new", "--profile", "citizen-card-gm", "--out", card).code == 0
    opened = citycard("validator", "open-record", "--card", card, "--concession", "02")
    assert opened.code == 0 and "trip record 0570 opened" in opened.out, opened.err
    tap = ["validator", "tap", "--card", card, "--journal", journal, "--line", "3", "--tap", "flat",
           "--terminal-id", "BUS-3-001", "--vehicle", "D30001", "--json"]  # fmt: skip
    first = citycard(*tap)
    assert first.code == 0, first.err
    doc = json.loads(first.out)
    assert doc["approved"] is True and doc["amount_fen"] == 0 and doc["journal_seq"] == 1
    assert doc["decision"]["reasons"] == ["flat_fare", "concession:transit_free"]
    again = citycard(*tap)
    assert again.code == 1 and json.loads(again.out)["reason"] == "tap refused by the fare rules: double_tap"
    status = citycard("validator", "status", "--journal", journal, "--json")
    assert json.loads(status.out) == {"taps": 1, "pending": 1, "acknowledged": 0, "declined": 1}
    down = citycard("validator", "upload", "--journal", journal, "--url", "http://127.0.0.1:9", "--api-key", "cck_x",
                    "--terminal-id", "BUS-3-001", "--json")  # fmt: skip
    assert down.code == 1
    report = json.loads(down.out)
    assert "not reachable" in report["failed"] and report["journal"]["pending"] == 1
    bad = citycard("validator", "tap", "--card", card, "--journal", journal, "--line", "K9")
    assert bad.code == 2 and bad.err.startswith("error: --line K9: not in fare table version 1")
