"""The card's life through the real server: apply → approve → prepare → personalise → issue →
activate → loss report (blocked at the issuer, on the next blacklist, events to the sector) →
replace → cancel; status and timeline reads; the cardholder role sees only its own cards."""

from __future__ import annotations

import sqlalchemy as sa
from tests.api.conftest import Live, active_card, new_key
from tests.api.conftest import post as _post

from citycard.db import read_transaction
from citycard.host.issuer import tables as issuer_tables
from citycard.kernel.params.exception_file import ExceptionFile
from citycard.platform import tables


def _issuer_status(live: Live, card_id: int) -> str:
    with read_transaction(live.engine) as conn:
        row = conn.execute(
            sa.select(tables.cards.c.pan, tables.cards.c.psn).where(tables.cards.c.id == card_id)
        ).one()
        return conn.execute(
            sa.select(issuer_tables.cards.c.status).where(issuer_tables.cards.c.pan == row.pan)
        ).scalar_one()


def _pan(live: Live, card_id: int) -> tuple[str, int]:
    with read_transaction(live.engine) as conn:
        row = conn.execute(
            sa.select(tables.cards.c.pan, tables.cards.c.psn).where(tables.cards.c.id == card_id)
        ).one()
    return row.pan, row.psn


def test_the_whole_life_through_the_api(live: Live) -> None:
    with live.client("operator") as op:
        card = active_card(live, op)
        card_id = card["id"]
        pan, psn = _pan(live, card_id)
        assert op.get("/v1/cards", params={"pan": pan, "psn": psn}).json()["id"] == card_id
        # a sector subscriber that will hear about the loss (the cardholder consented to it: without
        # consent the event reaches the sector redacted, tests/api/test_blacklist_auto_api.py)
        consent = _post(
            op, f"/v1/cardholders/{card['cardholder_id']}/consents", {"sector": "health", "scope": "cards"}
        )
        assert consent.status_code in (200, 201), consent.text
        sub = _post(op, "/v1/exchange/subscribers", {"name": f"health-{card_id}", "sector": "health",
                                                      "kinds": ["card.lost"], "from_now": True})  # fmt: skip
        assert sub.status_code == 201, sub.text
        before = op.post("/v1/blacklist/bus/publish", headers={"Idempotency-Key": new_key()}).json()[
            "version"
        ]

        lost = _post(op, f"/v1/cards/{card_id}/report-loss", {"formal": False})
        assert lost.status_code == 200 and lost.json()["state"] == "lost_oral" and lost.json()["lost_at"]
        assert _issuer_status(live, card_id) != "active"
        status = op.get(f"/v1/cards/{card_id}/status").json()
        assert status["state"] == "lost_oral" and status["lost_at"] == lost.json()["lost_at"]

        after = op.post("/v1/blacklist/bus/publish", headers={"Idempotency-Key": new_key()}).json()["version"]
        assert after > before
        full = op.get("/v1/blacklist/bus")
        listing = ExceptionFile.from_bytes(full.content, full_check=True)
        assert listing.version == after and listing.contains(pan, f"{psn:02d}")
        assert full.headers["x-blacklist-sha256"] == listing.body_sha256.hex().upper()
        delta = op.get("/v1/blacklist/bus/delta", params={"from_version": before})
        assert delta.status_code == 200 and delta.headers["x-blacklist-version"] == str(after)

        replace_key = new_key()
        replaced = _post(op, f"/v1/cards/{card_id}/replace", key=replace_key)
        assert replaced.status_code == 200, replaced.text
        # repeated (a client that lost the answer): the same new card, no second balance move
        again = _post(op, f"/v1/cards/{card_id}/replace", key=replace_key)
        assert again.status_code == 200 and again.content == replaced.content
        assert _post(op, f"/v1/cards/{card_id}/replace").status_code == 409  # a new key: the card is replaced
        new_card = replaced.json()
        assert new_card["id"] != card_id and new_card["cardholder_id"] == card["cardholder_id"]
        assert op.get(f"/v1/cards/{card_id}/status").json()["state"] == "replaced"

        kinds = [e["kind"] for e in op.get(f"/v1/cards/{card_id}/timeline").json()["items"]]
        assert kinds[0] == "card.applied" and "card.lost" in kinds and "card.replaced" in kinds

    with live.client("sector") as health:
        pulled = health.get("/v1/exchange/events", params={"subscriber": f"health-{card_id}"})
        assert pulled.status_code == 200, pulled.text
        items = pulled.json()["items"]
        assert [e["kind"] for e in items] == ["card.lost"] and items[0]["card_id"] == card_id
        acked = _post(
            health, "/v1/exchange/ack", {"subscriber": f"health-{card_id}", "seq": items[-1]["seq"]}
        )
        assert acked.status_code == 200 and acked.json()["cursor"] == items[-1]["seq"]
        assert (
            health.get("/v1/exchange/events", params={"subscriber": f"health-{card_id}"}).json()["items"]
            == []
        )


