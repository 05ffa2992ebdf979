"""The hospital desk's card access (citycard.terminals.health_card) on cards whose health DDF1 was
loaded **through the platform** (applications.load "health"), SQLite and PostgreSQL, GM and INTL.

Every card is personalised through STORE DATA with the HSM, issued as a platform card row, loaded
with the health application (the Part 14 record and the DDF1 with its keys, really on the image),
then read back from the image on disk by the desk over APDUs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from tests.platform.card_rows import insert_card_row

from citycard.card import load_card
from citycard.card.health import HealthApplication
from citycard.card.health import files as hf
from citycard.crypto.suite import GM, INTL
from citycard.db import utc_now, write_transaction
from citycard.platform import applications, tables
from citycard.platform.errors import Conflict
from citycard.reader import InProcessTransport
from citycard.terminals.health_card import (
    HealthCardError,
    HealthCardReader,
    HospitalSam,
    InstitutionSigner,
    RecordSignatureError,
    VisitRecord,
    verify_record,
)

ACTOR = "desk-health"
SUITES = {"GM": GM, "INTL": INTL}
HEALTH = {
    "health_record_no": "HR3301002026",
    "blood_abo": "1",
    "blood_rh": "1",
    "alerts": "C000",
    "valid_until": "2036-01-01",
}
INTL_CHANGES = {
    'name = "pboc-debit-intl"': 'name = "citizen-intl-health"',
    'pdol_contactless = "9F66049F02069F03069F1A0295055F2A029A039C019F3704"': (
        'pdol_contactless = "9F66049F02069F03069F1A0295055F2A029A039C019F3704DF6001DF6901"'
    ),
    'imk_enc = "imk-enc"\n': 'imk_enc = "imk-enc"\nimk_capp = "imk-capp"\n',
}
INTL_PART14 = """
[part14]
indicator = "01"

