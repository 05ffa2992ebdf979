"""`citycard serve` and `citycard api-key` as a user runs them: real subprocesses, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests import dbtools
from tests.conftest import require_service

from citycard.db import head_revision

START_S = 60.0


def _serve(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "citycard.cli.main", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line.strip())
        if line.startswith("listening on "):
            return proc, line.split()[-1], lines
    proc.kill()
    raise AssertionError(f"serve did not start: {lines} {proc.stderr.read() if proc.stderr else ''}")


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CITYCARD_DATABASE_URL", "CITYCARD_HSM_MASTER_KEY", "CITYCARD_ADMIN_PASSWORD")}  # fmt: skip
    return env | extra


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def test_serve_migrates_bootstraps_the_admin_and_answers(citycard, tmp_path: Path, backend: str) -> None:
    env = _env(CITYCARD_DATA_DIR=str(tmp_path))
    url = None
    if backend == "postgresql":
        problem = dbtools.postgres_problem()
        require_service(problem is None, problem or "")
        url = dbtools.fresh_database_url("postgresql", tmp_path)
        env["CITYCARD_DATABASE_URL"] = url
    try:
        proc, base, lines = _serve(tmp_path, env)
        try:
            shown = [line for line in lines if "one-time password" in line]
            assert len(shown) == 1, lines
            password = shown[0].rsplit(" ", 1)[1]
            with httpx.Client(base_url=base, timeout=30) as client:
                health = client.get("/v1/health").json()
                assert health["db_revision"] == head_revision() and health["missing_areas"] == []
                assert client.get("/docs").status_code == 200
                assert client.get("/console/", follow_redirects=False).status_code != 404  # console mounted
                assert "/v1/cards/{card_id}/report-loss" in client.get("/openapi.json").json()["paths"]
                login = client.post("/v1/auth/login", json={"username": "admin", "password": password})
                assert login.status_code == 200 and login.json()["role"] == "operator"
            # a key made by the CLI works against the running server (same database)
            made = subprocess.run(
                [sys.executable, "-m", "citycard.cli.main", "api-key", "create", "--role", "sector", "--name", "health",
                 "--data-dir", str(tmp_path), "--json"],
                capture_output=True, text=True, env=env, timeout=120, check=False,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
            key = json.loads(made.stdout)["key"]
            with httpx.Client(base_url=base, timeout=30, headers={"X-API-Key": key}) as sector:
                me = sector.get("/v1/auth/me").json()
                assert me["role"] == "sector" and me["subject"] == "health"
        finally:
            assert _stop(proc) in (0, -signal.SIGTERM)
        # second start: the admin exists, no new password is printed
        proc, base, lines = _serve(tmp_path, env)
        _stop(proc)
        assert not any("one-time password" in line for line in lines)
    finally:
        if url is not None:
            dbtools.drop_database(url)
    if backend == "sqlite":  # the one-time password is stored only as its scrypt hash
        assert password.encode() not in (tmp_path / "citycard.db").read_bytes()


def test_serve_takes_the_admin_password_from_the_environment(tmp_path: Path) -> None:
    proc, base, lines = _serve(
        tmp_path, _env(CITYCARD_DATA_DIR=str(tmp_path), CITYCARD_ADMIN_PASSWORD="from-env-password")
    )
    try:
        assert not any("one-time password" in line for line in lines)
        with httpx.Client(base_url=base, timeout=30) as client:
            answer = client.post(
                "/v1/auth/login", json={"username": "admin", "password": "from-env-password"}
            )
            assert answer.status_code == 200
    finally:
        _stop(proc)


def test_bad_options_exit_2(citycard, tmp_path: Path) -> None:
    result = citycard("serve", "--port", "70000", "--data-dir", str(tmp_path))
    assert result.code == 2 and "--port" in result.err
    result = citycard("serve", "--clearing-labels", "EU=a,b", "--data-dir", str(tmp_path))
    assert result.code == 2 and "--clearing-labels 'EU=a,b'" in result.err
    result = citycard("serve", "--fare-table", "atlantis", "--data-dir", str(tmp_path))
    assert result.code == 2 and "--fare-table 'atlantis'" in result.err
    result = citycard("api-key", "create", "--role", "cardholder", "--name", "x", "--data-dir", str(tmp_path))
    assert result.code == 2 and "--role" in result.err
    result = citycard(
        "api-key", "create", "--role", "sector", "--name", "Bad Name!", "--data-dir", str(tmp_path)
    )
    assert result.code == 2 and "name must match" in result.err
