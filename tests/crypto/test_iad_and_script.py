"""PBOC IAD electronic-cash MAC and issuer-script secure messaging, in both suites."""

from __future__ import annotations

import pytest

from citycard.crypto import GM, INTL
from citycard.crypto.cryptogram import pboc_ac_data, pboc_mac
from citycard.crypto.iad import build_iad, ec_balance_mac, parse_iad, verify_iad_mac
from citycard.crypto.keys import derive_card_key, session_key
from citycard.crypto.script import (
    build_script_command,
    decipher_script_data,
    ec_load_command,
    encipher_script_data,
    pin_change_block,
    pin_change_command,
    script_mac,
)

h = bytes.fromhex
IMK_MAC = h("FEDCBA98765432100123456789ABCDEF")
IMK_ENC = h("89ABCDEF0123456776543210FEDCBA98")
IMK_AC = h("0123456789ABCDEFFEDCBA9876543210")
PAN, PSN = "6235489730000218", "01"
ATC = h("0007")
ARQC = h("1122334455667788")
SUITES = pytest.mark.parametrize("suite", [INTL, GM], ids=["INTL", "GM"])


def _sk(imk: bytes, suite) -> bytes:
    return session_key(derive_card_key(imk, tag_5a=PAN, tag_5f34=PSN, suite=suite), tag_9f36=ATC, suite=suite)


def test_parse_public_sm_iad_example():
    # pboc-notes §2.4: SM sample from z-zroud/CardPlatform AuthencationTest.cpp.
    iad = parse_iad(h("07010103900002040A010000008800180FE8DE"))
    assert (iad.dki, iad.cvn, iad.cvr, iad.algorithm_id) == (0x01, 0x01, h("900002"), 0x04)
    assert iad.suite is GM
    assert iad.ec_balance_fen == 8800  # 88.00 yuan
    assert iad.cvr_field == h("03900002")


@SUITES
def test_build_and_verify_iad_with_ec_balance(suite):
    sk_mac = _sk(IMK_MAC, suite)
    iad = build_iad(
        dki=1,
        cvn=1,
        cvr=h("A00000"),
        suite=suite,
        ec_balance_fen=12_345,
        mac_session_key=sk_mac,
        tag_9f36=ATC,
    )
    assert len(iad) == 19
    assert iad[7] == suite.iad_algorithm_id
    assert iad[10:15] == h("0000012345")
    assert verify_iad_mac(sk_mac, tag_9f10=iad, tag_9f36=ATC)
    # the MAC binds the ATC and the balance
    assert not verify_iad_mac(sk_mac, tag_9f10=iad, tag_9f36=h("0008"))
    forged = iad[:10] + h("0000099999") + iad[15:]
    assert not verify_iad_mac(sk_mac, tag_9f10=forged, tag_9f36=ATC)


@SUITES
def test_ec_balance_mac_is_pboc_mac_over_atc_balance_00(suite):
    sk_mac = _sk(IMK_MAC, suite)
    expected = pboc_mac(sk_mac, ATC + h("0000012345") + b"\x00", suite=suite, length=4)
    assert ec_balance_mac(sk_mac, tag_9f36=ATC, balance_fen=12_345, suite=suite) == expected


def test_iad_errors_are_precise():
    with pytest.raises(ValueError, match="at least 8 bytes, got 5"):
        parse_iad(h("0701010390"))
    with pytest.raises(ValueError, match="must start 07 xx xx 03"):
        parse_iad(h("0601010390000201"))
    with pytest.raises(ValueError, match="does not match"):
        parse_iad(h("07010103900002010B01000000880018"))


@SUITES
def test_ec_load_script_layout_and_mac(suite):
    sk_mac = _sk(IMK_MAC, suite)
    command = ec_load_command(sk_mac, new_balance_fen=50_000, tag_9f36=ATC, tag_9f26=ARQC, suite=suite)
    assert command[:5] == h("04DA9F790A")
    assert command[5:11] == h("000000050000")
    expected_mac = pboc_mac(sk_mac, h("04DA9F790A") + ATC + ARQC + h("000000050000"), suite=suite, length=4)
    assert command[11:] == expected_mac
    assert len(command) == 15


