"""The health service through the real server (SQLite and PostgreSQL): two hospitals' information
systems (sector API keys bound to their institutions) and a patient (cardholder login). The second
hospital sees the first one's visit only after the patient's consent; refused reads are 403
problem+json and audited; a forged record is 422; settlement is idempotent and balances the ledger."""

from __future__ import annotations

import sqlalchemy as sa
from tests.api.conftest import Live, active_card
from tests.sectors.health.support import Hospital, make_hospital, new_key, record_for

from citycard import ledger
from citycard.db import read_transaction
from citycard.sectors.health import tables


def _post(client, url, body, key=None):  # type: ignore[no-untyped-def]
    return client.post(url, json=body, headers={"Idempotency-Key": key or new_key()})


def _hospitals(live: Live, suite: str = "GM") -> tuple[Hospital, Hospital]:
    return (make_hospital(live.base_url, live.headers["operator"], suite=suite),
            make_hospital(live.base_url, live.headers["operator"], suite=suite))  # fmt: skip


def test_two_hospitals_consent_payment_and_settlement(live: Live) -> None:
    first, second = _hospitals(live)
    with live.client("operator") as op:
        card = active_card(live, op, holder_id=live.holder_id)
    holder = live.holder_id
    with live.client() as his1, live.client() as his2, live.client("cardholder") as me:
        his1.headers.update(first.headers)
        his2.headers.update(second.headers)
        registered = _post(his1, "/v1/healthcare/registrations",
                           {"card_id": card["id"], "file_no": "F-100", "scheme": "urban_resident"})  # fmt: skip
        assert registered.status_code == 201, registered.text
        assert registered.json()["registration"]["file_no"] == "F-100"
        patient_id = registered.json()["patient_id"]
        quote = his1.post("/v1/healthcare/quotes", json={"cardholder_id": holder, "amount_fen": 30_000})
        assert quote.status_code == 200, quote.text
        assert quote.json() == {"scheme": "urban_resident", "kind": "outpatient", "amount_fen": 30_000,
                                "insurance_fen": 16_500, "self_pay_fen": 13_500, "rule": "share"}  # fmt: skip
        record = first.signer.sign(record_for(first.institution_id, 30_000, 16_500, visit_no="V-7"))
        pushed = _post(his1, "/v1/healthcare/visits", {"cardholder_id": holder, "card_id": card["id"],
                                                       "record": record})  # fmt: skip
        assert pushed.status_code == 201, pushed.text
        assert pushed.json()["record"] == record and pushed.json()["self_pay_fen"] == 13_500
        paid = _post(his1, "/v1/healthcare/payments", {
            "visit_no": "V-7", "amount_fen": 13_500, "pan_masked": "623548******0016", "psn": 1,
            "terminal_id": "H0000001", "stan": "000042", "response_code": "00", "authorisation_code": "123456",
            "paid_at": "2026-11-27T02:31:00+00:00"})  # fmt: skip
        assert paid.status_code == 201, paid.text
        key = new_key()
        settled = _post(his1, "/v1/healthcare/settlements", {"visit_no": "V-7"}, key)
        replay = _post(his1, "/v1/healthcare/settlements", {"visit_no": "V-7"}, key)
        again = _post(
            his1, "/v1/healthcare/settlements", {"visit_no": "V-7"}
        )  # a new key: the same settlement
        assert settled.status_code == 200, settled.text
        assert replay.headers.get("Idempotent-Replayed") == "true" and replay.content == settled.content
        assert again.json() == settled.json() and settled.json()["insurance_fen"] == 16_500
        assert settled.json()["to_account"] == f"hospital:{first.institution_id}"

        # the second hospital: a file of its own, but no records without consent — 403, audited
        assert (
            _post(his2, "/v1/healthcare/registrations", {"card_id": card["id"], "file_no": "B-1"}).status_code
            == 201
        )
        refused = his2.get(f"/v1/healthcare/cardholders/{holder}/visits")
        assert refused.status_code == 403 and refused.json()["code"] == "health.consent_missing"
        assert refused.headers["content-type"] == "application/problem+json"
        granted = _post(me, f"/v1/healthcare/cardholders/{holder}/consents",
                        {"institution_id": second.institution_id, "scope": "visits"})  # fmt: skip
        assert granted.status_code == 201, granted.text
        seen = his2.get(f"/v1/healthcare/cardholders/{holder}/visits")
        assert seen.status_code == 200, seen.text
        assert [v["record"] for v in seen.json()["items"]] == [record]
        revoked = me.delete(f"/v1/healthcare/cardholders/{holder}/consents",
                            params={"institution_id": second.institution_id, "scope": "visits"},
                            headers={"Idempotency-Key": new_key()})  # fmt: skip
        assert revoked.status_code == 200 and revoked.json()["revoked_at"], revoked.text
        assert his2.get(f"/v1/healthcare/cardholders/{holder}/visits").status_code == 403
        trail = me.get(f"/v1/healthcare/cardholders/{holder}/audit").json()["items"]
        mine = [
            (a["institution_id"], a["allowed"]) for a in trail if a["institution_id"] == second.institution_id
        ]
        assert mine == [
            (second.institution_id, False),
            (second.institution_id, True),
            (second.institution_id, False),
        ]
        assert me.get(f"/v1/healthcare/cardholders/{holder}/visits").status_code == 200  # the patient's own
        consents = me.get(f"/v1/healthcare/cardholders/{holder}/consents").json()["items"]
        assert any(c["institution_id"] == second.institution_id and c["revoked_at"] for c in consents)
    with read_transaction(live.engine) as conn:
        assert ledger.balance_fen(conn, f"hospital:{first.institution_id}") == 16_500
        assert ledger.check_invariants(conn) == []
        postings = conn.execute(sa.select(sa.func.count()).select_from(tables.settlements)
                                .where(tables.settlements.c.posting_key.like("health:settle:%"))).scalar_one()  # fmt: skip
        assert postings >= 1
        assert conn.execute(sa.select(tables.patients.c.id).where(tables.patients.c.cardholder_id == holder)
                            ).scalar_one() == patient_id  # fmt: skip


