"""Card-image sealing (AES-256-GCM under ``card-image``) and perso DGI encipherment (``perso-kek``)."""

from __future__ import annotations

import hashlib
import json

import pytest

from citycard.crypto import GM, INTL
from citycard.crypto.keys import key_check_value
from citycard.crypto.mac import pad_method_2
from citycard.hsm import HSMError, SoftHSM
from citycard.hsm.cardimage import aes_key_check_value, suite_hint

h = bytes.fromhex
SERIAL = h("0102030405060708")
OTHER_SERIAL = h("0102030405060709")
KEY = h("0123456789ABCDEFFEDCBA9876543210")


@pytest.fixture
def hsm() -> SoftHSM:
    return SoftHSM.ephemeral()


def test_card_image_key_is_made_on_first_use_as_aes_256(hsm):
    with pytest.raises(HSMError, match="no key labelled 'card-image'"):
        hsm.card_image_key(create=False)
    info = hsm.card_image_key()
    assert (info.label, info.key_type) == ("card-image", "CARD-IMAGE-KEK")
    assert hsm.card_image_key() == info  # the same key afterwards
    assert [k.label for k in hsm.check_keys()] == ["card-image"]  # unwraps and its KCV checks
    with pytest.raises(HSMError, match="CARD-IMAGE-KEK key is made by card_image_key"):
        hsm.generate_key("another-image-key", "CARD-IMAGE-KEK", INTL)


def test_seal_and_open_round_trip(hsm):
    sealed = hsm.seal_card_item(SERIAL, "keys/INTL/AC", KEY)
    assert set(sealed) == {"sealed", "kcv", "kcv_method"}
    assert KEY.hex().upper() not in json.dumps(sealed).upper()
    assert len(h(sealed["sealed"])) == 12 + len(KEY) + 16
    assert hsm.open_card_item(SERIAL, "keys/INTL/AC", sealed) == KEY
    assert hsm.seal_card_item(SERIAL, "keys/INTL/AC", KEY)["sealed"] != sealed["sealed"]  # fresh nonce


@pytest.mark.parametrize(
    ("serial", "name"),
    [(OTHER_SERIAL, "keys/INTL/AC"), (SERIAL, "keys/INTL/MAC"), (OTHER_SERIAL, "keys/INTL/MAC")],
)
def test_a_sealed_item_moved_to_another_name_or_card_does_not_open(hsm, serial, name):
    sealed = hsm.seal_card_item(SERIAL, "keys/INTL/AC", KEY)
    with pytest.raises(HSMError, match=r"does not open .* altered, moved from another item or card"):
        hsm.open_card_item(serial, name, sealed)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s.update(kcv="000000"),
        lambda s: s.update(kcv_method="SHA-256"),
        lambda s: s.update(sealed=s["sealed"][:-2] + ("00" if s["sealed"][-2:] != "00" else "01")),
    ],
)
def test_a_tampered_item_does_not_open(hsm, tamper):
    sealed = hsm.seal_card_item(SERIAL, "keys/GM/AC", KEY)
    tamper(sealed)
    with pytest.raises(HSMError, match="does not open"):
        hsm.open_card_item(SERIAL, "keys/GM/AC", sealed)


def test_another_hsm_cannot_open(hsm):
    sealed = hsm.seal_card_item(SERIAL, "pin-block", h("241234FFFFFFFFFF"))
    other = SoftHSM.ephemeral()
    other.card_image_key()
    with pytest.raises(HSMError, match="does not open"):
        other.open_card_item(SERIAL, "pin-block", sealed)


@pytest.mark.parametrize(
    ("name", "clear", "suite", "method", "kcv"),
    [
        ("keys/INTL/AC", KEY, None, "3DES", key_check_value(KEY, suite=INTL)),
        ("keys/GM/AC", KEY, None, "SM4", key_check_value(KEY, suite=GM)),
        ("keys/AC", KEY, GM, "SM4", key_check_value(KEY, suite=GM)),  # the suite argument
        ("keys/AC", KEY, None, "SHA-256", hashlib.sha256(KEY).digest()[:3]),  # no hint
        ("icc/sm2/d", bytes(range(32)), None, "SHA-256", hashlib.sha256(bytes(range(32))).digest()[:3]),
    ],
)
def test_item_check_values(hsm, name, clear, suite, method, kcv):
    sealed = hsm.seal_card_item(SERIAL, name, clear, suite=suite)
    assert (sealed["kcv_method"], sealed["kcv"]) == (method, kcv.hex().upper())
    assert hsm.open_card_item(SERIAL, name, sealed) == clear


def test_a_short_item_gets_a_keyed_check_value_that_does_not_give_the_pin_away(hsm):
    pin_block = h("241234FFFFFFFFFF")
    sealed = hsm.seal_card_item(SERIAL, "pin-block", pin_block)
    assert sealed["kcv_method"] == "HMAC-SHA-256"
    assert sealed["kcv"] != hashlib.sha256(pin_block).digest()[:3].hex().upper()
    assert hsm.seal_card_item(SERIAL, "pin-block", pin_block)["kcv"] == sealed["kcv"]  # stable
    assert hsm.seal_card_item(OTHER_SERIAL, "pin-block", pin_block)["kcv"] != sealed["kcv"]  # per card


