"""`citycard serve` serves the console (issue 6 item 8): a real subprocess on a fresh data dir
(SQLite, migrations on start, the admin bootstrapped from CITYCARD_ADMIN_PASSWORD); a cardholder
registered through the API is found through the console, and the console's session token works
for the API too — one login system for both.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.web.conftest import csrf_of, resident_id

from citycard.web.security import SESSION_COOKIE

SERVE_START_S = 60.0
ADMIN_PASSWORD = "serve-admin-password"
LISTENING = re.compile(r"listening on (http://\S+)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("serve")
    env = {
        k: v for k, v in os.environ.items() if k not in ("CITYCARD_DATABASE_URL", "CITYCARD_HSM_MASTER_KEY")
    }
    env["CITYCARD_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    command = [sys.executable, "-m", "citycard.cli.main", "serve", "--port", "0", "--data-dir", str(data_dir)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield _wait_listening(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + SERVE_START_S
    seen = []
    while time.monotonic() < deadline:
        if not selector.select(timeout=0.5):
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = LISTENING.search(line)
        if found:
            return found.group(1)
    raise AssertionError("citycard serve did not start:\n" + "".join(seen))


def test_citycard_serve_serves_the_console(served: str) -> None:
    with httpx.Client(base_url=served, timeout=60) as client:
        assert client.get("/console/cardholders").status_code == 303  # no session yet
        form = client.get("/console/login")
        answer = client.post(
            "/console/login",
            data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_of(form.text)},
        )
        assert answer.status_code == 303
        token = client.cookies.get(SESSION_COOKIE)
        api = {"Authorization": f"Bearer {token}"}
        created = client.post(
            "/v1/cardholders",
            json={"name": "王五", "id_number": resident_id("19900505"), "kind": "resident"},
            headers={**api, "Idempotency-Key": "console-serve-1"},
        )
        assert created.status_code == 201, created.text
        found = client.get("/console/cardholders", params={"q": "王五"})
        assert found.status_code == 200
        assert f"/console/cardholders/{created.json()['id']}" in found.text
        holder = client.get(f"/console/cardholders/{created.json()['id']}")
        assert holder.status_code == 200 and "该持卡人尚无卡片" in holder.text
        assert client.get("/console/blacklist").status_code == 200
        assert client.get("/console/static/console.css").headers["content-type"].startswith("text/css")
