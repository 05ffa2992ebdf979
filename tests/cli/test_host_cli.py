"""`citycard host serve | enrol | terminal-key` as real processes (SQLite in the data dir)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from citycard.crypto import GM, INTL
from citycard.host.client import HostClient
from citycard.host.issuer import load_issuer_configs
from citycard.host.loadgen import test_card
from citycard.hsm import SoftHSM
from citycard.iso8583.builders import Terminal


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    # every process here must use the --data-dir files only
    for name in ("CITYCARD_HSM_MASTER_KEY", "CITYCARD_DATABASE_URL", "CITYCARD_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


def _hsm(data_dir: Path) -> SoftHSM:
    return SoftHSM.open(data_dir / "hsm-keys.json", master_key_file=data_dir / "hsm-master.key")


def test_terminal_key_prints_kcv_only(citycard, tmp_path: Path) -> None:
    result = citycard(
        "host", "terminal-key", "--terminal-id", "T0000001", "--data-dir", str(tmp_path), "--json"
    )
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    info = _hsm(tmp_path).key_info("tmk:T0000001")
    assert shown == {"label": "tmk:T0000001", "suite": "INTL", "kcv": info.kcv_hex} and info.key_type == "TMK"
    again = citycard("host", "terminal-key", "--terminal-id", "T0000001", "--data-dir", str(tmp_path))
    assert again.code == 2 and again.err.startswith("error:") and "tmk:T0000001" in again.err
    gm = citycard("host", "terminal-key", "--terminal-id", "T0000001", "--suite", "gm", "--replace",
                  "--data-dir", str(tmp_path))  # fmt: skip
    assert gm.code == 0 and "GM KCV" in gm.out
    bad = citycard("host", "terminal-key", "--terminal-id", "T-1", "--data-dir", str(tmp_path))
    assert bad.code == 2 and "8 letters or digits" in bad.err


def test_enrol_checks_input_and_enrols(citycard, tmp_path: Path) -> None:
    common = ("--issuer", "citybank", "--psn", "1", "--suite", "gm", "--data-dir", str(tmp_path))
    result = citycard("host", "enrol", "--pan", "6235480000000016", "--expiry", "3012", "--balance", "100.50",
                      "--ec-balance", "12.5", "--pin", "1234", "--json", *common)  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads(result.out) == {
        "issuer": "citybank", "pan": "6235480000000016", "psn": 1, "expiry": "2030-12-31", "suite": "GM",
        "ec_balance_fen": 1250, "balance_fen": 10050, "pin": True,
    }  # fmt: skip
    assert "1234" not in result.out + result.err
    for args, message in (
        (("--pan", "62354800", "--expiry", "3012"), "--pan"),
        (("--pan", "6235480000000024", "--expiry", "3013"), "--expiry"),
        (("--pan", "6235480000000024", "--expiry", "3012", "--balance", "1.234"), "--balance"),
    ):
        bad = citycard("host", "enrol", *args, *common)
        assert bad.code == 2 and message in bad.err, bad.err
    unknown = citycard("host", "enrol", "--pan", "6235480000000024", "--expiry", "3012", "--issuer", "nobank",
                       "--psn", "1", "--suite", "gm", "--data-dir", str(tmp_path))  # fmt: skip
    assert unknown.code == 2 and "citybank" in unknown.err


def test_serve_approves_a_real_purchase_then_stops_on_sigterm(citycard, tmp_path: Path) -> None:
    assert (
        citycard("host", "terminal-key", "--terminal-id", "T0000009", "--data-dir", str(tmp_path)).code == 0
    )
    enrolled = citycard("host", "enrol", "--issuer", "citybank", "--pan", "6235480000000016", "--psn", "1",
                        "--expiry", "3012", "--suite", "intl", "--balance", "100", "--data-dir", str(tmp_path))  # fmt: skip
    assert enrolled.code == 0, enrolled.err
    proc = subprocess.Popen(
        [sys.executable, "-m", "citycard.cli.main", "host", "serve", "--issuer", "citybank", "--port", "0",
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), proc.stderr.read() if proc.poll() else line
        port = int(line.rsplit(":", 1)[1])
        hsm = _hsm(tmp_path)
        card = test_card(hsm, load_issuer_configs()["citybank"].labels(INTL).imk_ac, pan="6235480000000016",
                         psn=1, suite=INTL)  # fmt: skip
        terminal = Terminal(terminal_id="T0000009", merchant_id="M00000000000009")
        with HostClient("127.0.0.1", port, hsm=hsm) as client:
            client.sign_on(terminal_id=terminal.terminal_id, merchant_id=terminal.merchant_id)
            answer = client.exchange(card.request("purchase", terminal=terminal, stan=1, amount_fen=1250,
                                                  when=datetime.now(UTC)))  # fmt: skip
        assert answer["39"] == "00" and answer["4"] == "000000001250" and len(answer.get("38", "")) == 6
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0 and time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_rejects_bad_options(citycard, tmp_path: Path) -> None:
    bad = citycard("host", "serve", "--issuer", "nobank", "--data-dir", str(tmp_path))
    assert bad.code == 2 and "nobank" in bad.err
    port = citycard("host", "serve", "--issuer", "citybank", "--port", "70000", "--data-dir", str(tmp_path))
    assert port.code == 2 and "--port" in port.err
    lanes = citycard("host", "serve", "--issuer", "citybank", "--lanes", "0", "--data-dir", str(tmp_path))
    assert lanes.code == 2 and "--lanes must be 1..16, got 0" in lanes.err


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_serve_with_a_worker_process_approves_and_its_child_dies_with_it(citycard, tmp_path: Path) -> None:
    """--worker process: batches run in a spawned child; SIGTERM stops both; kill -9 of the server kills
    the child too (PR_SET_PDEATHSIG), so no orphan commits batches nobody will answer."""
    assert (
        citycard("host", "terminal-key", "--terminal-id", "T0000009", "--data-dir", str(tmp_path)).code == 0
    )
    assert citycard("host", "enrol", "--issuer", "citybank", "--pan", "6235480000000016", "--psn", "1",
                    "--expiry", "3012", "--suite", "gm", "--balance", "100", "--data-dir", str(tmp_path)).code == 0  # fmt: skip
    hsm = _hsm(tmp_path)
    card = test_card(hsm, load_issuer_configs()["citybank"].labels(GM).imk_ac, pan="6235480000000016", psn=1,
                     suite=GM)  # fmt: skip
    terminal = Terminal(terminal_id="T0000009", merchant_id="M00000000000009")
    for stop, stan in ((signal.SIGTERM, 1), (signal.SIGKILL, 2)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "citycard.cli.main", "host", "serve", "--issuer", "citybank", "--port", "0",
             "--data-dir", str(tmp_path), "--worker", "process"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            line = proc.stdout.readline()
            assert line.startswith("listening on "), proc.stderr.read() if proc.poll() else line
            children = _children(proc.pid)
            assert children, "the worker child runs"
            with HostClient("127.0.0.1", int(line.rsplit(":", 1)[1]), hsm=hsm) as client:
                client.sign_on(terminal_id=terminal.terminal_id, merchant_id=terminal.merchant_id)
                answer = client.exchange(card.request("purchase", terminal=terminal, stan=stan, amount_fen=100,
                                                      when=datetime.now(UTC)))  # fmt: skip
            assert answer["39"] == "00"
            proc.send_signal(stop)
            code = proc.wait(30)
            assert code == (0 if stop == signal.SIGTERM else -9)
            deadline = time.monotonic() + 10
            while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(_alive(pid) for pid in children), "the worker died with its server"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