def test_kcvs_are_the_published_ones():
    assert key_check_value(KEY, suite=INTL).hex().upper() == "08D7B4"  # SoftHSM doctest, pyemv vector
    assert aes_key_check_value(bytes(32)).hex().upper() == "DC95C0"  # AES-256, zero key, zero block
    assert (
        suite_hint("keys/INTL/AC"),
        suite_hint("keys/sm4-mac"),
        suite_hint("gm/intl"),
        suite_hint("pin"),
    ) == (
        INTL,
        GM,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("serial", "name", "clear", "message"),
    [
        (b"", "k", KEY, "card identity"),
        (SERIAL, "", KEY, "name '' is invalid"),
        (SERIAL, "has space", KEY, "is invalid"),
        (SERIAL, "k", b"", "1 to 8192 bytes"),
    ],
)
def test_seal_arguments_are_checked(hsm, serial, name, clear, message):
    with pytest.raises(HSMError, match=message):
        hsm.seal_card_item(serial, name, clear)


def test_open_checks_the_sealed_object(hsm):
    with pytest.raises(HSMError, match="kcv_method"):
        hsm.open_card_item(SERIAL, "k", {"sealed": "00", "kcv": "000000"})
    with pytest.raises(HSMError, match="nonce"):
        hsm.open_card_item(SERIAL, "k", {"sealed": "0011", "kcv": "000000", "kcv_method": "SHA-256"})


def test_the_card_image_key_persists_in_the_key_store(tmp_path):
    master = tmp_path / "master.key"
    first = SoftHSM.open(tmp_path / "keys.json", master_key_file=master)
    sealed = first.seal_card_item(SERIAL, "keys/GM/MAC", KEY)
    again = SoftHSM.open(tmp_path / "keys.json", master_key_file=master)
    assert again.open_card_item(SERIAL, "keys/GM/MAC", sealed) == KEY
    assert KEY.hex().upper() not in (tmp_path / "keys.json").read_text().upper()


# --- personalisation transport key ----------------------------------------------------------------------
@pytest.mark.parametrize("suite", [INTL, GM])
@pytest.mark.parametrize("data", [b"", h("01"), KEY, bytes(range(48)), bytes(200)])
def test_perso_dgi_encipher_and_decipher_agree(hsm, suite, data):
    enciphered = hsm.encipher_perso_dgi("perso-kek", suite, data)
    assert len(enciphered) % suite.block_bytes == 0 and len(enciphered) > len(data)  # always padded
    assert hsm.decipher_perso_dgi("perso-kek", suite, enciphered) == data


@pytest.mark.parametrize("suite", [INTL, GM])
def test_perso_dgi_is_the_suite_cipher_in_ecb_with_padding_method_2(suite):
    hsm = SoftHSM.ephemeral()
    transport_key = h("404142434445464748494A4B4C4D4E4F")
    hsm.import_key("perso-kek", "PERSO-KEK", suite, transport_key)
    expected = suite.ecb_encrypt(transport_key, pad_method_2(KEY, suite.block_bytes))
    assert hsm.encipher_perso_dgi("perso-kek", suite, KEY) == expected
    assert hsm.key_info("perso-kek").kcv_hex == key_check_value(transport_key, suite=suite).hex().upper()


def test_perso_kek_is_made_on_first_encipher_and_needed_to_decipher(hsm):
    with pytest.raises(HSMError, match="no key labelled 'perso-kek'"):
        hsm.decipher_perso_dgi("perso-kek", GM, bytes(16))
    hsm.encipher_perso_dgi("perso-kek", GM, KEY)
    assert hsm.key_info("perso-kek").key_type == "PERSO-KEK"


def test_perso_decipher_rejects_bad_lengths_and_padding(hsm):
    hsm.encipher_perso_dgi("perso-kek", INTL, KEY)
    with pytest.raises(HSMError, match="multiple of 8"):
        hsm.decipher_perso_dgi("perso-kek", INTL, bytes(12))
    with pytest.raises(HSMError, match="padding method 2"):
        hsm.decipher_perso_dgi("perso-kek", INTL, hsm.encipher_perso_dgi("perso-kek", INTL, KEY)[:16])


def test_key_usage_is_enforced(hsm):
    hsm.import_key("imk-ac", "IMK-AC", INTL, KEY)
    with pytest.raises(HSMError, match=r"may not encipher a personalisation DGI .*PERSO-KEK"):
        hsm.encipher_perso_dgi("imk-ac", INTL, KEY)
    hsm.encipher_perso_dgi("perso-kek", INTL, KEY)
    with pytest.raises(HSMError, match="may not verify an ARQC"):
        hsm.verify_arqc(
            "perso-kek",
            tag_5a="6217000012345678901",
            tag_5f34="01",
            tag_9f36=h("0001"),
            data=b"",
            tag_9f26=bytes(8),
        )
