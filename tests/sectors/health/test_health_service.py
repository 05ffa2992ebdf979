"""The platform health service on SQLite and PostgreSQL: institutions, the patient index across two
hospitals, appointments, the consent gate with its audit (refusals committed), signed visit records
in both suites (SM2/SM3 and RSA/SHA-256), the insurance share from the rules table, and the
settlement posted once per visit with the ledger invariants holding."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from tests.platform.test_cards_support import card_in_state, new_holder
from tests.sectors.health.support import WHEN, Signer, record_for, rsa_record_key

from citycard import ledger
from citycard.card.health.records import VisitRecord
from citycard.crypto import rsa
from citycard.db import read_transaction, write_transaction
from citycard.hsm import SoftHSM
from citycard.platform import cards
from citycard.platform.errors import Conflict, Forbidden, InvalidInput, NotFound
from citycard.sectors.health import service, tables
from citycard.sectors.health.rules import load_rules

ACTOR = "test:health"


@pytest.fixture(scope="module")
def hsm() -> SoftHSM:
    return SoftHSM.ephemeral()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RsaPrivateKey:
    return rsa_record_key()


def make_institutions(conn, signers: dict[str, Signer]) -> None:  # type: ignore[no-untyped-def]
    for number, (institution_id, signer) in enumerate(signers.items(), start=1):
        made = service.create_institution(
            conn, institution_id=institution_id, name=f"第{number}医院", merchant_id=f"89851014111{number:04d}",
            suite=signer.suite, public_key_hex=signer.public.hex(), actor=ACTOR,
        )  # fmt: skip
        assert made["account"] == f"hospital:{institution_id}" and made["has_public_key"]


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_two_hospitals_consent_visits_and_settlement(
    engine, hsm, tmp_path: Path, rsa_key, suite: str
) -> None:
    signers = {"H001": Signer(suite, rsa_key), "H002": Signer(suite, rsa_key)}
    with write_transaction(engine) as conn:
        make_institutions(conn, signers)
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path, suite="GM")
        holder = cards.get(conn, card_id)["cardholder_id"]
        pan, psn = cards.record(conn, card_id).pan, cards.record(conn, card_id).psn
        first = service.register(conn, institution_id="H001", file_no="F-1", scheme="urban_employee",
                                 card_id=card_id, actor=ACTOR)  # fmt: skip
        second = service.register(conn, institution_id="H002", file_no="F-9", pan=pan, psn=psn, actor=ACTOR)
    # one patient index entry, two hospital files, found by card id or by PAN + PSN
    assert first["patient_id"] == second["patient_id"] and first["cardholder_id"] == holder
    assert first["registration"]["file_no"] == "F-1" and second["registration"]["file_no"] == "F-9"
    assert second["scheme"] == "urban_employee"
    with read_transaction(engine) as conn:
        assert [r["institution_id"] for r in service.patient(conn, holder)["registrations"]] == [
            "H001",
            "H002",
        ]
        quote = service.quote(conn, cardholder_id=holder, kind="outpatient", amount_fen=12_000)
    assert quote == {"scheme": "urban_employee", "kind": "outpatient", "amount_fen": 12_000,
                     "insurance_fen": 7_140, "self_pay_fen": 4_860, "rule": "share"}  # fmt: skip

    # the first hospital writes a visit: signed, the share from the rules table
    record = signers["H001"].sign(record_for("H001", 12_000, 7_140))
    with write_transaction(engine) as conn:
        visit = service.push_visit(conn, institution_id="H001", kind="outpatient", record=record, card_id=card_id,
                                   cardholder_id=holder, actor=ACTOR)  # fmt: skip
    assert visit["record"] == record and visit["self_pay_fen"] == 4_860
    assert (
        VisitRecord.from_dict(visit["record"]).canonical_bytes()
        == VisitRecord.from_dict(record).canonical_bytes()
    )

    def read(conn, patient_id):  # type: ignore[no-untyped-def]
        return service.visits_of_patient(conn, patient_id)[0]

    # the second hospital without consent: 403, and the attempt is in the audit (committed)
    with pytest.raises(Forbidden) as refused:
        service.read_records(engine, actor="key:2:h002", institution_id="H002", cardholder_id=holder,
                             scope="visits", reader=read)  # fmt: skip
    assert refused.value.code == "health.consent_missing"
    with write_transaction(engine) as conn:
        service.grant(
            conn, cardholder_id=holder, institution_id="H002", scope="visits", actor="user:9:holder"
        )
    seen = service.read_records(engine, actor="key:2:h002", institution_id="H002", cardholder_id=holder,
                                scope="visits", reader=read)  # fmt: skip
    assert [v["visit_no"] for v in seen] == ["V-1"] and seen[0]["record"] == record
    with write_transaction(engine) as conn:
        revoked = service.revoke(
            conn, cardholder_id=holder, institution_id="H002", scope="visits", actor="user:9"
        )
    assert revoked["revoked_at"] is not None
    with pytest.raises(Forbidden):
        service.read_records(engine, actor="key:2:h002", institution_id="H002", cardholder_id=holder,
                             scope="visits", reader=read)  # fmt: skip
    with read_transaction(engine) as conn:
        trail, _ = service.audit_trail(conn, holder)
    assert [(a["institution_id"], a["allowed"]) for a in trail] == [
        ("H002", False),
        ("H002", True),
        ("H002", False),
    ]
    assert all(a["actor"] == "key:2:h002" and a["scope"] == "visits" for a in trail)

    # payment record and settlement: once per visit, the ledger balanced
    with write_transaction(engine) as conn:
        service.record_payment(conn, institution_id="H001", visit_no="V-1", amount_fen=4_860, pan_masked="6235****0001",
                               psn=1, terminal_id="H0010001", stan="000123", response_code="00",
                               authorisation_code="A1B2C3", paid_at=WHEN, actor=ACTOR)  # fmt: skip
        settled = service.settle(conn, institution_id="H001", visit_no="V-1", actor=ACTOR)
    with write_transaction(engine) as conn:
        again = service.settle(conn, institution_id="H001", visit_no="V-1", actor=ACTOR)
        with pytest.raises(Conflict):
            service.record_payment(conn, institution_id="H001", visit_no="V-1", amount_fen=4_860, pan_masked="x",
                                   psn=1, terminal_id="H0010001", stan="000124", response_code="00",
                                   authorisation_code=None, paid_at=WHEN, actor=ACTOR)  # fmt: skip
    assert again == settled and settled["insurance_fen"] == 7_140
    assert (settled["from_account"], settled["to_account"]) == ("insurer:urban_employee", "hospital:H001")
    with read_transaction(engine) as conn:
        assert ledger.balance_fen(conn, "hospital:H001") == 7_140
        assert ledger.balance_fen(conn, "insurer:urban_employee") == -7_140
        assert ledger.check_invariants(conn) == []
        # the year's settled total feeds the next quote (the year cap)
        assert service.year_settled_fen(conn, first["patient_id"], "urban_employee", 2026) == 7_140


def test_forged_signature_wrong_share_and_replays(engine, hsm, tmp_path: Path, rsa_key) -> None:
    signers = {"H001": Signer("GM", rsa_key)}
    with write_transaction(engine) as conn:
        make_institutions(conn, signers)
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        holder = cards.get(conn, card_id)["cardholder_id"]
        service.register(
            conn, institution_id="H001", file_no="F-1", scheme="ncms", card_id=card_id, actor=ACTOR
        )
    record = signers["H001"].sign(
        record_for("H001", 50_000, 10_000)
    )  # ncms outpatient: 50 %, capped at 100 yuan
    push = dict(institution_id="H001", kind="outpatient", cardholder_id=holder, card_id=card_id, actor=ACTOR)
    forged = dict(record, amount_fen=60_000)  # altered after signing
    flipped = dict(record, signature=f"{int(record['signature'][:2], 16) ^ 1:02X}" + record["signature"][2:])
    unsigned = dict(record, signature="")
    other_key = dict(Signer("GM", rsa_key).sign(record_for("H001", 50_000, 10_000)))  # a key not registered
    for bad_record in (forged, flipped, unsigned, other_key):
        with write_transaction(engine) as conn, pytest.raises(InvalidInput) as bad:
            service.push_visit(conn, record=bad_record, **push)
        assert bad.value.code == "health.bad_signature", bad_record
    wrong_share = signers["H001"].sign(record_for("H001", 50_000, 25_000))
    with write_transaction(engine) as conn, pytest.raises(InvalidInput) as bad:
        service.push_visit(conn, record=wrong_share, **push)
    assert bad.value.code == "health.insurance_mismatch"
    other = signers["H001"].sign(record_for("H002", 50_000, 10_000))
    with write_transaction(engine) as conn, pytest.raises(Forbidden):
        service.push_visit(conn, record=other, **push)
    with read_transaction(engine) as conn:  # nothing was stored by the refusals
        assert service.visits_of_institution(conn, "H001")[0] == []
    with write_transaction(engine) as conn:
        stored = service.push_visit(conn, record=record, **push)
    with write_transaction(engine) as conn:
        assert service.push_visit(conn, record=record, **push) == stored
        with pytest.raises(Conflict):
            service.push_visit(conn, record=signers["H001"].sign(record_for("H001", 40_000, 10_000)), **push)
    assert stored["insurance_fen"] == 10_000


def test_registration_rules_and_appointments(engine, hsm, tmp_path: Path, rsa_key) -> None:
    with write_transaction(engine) as conn:
        make_institutions(conn, {"H001": Signer("GM", rsa_key)})
        with pytest.raises(Conflict):
            service.create_institution(conn, institution_id="H001", name="x", merchant_id="898510141110001",
                                       suite="GM", actor=ACTOR)  # fmt: skip
        with pytest.raises(InvalidInput):
            service.create_institution(conn, institution_id="hospital", name="x", merchant_id="898510141110001",
                                       suite="GM", actor=ACTOR)  # fmt: skip
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        lost = card_in_state(conn, "lost", hsm=hsm, image_dir=tmp_path, holder=new_holder(conn))
        holder = cards.get(conn, card_id)["cardholder_id"]
    with write_transaction(engine) as conn, pytest.raises(Conflict) as refused:
        service.register(conn, institution_id="H001", file_no="F-2", card_id=lost, actor=ACTOR)
    assert refused.value.code == "health.card_not_active"
    with write_transaction(engine) as conn, pytest.raises(InvalidInput) as refused:
        service.register(
            conn, institution_id="H001", file_no="F-1", scheme="nope", card_id=card_id, actor=ACTOR
        )
    assert refused.value.code == "health.unknown_scheme"
    with write_transaction(engine) as conn, pytest.raises(NotFound) as nobody:
        service.grant(conn, cardholder_id=10**9, institution_id="H001", scope="visits", actor=ACTOR)
    assert nobody.value.code == "cardholder.not_found"
    with write_transaction(engine) as conn, pytest.raises(NotFound):
        service.book(
            conn, institution_id="H001", cardholder_id=holder, department="内科", starts_at=WHEN, actor=ACTOR
        )
    with write_transaction(engine) as conn:
        assert service.lookup(conn, institution_id="H001", card_id=card_id)["patient_id"] is None
        service.register(conn, institution_id="H001", file_no="F-1", card_id=card_id, actor=ACTOR)
        with pytest.raises(Conflict):
            service.register(conn, institution_id="H001", file_no="F-3", card_id=card_id, actor=ACTOR)
    with write_transaction(engine) as conn:
        booked = [service.book(conn, institution_id="H001", cardholder_id=holder, department="外科",
                               starts_at=WHEN + dt.timedelta(days=n), actor=ACTOR) for n in range(3)]  # fmt: skip
        cancelled = service.set_appointment_state(conn, institution_id="H001", appointment_id=booked[0]["id"],
                                                  state="cancelled")  # fmt: skip
        with pytest.raises(Conflict):
            service.set_appointment_state(
                conn, institution_id="H001", appointment_id=booked[0]["id"], state="attended"
            )
    assert (
        cancelled["state"] == "cancelled"
        and booked[1]["starts_at"] == (WHEN + dt.timedelta(days=1)).isoformat()
    )
    with read_transaction(engine) as conn:
        page1, after = service.appointments(conn, institution_id="H001", limit=2)
        page2, end = service.appointments(conn, institution_id="H001", limit=2, after=after)
    assert [a["id"] for a in page1 + page2] == [a["id"] for a in booked] and end is None


def test_the_year_cap_limits_the_share() -> None:
    rules = load_rules()
    cap = rules.scheme("ncms").cap_per_year_fen
    share = rules.share(
        scheme="ncms", kind="inpatient", amount_fen=1_000_000, settled_this_year_fen=cap - 100
    )
    assert (share.insurance_fen, share.rule) == (100, "year cap")
    assert rules.share(scheme="self_pay", kind="outpatient", amount_fen=999).insurance_fen == 0
    deductible = rules.share(scheme="urban_employee", kind="outpatient", amount_fen=1_000)
    assert (deductible.insurance_fen, deductible.self_pay_fen, deductible.rule) == (0, 1_000, "deductible")
    with pytest.raises(InvalidInput):
        rules.share(scheme="ncms", kind="dental", amount_fen=1)
    assert set(rules.schemes) >= {"ncms", "urban_employee", "urban_resident"}
    assert tables.VISIT_KINDS == ("outpatient", "inpatient", "emergency")
