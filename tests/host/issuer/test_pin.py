"""Online PIN: the HSM's PVV and PIN-block check (both suites), and the pipeline's try counter."""

from __future__ import annotations

import pytest

from citycard.hsm import SoftHSM
from citycard.hsm.keytypes import HSMError
from citycard.hsm.pin import decimalise, pin_from_format_0, pvv_of, pvv_tsp
from citycard.kernel.contact import pin_block_format_0

from .conftest import ACCOUNT_FEN, PIN, PIN_KEYS, SUITES, balance, healthy, pin_block

SUITE_NAMES = ["INTL", "GM"]


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_pvv_and_pin_block_in_the_hsm(hsm, config, suite):
    hsm_labels = config.labels(SUITES[suite])
    if hsm_labels.pvk not in {k.label for k in hsm.list_keys()}:
        hsm.generate_key(hsm_labels.pvk, "PVK", SUITES[suite])
    pan = "6235480000000012"
    pvv = hsm.pin_verification_value(hsm_labels.pvk, pan=pan, pin="1234")
    assert len(pvv) == 4 and pvv.isdigit()
    good = pin_block("1234", pan, suite)
    assert len(good) == SUITES[suite].block_bytes
    assert hsm.verify_pin_block(hsm_labels.pin_key, hsm_labels.pvk, pin_block=good, pan=pan, pvv=pvv)
    wrong = pin_block("4321", pan, suite)
    assert not hsm.verify_pin_block(hsm_labels.pin_key, hsm_labels.pvk, pin_block=wrong, pan=pan, pvv=pvv)
    other_pan = pin_block("1234", "6235480000000020", suite)  # a block bound to another PAN
    assert not hsm.verify_pin_block(hsm_labels.pin_key, hsm_labels.pvk, pin_block=other_pan, pan=pan, pvv=pvv)
    with pytest.raises(HSMError, match="must be"):
        hsm.verify_pin_block(hsm_labels.pin_key, hsm_labels.pvk, pin_block=good[:4], pan=pan, pvv=pvv)


def test_visa_pvv_construction_by_hand():
    """TSP = 11 PAN digits left of the check digit ‖ PVKI ‖ PIN[:4]; 3DES under the PVK; decimalised."""
    from citycard.crypto import INTL
    from citycard.crypto.blockcipher import tdes_ecb_encrypt

    pvk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    tsp = pvv_tsp(pan="4123456789012345", pin="1234")
    assert tsp.hex() == "4567890123411234"  # 45678901234 (check digit 5 dropped) ‖ PVKI 1 ‖ 1234
    assert pvv_of(pvk, pan="4123456789012345", pin="1234", suite=INTL) == decimalise(
        tdes_ecb_encrypt(pvk, tsp)
    )


def test_decimalisation_falls_back_to_letters():
    assert decimalise(bytes.fromhex("ABCDEFABCDEFABC1")) == "1012"


def test_format_0_round_trip_and_refusals():
    pan = "6235480000000012"
    assert pin_from_format_0(pin_block_format_0("987654", pan), pan=pan) == "987654"
    with pytest.raises(HSMError, match="format 0"):
        pin_from_format_0(bytes(8), pan=pan)


def test_key_usage_is_enforced():
    from citycard.crypto import INTL

    hsm = SoftHSM.ephemeral()
    hsm.generate_key("imk", "IMK-AC", INTL)
    hsm.generate_key("pvk", "PVK", INTL)
    with pytest.raises(HSMError, match="may not pin-verify"):
        hsm.pin_verification_value("imk", pan="6235480000000012", pin="1234")
    with pytest.raises(HSMError, match="may not pin-decipher"):
        hsm.verify_pin_block("pvk", "pvk", pin_block=bytes(8), pan="6235480000000012", pvv="1234")
    with pytest.raises(HSMError, match="4 to 12 digits"):
        hsm.pin_verification_value("pvk", pan="6235480000000012", pin="12")


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_online_pin_right_wrong_and_tries_exceeded(issuer, enrol, config, suite):
    card = enrol(suite)
    right = lambda: pin_block(PIN, card.pan, suite)  # noqa: E731
    wrong = lambda: pin_block("1357", card.pan, suite)  # noqa: E731
    assert issuer.process_batch([card.request("purchase", 100, pin_block=right())])[0]["39"] == "00"
    codes = [
        issuer.process_batch([card.request("purchase", 100, pin_block=wrong())])[0]["39"] for _ in range(2)
    ]
    assert codes == ["55", "55"]
    assert issuer.process_batch([card.request("purchase", 100, pin_block=right())])[0]["39"] == "00"  # resets
    codes = [
        issuer.process_batch([card.request("purchase", 100, pin_block=wrong())])[0]["39"]
        for _ in range(config.pin_tries_max)
    ]
    assert codes == ["55"] * (config.pin_tries_max - 1) + ["75"]
    # exhausted: even the right PIN is refused now
    assert issuer.process_batch([card.request("purchase", 100, pin_block=right())])[0]["39"] == "75"
    issuer.reset_pin_tries(pan=card.pan, psn=card.psn)  # the branch reset it
    assert issuer.process_batch([card.request("purchase", 100, pin_block=right())])[0]["39"] == "00"
    assert balance(issuer, card.account) == ACCOUNT_FEN - 300
    assert healthy(issuer)


@pytest.mark.parametrize(("card_suite", "block_suite"), [("GM", "INTL"), ("INTL", "GM")])
def test_the_pin_key_follows_the_block_not_the_card(issuer, enrol, card_suite, block_suite):
    """The server translates F52 to the PIN key of the terminal PIK's suite (3DES today), whatever
    the card's suite; the PVV stays under the card's suite's PVK."""
    card = enrol(card_suite)
    block = pin_block(PIN, card.pan, block_suite)
    assert issuer.process_batch([card.request("purchase", 100, pin_block=block)])[0]["39"] == "00"
    wrong = pin_block("1111", card.pan, block_suite)
    assert issuer.process_batch([card.request("purchase", 100, pin_block=wrong)])[0]["39"] == "55"
    odd = issuer.process_batch([card.request("purchase", 100, pin_block=bytes(12))])[0]
    assert odd["39"] == "30"


def test_the_pin_is_never_stored(issuer, enrol):
    from sqlalchemy import select

    from citycard.host.issuer import tables

    card = enrol("INTL", pin="8642")
    with issuer.engine.connect() as conn:
        row = conn.execute(select(tables.cards).where(tables.cards.c.pan == card.pan)).one()
    assert "8642" not in " ".join(str(v) for v in row)
    assert len(row.pvv) == 4


def test_no_enrolled_pin_declines_an_online_pin(issuer, enrol):
    card = enrol("GM", pin=None)
    answer = issuer.process_batch([card.request("purchase", 100, pin_block=pin_block(PIN, card.pan, "GM"))])
    assert answer[0]["39"] == "55"


assert PIN_KEYS  # the conftest keys this module relies on
