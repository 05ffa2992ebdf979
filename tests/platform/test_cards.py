"""The card lifecycle as an audited state machine (issue 6 item 2), on SQLite and PostgreSQL:
every action from every state — allowed ones reach their target with an audit row, forbidden ones
raise Conflict ``card.invalid_transition`` with nothing changed in the same transaction."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from tests.platform import test_cards_support as support
from tests.platform.test_cards_support import (
    ACTOR,
    PATHS,
    act,
    card_in_state,
    new_holder,
    snapshot,
)

from citycard.db import read_transaction, write_transaction
from citycard.platform import cards, events, lifecycle, tables
from citycard.platform.errors import Conflict, InvalidInput, NotFound
from citycard.platform.lifecycle import TRANSITIONS, CardState

hsm = support.hsm  # the module-scoped HSM fixture
ACTIONS = tuple(TRANSITIONS)


def test_every_action_from_every_state(engine, hsm, tmp_path) -> None:
    allowed_seen = forbidden_seen = 0
    for state in PATHS:
        for action in ACTIONS:
            sources, to = TRANSITIONS[action]
            with write_transaction(engine) as conn:
                card_id = card_in_state(conn, state, hsm=hsm, image_dir=tmp_path)
                before = snapshot(conn, card_id)
                audit_before = cards.audit_trail(conn, card_id)
                if CardState(state) in sources:
                    act(conn, card_id, action, hsm=hsm, image_dir=tmp_path)
                    assert cards.get(conn, card_id)["state"] == to.value, (state, action)
                    trail = cards.audit_trail(conn, card_id)
                    last = trail[-1]
                    assert (last["action"], last["from"], last["to"], last["actor"]) == (
                        action, state, to.value, ACTOR,
                    )  # fmt: skip
                    assert dt.datetime.fromisoformat(last["at"]).utcoffset() == dt.timedelta(0)
                    assert len(trail) == len(audit_before) + 1
                    allowed_seen += 1
                else:
                    with pytest.raises(Conflict) as refused:
                        act(conn, card_id, action, hsm=hsm, image_dir=tmp_path)
                    assert refused.value.code == "card.invalid_transition"
                    assert refused.value.status == 409
                    assert state in refused.value.detail
                    assert snapshot(conn, card_id) == before, (state, action)
                    forbidden_seen += 1
    assert allowed_seen == sum(len(sources) for sources, _ in TRANSITIONS.values())
    assert allowed_seen + forbidden_seen == len(PATHS) * len(ACTIONS)


def test_the_whole_life_is_audited_and_emitted_in_order(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        cards.report_loss(conn, card_id, formal=False, actor="desk:7", reason="phone call")
        cards.unblock(conn, card_id, actor="desk:7", reason="found in a coat")
    with read_transaction(engine) as conn:
        trail = cards.audit_trail(conn, card_id)
        assert [(t["from"], t["to"]) for t in trail] == [
            (None, "applied"), ("applied", "approved"), ("approved", "prepared"),
            ("prepared", "personalised"), ("personalised", "issued"), ("issued", "active"),
            ("active", "lost_oral"), ("lost_oral", "active"),
        ]  # fmt: skip
        assert trail[-1]["reason"] == "found in a coat" and trail[-1]["actor"] == "desk:7"
        kinds = [e["kind"] for e in cards.timeline(conn, card_id)]
        assert kinds == [
            "card.applied", "card.approved", "card.prepared", "card.personalised", "card.issued",
            "card.activated", "card.lost", "card.unblocked",
        ]  # fmt: skip
        view = cards.get(conn, card_id)
        assert view["pan_masked"].startswith("623548") and "*" in view["pan_masked"]
        assert view["lost_at"] is None and view["actions"] == lifecycle.allowed_actions("active")
        full = cards.record(conn, card_id)
        assert cards.by_pan(conn, full.pan, full.psn)["id"] == card_id
        assert [c["id"] for c in cards.list_for_cardholder(conn, full.cardholder_id)] == [card_id]


def test_bad_input_is_refused_precisely_with_nothing_stored(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        holder = new_holder(conn)
        counted = conn.execute(select(tables.cards.c.id)).all()
        with pytest.raises(InvalidInput) as bad:
            cards.apply(conn, holder, profile="no-such-profile", issuer="citybank", actor=ACTOR)
        assert bad.value.code == "card.profile"
        with pytest.raises(InvalidInput) as bad:
            cards.apply(conn, holder, profile="citizen-card-gm", issuer="ruralbank", actor=ACTOR)
        assert bad.value.code == "card.bin_mismatch"
        with pytest.raises(InvalidInput) as bad:
            cards.apply(conn, holder, profile="citizen-card-gm", issuer="nobank", actor=ACTOR)
        assert bad.value.code == "card.issuer"
        with pytest.raises(InvalidInput) as bad:
            cards.apply(conn, holder, profile="citizen-card-gm", issuer="citybank", actor="")
        assert bad.value.code == "card.actor"
        with pytest.raises(NotFound):
            cards.apply(conn, holder + 999, profile="citizen-card-gm", issuer="citybank", actor=ACTOR)
        with pytest.raises(NotFound) as missing:
            cards.get(conn, 424242)
        assert missing.value.code == "card.not_found"
        assert conn.execute(select(tables.cards.c.id)).all() == counted
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path, holder=holder)
        before = snapshot(conn, card_id)
        with pytest.raises(InvalidInput):
            cards.report_loss(conn, card_id, formal="yes", actor=ACTOR)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput) as naive:
            cards.report_loss(conn, card_id, formal=True, actor=ACTOR, at=dt.datetime(2026, 1, 1))
        assert naive.value.code == "card.time"
        future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        with pytest.raises(InvalidInput):
            cards.report_loss(conn, card_id, formal=True, actor=ACTOR, at=future)
        assert snapshot(conn, card_id) == before


def test_a_stale_row_loses_to_a_concurrent_change(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "applied", hsm=hsm, image_dir=tmp_path)
        stale = cards.record(conn, card_id)
        cards.approve(conn, card_id, actor=ACTOR)
        seq = events.last_seq(conn)
        with pytest.raises(Conflict) as lost:
            lifecycle.transition(conn, stale, "approve", actor=ACTOR)
        assert lost.value.code == "card.invalid_transition"
        assert events.last_seq(conn) == seq


def test_personalise_for_a_bureau_returns_a_store_data_script_without_clear_keys(
    engine, hsm, tmp_path
) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "prepared", hsm=hsm, image_dir=tmp_path)
        result = cards.personalise(conn, card_id, hsm=hsm, image_dir=None, actor=ACTOR)
        assert result["state"] == "personalised"
        script = result["perso_script"]
        assert script["pan_masked"] == result["pan_masked"]
        assert script["apdus"] and all(a.startswith(("00A4", "80E2")) for a in script["apdus"])
        assert script["kcvs"]["GM"]  # keys identified by check values only
        secret = [d for d in script["dgis"] if d["enciphered"]]
        assert secret, "the card keys travel enciphered under the transport key"
        assert cards.record(conn, card_id).image_path is None
        assert not list(tmp_path.glob("*.json"))
