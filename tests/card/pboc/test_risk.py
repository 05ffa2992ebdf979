"""Card risk management, one condition at a time (pure functions of citycard.card.pboc.risk)."""

from __future__ import annotations

import dataclasses

import pytest

from citycard.card.pboc.risk import (
    Ac,
    OnlineResult,
    QpbocInput,
    RiskInput,
    first_generate_ac,
    qpboc_decision,
    second_generate_ac,
)
from citycard.emv.bits import CVR

CLEAN = RiskInput(
    requested=Ac.TC,
    amount_fen=1000,
    lower_consecutive_limit=3,
    upper_consecutive_limit=5,
    cumulative_limit_fen=50_000,
    upper_cumulative_limit_fen=100_000,
    ec_balance_fen=5000,
    ec_single_limit_fen=20_000,
    ec_reset_threshold_fen=1000,
)


def bits(cvr: bytes) -> set[str]:
    return set(CVR.decode(cvr))


def test_clean_card_approves_offline():
    decision = first_generate_ac(CLEAN)
    assert decision.ac == Ac.TC
    assert bits(decision.cvr) == {"second_gac_not_requested", "first_gac_returned_tc"}


@pytest.mark.parametrize(
    ("change", "bit"),
    [
        ({"flags": frozenset({"online_not_completed"})}, "last_online_transaction_not_completed"),
        (
            {"flags": frozenset({"issuer_auth_failed_last"})},
            "issuer_authentication_failure_on_last_online_transaction",
        ),
        ({"flags": frozenset({"script_failed_last"})}, "issuer_script_processing_failed"),
        ({"flags": frozenset({"sda_failed_last"})}, "sda_failed_on_last_transaction_and_declined_offline"),
        ({"flags": frozenset({"dda_failed_last"})}, "dda_failed_on_last_transaction_and_declined_offline"),
        ({"new_card": True}, "new_card"),
        ({"pin_tries_left": 0}, "pin_try_limit_exceeded"),
        ({"consecutive_offline": 3}, "exceeded_velocity_checking_counters"),
        ({"cumulative_offline_fen": 49_500}, "exceeded_velocity_checking_counters"),
    ],
)
def test_each_online_check_sets_its_bit_and_goes_online(change, bit):
    decision = first_generate_ac(dataclasses.replace(CLEAN, **change))
    assert decision.ac == Ac.ARQC
    assert bit in bits(decision.cvr)
    assert "first_gac_returned_arqc" in bits(decision.cvr)
    assert len(decision.reasons) == 1


def test_velocity_limits_are_boundaries():
    assert first_generate_ac(dataclasses.replace(CLEAN, consecutive_offline=2)).ac == Ac.TC
    assert first_generate_ac(dataclasses.replace(CLEAN, cumulative_offline_fen=49_000)).ac == Ac.TC
    foreign = dataclasses.replace(CLEAN, cumulative_offline_fen=49_500, currency_matches=False)
    assert first_generate_ac(foreign).ac == Ac.TC  # foreign-currency amounts are not accumulated


def test_pin_results_are_reported():
    decision = first_generate_ac(
        dataclasses.replace(CLEAN, offline_pin_performed=True, offline_pin_failed=True)
    )
    assert {"offline_pin_verification_performed", "offline_pin_verification_failed"} <= bits(decision.cvr)
    assert decision.ac == Ac.TC  # a wrong PIN entry is the terminal's CVM outcome, not card risk


def test_dda_and_script_counter_are_reported():
    decision = first_generate_ac(dataclasses.replace(CLEAN, dda_performed=True, script_counter=3))
    assert {"dda_performed", "issuer_script_commands_processed=3"} <= bits(decision.cvr)


def test_never_higher_than_asked():
    risky = dataclasses.replace(CLEAN, new_card=True)
    assert first_generate_ac(dataclasses.replace(risky, requested=Ac.AAC)).ac == Ac.AAC
    assert first_generate_ac(dataclasses.replace(CLEAN, requested=Ac.AAC)).ac == Ac.AAC
    assert first_generate_ac(dataclasses.replace(CLEAN, requested=Ac.ARQC)).ac == Ac.ARQC
    assert Ac.AAC < Ac.ARQC < Ac.TC


def test_blocked_application_declines_unless_online_is_asked():
    blocked = dataclasses.replace(CLEAN, application_blocked=True)
    assert first_generate_ac(blocked).ac == Ac.AAC
    assert first_generate_ac(dataclasses.replace(blocked, requested=Ac.ARQC)).ac == Ac.ARQC


def test_ec_skips_the_online_checks_but_not_sda_dda_failures():
    ec = dataclasses.replace(
        CLEAN,
        ec_requested=True,
        new_card=True,
        pin_tries_left=0,
        consecutive_offline=9,
        flags=frozenset({"script_failed_last"}),
    )
    decision = first_generate_ac(ec)
    assert decision.ac == Ac.TC and decision.ec_approved
    assert bits(decision.cvr) == {"second_gac_not_requested", "first_gac_returned_tc"}
    failed = dataclasses.replace(ec, flags=frozenset({"sda_failed_last"}))
    decision = first_generate_ac(failed)
    assert decision.ac == Ac.ARQC and not decision.ec_approved
    assert "sda_failed_on_last_transaction_and_declined_offline" in bits(decision.cvr)


