"""The health DDF1 on the virtual card (docs/health-card.md): access rights, secure messaging, the
image, both suites — every key through the HSM, every command as an APDU to a real Card."""

from __future__ import annotations

import pytest

from citycard.card import load_card
from citycard.card.health import HEALTH_DDF1_NAME, HealthApplication, decode_record, encode_record
from citycard.card.health import files as hf
from citycard.card.health.perso import HealthLoadError, load_health_application, store_data_blocks
from citycard.card.image import install_application, new_card
from citycard.crypto import health_sm
from citycard.crypto.suite import GM, INTL

SUITES = [GM, INTL]
SELECT = b"\x00\xa4\x04\x00" + bytes([len(HEALTH_DDF1_NAME)]) + HEALTH_DDF1_NAME + b"\x00"
GET_CHALLENGE = bytes.fromhex("0084000008")
RECORDS = {
    "DDF1/EF05": [{"card_type": "2", "issuer_name": "城市卡", "card_no": "11010119900307123X"}],
    "DDF1/EF06": [
        {"name": "张三", "sex": "1", "birth_date": "1990-03-07", "id_number": "11010119900307123X"}
    ],
    "DF02/EF05": [{"blood_abo": "1", "blood_rh": "1", "alerts": "8000"}],
    "DF02/EF07": [{"allergen": "青霉素", "reaction": "皮疹"}],
}


@pytest.fixture(scope="module")
def hsm():
    from citycard.hsm import SoftHSM

    made = SoftHSM.ephemeral()
    for suite in SUITES:
        made.create_health_masters(suite)
    return made


def health_card(hsm, suite, path=None):
    card = new_card([], hsm=hsm, image_path=path)
    load_health_application(card, hsm, suite, records=RECORDS)
    card.power_on()
    assert card.process(SELECT)[-2:] == b"\x90\x00"
    return card


def sw(answer: bytes) -> int:
    return int.from_bytes(answer[-2:], "big")


def read_record(card, file: hf.HealthFile, number: int = 1) -> bytes:
    return card.process(bytes([0x00, 0xB2, number, file.sfi << 3 | 4, 0x00]))


def authenticate(card, hsm, suite, df: str) -> int:
    challenge = card.process(GET_CHALLENGE)[:-2]
    cryptogram = hsm.health_auth_cryptogram(suite, df=df, diversifier=card.serial, challenge=challenge)
    return sw(card.process(bytes([0x00, 0x82, 0x00, hf.key_reference(df, "RK"), 8]) + cryptogram))


