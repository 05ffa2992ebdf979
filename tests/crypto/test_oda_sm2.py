"""SM2 offline data authentication formats (JR/T 0025.17; pboc-notes §4.5), byte by byte.

Each object built by citycard.crypto.oda is taken apart here at the documented offsets and its
signature checked directly with citycard.crypto.sm2 (user ID "1234567812345678"), so the layout is
tested independently of the ODA code that reads it back.
"""

from __future__ import annotations

import functools

import pytest

from citycard.crypto import GM, INTL, sm2
from citycard.crypto.capk import TestCa, generate_test_ca
from citycard.crypto.oda import (
    ODAError,
    PublicKey,
    cda_icc_dynamic_data,
    icc_certificate,
    icc_dynamic_data,
    issuer_certificate,
    issuer_identifier,
    recover_icc_public_key,
    recover_issuer_public_key,
    sign_cda,
    sign_dynamic_data,
    sign_static_data,
    transaction_data_hash,
    verify_cda,
    verify_dynamic_signature,
    verify_sda,
)

h = bytes.fromhex
PAN = "6212345678901234"
USER_ID = b"1234567812345678"
STATIC_DATA = h("5A0862123456789012345F24032812315F3401009F4A0182") + h("7C00")
TAG_9F37 = h("0A0B0C0D")
SERIAL = h("00A0B1")


@functools.cache
def keys() -> tuple[TestCa, bytes, bytes]:
    return generate_test_ca(GM), sm2.generate_private_key(), sm2.generate_private_key()


def issuer_cert() -> bytes:
    ca, issuer, _ = keys()
    issued = issuer_certificate(
        ca.private_key,
        PublicKey.of(issuer, GM),
        issuer_id=issuer_identifier(PAN),
        expiry="0631",
        serial=SERIAL,
        suite=GM,
    )
    assert issued.remainder == b"" and issued.exponent == b""
    return issued.certificate


def icc_cert() -> bytes:
    _, issuer, icc = keys()
    issued = icc_certificate(
        issuer,
        PublicKey.of(icc, GM),
        pan=PAN,
        expiry="0631",
        serial=SERIAL,
        static_data=STATIC_DATA,
        suite=GM,
    )
    return issued.certificate


def test_issuer_certificate_format_12_layout():
    ca, issuer, _ = keys()
    cert = issuer_cert()
    assert len(cert) == 142
    assert cert[0] == 0x12
    assert cert[1:5] == h("621234FF")  # issuer identifier: leftmost PAN digits, F-padded
    assert cert[5:7] == h("0631")  # expiry MMYY
    assert cert[7:10] == SERIAL
    assert cert[10:14] == h("04001140")  # SM2 signature, no encryption algorithm, SM2 curve, 64-byte key
    assert cert[14:78] == sm2.public_key(issuer)
    assert sm2.verify(ca.capk.key, cert[:78], cert[78:], user_id=USER_ID)


def test_icc_certificate_format_14_layout_signs_the_static_data():
    _, issuer, icc = keys()
    cert = icc_cert()
    assert len(cert) == 148
    assert cert[0] == 0x14
    assert cert[1:11] == h("6212345678901234FFFF")  # PAN, F-padded to 10 bytes
    assert cert[11:13] == h("0631")
    assert cert[13:16] == SERIAL
    assert cert[16:20] == h("04001140")
    assert cert[20:84] == sm2.public_key(icc)
    issuer_public = sm2.public_key(issuer)
    assert sm2.verify(issuer_public, cert[:84] + STATIC_DATA, cert[84:], user_id=USER_ID)
    assert not sm2.verify(issuer_public, cert[:84], cert[84:], user_id=USER_ID)


def test_the_chain_recovers():
    ca, issuer, icc = keys()
    issuer_result = recover_issuer_public_key(ca.capk, issuer_cert(), pan=PAN)
    assert issuer_result.valid, issuer_result.reasons
    assert issuer_result.public_key == PublicKey(GM, sm2.public_key(issuer))
    icc_result = recover_icc_public_key(
        issuer_result.public_key, icc_cert(), static_data=STATIC_DATA, pan=PAN
    )
    assert icc_result.valid, icc_result.reasons
    assert icc_result.public_key == PublicKey(GM, sm2.public_key(icc))


def test_sda_format_13_signs_its_3_byte_header_and_the_static_data():
    _, issuer, _ = keys()
    tag_93 = sign_static_data(issuer, STATIC_DATA, tag_9f45=h("BEEF"), suite=GM)
    assert len(tag_93) == 3 + 64
    assert tag_93[:3] == h("13BEEF")  # 13 ‖ DAC (UNCERTAIN layout, see oda module note)
    assert sm2.verify(sm2.public_key(issuer), tag_93[:3] + STATIC_DATA, tag_93[3:], user_id=USER_ID)
    assert verify_sda(PublicKey.of(issuer, GM), tag_93, STATIC_DATA).fields["dac"] == h("BEEF")


def test_dynamic_signature_format_15_signs_header_data_and_terminal_data():
    _, _, icc = keys()
    dynamic_data = icc_dynamic_data(h("11223344"))
    tag_9f4b = sign_dynamic_data(icc, dynamic_data, TAG_9F37, suite=GM)
    assert tag_9f4b[:2] == h("1505")
    assert tag_9f4b[2:7] == h("0411223344")
    assert len(tag_9f4b) == 2 + 5 + 64
    assert sm2.verify(sm2.public_key(icc), tag_9f4b[:7] + TAG_9F37, tag_9f4b[7:], user_id=USER_ID)
    assert verify_dynamic_signature(PublicKey.of(icc, GM), tag_9f4b, TAG_9F37, GM).valid