[[part14.files]]
sfi = 0x16
type = "variable"
record_bytes = 64
size_bytes = 512
use = "sector applications: health"
"""
VISIT_AT = dt.datetime(2026, 11, 27, 1, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def hsm():
    from citycard.hsm import SoftHSM

    made = SoftHSM.ephemeral()
    for suite in SUITES.values():
        made.create_institution_key("H001", suite)
        made.create_institution_key("H002", suite)
    return made


@pytest.fixture(scope="module")
def templates(hsm, tmp_path_factory):
    """One personalised citizen card per suite, made once: (image, prepared)."""
    from citycard.card.perso.profile import profiles_dir
    from citycard.cli.bench_card import personalise_card

    made: dict[str, tuple[Path, Any]] = {}

    def get(suite: str) -> tuple[Path, Any]:
        if suite not in made:
            directory = tmp_path_factory.mktemp(f"health-{suite.lower()}")
            profile: str | Path = "citizen-card-gm"
            if suite == "INTL":
                text = (profiles_dir() / "pboc-debit-intl.toml").read_text(encoding="utf-8")
                for old, new in INTL_CHANGES.items():
                    assert old in text, old
                    text = text.replace(old, new)
                profile = directory / "citizen-intl-health.toml"
                profile.write_text(text + INTL_PART14, encoding="utf-8")
            made[suite] = personalise_card(directory, hsm, profile=profile, balance_fen=0)
        return made[suite]

    return get


_serial = iter(range(100, 1000))


def issue(engine, tmp_path: Path, source: tuple[Path, Any]) -> tuple[int, dict[str, Any]]:
    """A cardholder and an active card row for a copy of a personalised image."""
    holder = {
        "name": "王小明",
        "id_number": f"33010619851201{next(_serial):03d}X",
        "region_code": "330106",
        "birth_date": dt.date(1985, 12, 1),
        "sex": "F",
        "kind": "resident",
        "phone": "13912345678",
        "address": "杭州市西湖区文三路 90 号",
    }
    now = utc_now()
    with write_transaction(engine) as conn:
        holder_id = conn.execute(
            insert(tables.cardholders)
            .values(**holder, created_by=ACTOR, created_at=now)
            .returning(tables.cardholders.c.id)
        ).scalar_one()
        card_id = insert_card_row(conn, cardholder_id=holder_id, source=source, directory=tmp_path, now=now)
    return card_id, holder


def image_of(engine, card_id: int) -> Path:
    with write_transaction(engine) as conn:
        return Path(
            conn.execute(select(tables.cards.c.image_path).where(tables.cards.c.id == card_id)).scalar_one()
        )


def desk(hsm, image: Path, institution: str = "H001") -> tuple[Any, HealthCardReader]:
    card = load_card(image, hsm=hsm)
    reader = HealthCardReader(InProcessTransport(card), sam=HospitalSam(hsm, institution_id=institution))
    return card, reader


def visit(**changes: Any) -> VisitRecord:
    fields = {
        "institution_id": "H001",
        "visit_at": VISIT_AT,
        "department": "呼吸内科",
        "diagnosis_code": "J45.9",
        "amount_fen": 23_450,
        "insurance_fen": 16_415,
        "visit_no": "MZ20261127-0042",
    }
    return VisitRecord(**{**fields, **changes})


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_load_through_the_platform_then_the_desk_reads_and_appends_visits(
    suite, engine, hsm, templates, tmp_path
):
    card_id, holder = issue(engine, tmp_path, templates(suite))
    with write_transaction(engine) as conn:
        row = applications.load(conn, card_id, "health", hsm=hsm, data=HEALTH, actor=ACTOR)
    assert row["state"] == "loaded" and row["suite"] == suite

    card, reader = desk(hsm, image_of(engine, card_id))
    health = [app for app in card.applications if isinstance(app, HealthApplication)]
    assert len(health) == 1 and health[0].suite is SUITES[suite]  # SM4 keys for GM, 3DES for INTL
    issuer = reader.select()
    assert issuer["chip_serial"] == card.serial.hex().upper() and issuer["card_no"] == holder["id_number"]
    ident = reader.read_identity()
    assert (ident.name, ident.sex, ident.birth_date, ident.id_number) == (
        holder["name"],
        "2",
        holder["birth_date"],
        holder["id_number"],
    )
    assert (
        ident.card_no == holder["id_number"] and ident.phones == (holder["phone"],) and ident.suite == suite
    )
    assert reader.read_alerts() == {"blood_abo": "1", "blood_rh": "1", "alerts": ["asthma", "heart_disease"]}
    assert reader.read_documents() == {"health_record_no": "HR3301002026"}
    assert reader.read_file("DF01/EF05") == [{"address1": holder["address"]}]
    assert reader.read_allergies() == [] and reader.read_visits() == []

    first = reader.append_visit(visit(), signer=InstitutionSigner(hsm, "H001", SUITES[suite]))
    assert first.signed and first.signature_alg == ("SM2-SM3" if suite == "GM" else "RSA-PKCS1-SHA256")
    assert len(first.signature) == (64 if suite == "GM" else 256)

    # a second hospital reads the first visit, verified with H001's key, and adds its own (PSS on INTL)
    _, reader2 = desk(hsm, image_of(engine, card_id), institution="H002")
    reader2.select()
    assert reader2.read_visits() == [first]
    second = reader2.append_visit(
        visit(institution_id="H002", department="急诊科", visit_at=VISIT_AT + dt.timedelta(days=3)),
        signer=InstitutionSigner(hsm, "H002", SUITES[suite], pss=suite == "INTL"),
    )
    # what the platform stores (to_dict) compares equal to what the card holds, canonical bytes too
    _, reader3 = desk(hsm, image_of(engine, card_id))
    reader3.select()
    visits = reader3.read_visits()
    assert visits == [first, second]
    assert [VisitRecord.from_dict(v.to_dict()) for v in visits] == visits
    assert visits[1].canonical_bytes() == second.canonical_bytes()

    # one chip, two independent applications: the PBOC debit application is still there
    card3 = load_card(image_of(engine, card_id), hsm=hsm)
    card3.power_on()
    assert card3.process(bytes.fromhex("00A4040005A00000033300"))[-2:] == b"\x90\x00"


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_protected_files_without_the_key_answer_6982(suite, engine, hsm, templates, tmp_path):
    card_id, _ = issue(engine, tmp_path, templates(suite))
    with write_transaction(engine) as conn:
        applications.load(conn, card_id, "health", hsm=hsm, data=HEALTH, actor=ACTOR)
    _, reader = desk(hsm, image_of(engine, card_id))
    reader.select()
    transport = reader.transport
    for file in (hf.IDENTITY_FILE, hf.ALERTS_FILE, hf.DOCUMENTS_FILE, hf.OUTPATIENT_FLAGS_FILE):
        answer = transport.transmit(bytes([0x00, 0xB2, 0x01, file.sfi << 3 | 4, 0x00]))
        assert answer == b"\x69\x82", file.name
    answer = transport.transmit(bytes([0x00, 0xB0, 0x80 | hf.OUTPATIENT_SLOTS[0].sfi, 0x00, 0x10]))
    assert answer == b"\x69\x82"
    # a desk whose SAM holds other health masters (another city) fails EXTERNAL AUTHENTICATE: 63CE
    from citycard.hsm import SoftHSM

    stranger = SoftHSM.ephemeral()
    stranger.create_health_masters(SUITES[suite])
    _, foreign = desk(hsm, image_of(engine, card_id))
    foreign.sam = HospitalSam(stranger, "H009")
    foreign.select()
    with pytest.raises(HealthCardError) as refused:
        foreign.read_identity()
    assert refused.value.sw == 0x63CE and "EXTERNAL AUTHENTICATE DDF1" in str(refused.value)
    assert "14 tries left" in str(refused.value)
    # writing without the update key: CLA 00 → 6982, nothing written
    record = bytes.fromhex("800131")
    answer = transport.transmit(bytes([0x00, 0xDC, 0x01, hf.ALERTS_FILE.sfi << 3 | 4, len(record)]) + record)
    assert answer == b"\x69\x82"
    assert reader.read_alerts()["alerts"] == ["asthma", "heart_disease"]


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_a_forged_record_signature_is_rejected(suite, engine, hsm, templates, tmp_path):
    card_id, _ = issue(engine, tmp_path, templates(suite))
    with write_transaction(engine) as conn:
        applications.load(conn, card_id, "health", hsm=hsm, data=HEALTH, actor=ACTOR)
    _, reader = desk(hsm, image_of(engine, card_id), institution="H002")
    reader.select()
    h001 = InstitutionSigner(hsm, "H001", SUITES[suite])
    h002 = InstitutionSigner(hsm, "H002", SUITES[suite])
    genuine = h001.sign(visit())
    altered = VisitRecord.from_dict({**genuine.to_dict(), "amount_fen": 99_999})  # the signature kept
    with pytest.raises(RecordSignatureError, match="does not verify"):
        verify_record(altered, h001.public_key())
    # H002 signs a record claiming to be H001's: its key id is H002's, H001's key refuses it
    impostor = VisitRecord.from_dict(
        {**h002.sign(visit(institution_id="H002")).to_dict(), "institution_id": "H001"}
    )
    with pytest.raises(RecordSignatureError, match="names key"):
        verify_record(impostor, h001.public_key())
    # the desk refuses to write a record the next desk would refuse…
    with pytest.raises(RecordSignatureError):
        reader.append_visit(altered, signer=h002)
    with pytest.raises(RecordSignatureError, match="cannot sign a record of H001"):
        h002.sign(visit())
    # …and a forged record written onto the card anyway (a rogue SAM holds the update key) is
    # rejected when read, with the reason
    slot = hf.OUTPATIENT_SLOTS[0]
    reader._write_binary(slot, altered.to_bytes())
    reader.write_record(hf.OUTPATIENT_FLAGS_FILE.name, {"flags": "0100000000", "last": "00"})
    with pytest.raises(RecordSignatureError, match="forged or altered"):
        reader.read_visits()
    assert reader.read_visits(verify=False) == [altered]


def test_a_card_without_the_health_application(engine, hsm, templates, tmp_path):
    card_id, _ = issue(engine, tmp_path, templates("GM"))
    _, reader = desk(hsm, image_of(engine, card_id))
    with pytest.raises(HealthCardError) as missing:
        reader.select()
    assert missing.value.sw == 0x6A82 and "no health application" in str(missing.value)
    with pytest.raises(HealthCardError, match="call select"):
        reader.read_identity()


def test_loading_twice_and_after_a_rollback_keeps_one_ddf1(engine, hsm, templates, tmp_path):
    card_id, _ = issue(engine, tmp_path, templates("GM"))

    class CrashError(Exception):
        pass

    with pytest.raises(CrashError), write_transaction(engine) as conn:
        applications.load(conn, card_id, "health", hsm=hsm, data=HEALTH, actor=ACTOR)
        raise CrashError
    card = load_card(image_of(engine, card_id), hsm=hsm)
    assert sum(isinstance(app, HealthApplication) for app in card.applications) == 1  # card first
    with write_transaction(engine) as conn:
        applications.load(conn, card_id, "health", hsm=hsm, data=HEALTH, actor=ACTOR)
    with pytest.raises(Conflict) as again, write_transaction(engine) as conn:
        applications.load(conn, card_id, "health", hsm=hsm, data=HEALTH, actor=ACTOR)
    assert again.value.code == "application.already_loaded"
    card = load_card(image_of(engine, card_id), hsm=hsm)
    assert sum(isinstance(app, HealthApplication) for app in card.applications) == 1
    _, reader = desk(hsm, image_of(engine, card_id))
    reader.select()
    assert reader.read_alerts()["blood_abo"] == "1"


def test_visit_record_codec_and_limits():
    record = visit()
    assert VisitRecord.from_bytes(record.to_bytes() + bytes(40)) == record  # zero fill of the slot
    assert record.patient_fen == 23_450 - 16_415
    assert record.to_dict()["visit_at"] == "2026-11-27T01:30:00+00:00"
    shanghai = dt.timezone(dt.timedelta(hours=8))
    assert visit(visit_at=VISIT_AT.astimezone(shanghai)).canonical_bytes() == record.canonical_bytes()
    for changes, field in (
        ({"visit_at": dt.datetime(2026, 11, 27)}, "visit_at"),
        ({"insurance_fen": 30_000}, "insurance_fen"),
        ({"amount_fen": 1.5}, "amount_fen"),
        ({"institution_id": "H 1"}, "institution_id"),
        ({"department": "科" * 20}, "department"),
    ):
        with pytest.raises(ValueError, match=field):
            visit(**changes)
    with pytest.raises(RecordSignatureError, match="not signed"):
        verify_record(record, b"\x00" * 64)


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_visit_slots_are_cyclic_and_inpatient_records_separate(suite, hsm, tmp_path):
    from citycard.card.health.perso import load_health_application
    from citycard.card.image import new_card

    hsm.create_health_masters(SUITES[suite])
    records = {"DDF1/EF05": [{"card_type": "2", "card_no": "330106198512011234"}]}
    card = new_card([], hsm=hsm, image_path=tmp_path / "card.json")
    load_health_application(card, hsm, SUITES[suite], records=records)
    reader = HealthCardReader(InProcessTransport(card), sam=HospitalSam(hsm, institution_id="H001"))
    reader.select()
    signer = InstitutionSigner(hsm, "H001", SUITES[suite])
    written = [
        reader.append_visit(
            visit(visit_no=f"MZ-{n}", visit_at=VISIT_AT + dt.timedelta(hours=n)), signer=signer
        )
        for n in range(7)
    ]
    # five outpatient slots: the two oldest were overwritten, the rest come back oldest first
    assert reader.read_visits() == written[2:]
    stay = reader.append_visit(visit(visit_no="ZY-1", department="骨科"), signer=signer, kind="inpatient")
    assert reader.read_visits(kind="inpatient") == [stay] and reader.read_visits() == written[2:]
    with pytest.raises(HealthCardError, match="visit kind 'emergency'"):
        reader.read_visits(kind="emergency")
    # a new desk session on the image as saved on disk sees the same
    _, again = desk(hsm, tmp_path / "card.json")
    again.select()
    assert again.read_visits() == written[2:] and again.read_visits(kind="inpatient") == [stay]
