"""Cardholders through the real server: register, find (paginated), read, consents; 422 field
errors; idempotent replay returns the first answer and changes nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from tests.api.conftest import Live, new_key, resident_id

from citycard.db import read_transaction
from citycard.platform import tables


def _count(live: Live, table: sa.Table) -> int:
    with read_transaction(live.engine) as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_register_read_and_find(live: Live) -> None:
    number = resident_id(male=False)
    with live.client("operator") as op:
        made = op.post("/v1/cardholders", json={"name": "王芳", "id_number": number, "kind": "resident",
                                                "phone": "13800138000"}, headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert made.status_code == 201, made.text
        holder = made.json()
        assert holder["name"] == "王芳" and holder["sex"] == "F" and number not in made.text
        assert holder["id_number_masked"] == number[:6] + "*" * 8 + number[-4:]
        got = op.get(f"/v1/cardholders/{holder['id']}")
        assert got.status_code == 200 and got.json() == holder
        found = op.get("/v1/cardholders", params={"query": number})
        assert [h["id"] for h in found.json()["items"]] == [holder["id"]]


def test_pagination_walks_every_cardholder_once(live: Live) -> None:
    with live.client("operator") as op:
        for _ in range(5):
            answer = op.post("/v1/cardholders", json={"name": "Page Walker", "id_number": resident_id(),
                                                      "kind": "resident"}, headers={"Idempotency-Key": new_key()})  # fmt: skip
            assert answer.status_code == 201
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 2, "query": "Page Walker"} | ({"cursor": cursor} if cursor else {})
            body = op.get("/v1/cardholders", params=params).json()
            seen += [h["id"] for h in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) >= 5 and pages >= 3 and seen == sorted(seen)
        too_big = op.get("/v1/cardholders", params={"limit": 201})
        assert too_big.status_code == 422 and too_big.json()["errors"][0]["field"] == "query.limit"
        forged = op.get("/v1/cardholders", params={"cursor": "bm90LWpzb24"})
        assert forged.status_code == 422 and forged.json()["code"] == "pagination.bad_cursor"


def test_bad_input_is_422_with_field_errors_and_changes_nothing(live: Live) -> None:
    before = _count(live, tables.cardholders)
    with live.client("operator") as op:
        answer = op.post("/v1/cardholders", json={"name": "", "id_number": "12345", "kind": "resident", "x": 1},
                         headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert answer.status_code == 422
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["code"] == "request.invalid" and problem["status"] == 422
        fields = {e["field"] for e in problem["errors"]}
        assert {"body.name", "body.id_number", "body.x"} <= fields
        # Syntactically fine, but the GB 11643 check digit is wrong: the platform's own code and field.
        good = resident_id()
        wrong = good[:-1] + ("0" if good[-1] != "0" else "1")
        answer = op.post("/v1/cardholders", json={"name": "Check Digit", "id_number": wrong, "kind": "resident"},
                         headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert answer.status_code == 422 and answer.json()["code"].startswith("identity."), answer.text
        missing_key = op.post(
            "/v1/cardholders", json={"name": "No Key", "id_number": resident_id(), "kind": "resident"}
        )
        assert missing_key.status_code == 422
        assert any(e["field"] == "header.Idempotency-Key" for e in missing_key.json()["errors"])
    assert _count(live, tables.cardholders) == before


def test_replay_returns_the_first_answer_and_changes_nothing(live: Live) -> None:
    key = new_key()
    body = {"name": "Replay Once", "id_number": resident_id(), "kind": "resident"}
    with live.client("operator") as op:
        first = op.post("/v1/cardholders", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 201
        holders, events = _count(live, tables.cardholders), _count(live, tables.events)
        replay = op.post("/v1/cardholders", json=body, headers={"Idempotency-Key": key})
        assert replay.status_code == 201 and replay.content == first.content
        assert replay.headers["idempotent-replayed"] == "true"
        assert (_count(live, tables.cardholders), _count(live, tables.events)) == (holders, events)
        other = op.post(
            "/v1/cardholders", json=body | {"name": "Someone Else"}, headers={"Idempotency-Key": key}
        )
        assert other.status_code == 422 and other.json()["code"] == "idempotency.mismatch"
        # Another principal's identical key is their own: no replay across principals.
        with live.client("bank") as bank:
            assert (
                bank.post("/v1/cardholders", json=body, headers={"Idempotency-Key": key}).status_code == 403
            )
    assert _count(live, tables.cardholders) == holders


def test_cardholder_sees_only_themself_and_sector_needs_consent(live: Live) -> None:
    with live.client("operator") as op:
        other = op.post("/v1/cardholders", json={"name": "Other Person", "id_number": resident_id(),
                                                 "kind": "resident"}, headers={"Idempotency-Key": new_key()}).json()  # fmt: skip
    with live.client("cardholder") as me:
        assert me.get(f"/v1/cardholders/{live.holder_id}").status_code == 200
        hidden = me.get(f"/v1/cardholders/{other['id']}")
        assert hidden.status_code == 404 and hidden.json()["code"] == "cardholder.not_found"
    with live.client("sector") as health:
        refused = health.get(f"/v1/cardholders/{other['id']}")
        assert refused.status_code == 403 and refused.json()["code"] == "consent.missing"
    with live.client("operator") as op:
        granted = op.post(f"/v1/cardholders/{other['id']}/consents", json={"sector": "health", "scope": "identity"},
                          headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert granted.status_code == 201, granted.text
    with live.client("sector") as health:
        assert health.get(f"/v1/cardholders/{other['id']}").json()["name"] == "Other Person"
    with live.client("operator") as op:
        listed = op.get(f"/v1/cardholders/{other['id']}/consents").json()["items"]
        assert [(c["sector"], c["scope"]) for c in listed] == [("health", "identity")]
        revoked = op.delete(f"/v1/cardholders/{other['id']}/consents/health", params={"scope": "identity"},
                            headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert revoked.status_code == 200, revoked.text
    with live.client("sector") as health:
        assert health.get(f"/v1/cardholders/{other['id']}").status_code == 403


def test_concurrent_requests_with_one_key_execute_once(live: Live) -> None:
    """Eight clients send the same write with the same key at once: one executes, all get its answer."""
    key = new_key()
    body = {"name": "Race Once", "id_number": resident_id(), "kind": "resident"}
    before = _count(live, tables.cardholders)

    def send(_: int) -> tuple[int, bytes]:
        with live.client("operator") as op:
            answer = op.post("/v1/cardholders", json=body, headers={"Idempotency-Key": key})
            return answer.status_code, answer.content

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, range(8)))
    assert {status for status, _ in answers} == {201}, answers
    assert len({content for _, content in answers}) == 1
    assert _count(live, tables.cardholders) == before + 1


def test_an_oversized_body_is_413_and_changes_nothing(live: Live) -> None:
    before = _count(live, tables.cardholders)
    with live.client("operator") as op:
        answer = op.post("/v1/cardholders", content=b'{"name": "' + b"x" * 1_100_000 + b'"}',
                         headers={"Idempotency-Key": new_key(), "Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 413 and answer.json()["code"] == "request.too_large"

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        yield b'{"name": "'
        for _ in range(12):
            yield b"x" * 100_000
        yield b'"}'

    with live.client("operator") as op:
        answer = op.post("/v1/cardholders", content=chunks(),
                         headers={"Idempotency-Key": new_key(), "Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 413 and answer.json()["code"] == "request.too_large"
    assert _count(live, tables.cardholders) == before
