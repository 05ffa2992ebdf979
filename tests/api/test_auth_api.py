"""Authentication through the real server: login, tokens, API keys, the role table, logout."""

from __future__ import annotations

import httpx
from tests.api.conftest import ADMIN_PASSWORD, Live, new_key

from citycard.api.app import routes
from citycard.api.roles import PUBLIC, ROLE_TABLE
from citycard.api.tables import api_keys, tokens, users
from citycard.db import read_transaction


def test_every_route_is_in_the_role_table(live: Live) -> None:
    names = {name for _, path, name in routes(live.app) if path.startswith("/v1")}
    assert names, "no /v1 routes"
    assert names <= set(ROLE_TABLE), f"routes without roles: {names - set(ROLE_TABLE)}"
    # exactly two public routes; an empty role list is not "public" (CPython shares frozenset())
    assert {name for name, roles in ROLE_TABLE.items() if roles is PUBLIC} == {"auth.login", "health"}
    assert all(roles for name, roles in ROLE_TABLE.items() if roles is not PUBLIC)
    assert PUBLIC is not frozenset()


def test_login_gives_a_token_that_is_stored_hashed(live: Live) -> None:
    with live.client() as client:
        answer = client.post("/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert answer.status_code == 200
        token = answer.json()["token"]
        assert token.startswith("cct_") and answer.json()["role"] == "operator"
        me = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["name"] == "admin" and me.json()["role"] == "operator"
    with read_transaction(live.engine) as conn:
        stored = [row.token_hash for row in conn.execute(tokens.select())]
        hashes = [row.password_hash for row in conn.execute(users.select())]
    assert token not in stored and all(len(h) == 64 for h in stored)
    assert all(h.startswith("scrypt$") and ADMIN_PASSWORD not in h for h in hashes)


def test_wrong_password_and_unknown_user_get_the_same_401(live: Live) -> None:
    with live.client() as client:
        wrong = client.post("/v1/auth/login", json={"username": "admin", "password": "not-the-password"})
        unknown = client.post("/v1/auth/login", json={"username": "nobody", "password": "not-the-password"})
    for answer in (wrong, unknown):
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "auth.bad_credentials"
    assert wrong.json()["detail"] == unknown.json()["detail"]


def test_missing_and_bad_credentials_are_401_problems(live: Live) -> None:
    with live.client() as client:
        missing = client.get("/v1/auth/me")
        bad_token = client.get("/v1/auth/me", headers={"Authorization": "Bearer cct_forged"})
        bad_key = client.get("/v1/auth/me", headers={"X-API-Key": "cck_forged"})
    assert missing.status_code == 401 and missing.json()["code"] == "auth.missing_credentials"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert bad_token.status_code == 401 and bad_token.json()["code"] == "auth.bad_credentials"
    assert bad_key.status_code == 401 and bad_key.json()["code"] == "auth.bad_credentials"


def test_api_key_is_shown_once_and_works_until_revoked(live: Live) -> None:
    key = new_key()
    with live.client("operator") as op:
        created = op.post("/v1/auth/api-keys", json={"name": "campus-sys", "role": "sector", "subject": "campus"},
                          headers={"Idempotency-Key": key})  # fmt: skip
        assert created.status_code == 201, created.text
        secret = created.json()["key"]
        assert secret.startswith("cck_")
        replay = op.post("/v1/auth/api-keys", json={"name": "campus-sys", "role": "sector", "subject": "campus"},
                         headers={"Idempotency-Key": key})  # fmt: skip
        assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["key"] is None and replay.json()["id"] == created.json()["id"]
        listing = op.get("/v1/auth/api-keys").json()["items"]
        assert secret not in str(listing) and any(k["prefix"] == secret[:12] for k in listing)
    with read_transaction(live.engine) as conn:
        assert all(secret != row.key_hash for row in conn.execute(api_keys.select()))
    with httpx.Client(base_url=live.base_url, headers={"X-API-Key": secret}) as sector:
        me = sector.get("/v1/auth/me")
        assert me.status_code == 200 and me.json()["role"] == "sector" and me.json()["subject"] == "campus"
        with live.client("operator") as op:
            revoked = op.delete(
                f"/v1/auth/api-keys/{created.json()['id']}", headers={"Idempotency-Key": new_key()}
            )
            assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        assert sector.get("/v1/auth/me").status_code == 401


def test_logout_revokes_the_token(live: Live) -> None:
    with live.client() as client:
        token = client.post("/v1/auth/login", json={"username": "bank1", "password": ADMIN_PASSWORD}).json()[
            "token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/auth/me", headers=headers).status_code == 200
        assert client.post("/v1/auth/logout", headers=headers).status_code == 204
        assert client.get("/v1/auth/me", headers=headers).status_code == 401


def test_operator_creates_a_user_who_can_log_in(live: Live) -> None:
    with live.client("operator") as op:
        made = op.post("/v1/auth/users", json={"username": "clerk7", "password": "clerk-password-7", "role": "regulator"},
                       headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert made.status_code == 201, made.text
        again = op.post("/v1/auth/users", json={"username": "clerk7", "password": "clerk-password-7", "role": "regulator"},
                        headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert again.status_code == 409 and again.json()["code"] == "user.exists"
    with live.client() as client:
        answer = client.post("/v1/auth/login", json={"username": "clerk7", "password": "clerk-password-7"})
        assert answer.status_code == 200 and answer.json()["role"] == "regulator"


def test_health_is_public_and_reports_the_revision(live: Live) -> None:
    with live.client() as client:
        answer = client.get("/v1/health")
    from citycard.db import head_revision

    assert answer.status_code == 200 and answer.json()["db_revision"] == head_revision()


def test_an_expired_token_is_refused(live: Live) -> None:
    from datetime import timedelta

    from citycard.api.security import secret_hash
    from citycard.db import utc_now, write_transaction

    with live.client() as client:
        token = client.post(
            "/v1/auth/login", json={"username": "regulator1", "password": ADMIN_PASSWORD}
        ).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/auth/me", headers=headers).status_code == 200
        with write_transaction(live.engine) as conn:
            conn.execute(tokens.update().where(tokens.c.token_hash == secret_hash(token))
                         .values(expires_at=utc_now() - timedelta(seconds=1)))  # fmt: skip
        live.app.state.credential_cache.clear()  # as after the 2 s cache lifetime
        answer = client.get("/v1/auth/me", headers=headers)
        assert answer.status_code == 401 and answer.json()["code"] == "auth.bad_credentials"
