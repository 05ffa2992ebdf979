"""Sector applications loaded onto real virtual cards (docs/applications.md), SQLite and PostgreSQL.

Every card here is a citizen card personalised through STORE DATA with the HSM (the shipped
citizen-card-gm profile, and an INTL variant with the same Part 14 files, since only the GM profile
ships Part 14 files — as tests/kernel/test_capp.py does). Loading really performs GPO and APPEND
RECORD on the card image; the tests read the records back from the card image on disk with READ
CAPP DATA, and check the platform's rows and events.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from tests.platform.card_rows import insert_card_row

from citycard.card import load_card
from citycard.db import utc_now, write_transaction
from citycard.platform import applications, events, tables
from citycard.platform.application_catalogue import catalogue, encode_record, invalid_record
from citycard.platform.application_tables import card_applications
from citycard.platform.errors import Conflict, InvalidInput, NotFound

ACTOR = "desk-07"
CAMPUS = {
    "school_code": "1033500001",
    "member_no": "2026A0042",
    "role": "01",
    "faculty": "计算机学院",
    "valid_until": "2030-07-31",
}
TRANSIT = {"city_code": "3301", "concession": "01"}
# The INTL debit profile with the citizen card's Part 14 files: the transit file and the campus file.
INTL_CHANGES = {
    'name = "pboc-debit-intl"': 'name = "citizen-intl-apps"',
    'pdol_contactless = "9F66049F02069F03069F1A0295055F2A029A039C019F3704"': (
        'pdol_contactless = "9F66049F02069F03069F1A0295055F2A029A039C019F3704DF6001DF6901"'
    ),
    'imk_enc = "imk-enc"\n': 'imk_enc = "imk-enc"\nimk_capp = "imk-capp"\n',
}
INTL_PART14 = """
[part14]
indicator = "01"

[[part14.files]]
sfi = 0x15
type = "variable"
record_bytes = 64
size_bytes = 1024
use = "transit trip records"

