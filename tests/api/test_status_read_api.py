"""The hot card-status read (``GET /v1/cards/{id}/status``, `citycard bench api`) through the real
server, on SQLite and PostgreSQL: it runs its own one-statement read on a pooled DBAPI connection
(api/routers/cards.py), so these check that it says what the full card view says and keeps every
visibility rule of the other card reads — the cardholder's 404, the sector's consent, the roles."""

from __future__ import annotations

from datetime import datetime

from tests.api.conftest import Live, active_card, new_key, post


def _status_matches_view(live: Live, role: str, card_id: int) -> dict:
    with live.client(role) as client:
        status = client.get(f"/v1/cards/{card_id}/status")
    with live.client("operator") as op:
        view = op.get(f"/v1/cards/{card_id}").json()
    assert status.status_code == 200, status.text
    assert status.headers["content-type"] == "application/json"
    body = status.json()
    assert body == {key: view[key] for key in ("id", "state", "dormant", "lost_at")}
    return body


def test_status_is_the_card_view_for_every_reader_role(live: Live) -> None:
    with live.client("operator") as op:
        card = active_card(live, op)
    for role in ("operator", "bank", "regulator", "terminal"):
        body = _status_matches_view(live, role, card["id"])
        assert body["state"] == "active" and body["lost_at"] is None and body["dormant"] is False
    with live.client("operator") as op:
        lost = post(op, f"/v1/cards/{card['id']}/report-loss", {"formal": False})
        assert lost.status_code == 200, lost.text
    body = _status_matches_view(live, "terminal", card["id"])
    # lost_at comes back aware UTC, in the same form as the card view and the loss report's answer
    assert body["state"] == "lost_oral" and body["lost_at"] == lost.json()["lost_at"]
    assert datetime.fromisoformat(body["lost_at"]).utcoffset().total_seconds() == 0


def test_status_keeps_the_cardholder_and_sector_rules(live: Live) -> None:
    with live.client("operator") as op:
        mine = active_card(live, op, holder_id=live.holder_id)
        theirs = active_card(live, op)
    with live.client("cardholder") as me:
        assert me.get(f"/v1/cards/{mine['id']}/status").json()["id"] == mine["id"]
        hidden = me.get(f"/v1/cards/{theirs['id']}/status")
        assert hidden.status_code == 404 and hidden.json()["code"] == "card.not_found"
    with live.client("sector") as health:
        refused = health.get(f"/v1/cards/{theirs['id']}/status")
        assert refused.status_code == 403 and refused.json()["code"] == "consent.missing"
    with live.client("operator") as op:
        granted = op.post(f"/v1/cardholders/{theirs['cardholder_id']}/consents",
                          json={"sector": "health", "scope": "identity"},
                          headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert granted.status_code == 201, granted.text
    _status_matches_view(live, "sector", theirs["id"])


def test_status_errors(live: Live) -> None:
    with live.client("terminal") as terminal:
        missing = terminal.get("/v1/cards/999999999/status")
        assert missing.status_code == 404 and missing.json()["code"] == "card.not_found"
        bad = terminal.get("/v1/cards/0/status")
        assert bad.status_code == 422 and bad.json()["code"] == "request.invalid"
    with live.client() as anonymous:
        assert anonymous.get("/v1/cards/1/status").json()["code"] == "auth.missing_credentials"
        forged = anonymous.get("/v1/cards/1/status", headers={"X-API-Key": "cck_" + "0" * 43})
        assert forged.status_code == 401 and forged.json()["code"] == "auth.bad_credentials"


def test_status_read_leaves_the_pooled_connection_as_it_found_it(live: Live) -> None:
    """On PostgreSQL the read runs in autocommit; the one pooled connection must come back
    transactional, or a later write transaction would commit statement by statement."""
    import sqlalchemy as sa

    from citycard.api.routers.cards import _status_row

    with live.client("operator") as op:
        card = active_card(live, op)
    url = live.engine.url.render_as_string(hide_password=False)
    engine = sa.create_engine(url, pool_size=1, max_overflow=0)  # one connection: the same one every time
    try:
        for _ in range(3):
            found = _status_row(engine, card["id"])
            assert found is not None and found[:3] == (card["id"], card["cardholder_id"], "active")
        assert _status_row(engine, 999_999_999) is None
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            if live.engine.dialect.name == "postgresql":
                assert driver.autocommit is False
            conn.execute(sa.text("CREATE TEMPORARY TABLE status_probe (n integer)"))
            conn.execute(sa.text("INSERT INTO status_probe VALUES (1)"))
            conn.rollback()  # transactional: the insert (and, on PostgreSQL, the table) are gone
        with engine.connect() as conn:
            if live.engine.dialect.name == "postgresql":
                assert conn.execute(sa.text("SELECT to_regclass('pg_temp.status_probe')")).scalar() is None
            else:
                assert conn.execute(sa.text("SELECT count(*) FROM status_probe")).scalar() == 0
    finally:
        engine.dispose()