@pytest.mark.parametrize(
    "change",
    [{"amount_fen": 5001}, {"amount_fen": 20_001, "ec_balance_fen": 30_000}, {"currency_matches": False}],
    ids=["above-balance", "above-9F78", "currency"],
)
def test_ec_limits_fall_back_to_standard_processing(change):
    decision = first_generate_ac(dataclasses.replace(CLEAN, ec_requested=True, **change))
    assert not decision.ec_approved


def test_second_gac_approved_online():
    online = OnlineResult(requested=Ac.TC, tag_8a=b"00", issuer_auth="passed")
    decision = second_generate_ac(CVR.encode(["first_gac_returned_arqc"]), CLEAN, online)
    assert decision.ac == Ac.TC
    assert bits(decision.cvr) == {"second_gac_returned_tc", "first_gac_returned_arqc"}


@pytest.mark.parametrize(
    ("online", "bit"),
    [
        (OnlineResult(Ac.TC, b"00", "failed"), "issuer_authentication_performed_and_failed"),
        (
            OnlineResult(Ac.TC, b"00", "", issuer_auth_mandatory=True),
            "issuer_authentication_not_performed_after_online_authorisation",
        ),
        (OnlineResult(Ac.TC, b"51", "passed"), None),
    ],
    ids=["arpc-failed", "arpc-missing-mandatory", "issuer-declined"],
)
def test_second_gac_declines(online, bit):
    decision = second_generate_ac(CVR.encode(["first_gac_returned_arqc"]), CLEAN, online)
    assert decision.ac == Ac.AAC
    assert "second_gac_returned_aac" in bits(decision.cvr)
    if bit:
        assert bit in bits(decision.cvr)


def test_second_gac_missing_optional_issuer_auth_is_reported_but_approves():
    decision = second_generate_ac(CVR.encode([]), CLEAN, OnlineResult(Ac.TC, b"00", ""))
    assert decision.ac == Ac.TC
    assert "issuer_authentication_not_performed_after_online_authorisation" in bits(decision.cvr)


def test_unable_to_go_online_approves_within_the_upper_limits():
    decision = second_generate_ac(CVR.encode([]), CLEAN, OnlineResult(Ac.TC, b"Z3", ""))
    assert decision.ac == Ac.TC and "unable_to_go_online" in bits(decision.cvr)
    over = dataclasses.replace(CLEAN, consecutive_offline=5)
    decision = second_generate_ac(CVR.encode([]), over, OnlineResult(Ac.TC, b"Y3", ""))
    assert decision.ac == Ac.AAC
    assert {"unable_to_go_online", "exceeded_velocity_checking_counters"} <= bits(decision.cvr)
    decision = second_generate_ac(
        CVR.encode([]), dataclasses.replace(CLEAN, pin_tries_left=0), OnlineResult(Ac.TC, b"Z3", "")
    )
    assert decision.ac == Ac.AAC and "pin_try_limit_exceeded" in bits(decision.cvr)


def test_second_gac_never_higher_than_asked():
    decision = second_generate_ac(CVR.encode([]), CLEAN, OnlineResult(Ac.AAC, b"00", "passed"))
    assert decision.ac == Ac.AAC


QPBOC = QpbocInput(online_capable=True, online_cryptogram_required=False)


def test_qpboc_offline_approval():
    decision = qpboc_decision(CLEAN, QPBOC)
    assert decision.ac == Ac.TC and decision.ec_approved
    assert "first_gac_returned_tc" in bits(decision.cvr)


@pytest.mark.parametrize(
    ("risk", "q", "reason"),
    [
        (dataclasses.replace(CLEAN, amount_fen=4500), QPBOC, "reset threshold"),
        (CLEAN, dataclasses.replace(QPBOC, online_cryptogram_required=True), "online cryptogram"),
        (CLEAN, dataclasses.replace(QPBOC, cash=True), "cash"),
        (CLEAN, dataclasses.replace(QPBOC, offline_signing_possible=False), "private key"),
        (dataclasses.replace(CLEAN, amount_fen=6000), QPBOC, "above the EC balance"),
        (dataclasses.replace(CLEAN, flags=frozenset({"dda_failed_last"})), QPBOC, "DDA failed"),
    ],
)
def test_qpboc_goes_online(risk, q, reason):
    decision = qpboc_decision(risk, q)
    assert decision.ac == Ac.ARQC
    assert any(reason in text for text in decision.reasons)


def test_qpboc_offline_only_reader():
    offline = dataclasses.replace(QPBOC, online_capable=False)
    below = dataclasses.replace(CLEAN, amount_fen=4500)
    assert qpboc_decision(below, offline).ac == Ac.TC  # below the threshold, still approved offline
    assert qpboc_decision(dataclasses.replace(CLEAN, amount_fen=6000), offline).ac == Ac.AAC
