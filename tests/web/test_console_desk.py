"""The console's desk pages over plain HTTP against a real server (SQLite and PostgreSQL): register a
cardholder, issue them a card, load and unload a sector application — really written on the
virtual card, read back from its image."""

from __future__ import annotations

import sqlalchemy as sa
from tests.web.conftest import Console, csrf_of, resident_id

from citycard.card import load_card
from citycard.db import read_transaction
from citycard.platform import applications, cards
from citycard.platform import tables as platform_tables

CAMPUS = {
    "school_code": "1033500001",
    "member_no": "2026A0042",
    "faculty": "计算机学院",
    "valid_until": "2030-07-31",
}


def _holders_named(console: Console, name: str) -> list[int]:
    with read_transaction(console.engine) as conn:
        h = platform_tables.cardholders.c
        return [int(r.id) for r in conn.execute(sa.select(h.id).where(h.name == name))]


def test_register_issue_load_and_unload_at_the_desk(console: Console) -> None:
    number = resident_id("19900315")
    with console.logged_in() as client:
        form = client.get("/console/register")
        assert form.status_code == 200 and 'name="id_number"' in form.text and "居民" in form.text
        csrf = csrf_of(form.text)
        answer = client.post("/console/register", data={"csrf_token": csrf, "name": "王柜台", "id_number": number,
                                                         "kind": "resident", "phone": "13800138000", "address": ""})  # fmt: skip
        assert answer.status_code == 303, answer.text
        holder_url = answer.headers["location"]
        [holder_id] = _holders_named(console, "王柜台")
        assert holder_url == f"/console/cardholders/{holder_id}"
        page = client.get(holder_url)
        assert page.status_code == 200 and "1990-03-15" in page.text and 'id="issue-card"' in page.text
        issued = client.post(f"{holder_url}/cards", data={"csrf_token": csrf, "profile": "citizen-card-gm"})
        assert issued.status_code == 303, issued.text
        card_url = issued.headers["location"].split("?")[0]
        card_id = int(card_url.rsplit("/", 1)[1])
        card_page = client.get(card_url)
        assert 'id="card-state">正常' in card_page.text and 'id="manage-applications"' in card_page.text
        apps_page = client.get(f"{card_url}/applications")
        assert apps_page.status_code == 200 and 'id="load-campus"' in apps_page.text
        # a bad value: the platform names the field, nothing is written
        bad = {"csrf_token": csrf, "app_id": "campus"} | {f"campus.{k}": v for k, v in CAMPUS.items()}
        refused = client.post(f"{card_url}/applications/load", data=bad | {"campus.role": "1x"})
        assert refused.status_code == 422 and 'role="alert"' in refused.text
        loaded = client.post(f"{card_url}/applications/load", data=bad)
        assert loaded.status_code == 303, loaded.text
        assert loaded.headers["location"] == f"{card_url}/applications?done=loaded&app=campus"
        shown = client.get(loaded.headers["location"])
        assert "校园卡已加载到卡片。" in shown.text and 'id="unload-campus"' in shown.text
    with read_transaction(console.engine) as conn:
        card = cards.record(conn, card_id)
        assert card.state == "active" and card.cardholder_id == holder_id
        assert [a["app_id"] for a in applications.on_card(conn, card_id)] == ["campus"]
    chip = load_card(card.image_path, hsm=console.hsm)  # what the chip itself holds now
    assert applications.read_from_card(chip, "campus") == {"valid": True, "role": "01", **CAMPUS}
    with console.logged_in() as client:
        csrf = csrf_of(client.get(f"{card_url}/applications").text)
        gone = client.post(
            f"{card_url}/applications/campus/unload", data={"csrf_token": csrf, "confirm": "1"}
        )
        assert gone.status_code == 303 and "done=unloaded" in gone.headers["location"]
    assert (
        applications.read_from_card(load_card(card.image_path, hsm=console.hsm), "campus")["valid"] is False
    )


def test_a_refused_registration_or_a_forged_form_changes_nothing(console: Console) -> None:
    with console.logged_in() as client:
        csrf = csrf_of(client.get("/console/register").text)
        good = resident_id("19850101")
        bad_number = good[:-1] + ("0" if good[-1] != "0" else "1")  # a wrong check character
        refused = client.post("/console/register", data={"csrf_token": csrf, "name": "错号", "id_number": bad_number,
                                                          "kind": "resident"})  # fmt: skip
        assert refused.status_code == 422 and 'role="alert"' in refused.text and bad_number in refused.text
        forged = client.post("/console/register", data={"csrf_token": "x" * 43, "name": "伪造", "id_number": good,
                                                         "kind": "resident"})  # fmt: skip
        assert forged.status_code == 403
        elderly_too_young = client.post(
            "/console/register",
            data={"csrf_token": csrf, "name": "太年轻", "id_number": good, "kind": "elderly"},
        )
        assert elderly_too_young.status_code == 422
        assert client.post("/console/cardholders/999999/cards", data={"csrf_token": csrf}).status_code == 404
    assert (
        _holders_named(console, "错号")
        == _holders_named(console, "伪造")
        == _holders_named(console, "太年轻")
        == []
    )
    with console.client() as anonymous:  # no session: the login page
        assert anonymous.get("/console/register").status_code == 303
        assert anonymous.get(f"/console/cards/{console.card_id}/applications").status_code == 303