def test_cancel_refunds_the_deposit(live: Live) -> None:
    with live.client("operator") as op:
        card = active_card(live, op)
        answer = _post(op, f"/v1/cards/{card['id']}/cancel", {"reason": "moving away"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["card"]["state"] == "cancelled"
        assert answer.json()["refund_fen"] == card["deposit_fen"] > 0


def test_a_forbidden_transition_is_409_and_changes_nothing(live: Live) -> None:
    with live.client("operator") as op:
        card = active_card(live, op)
        before = op.get(f"/v1/cards/{card['id']}/timeline").json()["items"]
        answer = _post(op, f"/v1/cards/{card['id']}/approve")
        assert answer.status_code == 409 and answer.json()["code"] == "card.invalid_transition"
        assert answer.headers["content-type"] == "application/problem+json"
        assert op.get(f"/v1/cards/{card['id']}/timeline").json()["items"] == before
        missing = op.get("/v1/cards/987654321")
        assert missing.status_code == 404 and missing.json()["code"] == "card.not_found"


def test_loss_report_replay_blocks_once(live: Live) -> None:
    with live.client("operator") as op:
        card = active_card(live, op)
        key = new_key()
        first = _post(op, f"/v1/cards/{card['id']}/report-loss", {"formal": True}, key=key)
        assert first.status_code == 200 and first.json()["state"] == "lost"
        events_before = op.get(f"/v1/cards/{card['id']}/timeline").json()["items"]
        replay = _post(op, f"/v1/cards/{card['id']}/report-loss", {"formal": True}, key=key)
        assert replay.status_code == 200 and replay.content == first.content
        assert op.get(f"/v1/cards/{card['id']}/timeline").json()["items"] == events_before
        # the same call with a NEW key is a new request: the card is already lost → 409
        again = _post(op, f"/v1/cards/{card['id']}/report-loss", {"formal": True})
        assert again.status_code == 409


def test_cardholder_sees_and_reports_only_their_own_card(live: Live) -> None:
    with live.client("operator") as op:
        mine = active_card(live, op, holder_id=live.holder_id)
        theirs = active_card(live, op)
    with live.client("cardholder") as me:
        assert me.get(f"/v1/cards/{mine['id']}").status_code == 200
        assert [c["id"] for c in me.get(f"/v1/cardholders/{live.holder_id}/cards").json()["items"]] == [
            mine["id"]
        ]
        assert me.get(f"/v1/cards/{theirs['id']}").status_code == 404
        assert _post(me, f"/v1/cards/{theirs['id']}/report-loss").status_code == 404
        assert _post(me, f"/v1/cards/{mine['id']}/report-loss").json()["state"] == "lost_oral"
    with live.client("operator") as op:
        assert op.get(f"/v1/cards/{theirs['id']}/status").json()["state"] == "active"