def sm_write(card, hsm, suite, df: str, header: bytes, plain: bytes) -> int:
    challenge = card.process(GET_CHALLENGE)[:-2]
    apdu = hsm.health_sm_command(
        suite, df=df, diversifier=card.serial, challenge=challenge, header=header, plain=plain
    )
    return sw(card.process(apdu))


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_free_issuer_file_but_protected_identity_needs_the_read_key(hsm, suite):
    card = health_card(hsm, suite)
    issuer = decode_record("DDF1/EF05", read_record(card, hf.ISSUER_FILE)[:-2])
    assert issuer["chip_serial"] == card.serial.hex().upper() and issuer["suite"] == suite.name
    assert sw(read_record(card, hf.IDENTITY_FILE)) == 0x6982  # no EXTERNAL AUTHENTICATE yet
    assert authenticate(card, hsm, suite, "DDF1") == 0x9000
    identity = decode_record("DDF1/EF06", read_record(card, hf.IDENTITY_FILE)[:-2])
    assert identity == RECORDS["DDF1/EF06"][0]
    # the DDF1 grant is not the DF02 grant: each DF has its own read key
    assert sw(read_record(card, hf.ALERTS_FILE)) == 0x6982
    assert authenticate(card, hsm, suite, "DF02") == 0x9000
    assert decode_record("DF02/EF05", read_record(card, hf.ALERTS_FILE)[:-2])["alerts"] == "8000"
    # a new selection drops every grant
    assert card.process(SELECT)[-2:] == b"\x90\x00"
    assert sw(read_record(card, hf.IDENTITY_FILE)) == 0x6982


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_a_wrong_cryptogram_is_refused_and_grants_nothing(hsm, suite):
    card = health_card(hsm, suite)
    challenge = card.process(GET_CHALLENGE)[:-2]
    # the right read key of another DF (DF01) for DDF1's key reference
    wrong = hsm.health_auth_cryptogram(suite, df="DF01", diversifier=card.serial, challenge=challenge)
    answer = card.process(bytes([0x00, 0x82, 0x00, hf.key_reference("DDF1", "RK"), 8]) + wrong)
    assert sw(answer) == 0x63CE  # 14 tries left
    assert sw(read_record(card, hf.IDENTITY_FILE)) == 0x6982
    # a cryptogram for another card (diversifier) fails too; without GET CHALLENGE: 6985
    challenge = card.process(GET_CHALLENGE)[:-2]
    other = hsm.health_auth_cryptogram(suite, df="DDF1", diversifier=bytes(8), challenge=challenge)
    assert sw(card.process(bytes([0x00, 0x82, 0x00, 0x11, 8]) + other)) == 0x63CD
    assert sw(card.process(bytes([0x00, 0x82, 0x00, 0x11, 8]) + other)) == 0x6985
    # the right cryptogram resets the count; 15 wrong ones in a row block the key, even for the right one
    assert authenticate(card, hsm, suite, "DDF1") == 0x9000
    for left in range(14, -1, -1):
        card.process(GET_CHALLENGE)
        assert sw(card.process(bytes([0x00, 0x82, 0x00, 0x11, 8]) + bytes(8))) == 0x63C0 | left
    assert authenticate(card, hsm, suite, "DDF1") == 0x6983
    assert authenticate(card, hsm, suite, "DF01") == 0x9000  # the other DFs' keys are not blocked
    # the update key cannot be used to authenticate for reading
    card.process(GET_CHALLENGE)
    assert sw(card.process(bytes([0x00, 0x82, 0x00, hf.key_reference("DDF1", "UK"), 8]) + other)) == 0x6A88


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_writes_need_the_update_key_in_secure_messaging(hsm, suite, tmp_path):
    path = tmp_path / "card.json"
    card = health_card(hsm, suite, path)
    allergies = hf.ALLERGIES_FILE
    record = encode_record("DF02/EF07", {"allergen": "花生", "reaction": "休克"})
    plain = bytes([0x00, 0xE2, 0x00, allergies.sfi << 3 | 4, len(record)]) + record
    assert sw(card.process(plain)) == 0x6982  # CLA 00: no update key, nothing written
    header = bytes([0x04, 0xE2, 0x00, allergies.sfi << 3 | 4])
    # the DF01 update key is not the DF02 one: the MAC fails → 6988, nothing written
    assert sm_write(card, hsm, suite, "DF01", header, record) == 0x6988
    # no GET CHALLENGE before the command: 6985
    challenge = card.process(GET_CHALLENGE)[:-2]
    apdu = hsm.health_sm_command(
        suite, df="DF02", diversifier=card.serial, challenge=challenge, header=header, plain=record
    )
    assert sw(card.process(apdu)) == 0x9000
    assert sw(card.process(apdu)) == 0x6985  # the challenge is spent: a replay is refused
    # one flipped ciphertext bit: 6988; a MAC cut short: 6987
    card.process(GET_CHALLENGE)
    assert sw(card.process(apdu[:10] + bytes([apdu[10] ^ 1]) + apdu[11:])) == 0x6988
    card.process(GET_CHALLENGE)
    assert sw(card.process(apdu[:4] + b"\x03" + apdu[5:8])) == 0x6987
    # the write landed once, newest first (cyclic), and survived on disk
    reloaded = load_card(path, hsm=hsm)
    reloaded.power_on()
    reloaded.process(SELECT)
    assert authenticate(reloaded, hsm, suite, "DF02") == 0x9000
    assert decode_record("DF02/EF07", read_record(reloaded, allergies, 1)[:-2])["allergen"] == "花生"
    assert decode_record("DF02/EF07", read_record(reloaded, allergies, 2)[:-2])["allergen"] == "青霉素"
    assert sw(read_record(reloaded, allergies, 3)) == 0x6A83


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_update_binary_pieces_and_read_binary(hsm, suite):
    card = health_card(hsm, suite)
    slot = hf.OUTPATIENT_SLOTS[0]
    content = bytes(range(256)) * 3
    for offset in range(0, slot.size_bytes, hf.BINARY_PIECE_BYTES_MAX):
        p1p2 = bytes([0x80 | slot.sfi, offset]) if offset == 0 else offset.to_bytes(2, "big")
        piece = content[offset : offset + hf.BINARY_PIECE_BYTES_MAX]
        assert sm_write(card, hsm, suite, "DF03", b"\x04\xd6" + p1p2, piece) == 0x9000
    assert sw(card.process(bytes([0x00, 0xB0, 0x80 | slot.sfi, 0x00, 0x10]))) == 0x6982
    assert authenticate(card, hsm, suite, "DF03") == 0x9000
    first = card.process(bytes([0x00, 0xB0, 0x80 | slot.sfi, 0x00, 0xF0]))
    rest = card.process(bytes([0x00, 0xB0, 0x02, 0xD0, 0x30]))  # offset 720 in the current file
    assert first[:-2] == content[:0xF0] and rest[:-2] == content[720:768]
    assert sw(card.process(bytes([0x00, 0xB0, 0x03, 0x00, 0x10]))) == 0x6B00  # offset 768: outside
    # a record file is not a binary file, and the reverse
    assert sw(card.process(bytes([0x00, 0xB0, 0x80 | hf.ISSUER_FILE.sfi, 0, 8]))) == 0x6981
    assert sw(read_record(card, slot)) == 0x6981