@SUITES
def test_script_mac_binds_atc_and_arqc(suite):
    sk_mac = _sk(IMK_MAC, suite)
    header = h("841E000004")
    mac = script_mac(sk_mac, header=header, tag_9f36=ATC, tag_9f26=ARQC, data=b"", suite=suite)
    assert mac != script_mac(sk_mac, header=header, tag_9f36=h("0008"), tag_9f26=ARQC, data=b"", suite=suite)
    block = build_script_command(
        sk_mac, cla=0x84, ins=0x1E, p1=0, p2=0, data=b"", tag_9f36=ATC, tag_9f26=ARQC, suite=suite
    )
    assert block == header + mac


def test_script_mac_rejects_inconsistent_lc():
    with pytest.raises(ValueError, match="Lc 05 must equal data length 0"):
        script_mac(IMK_MAC, header=h("841E000005"), tag_9f36=ATC, tag_9f26=ARQC, data=b"", suite=INTL)


@SUITES
def test_encipher_round_trip(suite):
    sk_enc = _sk(IMK_ENC, suite)
    for data in (b"", b"\x08" + h("041234FF76543210"), bytes(range(40))):
        enciphered = encipher_script_data(sk_enc, data, suite=suite)
        assert len(enciphered) % suite.block_bytes == 0
        assert decipher_script_data(sk_enc, enciphered, suite=suite) == data


@SUITES
def test_pin_change_command(suite):
    sk_mac, sk_enc = _sk(IMK_MAC, suite), _sk(IMK_ENC, suite)
    card_ac_key = derive_card_key(IMK_AC, tag_5a=PAN, tag_5f34=PSN, suite=suite)
    command = pin_change_command(
        mac_session_key=sk_mac,
        enc_session_key=sk_enc,
        new_pin="9999",
        card_ac_key=card_ac_key,
        tag_9f36=ATC,
        tag_9f26=ARQC,
        suite=suite,
    )
    assert command[:4] == h("84240002")
    assert command[4] == 16 + 4  # one 16-byte enciphered block (08 ‖ PIN data ‖ 80 …) and the MAC
    plain = decipher_script_data(sk_enc, command[5:21], suite=suite)
    assert plain == b"\x08" + pin_change_block(new_pin="9999", card_ac_key=card_ac_key)


def test_pin_change_block_with_current_pin():
    key = h("0123456789ABCDEFFEDCBA9876543210")
    without = pin_change_block(new_pin="1234", card_ac_key=key)
    with_current = pin_change_block(new_pin="1234", card_ac_key=key, current_pin="5678")
    assert bytes(a ^ b for a, b in zip(without, with_current, strict=True)) == h("5678000000000000")
    with pytest.raises(ValueError, match="PIN must be 4 to 12 digits"):
        pin_change_block(new_pin="12a4", card_ac_key=key)


def test_pboc_ac_data_layout_and_lengths():
    data = pboc_ac_data(
        tag_9f02=h("000000002000"),
        tag_9f03=h("000000000000"),
        tag_9f1a=h("0156"),
        tag_95=h("0000008000"),
        tag_5f2a=h("0156"),
        tag_9a=h("261127"),
        tag_9c=h("00"),
        tag_9f37=h("3804823E"),
        tag_82=h("7C00"),
        tag_9f36=ATC,
        cvr=h("03A00000"),
    )
    assert len(data) == 37
    with pytest.raises(ValueError, match="9F37 must be 4 bytes, got 3"):
        pboc_ac_data(
            tag_9f02=h("000000002000"),
            tag_9f03=h("000000000000"),
            tag_9f1a=h("0156"),
            tag_95=h("0000008000"),
            tag_5f2a=h("0156"),
            tag_9a=h("261127"),
            tag_9c=h("00"),
            tag_9f37=h("38048200"[:6]),
            tag_82=h("7C00"),
            tag_9f36=ATC,
            cvr=h("03A00000"),
        )
