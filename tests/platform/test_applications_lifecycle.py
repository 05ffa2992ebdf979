"""Applications across the card's life through the real platform functions (DESIGN.md §4 flow 3):
a card applied for, prepared, personalised as a virtual card image, issued and activated by
``citycard.platform.cards``; transit and campus loaded onto it; the card lost and replaced —
``cards.replace`` calls ``applications.reload_all``, so the new chip carries both records."""

from __future__ import annotations

import pytest
from tests.platform.test_cards_support import (  # noqa: F401 (hsm is a fixture)
    ACTOR,
    card_in_state,
    hsm,
)

from citycard.card import load_card
from citycard.db import write_transaction
from citycard.platform import applications, cards, events
from citycard.platform.application_catalogue import catalogue, encode_record
from citycard.platform.errors import Conflict

CAMPUS = {
    "school_code": "1033500001",
    "member_no": "2026B0007",
    "faculty": "医学院",
    "valid_until": "2029-06-30",
}


def on_chip(soft_hsm, image_path: str, app_id: str) -> bytes:
    card = load_card(image_path, hsm=soft_hsm)
    app = catalogue()[app_id]
    card.power_on()
    card.process(bytes.fromhex("00A4040005A00000033300"))
    answer = card.process(bytes([0x80, 0xB4, 0x00, app.sfi << 3, 2]) + app.record_id)
    assert answer[-2:] == b"\x90\x00", answer.hex()
    return answer[:-2]


def test_loaded_applications_follow_the_card_through_loss_and_replacement(engine, hsm, tmp_path):  # noqa: F811
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        applications.load(conn, card_id, "transit", hsm=hsm, data={}, actor=ACTOR)
        applications.load(conn, card_id, "campus", hsm=hsm, data=CAMPUS, actor=ACTOR)
        old = cards.record(conn, card_id)
    assert on_chip(hsm, old.image_path, "campus") == encode_record(catalogue()["campus"], CAMPUS)

    with write_transaction(engine) as conn:
        cards.report_loss(conn, card_id, formal=True, actor=ACTOR)
        with pytest.raises(Conflict) as refused:  # a lost card takes no application
            applications.load(conn, card_id, "tourism", hsm=hsm, data={}, actor=ACTOR)
        assert refused.value.code == "card.not_active"
    with write_transaction(engine) as conn:
        new_id = cards.replace(conn, card_id, hsm=hsm, image_dir=tmp_path, actor=ACTOR)["id"]
        new = cards.record(conn, new_id)
        replaced = events.read(conn, kinds={"card.replaced"}, card_id=card_id)
        now_on_new = applications.on_card(conn, new.id)
        now_on_old = applications.on_card(conn, card_id, all_states=True)
    assert [a["app_id"] for a in now_on_new] == ["campus", "transit"]
    assert {a["state"] for a in now_on_old} == {"transferred"}
    assert [a["app_id"] for a in replaced[0].payload["applications_reloaded"]] == ["campus", "transit"]
    assert "医学院" not in str(replaced[0].payload)  # the record's data stays out of events
    assert new.image_path != old.image_path and new.pan != old.pan
    for app_id, data in (("transit", {}), ("campus", CAMPUS)):
        assert on_chip(hsm, new.image_path, app_id) == encode_record(catalogue()[app_id], data)
