"""Fuzz of what a HIS sends the platform (hypothesis): any JSON-shaped visit record, any card
reference, any quote — the service answers with a PlatformError (a 4xx with a code) or a result,
never another exception, and a refused record stores nothing."""

from __future__ import annotations

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.crypto import record_signature, sm2
from citycard.db import read_transaction, write_transaction
from citycard.platform.errors import PlatformError
from citycard.sectors.health import service, tables
from citycard.sectors.health.rules import load_rules

PUBLIC = sm2.public_key(sm2.generate_private_key())
KEY_ID = record_signature.key_id(PUBLIC, algorithm=record_signature.SM2_SM3).hex()  # the registered key's id
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=40),
                        st.floats(allow_nan=False))  # fmt: skip
FIELDS = ["institution_id", "visit_at", "department", "diagnosis_code", "amount_fen", "insurance_fen", "visit_no",
          "signature_alg", "key_id", "signature", "extra"]  # fmt: skip
records = st.dictionaries(st.sampled_from(FIELDS), json_scalar, max_size=len(FIELDS))
plausible = st.fixed_dictionaries({
    "institution_id": st.just("H001"), "visit_at": st.sampled_from(["2026-11-27T02:30:00+00:00", "yesterday", "", "9999-12-31T23:59:00-23:59"]),
    "department": st.text(max_size=20), "diagnosis_code": st.text(max_size=8),
    "amount_fen": st.integers(-5, 10**13), "insurance_fen": st.integers(-5, 10**13),
    "visit_no": st.text(max_size=30), "signature_alg": st.sampled_from(["SM2-SM3", "RSA-PKCS1-SHA256", "x", ""]),
    "key_id": st.sampled_from(["", "00" * 8, "zz", KEY_ID]), "signature": st.sampled_from(["", "00" * 64, "AB"]),
})  # fmt: skip


def test_any_record_is_refused_with_a_code_and_nothing_stored(engine) -> None:  # type: ignore[no-untyped-def]
    with write_transaction(engine) as conn:
        service.create_institution(conn, institution_id="H001", name="医院", merchant_id="898510141110001",
                                   suite="GM", public_key_hex=PUBLIC.hex(), actor="fuzz")  # fmt: skip

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(record=st.one_of(records, plausible), kind=st.sampled_from(["outpatient", "inpatient", "x"]),
           holder=st.integers(1, 5))  # fmt: skip
    def check(record, kind, holder) -> None:  # type: ignore[no-untyped-def]
        try:
            with write_transaction(engine) as conn:
                service.push_visit(conn, institution_id="H001", kind=kind, record=record, cardholder_id=holder,
                                   actor="fuzz")  # fmt: skip
        except PlatformError as exc:
            assert exc.status in (403, 404, 409, 422) and exc.code.startswith(("health.", "cardholder."))
        else:
            raise AssertionError(f"an unsigned or forged record was accepted: {record}")

    check()
    with read_transaction(engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.visits)).scalar_one() == 0
    with write_transaction(engine) as conn:  # a record key that is not a key of the suite is refused
        for suite, key in (("GM", "11" * 64), ("INTL", PUBLIC.hex()), ("GM", "04" + PUBLIC.hex())):
            try:
                service.create_institution(conn, institution_id="H002", name="x", merchant_id="898510141110002",
                                           suite=suite, public_key_hex=key, actor="fuzz")  # fmt: skip
            except PlatformError as exc:
                assert exc.code == "health.bad_public_key"
            else:
                raise AssertionError(f"{suite} key {key[:8]}… accepted")


@settings(max_examples=200, deadline=None, database=None)
@given(scheme=st.sampled_from(["ncms", "urban_employee", "urban_resident", "self_pay"]),
       kind=st.sampled_from(["outpatient", "inpatient", "emergency"]), amount=st.integers(0, 10**10),
       settled=st.integers(0, 10**9))  # fmt: skip
def test_the_share_is_integer_fen_within_the_bill_and_the_caps(scheme, kind, amount, settled) -> None:  # type: ignore[no-untyped-def]
    rules = load_rules()
    share = rules.share(scheme=scheme, kind=kind, amount_fen=amount, settled_this_year_fen=settled)
    rule = rules.scheme(scheme).kinds[kind]
    assert isinstance(share.insurance_fen, int) and share.insurance_fen + share.self_pay_fen == amount
    assert 0 <= share.insurance_fen <= min(rule.cap_per_visit_fen, amount)
    assert share.insurance_fen <= max(0, rules.scheme(scheme).cap_per_year_fen - settled)