def test_the_health_application_sits_beside_others_with_its_own_keys(hsm):
    card = new_card([], hsm=hsm)
    load_health_application(card, hsm, GM, records=RECORDS)
    app = card.applications[-1]
    assert isinstance(app, HealthApplication) and app.suite is GM
    kcvs = app.key_kcvs()
    assert sorted(kcvs) == sorted(hf.KEY_NAMES) and len(set(kcvs.values())) == 8  # eight distinct keys
    # the perso script carries the keys enciphered only: no KCV-matching clear key in any block
    blocks = store_data_blocks(hsm, GM, diversifier=card.serial, records=RECORDS)
    enciphered = [data for p1, data in blocks if p1 & 0x30]
    assert len(enciphered) == 1 and enciphered[0][:2] == b"\x80\x60"
    with pytest.raises(ValueError, match="already holds"):
        install_application(card, HealthApplication())
    with pytest.raises(ValueError, match="exactly one record"):
        load_health_application(card, hsm, GM, records={})


def test_the_health_application_stays_out_of_the_payment_directories(hsm):
    card = new_card([], hsm=hsm)
    load_health_application(card, hsm, GM, records=RECORDS)
    card.power_on()
    pse = card.process(bytes([0x00, 0xA4, 0x04, 0x00, 14]) + b"1PAY.SYS.DDF01" + b"\x00")
    assert sw(pse) == 0x9000
    # the PSE directory (SFI 1) lists no application: the health DDF1 is not a payment candidate
    assert sw(card.process(bytes([0x00, 0xB2, 0x01, 0x0C, 0x00]))) == 0x6A83
    name = card.applications[-1].aid
    assert sw(card.process(bytes([0x00, 0xA4, 0x04, 0x00, len(name)]) + name + b"\x00")) == 0x9000


def test_a_refused_load_leaves_no_application(hsm):
    card = new_card([], hsm=hsm)
    bad = {**RECORDS, "DDF1/EF06": [{"name": "x" * 10}], "DF02/EF07": [{"allergen": "a"}] * 11}
    with pytest.raises(ValueError, match="at most 10 records"):
        load_health_application(card, hsm, GM, records=bad)
    assert card.applications == ()
    hsm_missing = type(hsm).ephemeral()  # no masters in this HSM: refused before the card is touched
    with pytest.raises(ValueError, match="health-gm-ddf1-rk"):
        load_health_application(card, hsm_missing, GM, records=RECORDS)
    assert card.applications == ()


def test_kcv_mismatch_in_perso_is_refused_by_the_card(hsm):
    card = new_card([], hsm=hsm)
    original = hsm.health_perso_keys

    def wrong_kcvs(suite, **kwargs):
        keys = original(suite, **kwargs)
        keys["dgi_9060"] = "00" * 24
        return keys

    hsm.health_perso_keys = wrong_kcvs
    try:
        with pytest.raises(HealthLoadError) as refused:
            load_health_application(card, hsm, GM, records=RECORDS)
    finally:
        del hsm.health_perso_keys
    assert refused.value.sw == 0x6985 and card.applications == ()


def test_health_sm_round_trip_and_refusals():
    for suite in SUITES:
        uk = health_sm.diversify(bytes(range(16)), diversifier=bytes(8), suite=suite)
        sk = health_sm.session_key(uk, challenge=b"\x01" * 8, suite=suite)
        data = health_sm.wrap(sk, header=b"\x04\xdc\x01\x0c", plain=b"\x80\x01A", suite=suite)
        assert len(data) == suite.block_bytes + 4
        assert health_sm.unwrap(sk, header=b"\x04\xdc\x01\x0c", data=data, suite=suite) == b"\x80\x01A"
        with pytest.raises(health_sm.SecureMessagingError) as wrong_header:
            health_sm.unwrap(sk, header=b"\x04\xdc\x02\x0c", data=data, suite=suite)
        assert wrong_header.value.kind == "mac"
        with pytest.raises(ValueError, match="diversifier must be 8 bytes"):
            health_sm.diversify(bytes(16), diversifier=bytes(7), suite=suite)
