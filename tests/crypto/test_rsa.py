"""Raw RSA for EMV (citycard.crypto.rsa): recovery, CRT signing, key generation, exact length checks."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.crypto import rsa

DATA = Path(__file__).parent / "data"
h = bytes.fromhex


@functools.cache
def key(bits: int, exponent: int = 3) -> rsa.RsaPrivateKey:
    """One generated key per size for the whole module (key generation is the slow part)."""
    return rsa.generate_rsa_key(bits, exponent)


def test_recover_is_textbook_modular_exponentiation():
    # 2^3 mod 187 and 100^3 mod 187 = 1000000 mod 187 = 111
    assert rsa.recover(bytes([187]), b"\x03", b"\x02") == b"\x08"
    assert rsa.recover(bytes([187]), b"\x03", bytes([100])) == bytes([1_000_000 % 187])


def test_recover_keeps_the_modulus_length_with_leading_zeros():
    modulus = (2**128 + 51).to_bytes(17, "big")  # 17 bytes, first byte 01
    out = rsa.recover(modulus, b"\x03", b"\x00" * 16 + b"\x02")
    assert out == b"\x00" * 16 + b"\x08"


@pytest.mark.parametrize(
    ("modulus", "exponent", "data", "message"),
    [
        (h("BB"), b"\x03", h("0102"), "RSA input must be 1 bytes like the modulus, got 2"),
        (h("BBBB"), b"\x03", h("02"), "RSA input must be 2 bytes like the modulus, got 1"),
        (h("BB"), b"\x03", h("BB"), "RSA input is not below the modulus"),
        (h("BB"), b"\x03", h("FF"), "RSA input is not below the modulus"),
        (h("00BB"), b"\x03", h("0002"), "RSA modulus must be non-empty with a non-zero first byte"),
        (b"", b"\x03", b"", "RSA modulus must be non-empty"),
        (h("BB"), b"", h("02"), "RSA public exponent must be 1 to 3 bytes, got 0"),
        (h("BB"), h("01000001"), h("02"), "RSA public exponent must be 1 to 3 bytes, got 4"),
    ],
)
def test_recover_rejects_bad_input_precisely(modulus, exponent, data, message):
    with pytest.raises(rsa.RSAError, match=message.replace("(", r"\(")):
        rsa.recover(modulus, exponent, data)


@pytest.mark.parametrize(("bits", "exponent"), [(512, 3), (768, 3), (1024, 3), (1152, 65537), (1984, 3)])
def test_generated_keys_have_exact_size_and_sign_and_recover(bits, exponent):
    private = key(bits, exponent)
    assert private.modulus.bit_length() == bits
    assert private.size_bytes == bits // 8
    assert private.exponent_bytes == (b"\x03" if exponent == 3 else h("010001"))
    assert private.prime_p * private.prime_q == private.modulus
    block = b"\x6a" + bytes(range(256))[: bits // 8 - 2] + b"\xbc"
    signature = rsa.sign_raw(private, block)
    assert len(signature) == bits // 8
    assert signature != block
    assert rsa.recover(private.modulus_bytes, private.exponent_bytes, signature) == block


def test_sign_raw_checks_length_and_range():
    private = key(512)
    with pytest.raises(rsa.RSAError, match="data to sign must be 64 bytes like the modulus, got 63"):
        rsa.sign_raw(private, bytes(63))
    with pytest.raises(rsa.RSAError, match="data to sign is not below the modulus"):
        rsa.sign_raw(private, b"\xff" * 64)


@pytest.mark.parametrize(
    ("bits", "exponent", "message"),
    [
        (1004, 3, "multiple of 8 from 512 to 1984 bits, got 1004"),
        (2048, 3, "multiple of 8 from 512 to 1984 bits, got 2048"),
        (256, 3, "got 256"),
        (1024, 5, "EMV allows the public exponent 3 or 65537, got 5"),
    ],
)
def test_generate_rejects_what_emv_does_not_allow(bits, exponent, message):
    with pytest.raises(rsa.RSAError, match=message):
        rsa.generate_rsa_key(bits, exponent)


def test_cryptography_round_trip_keeps_the_numbers():
    private = key(1024)
    back = rsa.RsaPrivateKey.from_cryptography(private.to_cryptography())
    assert back == private
    assert private.to_cryptography().public_key().public_numbers().n == private.modulus


def test_private_parts_stay_out_of_repr():
    private = key(512)
    text = repr(private)
    assert str(private.private_exponent) not in text
    assert str(private.prime_p) not in text
    assert str(private.modulus) in text


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=96, max_size=96))
def test_recover_inverts_sign_raw(data):
    private = key(768)
    block = bytes([data[0] & 0x7F]) + data[1:]  # below the modulus: its top bit is set
    assert rsa.recover(private.modulus_bytes, private.exponent_bytes, rsa.sign_raw(private, block)) == block


def test_real_visa_issuer_certificate_recovers_to_an_emv_block():
    # lumag/emv-tools test/sda-test.c @ fcd6aa0c: Visa 1024-bit live CA key 01 (expired) and the
    # issuer certificate (tag 90) of a real card; values in tests/crypto/data.
    chain = json.loads((DATA / "emv_tools_rsa_chains.json").read_text())["sda"]
    block = rsa.recover(h(chain["capk"]["modulus"]), h(chain["capk"]["exponent"]), h(chain["90"]))
    assert block[:2] == h("6A02")
    assert block[-1] == 0xBC
    assert block[2:6] == h("427655FF")  # issuer identifier: the PAN's first 6 digits