def test_forged_record_unbound_key_and_other_patients(live: Live) -> None:
    (first,) = (make_hospital(live.base_url, live.headers["operator"], suite="INTL"),)
    with live.client("operator") as op:
        card = active_card(live, op)
    holder = card["cardholder_id"]
    with live.client() as his, live.client("sector") as unbound, live.client("cardholder") as me:
        his.headers.update(first.headers)
        assert (
            _post(his, "/v1/healthcare/registrations", {"card_id": card["id"], "file_no": "X-1"}).status_code
            == 201
        )
        record = first.signer.sign(
            record_for(first.institution_id, 8_000, 0, visit_no="V-1")
        )  # self-pay patient
        forged = dict(record, diagnosis_code="C34.9")  # altered after signing
        answer = _post(his, "/v1/healthcare/visits", {"cardholder_id": holder, "record": forged})
        assert answer.status_code == 422 and answer.json()["code"] == "health.bad_signature", answer.text
        assert his.get("/v1/healthcare/visits").json()["items"] == []  # nothing stored
        assert (
            _post(his, "/v1/healthcare/visits", {"cardholder_id": holder, "record": record}).status_code
            == 201
        )
        own = his.get("/v1/healthcare/visits").json()["items"]
        assert [v["visit_no"] for v in own] == ["V-1"]
        # a sector key bound to no hospital
        answer = unbound.post("/v1/healthcare/patients/lookup", json={"card_id": card["id"]})
        assert answer.status_code == 403 and answer.json()["code"] == "health.no_institution"
        answer = unbound.get(f"/v1/healthcare/cardholders/{holder}/visits")
        assert answer.status_code == 403 and answer.json()["code"] == "health.consent_missing"
        # only a live sector key or login can be bound to a hospital
        with live.client("operator") as op:
            for who in (
                "key:99999999",
                "user:1",
                "key:9999999999999999999",
            ):  # nobody; the admin; past BIGINT
                answer = _post(op, "/v1/healthcare/institutions/bindings",
                               {"institution_id": first.institution_id, "principal": who})  # fmt: skip
                assert answer.status_code == 422 and answer.json()["code"] == "health.bad_principal", (
                    answer.text
                )
        # another patient's records look absent to a cardholder
        assert me.get(f"/v1/healthcare/cardholders/{holder}/audit").status_code == 404
        lookup = his.post("/v1/healthcare/patients/lookup", json={"card_id": card["id"]})
        assert lookup.status_code == 200 and lookup.json()["registration"]["file_no"] == "X-1"


def test_appointments_paginate_and_close(live: Live) -> None:
    hospital = make_hospital(live.base_url, live.headers["operator"])
    with live.client("operator") as op:
        card = active_card(live, op)
    with live.client() as his:
        his.headers.update(hospital.headers)
        assert (
            _post(his, "/v1/healthcare/registrations", {"card_id": card["id"], "file_no": "A-1"}).status_code
            == 201
        )
        made = []
        for day in range(1, 6):
            answer = _post(his, "/v1/healthcare/appointments", {
                "cardholder_id": card["cardholder_id"], "department": "儿科",
                "starts_at": f"2026-12-{day:02d}T01:00:00+08:00"})  # fmt: skip
            assert answer.status_code == 201, answer.text
            made.append(answer.json()["id"])
        assert answer.json()["starts_at"] == "2026-12-04T17:00:00+00:00"  # stored in UTC
        seen, cursor = [], None
        while True:
            page = his.get(
                "/v1/healthcare/appointments", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
            )
            seen += [a["id"] for a in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == made
        closed = _post(
            his, "/v1/healthcare/appointments/state", {"appointment_id": made[0], "state": "attended"}
        )
        assert closed.status_code == 200 and closed.json()["state"] == "attended"
        again = _post(
            his, "/v1/healthcare/appointments/state", {"appointment_id": made[0], "state": "cancelled"}
        )
        assert again.status_code == 409 and again.json()["code"] == "health.appointment_closed"
        bad = his.get("/v1/healthcare/appointments", params={"cursor": "bm90LWFuLWludA"})
        assert bad.status_code == 422 and bad.json()["code"] == "pagination.bad_cursor"


def test_generated_requests_of_a_bound_hospital_find_no_5xx(live: Live) -> None:
    """schemathesis over /v1/healthcare with a sector key BOUND to a hospital (the shared schemathesis
    test's sector key acts for none, so it stops at 403 health.no_institution): no 5xx."""
    from collections import Counter

    import schemathesis
    from hypothesis import HealthCheck, given, settings

    hospital = make_hospital(live.base_url, live.headers["operator"])
    with live.client("operator") as op:
        active_card(live, op, holder_id=live.holder_id)
    schema = schemathesis.openapi.from_url(f"{live.base_url}/openapi.json")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/v1/healthcare"):
            continue
        operations += 1

        @settings(max_examples=10, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=live.base_url, headers=hospital.headers, timeout=60)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} → {response.status_code}: {response.text[:300]}"
                )

        check()
    assert operations >= 15, operations
    assert failures == [], "\n".join(failures[:20])
    assert any(200 <= code < 300 for code in statuses) and any(400 <= code < 500 for code in statuses), (
        statuses
    )