def test_cda_icc_dynamic_data_is_44_bytes_with_cid_at_byte_5():
    _, _, icc = keys()
    response = h("9F2701409F360200079F101307010103900000010A01000000000000000000")
    tag_9f4b = sign_cda(
        icc,
        tag_9f4c=h("BEEF"),
        tag_9f27=h("40"),
        tag_9f26=h("0102030405060708"),
        tag_9f37=TAG_9F37,
        pdol_data=h("01"),
        cdol1_data=h("0000000001000156"),
        response_tlvs=response,
        suite=GM,
    )
    assert tag_9f4b[0] == 0x15 and tag_9f4b[1] == 44  # len ‖ IDN (2) ‖ CID ‖ AC (8) ‖ SM3 hash (32)
    data = tag_9f4b[2:46]
    assert data[:3] == h("02BEEF")
    assert tag_9f4b[5] == 0x40  # CID, as public PBOC test scripts read it
    assert tag_9f4b[6:14] == h("0102030405060708")  # AC
    assert data[12:] == GM.hash(h("01") + h("0000000001000156") + response)
    assert data == cda_icc_dynamic_data(
        tag_9f4c=h("BEEF"),
        tag_9f27=h("40"),
        tag_9f26=h("0102030405060708"),
        transaction_data_hash=transaction_data_hash(
            pdol_data=h("01"), cdol1_data=h("0000000001000156"), response_tlvs=response, suite=GM
        ),
    )
    assert sm2.verify(sm2.public_key(icc), tag_9f4b[:46] + TAG_9F37, tag_9f4b[46:], user_id=USER_ID)
    result = verify_cda(
        PublicKey.of(icc, GM),
        tag_9f4b,
        tag_9f37=TAG_9F37,
        pdol_data=h("01"),
        cdol1_data=h("0000000001000156"),
        response_tlvs=response,
    )
    assert result.valid, result.reasons
    assert result.fields["ac"] == h("0102030405060708")


def signed_issuer_body(body: bytes, user_id: bytes = USER_ID) -> bytes:
    ca, _, _ = keys()
    return body + sm2.sign(ca.private_key, body, user_id=user_id)


def test_another_user_id_does_not_verify():
    cert = issuer_cert()
    forged = signed_issuer_body(cert[:78], user_id=b"ALICE123@YAHOO.COM")
    result = recover_issuer_public_key(keys()[0].capk, forged)
    assert result.reasons == ("issuer public key certificate (90): SM2 signature does not verify",)


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, 0x02, "format is 02, expected 12"),
        (10, 0x05, "public key signature algorithm indicator is 05, expected 04"),
        (11, 0x01, "public key encryption algorithm indicator is 01, expected 00"),
        (12, 0x12, "public key parameter indicator is 12, expected 11"),
        (5, 0x13, "expiration date 1331 is not MMYY"),
    ],
)
def test_a_signed_certificate_with_a_wrong_field_is_still_invalid(offset, value, reason):
    body = bytearray(issuer_cert()[:78])
    body[offset] = value
    result = recover_issuer_public_key(keys()[0].capk, signed_issuer_body(bytes(body)))
    assert result.reasons == (f"issuer public key certificate (90): {reason}",)
    assert result.public_key is None


def test_a_certified_key_off_the_curve_is_invalid():
    body = issuer_cert()[:14] + b"\x01" * 64
    result = recover_issuer_public_key(keys()[0].capk, signed_issuer_body(body))
    assert result.reasons == (
        "issuer public key certificate (90): SM2 public key is not a point of the SM2 curve",
    )


def test_sm2_lengths_are_exact():
    ca = keys()[0]
    with pytest.raises(ODAError, match="issuer public key certificate \\(90\\) must be 142 bytes, got 141"):
        recover_issuer_public_key(ca.capk, issuer_cert()[:-1])
    issuer_key = PublicKey.of(keys()[1], GM)
    with pytest.raises(ODAError, match="ICC public key certificate \\(9F46\\) must be 148 bytes, got 149"):
        recover_icc_public_key(issuer_key, icc_cert() + b"\x00", static_data=STATIC_DATA)
    with pytest.raises(
        ODAError, match="signed dynamic application data \\(9F4B\\) must be at least 66 bytes, got 65"
    ):
        verify_dynamic_signature(PublicKey.of(keys()[2], GM), bytes(65), TAG_9F37)
    with pytest.raises(
        ODAError, match="SM2 certificates have no key remainder or exponent: 92 and 9F32 must be absent"
    ):
        recover_issuer_public_key(ca.capk, issuer_cert(), b"", b"\x03")


def test_an_sm2_certificate_given_to_an_rsa_ca_gets_a_hint():
    rsa_ca = generate_test_ca(INTL, bits=1024)
    with pytest.raises(ODAError, match="it looks like an SM2 format 12 object: is the CA key RSA by mistake"):
        recover_issuer_public_key(rsa_ca.capk, issuer_cert(), b"", b"\x03")


def test_sm2_public_keys_are_checked():
    with pytest.raises(ODAError, match="SM2 public key must be 64 bytes \\(x‖y\\), got 63"):
        PublicKey(GM, bytes(63))
    with pytest.raises(ODAError, match="SM2 public key is not a point of the SM2 curve"):
        PublicKey(GM, b"\x01" * 64)
    with pytest.raises(ODAError, match="an SM2 public key has no exponent"):
        PublicKey(GM, sm2.public_key(keys()[1]), b"\x03")
    with pytest.raises(ODAError, match="the GM suite signs with a 32-byte SM2 private key"):
        sign_static_data(b"\x01" * 31, STATIC_DATA, tag_9f45=h("0000"), suite=GM)
