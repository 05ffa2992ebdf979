"""`citycard host serve` as a real subprocess for tests: data dir, HSM, enrolled cards, terminals.

bank = HostDir(tmp_path, url)                 # data dir + database URL (SQLite or PostgreSQL)
cards = bank.enrol(10)                        # in-process IssuerHost.enrol_card, both suites
terminal = bank.terminal("T0000001")          # TMK in the shared HSM store
with bank.serve() as proc: ...                # subprocess; proc.port; proc.kill9() / proc.stop()
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from citycard.crypto import GM, INTL
from citycard.db import make_engine, upgrade
from citycard.host.issuer import IssuerHost, load_issuer_configs
from citycard.host.loadgen import TestCard, test_card
from citycard.hsm import SoftHSM
from citycard.iso8583.builders import Terminal

ISSUER = "citybank"
START_TIMEOUT_S = 90.0
BALANCE_FEN = 10_000_000


def luhn(digits: str) -> str:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return digits + str((10 - total % 10) % 10)


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class HostDir:
    """A bank's data dir (HSM key store + master key file) and database for a subprocess host."""

    def __init__(self, directory: Path, url: str) -> None:
        self.directory, self.url = directory, url
        self.config = load_issuer_configs()[ISSUER]
        self.hsm = SoftHSM.open(directory / "hsm-keys.json", master_key_file=directory / "hsm-master.key")
        self.engine = make_engine(url)
        upgrade(self.engine)
        self.issuer = IssuerHost(self.config, engine=self.engine, hsm=self.hsm)
        self.issuer.provision_keys()

    def enrol(self, count: int, *, start: int = 1, balance_fen: int = BALANCE_FEN) -> list[TestCard]:
        cards = []
        for index in range(start, start + count):
            suite = (INTL, GM)[index % 2]
            pan = luhn(f"{self.config.bins[0]}{index:09d}")
            self.issuer.enrol_card(pan=pan, psn=1, expiry=date(2030, 12, 31), suite=suite, pin=None,
                                   account_balance_fen=balance_fen)  # fmt: skip
            cards.append(test_card(self.hsm, self.config.labels(suite).imk_ac, pan=pan, psn=1, suite=suite))
        return cards

    def terminal(self, terminal_id: str, suite: Any = INTL) -> Terminal:
        if f"tmk:{terminal_id}" not in {info.label for info in self.hsm.list_keys()}:
            self.hsm.generate_key(f"tmk:{terminal_id}", "TMK", suite)
        return Terminal(terminal_id=terminal_id, merchant_id=f"M{terminal_id:0>14}"[:15])

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CITYCARD_HSM_MASTER_KEY", "CITYCARD_DATABASE_URL")
        }
        env["CITYCARD_DATA_DIR"] = str(self.directory)
        return env

    def serve(self, *extra: str, port: int = 0) -> ServerProcess:
        log = self.directory / f"server-{time.monotonic_ns()}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "citycard.cli.main", "host", "serve", "--issuer", ISSUER, "--port", str(port),
             "--db", self.url, "--data-dir", str(self.directory), *extra],
            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=self.env(),
        )  # fmt: skip
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("listening on "):
                return ServerProcess(proc, int(line.rsplit(":", 1)[1]), log)
            if not line and proc.poll() is not None:
                break
        proc.kill()
        raise RuntimeError(f"host serve did not start: {log.read_text()[-3000:]}")

    def close(self) -> None:
        self.engine.dispose()
