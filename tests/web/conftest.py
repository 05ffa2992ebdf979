"""A REAL console server for the tests: the API app with the console mounted, uvicorn in a thread on a
free TCP port, a migrated database (SQLite file; PostgreSQL too for the HTTP tests when it answers),
an HSM, operator and regulator logins, and cardholders whose cards were brought to their state by
the platform's own functions (apply → approve → prepare → personalise → issue → activate).

Module-scoped: one server per test module and backend. Tests that change a card make their own card
(:meth:`Console.new_card`), so they do not depend on each other's order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests import dbtools
from tests.conftest import require_service
from tests.httpserver import start_server

from citycard.api import auth as api_auth
from citycard.api.app import create_app
from citycard.api.roles import Role
from citycard.api.settings import ApiSettings
from citycard.db import write_transaction
from citycard.hsm import SoftHSM
from citycard.platform import applications, cardholders, cards, events
from citycard.platform.identity import check_character
from citycard.web import mount

PASSWORD = "console-password-for-tests"
OPERATOR = "ops"
REGULATOR = "regulator1"
ACTOR = "test:console-fixture"
ISSUER = "citybank"
PROFILES = {"GM": "citizen-card-gm", "INTL": "pboc-debit-intl"}
TO_ACTIVE = ("approve", "prepare", "personalise", "issue", "activate")
TRANSIT_APP = {"city_code": "3301", "concession": "01"}  # the transit extended file (data/applications)
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
_serial = itertools.count(1)


def resident_id(birth: str = "19800101", *, region: str = "110105") -> str:
    """A valid GB 11643 number, different on each call (the order code moves with a counter)."""
    body = f"{region}{birth}{next(_serial) % 1000:03d}"
    return body + check_character(body)


def csrf_of(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found, "no csrf_token input in the page"
    return found.group(1)


@dataclass
class Console:
    """The running server, its parts and the prepared data."""

    base_url: str
    engine: Any
    hsm: SoftHSM
    image_dir: Path
    holder: dict[str, Any] = field(default_factory=dict)  # 张三, with an active GM card
    card_id: int = 0
    holder_intl: dict[str, Any] = field(default_factory=dict)  # Li Lei, with an active INTL card
    card_id_intl: int = 0

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120, **kwargs)

    @contextmanager
    def logged_in(self, username: str = OPERATOR, password: str = PASSWORD) -> Iterator[httpx.Client]:
        """A client holding a console session (the login form, its CSRF cookie, then the POST)."""
        with self.client() as client:
            form = client.get("/console/login")
            assert form.status_code == 200, form.text
            fields = {"username": username, "password": password, "csrf_token": csrf_of(form.text)}
            answer = client.post("/console/login", data={**fields, "next": "/console/"})
            assert answer.status_code == 303, answer.text
            yield client

    def new_holder(self, name: str) -> dict[str, Any]:
        with write_transaction(self.engine) as conn:
            return cardholders.register(
                conn, name=name, id_number=resident_id(), kind="resident", actor=ACTOR
            )

    def new_card(self, holder_id: int, *, suite: str = "GM", steps: tuple[str, ...] = TO_ACTIVE) -> int:
        """A card for ``holder_id`` brought through ``steps`` by the platform functions."""
        with write_transaction(self.engine) as conn:
            card_id = int(
                cards.apply(conn, holder_id, profile=PROFILES[suite], issuer=ISSUER, actor=ACTOR)["id"]
            )
            for step in steps:
                if step in ("personalise",):
                    cards.personalise(conn, card_id, hsm=self.hsm, image_dir=self.image_dir, actor=ACTOR)
                elif step in ("prepare", "issue"):
                    getattr(cards, step)(conn, card_id, hsm=self.hsm, actor=ACTOR)
                else:
                    getattr(cards, step)(conn, card_id, actor=ACTOR)
        return card_id


@contextmanager
def running_console(backend: str, data_dir: Path) -> Iterator[Console]:
    """A migrated database on ``backend``, the app with the console, the server, users and cards."""
    with dbtools.fresh_database(backend, data_dir) as url:
        engine = dbtools.migrated_engine(url)
        hsm = SoftHSM.open(data_dir / "hsm-keys.json", master_key_file=data_dir / "hsm-master.key")
        image_dir = data_dir / "cards"
        app = create_app(engine=engine, hsm=hsm, settings=ApiSettings(image_dir=image_dir))
        mount(app)
        server, thread, base_url = start_server(app)
        console = Console(base_url=base_url, engine=engine, hsm=hsm, image_dir=image_dir)
        try:
            with write_transaction(engine) as conn:
                api_auth.create_user(conn, username=OPERATOR, password=PASSWORD, role=Role.operator)
                api_auth.create_user(conn, username=REGULATOR, password=PASSWORD, role=Role.regulator)
            console.holder = console.new_holder("张三")
            console.card_id = console.new_card(console.holder["id"], suite="GM")
            with write_transaction(engine) as conn:  # a sector application really written on the chip
                applications.load(conn, console.card_id, "transit", hsm=hsm, data=TRANSIT_APP, actor=ACTOR)
            with write_transaction(engine) as conn:  # what sector systems report: the timeline spans them
                events.emit(
                    conn,
                    "payment",
                    card_id=console.card_id,
                    cardholder_id=console.holder["id"],
                    sector="transit",
                    payload={"amount_fen": 200, "line": "B12"},
                )
                events.emit(conn, "visit", card_id=console.card_id, cardholder_id=console.holder["id"],
                            sector="health", payload={"department": "cardiology"})  # fmt: skip
            console.holder_intl = console.new_holder("Li Lei")
            console.card_id_intl = console.new_card(console.holder_intl["id"], suite="INTL")
            yield console
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            engine.dispose()


def _backend_param(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        problem = dbtools.postgres_problem()
        require_service(problem is None, problem or "")
    return request.param


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The console on SQLite and on PostgreSQL."""
    backend = _backend_param(request)
    with running_console(backend, tmp_path_factory.mktemp(f"console-{backend}")) as live:
        yield live


@pytest.fixture(scope="module")
def console_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The console on the embedded default (SQLite) only: what `citycard serve` runs out of the box."""
    with running_console("sqlite", tmp_path_factory.mktemp("console-sqlite")) as live:
        yield live