[[part14.files]]
sfi = 0x17
type = "variable"
record_bytes = 64
size_bytes = 512
use = "spare: campus"
"""
SUITES = ["GM", "INTL"]
READ_CAPP = bytes.fromhex("80B400")


@pytest.fixture(scope="module")
def hsm():
    from citycard.hsm import SoftHSM

    return SoftHSM.ephemeral()


@pytest.fixture(scope="module")
def templates(hsm, tmp_path_factory):
    """Two personalised cards per suite (a card and its replacement), made once: (image, prepared)."""
    from citycard.card.perso.profile import profiles_dir
    from citycard.cli.bench_card import personalise_card

    made: dict[str, list[tuple[Path, Any]]] = {}

    def get(suite: str) -> list[tuple[Path, Any]]:
        if suite not in made:
            directory = tmp_path_factory.mktemp(f"apps-{suite.lower()}")
            profile: str | Path = "citizen-card-gm"
            if suite == "INTL":
                text = (profiles_dir() / "pboc-debit-intl.toml").read_text(encoding="utf-8")
                for old, new in INTL_CHANGES.items():
                    assert old in text, old
                    text = text.replace(old, new)
                profile = directory / "citizen-intl-apps.toml"
                profile.write_text(text + INTL_PART14, encoding="utf-8")
            cards = []
            for index in range(2):
                sub = directory / f"card{index}"
                sub.mkdir()
                path, prepared = personalise_card(sub, hsm, profile=profile, balance_fen=0)
                # a profile given by path names the image after that path, the same for both cards
                cards.append((shutil.copyfile(path, sub / "card.json"), prepared))
            made[suite] = cards
        return made[suite]

    return get


_holder_serial = iter(range(100, 1000))


def add_card(engine, tmp_path: Path, source: tuple[Path, Any], *, state: str = "active") -> int:
    """A cardholder and a card row in platform_cards for a copy of a personalised image."""
    now = utc_now()
    with write_transaction(engine) as conn:
        holder = conn.execute(
            insert(tables.cardholders)
            .values(
                name="张三",
                id_number=f"11010119900307{next(_holder_serial):03d}X",
                region_code="110101",
                birth_date=dt.date(1990, 3, 7),
                sex="M",
                kind="resident",
                created_by=ACTOR,
                created_at=now,
            )
            .returning(tables.cardholders.c.id)
        ).scalar_one()
        return insert_card_row(
            conn, cardholder_id=holder, source=source, directory=tmp_path, now=now, state=state
        )


def image_of(engine, card_id: int) -> Path:
    with write_transaction(engine) as conn:
        return Path(
            conn.execute(select(tables.cards.c.image_path).where(tables.cards.c.id == card_id)).scalar_one()
        )


def read_capp(hsm, image: Path, app_id: str) -> tuple[bytes, int]:
    """READ CAPP DATA on the card as saved on disk (a fresh load of the image: what survived)."""
    app = catalogue()[app_id]
    card = load_card(image, hsm=hsm)
    card.interface = "contact"
    card.power_on()
    assert card.process(bytes.fromhex("00A4040005A00000033300"))[-2:] == b"\x90\x00"
    answer = card.process(READ_CAPP + bytes([app.sfi << 3, 2]) + app.record_id)
    return answer[:-2], int.from_bytes(answer[-2:], "big")


def app_events(engine, card_id: int) -> list[Any]:
    with write_transaction(engine) as conn:
        return events.read(conn, kinds={"application.loaded", "application.unloaded"}, card_id=card_id)


def rows(engine) -> int:
    with write_transaction(engine) as conn:
        return conn.execute(select(func.count()).select_from(card_applications)).scalar_one()


@pytest.mark.parametrize("suite", SUITES)
def test_load_transit_and_campus_and_read_them_back_from_the_card(suite, engine, hsm, templates, tmp_path):
    card_id = add_card(engine, tmp_path, templates(suite)[0])
    with write_transaction(engine) as conn:
        transit = applications.load(conn, card_id, "transit", hsm=hsm, data=TRANSIT, actor=ACTOR)
        campus = applications.load(conn, card_id, "campus", hsm=hsm, data=CAMPUS, actor=ACTOR)
    assert (transit["state"], transit["sfi"], transit["record_id"], transit["suite"]) == (
        "loaded",
        0x15,
        "0570",
        suite,
    )
    assert campus["data"] == CAMPUS and campus["name"] == {"zh": "校园卡", "en": "Campus card"}
    assert campus["atc"] == transit["atc"] + 1  # one GPO per desk transaction, the card's ATC

    image = image_of(engine, card_id)
    for app_id, data in (("transit", TRANSIT), ("campus", CAMPUS)):
        record, sw = read_capp(hsm, image, app_id)
        assert sw == 0x9000 and record == encode_record(catalogue()[app_id], data)
    card = load_card(image, hsm=hsm)
    decoded = applications.read_from_card(card, "campus")
    assert decoded == {"valid": True, **CAMPUS}
    assert applications.read_from_card(card, "transit")["city_code"] == "3301"

    with write_transaction(engine) as conn:
        listed = applications.on_card(conn, card_id)
    assert [a["app_id"] for a in listed] == ["campus", "transit"] and "data" not in listed[0]
    seen = app_events(engine, card_id)
    assert [(e.kind, e.sector, e.payload["app_id"]) for e in seen] == [
        ("application.loaded", "transit", "transit"),
        ("application.loaded", "campus", "campus"),
    ]
    assert seen[1].payload == {
        "app_id": "campus",
        "sfi": 0x17,
        "record_id": "4301",
        "suite": suite,
        "atc": campus["atc"],
    }
    assert "计算机学院" not in str([e.payload for e in seen])  # personal data stays out of the events


@pytest.mark.parametrize("suite", SUITES)
def test_unload_marks_the_record_invalid_on_the_card_and_a_new_load_revalidates_it(
    suite, engine, hsm, templates, tmp_path
):
    card_id = add_card(engine, tmp_path, templates(suite)[0])
    with write_transaction(engine) as conn:
        applications.load(conn, card_id, "campus", hsm=hsm, data=CAMPUS, actor=ACTOR)
    with write_transaction(engine) as conn:
        view = applications.unload(conn, card_id, "campus", hsm=hsm, actor="desk-09")
    assert view["state"] == "unloaded" and view["unloaded_by"] == "desk-09"
    image = image_of(engine, card_id)
    record, sw = read_capp(hsm, image, "campus")
    assert sw == 0x9000 and record == invalid_record(catalogue()["campus"])  # status 00, data erased
    assert applications.read_from_card(load_card(image, hsm=hsm), "campus")["valid"] is False
    with write_transaction(engine) as conn:
        assert applications.on_card(conn, card_id) == []
        assert [a["state"] for a in applications.on_card(conn, card_id, all_states=True)] == ["unloaded"]
        with pytest.raises(Conflict) as refused:
            applications.unload(conn, card_id, "campus", hsm=hsm, actor=ACTOR)
    assert refused.value.code == "application.not_loaded"

    graduate = {**CAMPUS, "role": "03", "valid_until": "2031-01-31"}
    with write_transaction(engine) as conn:  # the record is already opened: the issuer update rewrites it
        again = applications.load(conn, card_id, "campus", hsm=hsm, data=graduate, actor=ACTOR)
    assert again["state"] == "loaded" and again["unloaded_at"] is None
    assert read_capp(hsm, image, "campus") == (encode_record(catalogue()["campus"], graduate), 0x9000)
    assert [e.kind for e in app_events(engine, card_id)] == [
        "application.loaded",
        "application.unloaded",
        "application.loaded",
    ]
    assert rows(engine) == 1


@pytest.mark.parametrize("suite", SUITES)
def test_reload_all_puts_every_application_on_the_replacement_card(suite, engine, hsm, templates, tmp_path):
    old_card, new_source = templates(suite)
    old_id = add_card(engine, tmp_path, old_card)
    with write_transaction(engine) as conn:
        applications.load(conn, old_id, "transit", hsm=hsm, data=TRANSIT, actor=ACTOR)
        applications.load(conn, old_id, "campus", hsm=hsm, data=CAMPUS, actor=ACTOR)
    with write_transaction(engine) as conn:
        conn.execute(tables.cards.update().where(tables.cards.c.id == old_id).values(state="replaced"))
    new_id = add_card(engine, tmp_path, new_source, state="issued")
    with write_transaction(engine) as conn:
        moved = applications.reload_all(conn, old_id, new_id, hsm=hsm, actor=ACTOR)
    assert [(m["app_id"], m["card_id"], m["state"]) for m in moved] == [
        ("campus", new_id, "loaded"),
        ("transit", new_id, "loaded"),
    ]
    image = image_of(engine, new_id)
    for app_id, data in (("transit", TRANSIT), ("campus", CAMPUS)):
        assert read_capp(hsm, image, app_id) == (encode_record(catalogue()[app_id], data), 0x9000)
    with write_transaction(engine) as conn:
        assert applications.on_card(conn, old_id) == []
        assert {a["state"] for a in applications.on_card(conn, old_id, all_states=True)} == {"transferred"}
        assert applications.reload_all(conn, old_id, new_id, hsm=hsm, actor=ACTOR) == []  # exactly once
    new_events = app_events(engine, new_id)
    assert [e.payload["replaces_card_id"] for e in new_events] == [old_id, old_id]
    old_events = [e for e in app_events(engine, old_id) if e.kind == "application.unloaded"]
    assert [(e.payload["reason"], e.payload["new_card_id"]) for e in old_events] == [("replaced", new_id)] * 2


def test_refusals_change_nothing(engine, hsm, templates, tmp_path):
    card_id = add_card(engine, tmp_path, templates("GM")[0])
    lost_id = add_card(engine, tmp_path, templates("GM")[1], state="lost")
    image = image_of(engine, card_id)
    cases = [
        (NotFound, "application.unknown", dict(card_id=card_id, app_id="casino", data={})),
        (NotFound, "card.not_found", dict(card_id=999_999, app_id="campus", data=CAMPUS)),
        (Conflict, "card.not_active", dict(card_id=lost_id, app_id="campus", data=CAMPUS)),
        (
            InvalidInput,
            "application.data",
            dict(card_id=card_id, app_id="campus", data={**CAMPUS, "role": "1x"}),
        ),
        (InvalidInput, "application.data", dict(card_id=card_id, app_id="campus", data={"member_no": "1"})),
        (
            InvalidInput,
            "application.data",
            dict(card_id=card_id, app_id="campus", data={**CAMPUS, "pet": "cat"}),
        ),
    ]
    for error, code, kwargs in cases:
        with pytest.raises(error) as raised, write_transaction(engine) as conn:
            applications.load(conn, hsm=hsm, actor=ACTOR, **kwargs)
        assert raised.value.code == code, kwargs
    with pytest.raises(InvalidInput) as raised, write_transaction(engine) as conn:
        applications.load(conn, card_id, "campus", hsm=hsm, data={**CAMPUS, "role": "1x"}, actor=ACTOR)
    assert raised.value.fields == {"role": "digits only, got '1x'"}
    with pytest.raises(InvalidInput), write_transaction(engine) as conn:
        applications.load(conn, card_id, "campus", hsm=hsm, data=CAMPUS, actor="")
    assert rows(engine) == 0 and app_events(engine, card_id) == []
    assert read_capp(hsm, image, "campus")[1] == 0x6A83  # the card was never written

    with write_transaction(engine) as conn:
        applications.load(conn, card_id, "campus", hsm=hsm, data=CAMPUS, actor=ACTOR)
    with pytest.raises(Conflict) as duplicate, write_transaction(engine) as conn:
        applications.load(conn, card_id, "campus", hsm=hsm, data=CAMPUS, actor=ACTOR)
    assert duplicate.value.code == "application.already_loaded"
    assert rows(engine) == 1 and len(app_events(engine, card_id)) == 1


def test_a_wrong_mac_is_refused_by_the_card_with_its_status_word(engine, hsm, templates, tmp_path):
    """The platform's row names another PAN than the chip at the desk: the HSM derives another card's
    opening key, the card's MAC check fails (6988) and nothing is recorded or written."""
    card_id = add_card(engine, tmp_path, templates("GM")[0])
    other_pan = templates("GM")[1][1].pan
    with write_transaction(engine) as conn:
        conn.execute(tables.cards.update().where(tables.cards.c.id == card_id).values(pan=other_pan))
    with pytest.raises(applications.CardRefused) as refused, write_transaction(engine) as conn:
        applications.load(conn, card_id, "campus", hsm=hsm, data=CAMPUS, actor=ACTOR)
    assert refused.value.sw == 0x6988 and refused.value.status == 409
    assert refused.value.detail == (
        "APPEND RECORD SFI 17 record 4301: the card answered 6988 (the MAC does not verify)"
    )
    assert rows(engine) == 0 and app_events(engine, card_id) == []
    assert read_capp(hsm, image_of(engine, card_id), "campus")[1] == 0x6A83


