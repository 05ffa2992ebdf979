"""`citycard switch serve` / `switch queue` as real subprocesses: listening line, graceful SIGTERM,
precise config errors, and a purchase through a switch subprocess to a `citycard host serve` bank."""

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
from tests.host.switch.harness import arpc_of, free_port, make_ic

from citycard.crypto import GM, cryptogram
from citycard.db import make_engine, read_transaction
from citycard.emv.tlv import decode
from citycard.host.client import HostClient
from citycard.hsm import SoftHSM
from citycard.iso8583 import builders
from citycard.ledger import balance_fen, check_invariants

CLI = [sys.executable, "-m", "citycard.cli.main"]
START_TIMEOUT_S = 60


def _spawn(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, line.strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no 'listening on' line: {proc.stderr.read() if proc.stderr else ''}")


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYCARD_")}
    env["CITYCARD_DATA_DIR"] = str(data_dir)
    return env


def _config(path: Path, *, bank_port: int, switch_port: int, zmk: str | None = "zmk:to/citybank") -> Path:
    zmk_line = f'zmk = "{zmk}"\n' if zmk else ""
    path.write_text(
        f'[switch]\nname = "city-a"\ninstitution_id = "04510000"\nport = {switch_port}\nrequire_mac = false\n\n'
        f'[[endpoints]]\nname = "citybank"\nkind = "issuer"\nport = {bank_port}\n{zmk_line}timeout_ms = 3000\n\n'
        '[[routes]]\nprefix = "623548"\nendpoint = "citybank"\n',
        encoding="utf-8",
    )
    return path


def test_config_errors_exit_2_with_one_line(tmp_path, citycard_run):
    bad = tmp_path / "switch.toml"
    bad.write_text(
        '[switch]\nname = "a"\ninstitution_id = "1"\n[[endpoints]]\nname = "x"\nkind = "bank"\nport = 1\n'
    )
    code, out, err = citycard_run("switch", "serve", "--config", str(bad), "--data-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert (
        err.strip() == f"error: {bad}: endpoints[0].kind: Input should be 'issuer' or 'switch' (got 'bank')"
    )
    code, _, err = citycard_run("switch", "serve", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "cannot read" in err
    code, _, err = citycard_run("switch", "serve", "--config", str(bad), "--port", "70000")
    assert code == 2 and err.strip() == "error: --port must be 0..65535, got 70000"


@pytest.fixture
def citycard_run():
    def run(*args: str) -> tuple[int, str, str]:
        proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    return run


def test_serve_routes_to_a_host_serve_bank_and_stops_gracefully(tmp_path, citycard_run):
    """Bank (`host serve`) and switch (`switch serve`) are subprocesses on one data dir: one HSM key
    store (so the switch's ZMK label can name the very key the bank expects), separate databases."""
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    bank_db, switch_db = f"sqlite:///{tmp_path / 'bank.db'}", f"sqlite:///{tmp_path / 'switch.db'}"
    pan = "6235480000000017"
    code, _, err = citycard_run(
        "host", "enrol", "--issuer", "citybank", "--pan", pan, "--psn", "1", "--expiry", "3012", "--suite", "gm",
        "--balance", "100.00", "--db", bank_db, "--data-dir", str(data_dir),
    )  # fmt: skip
    assert code == 0, err
    hsm = SoftHSM.open(data_dir / "hsm-keys.json", master_key_file=data_dir / "hsm-master.key")
    hsm.generate_key("zmk:04510000", "ZMK", GM)
    bank_port, switch_port = free_port(), free_port()
    bank, _ = _spawn("host", "serve", "--issuer", "citybank", "--port", str(bank_port), "--db", bank_db,
                     "--data-dir", str(data_dir), env=env)  # fmt: skip
    config = _config(
        tmp_path / "switch.toml", bank_port=bank_port, switch_port=switch_port, zmk="zmk:04510000"
    )
    switch, line = _spawn("switch", "serve", "--config", str(config), "--db", switch_db, "--data-dir", str(data_dir),
                          env=env)  # fmt: skip
    try:
        assert line == f"listening on 127.0.0.1:{switch_port}"
        when = datetime.now(UTC)
        ic, sk = make_ic(hsm, "imk-ac-gm", pan, GM, amount_fen=2_345, atc=1, when=when)
        request = builders.financial(
            "purchase", terminal=builders.Terminal("T0000001", "M00000000000001"),
            card=builders.Card(pan, psn=1, expiry_yymm="3012"), amount_fen=2_345, stan=41, when=when, ic=ic,
        )  # fmt: skip
        with HostClient("127.0.0.1", switch_port, timeout_s=10) as client:
            answer = client.exchange(request)
        assert answer["39"] == "00", answer
        assert cryptogram.verify_arpc(
            sk, tag_9f26=_tag(request, "9F26"), tag_8a=b"00", arpc=arpc_of(answer), suite=GM
        )
    finally:
        assert _stop(switch) == 0
        assert _stop(bank) == 0
    engine = make_engine(bank_db)
    with read_transaction(engine) as conn:
        assert balance_fen(conn, f"citybank:card:{pan}:01") == 10_000 - 2_345
        assert check_invariants(conn) == []
    engine.dispose()


def _tag(fields: dict, tag: str) -> bytes:
    return next(obj.value for obj in decode(fields["55"]) if obj.tag == tag)


def test_serve_prints_listening_and_queue_lists_nothing(tmp_path, citycard_run):
    data_dir = tmp_path / "data"
    switch_db = f"sqlite:///{tmp_path / 'switch.db'}"
    config = _config(tmp_path / "switch.toml", bank_port=free_port(), switch_port=0, zmk=None)
    proc, line = _spawn("switch", "serve", "--config", str(config), "--db", switch_db, "--data-dir", str(data_dir),
                        env=_env(data_dir))  # fmt: skip
    try:
        host, port = line.removeprefix("listening on ").split(":")
        assert host == "127.0.0.1" and int(port) > 0
        with HostClient("127.0.0.1", int(port), timeout_s=10) as client:
            answer = client.exchange(_echo())
        assert answer["39"] == "00"
    finally:
        assert _stop(proc) == 0
    code, out, err = citycard_run("switch", "queue", "--db", switch_db, "--json")
    assert code == 0, err
    assert json.loads(out) == []


def _echo() -> dict:
    return builders.network("echo", terminal=builders.Terminal("T0000001", "M00000000000001"), stan=1,
                            when=datetime.now(UTC))  # fmt: skip
