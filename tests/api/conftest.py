"""A REAL API server for the tests: uvicorn in a thread on a free TCP port, a migrated database
(SQLite file, and PostgreSQL when it answers), a SoftHSM on disk, and a logged-in principal per role.

The server is module-scoped (one per test module and backend) so tests share it; each test uses
fresh idempotency keys and fresh resident ID numbers, so they do not collide.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests import dbtools
from tests.conftest import require_service
from tests.httpserver import start_server

from citycard.api import ApiSettings, create_app
from citycard.api import auth as api_auth
from citycard.api.roles import Role
from citycard.db import write_transaction
from citycard.hsm import SoftHSM
from citycard.platform import cardholders
from citycard.platform.identity import check_character

ADMIN_PASSWORD = "admin-password-for-tests"
_serial = itertools.count(1)


def resident_id(*, born: date | None = None, male: bool = True) -> str:
    """A valid GB 11643 number, different on each call (the birth date moves with a counter)."""
    serial = next(_serial)
    born = born or date(1980, 1, 1) + timedelta(days=serial)
    first17 = f"110105{born:%Y%m%d}{serial % 100:02d}{'1' if male else '2'}"
    return first17 + check_character(first17)


def new_key() -> str:
    """A fresh Idempotency-Key."""
    return "test-" + secrets.token_hex(8)


@dataclass
class Live:
    """The running server and ready credentials for each role."""

    base_url: str
    engine: Any
    hsm: Any
    app: Any
    data_dir: Path
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # role → auth headers
    holder_id: int = 0  # the cardholder the `cardholder` login belongs to

    def client(self, role: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = dict(self.headers[role]) if role else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60, **kwargs)


def serve_live(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    name: str,
    lifespan: str = "off",
) -> Iterator[Live]:
    """The platform on a fresh database of ``request.param`` behind a real server, with the test
    credentials; ``lifespan="on"`` also runs the server's background work (relay, blacklist publisher)."""
    if request.param == "postgresql":
        problem = dbtools.postgres_problem()
        require_service(problem is None, problem or "")
    data_dir = tmp_path_factory.mktemp(f"{name}-{request.param}")
    with dbtools.fresh_database(request.param, data_dir) as url:
        engine = dbtools.migrated_engine(url)
        hsm = SoftHSM.open(data_dir / "hsm-keys.json", master_key_file=data_dir / "hsm-master.key")
        app = create_app(engine=engine, hsm=hsm, settings=ApiSettings(image_dir=data_dir / "cards"))
        server, thread, base_url = start_server(app, lifespan=lifespan)
        live = Live(base_url=base_url, engine=engine, hsm=hsm, app=app, data_dir=data_dir)
        try:
            _credentials(live)
            yield live
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from serve_live(request, tmp_path_factory, name="api")


def _credentials(live: Live) -> None:
    """An admin operator (bootstrap), one login per user role, one API key per key role."""
    with write_transaction(live.engine) as conn:
        assert api_auth.bootstrap_admin(conn, ADMIN_PASSWORD) is None
        holder = cardholders.register(conn, name="持卡人 Self", id_number=resident_id(), kind="resident",
                                      actor="test")  # fmt: skip
        live.holder_id = holder["id"]
        for role in (Role.bank, Role.regulator):
            api_auth.create_user(conn, username=f"{role.value}1", password=ADMIN_PASSWORD, role=role)
        api_auth.create_user(conn, username="holder1", password=ADMIN_PASSWORD, role=Role.cardholder,
                             cardholder_id=live.holder_id)  # fmt: skip
        sector_key = api_auth.create_api_key(conn, name="health", role=Role.sector, subject="health")["key"]
        terminal_key = api_auth.create_api_key(conn, name="bus-0001", role=Role.terminal, subject="B0000001")[
            "key"
        ]
    with httpx.Client(base_url=live.base_url, timeout=60) as client:
        for role, username in (("operator", "admin"), ("bank", "bank1"), ("regulator", "regulator1"),
                               ("cardholder", "holder1")):  # fmt: skip
            answer = client.post("/v1/auth/login", json={"username": username, "password": ADMIN_PASSWORD})
            assert answer.status_code == 200, answer.text
            live.headers[role] = {"Authorization": f"Bearer {answer.json()['token']}"}
    live.headers["sector"] = {"X-API-Key": sector_key}
    live.headers["terminal"] = {"X-API-Key": terminal_key}


STEPS = ("approve", "prepare", "personalise", "issue", "activate")


def post(
    client: httpx.Client, url: str, body: dict[str, Any] | None = None, key: str | None = None
) -> httpx.Response:
    return client.post(url, json=body or {}, headers={"Idempotency-Key": key or new_key()})


def active_card(live: Live, op: httpx.Client, *, holder_id: int | None = None) -> dict[str, Any]:
    if holder_id is None:
        holder_id = post(op, "/v1/cardholders", {"name": "卡 Life", "id_number": resident_id(),
                                                  "kind": "resident"}).json()["id"]  # fmt: skip
    applied = post(op, "/v1/cards", {"cardholder_id": holder_id, "profile": "citizen-card-gm"})
    assert applied.status_code == 201, applied.text
    card = applied.json()
    assert card["state"] == "applied"
    for step in STEPS:
        answer = post(op, f"/v1/cards/{card['id']}/{step}", {"reason": f"test {step}"})
        assert answer.status_code == 200, (step, answer.text)
    card = op.get(f"/v1/cards/{card['id']}").json()
    assert card["state"] == "active" and card["pan_masked"] and card["psn"] is not None
    return card