def test_a_card_without_the_file_answers_6a82(engine, hsm, templates, tmp_path):
    from citycard.crypto.suite import INTL

    card_id = add_card(engine, tmp_path, templates("INTL")[0])  # the INTL variant has no SFI 16
    health = {"health_record_no": "HR3301002026", "valid_until": "2036-01-01"}
    if "imk-capp-intl-16" not in {k.label for k in hsm.list_keys()}:
        with pytest.raises(Conflict) as missing, write_transaction(engine) as conn:
            applications.load(conn, card_id, "health", hsm=hsm, data=health, actor=ACTOR)
        assert missing.value.detail == "the HSM holds no opening-key master 'imk-capp-intl-16'"
        hsm.generate_key("imk-capp-intl-16", "IMK-ENC", INTL)  # as if another INTL card type had SFI 16
    with pytest.raises(applications.CardRefused) as refused, write_transaction(engine) as conn:
        applications.load(conn, card_id, "health", hsm=hsm, data=health, actor=ACTOR)
    assert refused.value.sw == 0x6A82 and "no such file on the card" in refused.value.detail
    assert rows(engine) == 0


def test_a_load_rolled_back_after_the_card_wrote_converges_on_retry(engine, hsm, templates, tmp_path):
    """Card first, database last: a rollback leaves the record on the chip only; the retry finds it
    opened (6A80) and rewrites it with the issuer update, so exactly one row and one event result."""
    card_id = add_card(engine, tmp_path, templates("GM")[0])

    class CrashError(Exception):
        pass

    with pytest.raises(CrashError), write_transaction(engine) as conn:
        applications.load(conn, card_id, "campus", hsm=hsm, data=CAMPUS, actor=ACTOR)
        raise CrashError
    image = image_of(engine, card_id)
    assert read_capp(hsm, image, "campus")[1] == 0x9000 and rows(engine) == 0
    changed = {**CAMPUS, "member_no": "2026A0043"}
    with write_transaction(engine) as conn:
        view = applications.load(conn, card_id, "campus", hsm=hsm, data=changed, actor=ACTOR)
    assert view["data"] == changed
    assert read_capp(hsm, image, "campus") == (encode_record(catalogue()["campus"], changed), 0x9000)
    assert rows(engine) == 1 and len(app_events(engine, card_id)) == 1


