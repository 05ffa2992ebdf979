"""Field-64 MAC in both suites: round trip, tampering any byte, wrong key, the MAC input."""

from __future__ import annotations

import pytest

from citycard.crypto import GM, INTL
from citycard.crypto.mac import pad_method_2, retail_mac
from citycard.iso8583 import add_mac, compute_mac, decode, encode, verify_mac

KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
FIELDS = {
    "t": "0200",
    "2": "6217000012345678901",
    "3": "000000",
    "4": "000000012345",
    "11": "000042",
    "41": "T0000001",
    "42": "104510000000001",
    "55": bytes.fromhex("9F02060000000123455F340101"),
}


@pytest.mark.parametrize("suite", [INTL, GM], ids=lambda s: s.name)
def test_round_trip(suite):
    raw = add_mac(FIELDS, KEY, suite)
    fields, _ = decode(raw)
    assert fields == {**FIELDS, "64": raw[-8:]}
    assert verify_mac(raw, KEY, suite)


@pytest.mark.parametrize("suite", [INTL, GM], ids=lambda s: s.name)
def test_tampering_any_byte_fails(suite):
    raw = add_mac(FIELDS, KEY, suite)
    for i in range(len(raw)):
        for flip in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[i] ^= flip
            assert not verify_mac(bytes(tampered), KEY, suite), (i, flip)


@pytest.mark.parametrize("suite", [INTL, GM], ids=lambda s: s.name)
def test_wrong_key_truncated_and_missing_mac(suite):
    raw = add_mac(FIELDS, KEY, suite)
    assert not verify_mac(raw, bytes(16), suite)
    assert not verify_mac(raw[:-1], KEY, suite)
    assert not verify_mac(encode(FIELDS), KEY, suite)


def test_suites_differ():
    assert add_mac(FIELDS, KEY, INTL)[-8:] != add_mac(FIELDS, KEY, GM)[-8:]


def test_intl_mac_input_is_message_up_to_field_63_with_bit_64_set():
    raw = add_mac(FIELDS, KEY, INTL)
    body = raw[:-8]
    assert body[2 + 7] & 0x01  # bit 64 is the last bit of the primary bitmap
    assert raw[-8:] == retail_mac(KEY, pad_method_2(body, 8))
    assert compute_mac(body, KEY, GM) == GM.block_mac(KEY, pad_method_2(body, 16))[:8]


def test_bad_key_length():
    with pytest.raises(ValueError, match="terminal MAC key"):
        add_mac(FIELDS, bytes(8), INTL)
