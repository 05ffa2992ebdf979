"""The generated table test: EVERY route × (no credential → 401, each role it does not allow → 403),
through the real server. The routes come from the app itself, the roles from ROLE_TABLE, so a new
route is covered the moment it exists (and a route without a role-table entry fails
test_every_route_is_in_the_role_table)."""

from __future__ import annotations

import re

import httpx
import pytest
from tests.api.conftest import Live, new_key

from citycard.api.app import routes
from citycard.api.roles import PUBLIC, ROLE_TABLE, Role

# A plausible value for every path parameter (auth is checked before the parameters are).
PATH_SAMPLES = {"card_id": "1", "cardholder_id": "1", "key_id": "999999", "terminal_class": "bus",
                "terminal_id": "B0000001", "app_id": "health", "sector": "health"}  # fmt: skip


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_SAMPLES[m.group(1)], path)


def _call(client: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    headers = {**headers, "Idempotency-Key": new_key()}
    if method in ("POST", "PUT", "PATCH"):
        return client.request(method, _url(path), json={}, headers=headers)
    return client.request(method, _url(path), headers=headers)


def test_every_route_refuses_a_missing_credential_and_every_wrong_role(live: Live) -> None:
    checked = 0
    table = [(m, p, n) for m, p, n in routes(live.app) if p.startswith("/v1") and ROLE_TABLE[n] is not PUBLIC]
    assert len(table) >= 20, table
    with live.client() as client:
        for method, path, name in table:
            answer = _call(client, method, path, {})
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["code"] == "auth.missing_credentials"
            assert answer.headers["content-type"] == "application/problem+json"
            for role in Role:
                if role in ROLE_TABLE[name]:
                    continue
                answer = _call(client, method, path, live.headers[role.value])
                assert answer.status_code == 403, (method, path, role, answer.text)
                assert answer.json()["code"] == "auth.forbidden", answer.text
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_an_allowed_role_gets_past_authorisation(live: Live, role: str) -> None:
    """The converse, so the table test is not vacuous: an allowed role is never refused with 401 or
    auth.forbidden (it may still get 404/409/422 from the platform for the sample ids)."""
    with live.client() as client:
        for method, path, name in routes(live.app):
            if not path.startswith("/v1") or Role(role) not in ROLE_TABLE[name] or name == "auth.logout":
                continue  # (logout would end the shared session the other tests use)
            answer = _call(client, method, path, live.headers[role])
            assert answer.status_code != 401, (method, path, answer.text)
            if answer.status_code == 403:
                assert answer.json()["code"] != "auth.forbidden", (method, path, answer.text)
            assert answer.status_code < 500, (method, path, answer.text)