def test_the_card_object_at_the_desk_is_written_and_keeps_its_interface(engine, hsm, templates, tmp_path):
    card_id = add_card(engine, tmp_path, templates("GM")[0])
    card = load_card(image_of(engine, card_id), hsm=hsm)
    card.interface = "contactless"
    with write_transaction(engine) as conn:
        applications.load(
            conn,
            card_id,
            "tourism",
            hsm=hsm,
            card=card,
            data={"pass_no": "TP2026000117", "valid_from": "2026-01-01", "valid_until": "2026-12-31"},
            actor=ACTOR,
        )
    assert card.interface == "contactless"
    assert applications.read_from_card(card, "tourism")["visits_left"] == "9999"
    with pytest.raises(applications.CardRefused) as refused:
        applications.read_from_card(card, "driver")  # same file SFI 18, never opened
    assert refused.value.sw == 0x6A83


def test_two_desks_loading_one_card_at_once_both_land_on_the_chip(engine, hsm, templates, tmp_path):
    """The card row lock (FOR UPDATE / SQLite's single writer) makes the second desk wait and then
    open the image the first one saved, so neither record is lost."""
    import threading

    card_id = add_card(engine, tmp_path, templates("GM")[0])
    tourism = {"pass_no": "TP2026000117", "valid_from": "2026-01-01", "valid_until": "2026-12-31"}
    jobs = {"campus": CAMPUS, "tourism": tourism, "transit": TRANSIT}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def desk(app_id: str) -> None:
        try:
            start.wait()
            with write_transaction(engine) as conn:
                applications.load(conn, card_id, app_id, hsm=hsm, data=jobs[app_id], actor=f"desk-{app_id}")
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=desk, args=(app_id,)) for app_id in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    image = image_of(engine, card_id)
    for app_id, data in jobs.items():
        assert read_capp(hsm, image, app_id) == (encode_record(catalogue()[app_id], data), 0x9000)
    with write_transaction(engine) as conn:
        atcs = sorted(a["atc"] for a in applications.on_card(conn, card_id))
    assert atcs == [atcs[0], atcs[0] + 1, atcs[0] + 2]  # one after the other on the card
