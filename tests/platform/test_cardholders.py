"""Cardholders: registration, search with cursors, consents (issue 6 item 1), SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from tests.platform.test_cards_support import ACTOR, resident_id

from citycard.db import read_transaction, write_transaction
from citycard.platform import cardholders, events, tables
from citycard.platform.errors import Conflict, InvalidInput, NotFound

ELDER = "11010519491231002X"


def count(conn, table) -> int:
    return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_register_derives_birth_date_and_sex_and_emits_in_the_same_transaction(engine) -> None:
    with write_transaction(engine) as conn:
        seq = events.last_seq(conn)
        holder = cardholders.register(
            conn, name="王芳", id_number=ELDER.lower(), kind="elderly", phone="+86 138-0000-0000",
            address="北京市西城区", photo_ref="photos/0001.jpg", actor=ACTOR,
        )  # fmt: skip
        [registered] = events.read(conn, after=seq)
    assert (holder["birth_date"], holder["sex"], holder["region_code"]) == ("1949-12-31", "F", "110105")
    assert holder["id_number_masked"] == "110105********002X" and ELDER not in str(holder)
    assert "transit_free" in holder["concessions"]
    assert (registered.kind, registered.cardholder_id) == ("cardholder.registered", holder["id"])
    with read_transaction(engine) as conn:
        assert cardholders.get(conn, holder["id"]) == holder


def test_refusals_store_nothing(engine) -> None:
    with write_transaction(engine) as conn:
        cardholders.register(conn, name="王芳", id_number=ELDER, kind="elderly", actor=ACTOR)
        before = (count(conn, tables.cardholders), events.last_seq(conn))
        cases = [
            (Conflict, "cardholder.exists", dict(id_number=ELDER, kind="resident")),
            (InvalidInput, "identity.check_digit", dict(id_number="110105194912310021", kind="resident")),
            (
                InvalidInput,
                "cardholder.kind_ineligible",
                dict(id_number=resident_id("20000101"), kind="elderly"),
            ),
            (InvalidInput, "cardholder.kind", dict(id_number=resident_id(), kind="pirate")),
            (
                InvalidInput,
                "cardholder.phone",
                dict(id_number=resident_id(), kind="resident", phone="call me"),
            ),
            (InvalidInput, "cardholder.name", dict(id_number=resident_id(), kind="resident", name=" ")),
            (InvalidInput, "cardholder.name", dict(id_number=resident_id(), kind="resident", name="x" * 65)),
            (InvalidInput, "cardholder.actor", dict(id_number=resident_id(), kind="resident", actor="")),
        ]
        for error, code, arguments in cases:
            arguments = {"name": "赵六", "actor": ACTOR, **arguments}
            with pytest.raises(error) as refused:
                cardholders.register(conn, **arguments)
            assert refused.value.code == code, arguments
        assert (count(conn, tables.cardholders), events.last_seq(conn)) == before
        with pytest.raises(NotFound) as missing:
            cardholders.get(conn, 99_999)
        assert missing.value.code == "cardholder.not_found" and missing.value.status == 404


def test_find_by_name_prefix_id_number_or_phone_with_cursor_pages(engine) -> None:
    with write_transaction(engine) as conn:
        ids = [
            cardholders.register(conn, name=f"陈{i}", id_number=resident_id(), kind="resident",
                                 phone=f"1390000{i:04d}", actor=ACTOR)["id"]
            for i in range(7)
        ]  # fmt: skip
        other = cardholders.register(conn, name="刘备", id_number=ELDER, kind="resident", actor=ACTOR)
    with read_transaction(engine) as conn:
        seen, cursor = [], None
        while True:
            page, cursor = cardholders.find(conn, query="陈", limit=3, after=cursor)
            seen += [h["id"] for h in page]
            if cursor is None:
                break
        assert seen == ids
        assert [h["id"] for h in cardholders.find(conn, query=ELDER)[0]] == [other["id"]]
        assert [h["id"] for h in cardholders.find(conn, query="13900000003")[0]] == [ids[3]]
        assert cardholders.find(conn, query="陈_")[0] == []  # LIKE wildcards are escaped
        everyone, cursor = cardholders.find(conn, limit=200)
        assert len(everyone) == 8 and cursor is None
        for bad in ({"limit": 0}, {"limit": 201}, {"after": "abc"}, {"after": "-1"}):
            with pytest.raises(InvalidInput):
                cardholders.find(conn, **bad)


def test_consents_are_granted_listed_and_revoked_with_history(engine) -> None:
    with write_transaction(engine) as conn:
        holder = cardholders.register(conn, name="孙七", id_number=ELDER, kind="elderly", actor=ACTOR)["id"]
        granted = cardholders.grant_consent(
            conn, holder, sector="health", scope="card.status", actor="desk:1"
        )
        again = cardholders.grant_consent(conn, holder, sector="health", scope="card.status", actor="desk:2")
        assert again["id"] == granted["id"]  # an active consent is not granted twice
        cardholders.grant_consent(conn, holder, sector="transit", scope="trips", actor="desk:1")
        assert cardholders.has_consent(conn, holder, sector="health", scope="card.status")
        revoked = cardholders.revoke_consent(
            conn, holder, sector="health", scope="card.status", actor="app:holder"
        )
        assert revoked["revoked_by"] == "app:holder" and revoked["revoked_at"] is not None
        assert not cardholders.has_consent(conn, holder, sector="health", scope="card.status")
        assert [c["sector"] for c in cardholders.consents(conn, holder)] == ["transit"]
        history = cardholders.consents(conn, holder, include_revoked=True)
        assert [(c["sector"], c["revoked_at"] is None) for c in history] == [
            ("health", False),
            ("transit", True),
        ]
        with pytest.raises(NotFound) as none:
            cardholders.revoke_consent(conn, holder, sector="health", scope="card.status", actor="x")
        assert none.value.code == "consent.not_found"
        with pytest.raises(InvalidInput):
            cardholders.grant_consent(conn, holder, sector="Health Bureau", scope="x", actor="x")
        with pytest.raises(NotFound):
            cardholders.grant_consent(conn, holder + 1, sector="health", scope="x", actor="x")
