"""The health console pages over real HTTP (SQLite and PostgreSQL): the patient's consent page
(grant, revoke, the audit of who read what) and the hospital desk (find by card, open a file);
CSRF refusals change nothing; roles are kept apart."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from tests.web.conftest import OPERATOR, PASSWORD, Console, csrf_of

from citycard.api import auth as api_auth
from citycard.api.roles import Role
from citycard.db import read_transaction, write_transaction
from citycard.platform.errors import Forbidden
from citycard.sectors.health import service


def health_setup(console: Console) -> dict[str, Any]:
    """Two hospitals, a desk login bound to the first, a cardholder login for 张三."""
    suffix = secrets.token_hex(3).upper()
    first, second = f"H1{suffix}", f"H2{suffix}"
    desk_user, holder_user = f"desk{suffix.lower()}", f"patient{suffix.lower()}"
    with write_transaction(console.engine) as conn:
        for number, institution_id in enumerate((first, second), start=1):
            service.create_institution(conn, institution_id=institution_id, name=f"第{number}人民医院",
                                       merchant_id=f"89851014111{number:04d}", suite="GM", actor="test")  # fmt: skip
        desk = api_auth.create_user(conn, username=desk_user, password=PASSWORD, role=Role.sector)
        service.bind_principal(conn, principal=f"user:{desk['id']}", institution_id=first, actor="test")
        api_auth.create_user(conn, username=holder_user, password=PASSWORD, role=Role.cardholder,
                             cardholder_id=console.holder["id"])  # fmt: skip
    return {"first": first, "second": second, "desk": desk_user, "holder": holder_user}


def login(console: Console, username: str) -> Any:
    client = console.client()
    form = client.get("/console/health/login")
    assert form.status_code == 200 and "健康服务登录" in form.text
    answer = client.post("/console/health/login", data={"username": username, "password": PASSWORD,
                                                         "csrf_token": csrf_of(form.text), "next": ""})  # fmt: skip
    return client, answer


@pytest.fixture(scope="module")
def setup(console: Console) -> dict[str, Any]:
    return health_setup(console)


def test_the_patient_grants_and_revokes_and_sees_the_audit(console: Console, setup: dict[str, Any]) -> None:
    holder = console.holder["id"]
    client, answer = login(console, setup["holder"])
    try:
        assert answer.status_code == 303 and answer.headers["location"] == "/console/health/consent"
        page = client.get("/console/health/consent")
        assert (
            page.status_code == 200 and "谁可以查看我的健康记录" in page.text and "第2人民医院" in page.text
        )
        csrf = csrf_of(page.text)
        # a wrong CSRF token: 403, nothing granted
        refused = client.post("/console/health/consent/grant", data={"csrf_token": "x" * 64,
                                                                     "institution_id": setup["second"]})  # fmt: skip
        assert refused.status_code == 403
        with read_transaction(console.engine) as conn:
            assert service.consents(conn, holder) == []
        # hospital 2 tries to read without consent: refused, audited
        with pytest.raises(Forbidden):
            service.read_records(console.engine, actor="user:99:h2-desk", institution_id=setup["second"],
                                 cardholder_id=holder, scope="visits", reader=lambda c, p: [])  # fmt: skip
        granted = client.post("/console/health/consent/grant", data={"csrf_token": csrf,
                              "institution_id": setup["second"], "scope": "visits"})  # fmt: skip
        assert (
            granted.status_code == 303 and granted.headers["location"] == "/console/health/consent?done=grant"
        )
        page = client.get("/console/health/consent?done=grant")
        assert "授权成功" in page.text and 'id="consents"' in page.text and "已拒绝" in page.text
        revoked = client.post("/console/health/consent/revoke", data={"csrf_token": csrf,
                              "institution_id": setup["second"], "scope": "visits"})  # fmt: skip
        assert revoked.status_code == 303
        again = client.post("/console/health/consent/revoke", data={"csrf_token": csrf,
                            "institution_id": setup["second"], "scope": "visits"})  # fmt: skip
        assert again.status_code == 404 and "没有该有效授权" in again.text
        english = client.get(
            "/console/lang/en", params={"next": "/console/health/consent"}, follow_redirects=True
        )
        assert "Withdrawn consents" in english.text and "refused" in english.text
        # the patient is not a hospital desk
        assert client.get("/console/health/desk").status_code == 403
    finally:
        client.close()
    with read_transaction(console.engine) as conn:
        (consent,) = service.consents(conn, holder)
        trail, _ = service.audit_trail(conn, holder)
    assert consent["revoked_at"] is not None and consent["granted_by"].startswith("user:")
    assert [(a["institution_id"], a["allowed"]) for a in trail][-1] == (setup["second"], False)


def test_the_desk_finds_a_patient_by_card_and_opens_a_file(console: Console, setup: dict[str, Any]) -> None:
    client, answer = login(console, setup["desk"])
    try:
        assert answer.headers["location"] == "/console/health/desk"
        page = client.get("/console/health/desk", params={"card": str(console.card_id)})
        assert page.status_code == 200 and "尚未建档" in page.text
        csrf = csrf_of(page.text)
        made = client.post("/console/health/desk/register", data={"csrf_token": csrf, "card": str(console.card_id),
                           "psn": "", "file_no": "MZ-77", "scheme": "urban_employee"})  # fmt: skip
        assert made.status_code == 303, made.text
        page = client.get(made.headers["location"])
        assert "建档成功" in page.text and "MZ-77" in page.text
        duplicate = client.post("/console/health/desk/register", data={"csrf_token": csrf,
                                "card": str(console.card_id), "file_no": "MZ-78"})  # fmt: skip
        assert duplicate.status_code == 409 and "该患者已在本院建档" in duplicate.text
        missing = client.get("/console/health/desk", params={"card": "999999"})
        assert missing.status_code == 404
        assert client.get("/console/health/consent").status_code == 403  # a desk is not a patient
    finally:
        client.close()
    with read_transaction(console.engine) as conn:
        found = service.lookup(conn, institution_id=setup["first"], card_id=console.card_id)
    assert found["registration"]["file_no"] == "MZ-77" and found["scheme"] == "urban_employee"


def test_other_roles_and_no_session(console: Console, setup: dict[str, Any]) -> None:
    with console.client() as anonymous:
        answer = anonymous.get("/console/health/consent")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/health/login")
    client, answer = login(console, OPERATOR)
    try:
        assert answer.status_code == 403 and "您的角色无权使用此页面" in answer.text
        assert "citycard_console" not in client.cookies  # the operator's token was not kept
    finally:
        client.close()
