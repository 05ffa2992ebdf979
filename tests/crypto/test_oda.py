"""Offline data authentication in both suites (citycard.crypto.oda, citycard.crypto.capk).

Chains CA → issuer → ICC are built from test CAs generated here, then every object (issuer and ICC
certificates, SDA, DDA, fDDA 00/01, CDA) is recovered and verified; every single flipped bit of a
signed input must make the check fail. Real RSA chains of (expired) Visa and Mastercard cards and the
scheme test CAPK checksums come from lumag/emv-tools @ fcd6aa0c (tests/crypto/data, vectors-public §3).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.crypto import GM, INTL, rsa, sm2
from citycard.crypto.capk import Capk, CapkError, TestCa, capk_checksum, generate_test_ca
from citycard.crypto.oda import (
    IssuedCertificate,
    ODAError,
    PublicKey,
    cda_icc_dynamic_data,
    fdda_terminal_dynamic_data,
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
from citycard.crypto.suite import Suite

DATA = Path(__file__).parent / "data"
h = bytes.fromhex
PAN = "6212345678901234567"
TODAY = dt.date(2026, 6, 15)
EXPIRY = "1230"  # end of December 2030
RECORDS = h("5A0A6212345678901234567F5F24033012315F3401019F0702FF008E0A00000000000000001F039F4A0182")
AIP = h("7C00")
STATIC_DATA = RECORDS + AIP  # records to authenticate ‖ AIP (9F4A lists 82)
TAG_9F37 = h("1A2B3C4D")
CDOL1_DATA = h("00000000100000000000000001560000000000015626061500") + TAG_9F37
CID_TC = b"\x40"
TAG_9F26 = h("A1B2C3D4E5F60718")
RESPONSE_HEAD = h("9F2701409F36020042")
RESPONSE_IAD = h("9F101307010103900000010A01000000000000000000")


def private_key(suite: Suite, bits: int) -> rsa.RsaPrivateKey | bytes:
    return sm2.generate_private_key() if suite.signature == "sm2" else rsa.generate_rsa_key(bits)


@dataclass
class Chain:
    name: str
    suite: Suite
    ca: TestCa
    issuer_private: rsa.RsaPrivateKey | bytes
    icc_private: rsa.RsaPrivateKey | bytes
    issuer: IssuedCertificate
    icc: IssuedCertificate
    tag_93: bytes

    @property
    def issuer_key(self) -> PublicKey:
        return PublicKey.of(self.issuer_private, self.suite)

    @property
    def icc_key(self) -> PublicKey:
        return PublicKey.of(self.icc_private, self.suite)


def build_chain(name: str, suite: Suite, ca_bits: int, issuer_bits: int, icc_bits: int) -> Chain:
    ca = generate_test_ca(suite, bits=ca_bits)
    issuer_private, icc_private = private_key(suite, issuer_bits), private_key(suite, icc_bits)
    issuer = issuer_certificate(
        ca.private_key,
        PublicKey.of(issuer_private, suite),
        issuer_id=issuer_identifier(PAN),
        expiry=EXPIRY,
        serial=h("000123"),
        suite=suite,
    )
    icc = icc_certificate(
        issuer_private,
        PublicKey.of(icc_private, suite),
        pan=PAN,
        expiry=EXPIRY,
        serial=h("000456"),
        static_data=STATIC_DATA,
        suite=suite,
    )
    tag_93 = sign_static_data(issuer_private, STATIC_DATA, tag_9f45=h("DAC1"), suite=suite)
    return Chain(name, suite, ca, issuer_private, icc_private, issuer, icc, tag_93)


CHAINS = {  # name: suite, CA bits, issuer bits, ICC bits
    "rsa-remainders": (INTL, 1152, 1024, 768),  # both keys too long for their certificate: 92 and 9F48
    "rsa-padded": (INTL, 1984, 1408, 512),  # both keys fit: BB padding, no remainders; 1984-bit CA
    "sm2": (GM, 0, 0, 0),
}


@pytest.fixture(scope="module", params=list(CHAINS))
def chain(request) -> Chain:
    return build_chain(request.param, *CHAINS[request.param])


def recover_issuer(chain: Chain, **overrides):
    args = {"pan": PAN, "today": TODAY} | overrides
    return recover_issuer_public_key(
        chain.ca.capk, chain.issuer.certificate, chain.issuer.remainder, chain.issuer.exponent, **args
    )


def recover_icc(chain: Chain, static_data: bytes = STATIC_DATA, tag_9f46=None, tag_9f48=None, **overrides):
    args = {"pan": PAN, "today": TODAY} | overrides
    return recover_icc_public_key(
        chain.issuer_key,
        chain.icc.certificate if tag_9f46 is None else tag_9f46,
        chain.icc.remainder if tag_9f48 is None else tag_9f48,
        chain.icc.exponent,
        static_data,
        **args,
    )


def cda_signature(chain: Chain, tag_9f27: bytes = CID_TC, cdol2_data: bytes = b"") -> bytes:
    return sign_cda(
        chain.icc_private,
        tag_9f4c=h("0102030405060708"),
        tag_9f27=tag_9f27,
        tag_9f26=TAG_9F26,
        tag_9f37=TAG_9F37,
        pdol_data=h("0156"),
        cdol1_data=CDOL1_DATA,
        cdol2_data=cdol2_data,
        response_tlvs=RESPONSE_HEAD + RESPONSE_IAD,
        suite=chain.suite,
    )


def response_with(tag_9f4b: bytes, head: bytes = RESPONSE_HEAD) -> bytes:
    """GENERATE AC response objects in the card's order: 9F27, 9F36, 9F4B, 9F10."""
    return head + h("9F4B81") + bytes([len(tag_9f4b)]) + tag_9f4b + RESPONSE_IAD


def check_cda(chain: Chain, tag_9f4b: bytes, **overrides):
    args = {
        "tag_9f37": TAG_9F37,
        "pdol_data": h("0156"),
        "cdol1_data": CDOL1_DATA,
        "response_tlvs": response_with(tag_9f4b),
    } | overrides
    return verify_cda(chain.icc_key, tag_9f4b, **args)


# --- the whole chain verifies ----------------------------------------------------------------


def test_issuer_certificate_gives_back_the_issuer_key(chain):
    result = recover_issuer(chain)
    assert result.valid, result.reasons
    assert result.reasons == ()
    assert result.public_key == chain.issuer_key
    assert result.expired is False
    assert result.ok
    assert result.expiry == EXPIRY
    assert result.fields["serial"] == h("000123")
    assert result.fields["issuer_identifier"] == h("621234FF")


def test_icc_certificate_gives_back_the_icc_key(chain):
    result = recover_icc(chain)
    assert result.valid, result.reasons
    assert result.public_key == chain.icc_key
    assert result.fields["pan"] == h("6212345678901234567F")
    assert result.expiry == EXPIRY
    assert result.expired is False


def test_certificate_shapes_follow_key_sizes(chain):
    expected = {  # (len 90, len 92, len 9F46, len 9F48)
        "rsa-remainders": (144, 128 - 108, 128, 96 - 86),
        "rsa-padded": (248, 0, 176, 0),
        "sm2": (142, 0, 148, 0),
    }[chain.name]
    got = (
        len(chain.issuer.certificate),
        len(chain.issuer.remainder),
        len(chain.icc.certificate),
        len(chain.icc.remainder),
    )
    assert got == expected
    assert chain.issuer.exponent == (b"\x03" if chain.suite is INTL else b"")
    tags = chain.issuer.as_tags("issuer")
    assert set(tags) == (
        {"90"} if chain.suite is GM else {"90", "9F32"} | ({"92"} if chain.issuer.remainder else set())
    )


def test_sda_verifies_and_returns_the_dac(chain):
    result = verify_sda(chain.issuer_key, chain.tag_93, STATIC_DATA)
    assert result.valid, result.reasons
    assert result.fields["dac"] == h("DAC1")


def test_dda_verifies_with_the_ddol_data(chain):
    tag_9f4b = sign_dynamic_data(
        chain.icc_private, icc_dynamic_data(h("12345678")), TAG_9F37, suite=chain.suite
    )
    result = verify_dynamic_signature(chain.icc_key, tag_9f4b, TAG_9F37, chain.suite)
    assert result.valid, result.reasons
    assert result.fields["icc_dynamic_number"] == h("12345678")


@pytest.mark.parametrize("version", [0, 1])
def test_fdda_verifies_for_both_versions(chain, version):
    extra = {"tag_9f02": h("000000000150"), "tag_5f2a": h("0156"), "tag_9f69": h("01A1B2C3D4000000")}
    terminal_data = fdda_terminal_dynamic_data(
        version=version, tag_9f37=TAG_9F37, **(extra if version else {})
    )
    assert len(terminal_data) == (4 if version == 0 else 4 + 6 + 2 + 8)
    tag_9f4b = sign_dynamic_data(
        chain.icc_private, icc_dynamic_data(h("A1B2C3D4")), terminal_data, suite=chain.suite
    )
    assert verify_dynamic_signature(chain.icc_key, tag_9f4b, terminal_data).valid
    # a version-00 check of a version-01 signature (or the reverse) fails
    other = fdda_terminal_dynamic_data(
        version=1 - version, tag_9f37=TAG_9F37, **(extra if not version else {})
    )
    assert not verify_dynamic_signature(chain.icc_key, tag_9f4b, other).valid


def test_cda_verifies_and_returns_cid_ac_and_idn(chain):
    tag_9f4b = cda_signature(chain)
    result = check_cda(chain, tag_9f4b)
    assert result.valid, result.reasons
    assert result.fields["cid"] == CID_TC
    assert result.fields["ac"] == TAG_9F26
    assert result.fields["icc_dynamic_number"] == h("0102030405060708")
    assert len(result.fields["transaction_data_hash"]) == chain.suite.hash_bytes


def test_cda_accepts_the_response_as_a_77_template_and_without_9f4b(chain):
    tag_9f4b = cda_signature(chain)
    body = response_with(tag_9f4b)
    wrapped = (
        h("7781") + bytes([len(body)]) + body
        if len(body) < 256
        else h("7782") + len(body).to_bytes(2, "big") + body
    )
    assert check_cda(chain, tag_9f4b, response_tlvs=wrapped).valid
    assert check_cda(chain, tag_9f4b, response_tlvs=RESPONSE_HEAD + RESPONSE_IAD).valid


def test_cda_on_the_second_generate_ac_hashes_cdol2_data(chain):
    cdol2 = h("3030") + TAG_9F37
    tag_9f4b = cda_signature(chain, cdol2_data=cdol2)
    assert check_cda(chain, tag_9f4b, cdol2_data=cdol2).valid
    result = check_cda(chain, tag_9f4b)
    assert not result.valid
    assert "CDA: transaction data hash does not match PDOL/CDOL data and the response" in result.reasons


def test_transaction_data_hash_skips_9f4b_and_keeps_order():
    with_9f4b = response_with(b"\x99" * 8)
    digest = transaction_data_hash(pdol_data=b"P", cdol1_data=b"C", response_tlvs=with_9f4b, suite=INTL)
    assert digest == INTL.hash(b"PC" + RESPONSE_HEAD + RESPONSE_IAD)
    swapped = RESPONSE_IAD + RESPONSE_HEAD
    assert transaction_data_hash(pdol_data=b"P", cdol1_data=b"C", response_tlvs=swapped, suite=INTL) != digest


# --- each EMV rule, reported -----------------------------------------------------------------


def test_expiry_is_reported_separately(chain):
    after = recover_issuer(chain, today=dt.date(2031, 1, 1))
    assert after.valid and after.expired is True and not after.ok
    assert after.public_key == chain.issuer_key
    last_day = recover_issuer(chain, today=dt.date(2030, 12, 31))
    assert last_day.expired is False
    assert recover_issuer(chain, today=None).expired is None
    assert recover_icc(chain, today=dt.date(2031, 1, 1)).expired is True


def test_issuer_identifier_must_match_the_pan(chain):
    result = recover_issuer(chain, pan="6212355678901234567")
    assert not result.valid
    assert result.public_key is None
    assert result.reasons == (
        "issuer public key certificate (90): issuer identifier 621234 does not match the PAN's leftmost digits",
    )
    assert recover_issuer(chain, pan=None).valid  # not checked without a PAN


def test_icc_certificate_pan_must_be_the_application_pan(chain):
    result = recover_icc(chain, pan=h("6212345678901234568F"))
    assert result.reasons == (
        "ICC public key certificate (9F46): certified PAN 6212345678901234567 is not the application PAN (5A)",
    )


def test_revoked_issuer_certificate_is_invalid(chain):
    capk = chain.ca.capk
    result = recover_issuer(chain, revocation_list={(capk.rid, capk.index, h("000123"))})
    assert result.reasons == ("issuer public key certificate (90): serial 000123 is on the revocation list",)
    assert recover_issuer(chain, revocation_list={(capk.rid, capk.index, h("000124"))}).valid


def test_another_ca_key_of_the_same_size_does_not_verify(chain):
    suite, ca_bits = CHAINS[chain.name][0], CHAINS[chain.name][1]
    stranger = generate_test_ca(suite, bits=ca_bits).capk
    result = recover_issuer_public_key(
        stranger, chain.issuer.certificate, chain.issuer.remainder, chain.issuer.exponent, pan=PAN
    )
    assert not result.valid and result.public_key is None
    # RSA under the wrong key gives random-looking bytes: the header check catches it, unless the
    # first byte happens to be 6A (1 in 256), then the trailer (BC), then the hash
    rsa_reasons = ("header is", "not below the signer's modulus", "trailer is", "hash of the recovered data")
    expected = ("SM2 signature does not verify",) if suite is GM else rsa_reasons
    assert any(text in reason for reason in result.reasons for text in expected), result.reasons


def test_static_data_without_the_aip_fails_the_icc_certificate_and_sda(chain):
    assert not recover_icc(chain, static_data=RECORDS).valid
    assert not verify_sda(chain.issuer_key, chain.tag_93, RECORDS).valid


def test_cda_cid_must_match_the_response(chain):
    tag_9f4b = cda_signature(chain)
    arqc_head = h("9F2701809F36020042")
    result = check_cda(chain, tag_9f4b, response_tlvs=response_with(tag_9f4b, head=arqc_head))
    assert "CDA: signed CID 40 differs from 9F27 80 in the response" in result.reasons
    no_cid = check_cda(chain, tag_9f4b, response_tlvs=h("9F36020042") + RESPONSE_IAD)
    assert "CDA: the GENERATE AC response has no CID (9F27)" in no_cid.reasons


def test_cda_with_another_unpredictable_number_fails(chain):
    result = check_cda(chain, cda_signature(chain), tag_9f37=h("1A2B3C4E"))
    assert not result.valid


def test_dda_signature_checked_as_cda_reports_the_structure(chain):
    tag_9f4b = sign_dynamic_data(chain.icc_private, icc_dynamic_data(h("1234")), TAG_9F37, suite=chain.suite)
    result = check_cda(chain, tag_9f4b)
    assert not result.valid
    assert any("CDA ICC dynamic data must hold CID, AC and" in reason for reason in result.reasons)


# --- unusable input raises ODAError ----------------------------------------------------------


def test_certificate_of_the_wrong_length_raises(chain):
    short = chain.issuer.certificate[:-1]
    n = len(chain.issuer.certificate)
    message = (
        f"must be {n} bytes like its signer's modulus, got {n - 1}"
        if chain.suite is INTL
        else f"must be {n} bytes, got {n - 1}"
    )
    with pytest.raises(ODAError, match=message):
        recover_issuer_public_key(chain.ca.capk, short, chain.issuer.remainder, chain.issuer.exponent)


def test_suite_mismatch_raises(chain):
    other = GM if chain.suite is INTL else INTL
    with pytest.raises(ODAError, match=f"the ICC key is {chain.suite.name} but the {other.name} suite"):
        verify_dynamic_signature(chain.icc_key, b"\x00" * 80, TAG_9F37, other)


def test_builders_check_their_arguments(chain):
    key = chain.issuer_key
    with pytest.raises(ODAError, match="certificate expiry must be MMYY, got '1330'"):
        issuer_certificate(
            chain.ca.private_key,
            key,
            issuer_id=h("621234FF"),
            expiry="1330",
            serial=h("000001"),
            suite=chain.suite,
        )
    with pytest.raises(
        ODAError, match="issuer identifier must be 4 bytes: 3 to 8 digits padded with F, got 62FFFFFF"
    ):
        issuer_certificate(
            chain.ca.private_key,
            key,
            issuer_id=h("62FFFFFF"),
            expiry="1230",
            serial=h("000001"),
            suite=chain.suite,
        )
    with pytest.raises(ODAError, match="certificate serial number must be 3 bytes, got 2"):
        issuer_certificate(
            chain.ca.private_key,
            key,
            issuer_id=h("621234FF"),
            expiry="1230",
            serial=h("0001"),
            suite=chain.suite,
        )
    with pytest.raises(ODAError, match="data authentication code \\(9F45\\) must be 2 bytes, got 3"):
        sign_static_data(chain.issuer_private, STATIC_DATA, tag_9f45=h("DAC1DA"), suite=chain.suite)


def test_rsa_issuer_key_longer_than_the_ca_key_is_refused():
    ca = generate_test_ca(INTL, bits=1024)
    with pytest.raises(
        ODAError, match="the certified key \\(144 bytes\\) is longer than its signer's \\(128 bytes\\)"
    ):
        issuer_certificate(
            ca.private_key,
            PublicKey.of(rsa.generate_rsa_key(1152), INTL),
            issuer_id=h("621234FF"),
            expiry="1230",
            serial=h("000001"),
            suite=INTL,
        )


def test_dynamic_data_helpers_check_lengths():
    assert icc_dynamic_data(h("0102")) == h("020102")
    with pytest.raises(ODAError, match="ICC dynamic number \\(9F4C\\) must be 2 to 8 bytes, got 9"):
        icc_dynamic_data(bytes(9))
    with pytest.raises(ODAError, match="application cryptogram \\(9F26\\) must be 8 bytes, got 7"):
        cda_icc_dynamic_data(
            tag_9f4c=h("0102"), tag_9f27=CID_TC, tag_9f26=bytes(7), transaction_data_hash=bytes(20)
        )
    with pytest.raises(ODAError, match="fDDA version 01: 9F02 must be 6 bytes, got 0"):
        fdda_terminal_dynamic_data(version=1, tag_9f37=TAG_9F37)
    with pytest.raises(ODAError, match="fDDA version 00 does not sign 9F02"):
        fdda_terminal_dynamic_data(version=0, tag_9f37=TAG_9F37, tag_9f02=bytes(6))
    with pytest.raises(ODAError, match="fDDA version must be 00 or 01, got 02"):
        fdda_terminal_dynamic_data(version=2, tag_9f37=TAG_9F37)
    with pytest.raises(ODAError, match="unpredictable number \\(9F37\\) must be 4 bytes, got 3"):
        verify_cda(
            PublicKey(INTL, b"\xc1" * 64, b"\x03"),
            bytes(64),
            tag_9f37=bytes(3),
            pdol_data=b"",
            cdol1_data=b"",
            response_tlvs=b"",
        )


# --- any single flipped bit of signed data is caught (hypothesis) -----------------------------


def flip_targets(chain: Chain) -> dict:
    """Signed inputs by name: (original bytes, check(mutated) -> OdaResult)."""
    dda = sign_dynamic_data(chain.icc_private, icc_dynamic_data(h("12345678")), TAG_9F37, suite=chain.suite)
    cda = cda_signature(chain)
    issuer, icc = chain.issuer, chain.icc
    return {
        "90": (
            issuer.certificate,
            lambda b: recover_issuer_public_key(chain.ca.capk, b, issuer.remainder, issuer.exponent),
        ),
        "92": (
            issuer.remainder,
            lambda b: recover_issuer_public_key(chain.ca.capk, issuer.certificate, b, issuer.exponent),
        ),
        "9F32": (
            issuer.exponent,
            lambda b: recover_issuer_public_key(chain.ca.capk, issuer.certificate, issuer.remainder, b),
        ),
        "9F46": (icc.certificate, lambda b: recover_icc(chain, tag_9f46=b)),
        "9F48": (icc.remainder, lambda b: recover_icc(chain, tag_9f48=b)),
        "static data (9F46)": (STATIC_DATA, lambda b: recover_icc(chain, static_data=b)),
        "93": (chain.tag_93, lambda b: verify_sda(chain.issuer_key, b, STATIC_DATA)),
        "static data (93)": (STATIC_DATA, lambda b: verify_sda(chain.issuer_key, chain.tag_93, b)),
        "9F4B (DDA)": (dda, lambda b: verify_dynamic_signature(chain.icc_key, b, TAG_9F37)),
        "DDOL data": (TAG_9F37, lambda b: verify_dynamic_signature(chain.icc_key, dda, b)),
        "9F4B (CDA)": (cda, lambda b: check_cda(chain, b, response_tlvs=RESPONSE_HEAD + RESPONSE_IAD)),
        "CDOL1 data": (CDOL1_DATA, lambda b: check_cda(chain, cda, cdol1_data=b)),
        "unpredictable number": (TAG_9F37, lambda b: check_cda(chain, cda, tag_9f37=b)),
    }


FLIP_TARGETS = [
    "90",
    "92",
    "9F32",
    "9F46",
    "9F48",
    "static data (9F46)",
    "93",
    "static data (93)",
    "9F4B (DDA)",
    "DDOL data",
    "9F4B (CDA)",
    "CDOL1 data",
    "unpredictable number",
]
ABSENT = {"rsa-remainders": set(), "rsa-padded": {"92", "9F48"}, "sm2": {"92", "9F32", "9F48"}}


@pytest.mark.parametrize(
    ("chain", "target"),
    [(name, target) for name in CHAINS for target in FLIP_TARGETS if target not in ABSENT[name]],
    indirect=["chain"],
)
def test_any_flipped_bit_makes_the_check_fail(chain, target):
    original, check = flip_targets(chain)[target]
    assert original
    assert check(original).valid

    @settings(max_examples=30, deadline=None)
    @given(st.integers(min_value=0, max_value=8 * len(original) - 1))
    def flipped_bit_is_caught(bit):
        mutated = bytearray(original)
        mutated[bit // 8] ^= 1 << (bit % 8)
        result = check(bytes(mutated))
        assert not result.valid
        assert result.reasons
        assert result.public_key is None

    flipped_bit_is_caught()


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([INTL, GM]),
    st.integers(min_value=1, max_value=0xFFFFFF),
    st.integers(1, 12),
    st.integers(0, 99),
)
def test_every_certificate_the_test_ca_issues_verifies(suite, serial, month, year):
    ca, issuer_private = shared_ca_and_issuer(suite)
    issuer_key = PublicKey.of(issuer_private, suite)
    expiry = f"{month:02d}{year:02d}"
    issued = issuer_certificate(
        ca.private_key,
        issuer_key,
        issuer_id=issuer_identifier(PAN, 8),
        expiry=expiry,
        serial=serial.to_bytes(3, "big"),
        suite=suite,
    )
    result = recover_issuer_public_key(
        ca.capk, issued.certificate, issued.remainder, issued.exponent, pan=PAN
    )
    assert result.valid, result.reasons
    assert result.public_key == issuer_key
    assert result.expiry == expiry
    assert result.fields["serial"] == serial.to_bytes(3, "big")


@functools.cache
def shared_ca_and_issuer(suite: Suite) -> tuple[TestCa, rsa.RsaPrivateKey | bytes]:
    return generate_test_ca(suite, bits=1024), private_key(suite, 896)


# --- real RSA chains: lumag/emv-tools test/{sda,dda,cda}-test.c @ fcd6aa0c ---------------------

REAL = json.loads((DATA / "emv_tools_rsa_chains.json").read_text())


def real_capk(case: dict) -> Capk:
    k = case["capk"]
    return Capk.from_record(
        rid=h(k["rid"]),
        index=int(k["index"], 16),
        suite=INTL,
        key=h(k["modulus"]),
        exponent=h(k["exponent"]),
        checksum=h(k["checksum"]),
    )


def real_issuer(name: str, **kwargs):
    case = REAL[name]
    return recover_issuer_public_key(real_capk(case), h(case["90"]), h(case["92"]), h(case["9F32"]), **kwargs)


def test_real_visa_sda_chain():
    # Visa live CA 01 (1024 bits, expired); issuer certificate valid to the end of 12/2009; PAN 4276550013234599 from the card's 5A in the records.
    pan = "4276550013234599"
    issuer = real_issuer("sda", pan=pan, today=dt.date(2009, 12, 31))
    assert issuer.valid, issuer.reasons
    assert (issuer.expiry, issuer.fields["serial"], issuer.fields["issuer_identifier"]) == (
        "1209",
        h("0042B3"),
        h("427655FF"),
    )
    assert len(issuer.public_key.key) == 128 and issuer.public_key.exponent == b"\x03"
    assert issuer.expired is False
    assert real_issuer("sda", pan=pan, today=dt.date(2010, 1, 1)).expired is True  # 1209 = December 2009
    static_data = h(REAL["sda"]["static_data"])
    assert h("5A084276550013234599") in static_data
    sda = verify_sda(issuer.public_key, h(REAL["sda"]["93"]), static_data)
    assert sda.valid, sda.reasons
    assert sda.fields["dac"] == h("3132")


def real_icc(name: str):
    case = REAL[name]
    issuer = real_issuer(name, pan="5285881254345653")
    assert issuer.valid, issuer.reasons
    return recover_icc_public_key(
        issuer.public_key,
        h(case["9F46"]),
        b"",
        h(case["9F47"]),
        h(case["static_data"]),
        pan="5285881254345653",
        today=dt.date(2015, 1, 1),
    )


def test_real_mastercard_dda_chain():
    # Mastercard live CA 05 (1408 bits, expired): issuer key 176 bytes (92 holds 36), ICC key 112 bytes
    # fits its certificate (no 9F48, BB padding); DDOL data = 9F37 00000000.
    issuer = real_issuer("dda", pan="5285881254345653")
    assert (issuer.expiry, issuer.fields["issuer_identifier"], len(issuer.public_key.key)) == (
        "1221",
        h("528588FF"),
        176,
    )
    icc = real_icc("dda")
    assert icc.valid, icc.reasons
    assert icc.expiry == "0615" and icc.expired is False
    assert len(icc.public_key.key) == 112
    dda = verify_dynamic_signature(icc.public_key, h(REAL["dda"]["9F4B"]), h(REAL["dda"]["dynamic_data"]))
    assert dda.valid, dda.reasons
    assert dda.fields["icc_dynamic_number"] == h("7A33FB8C9546E1E7")
    assert not verify_dynamic_signature(icc.public_key, h(REAL["dda"]["9F4B"]), h("00000001")).valid


def test_real_mastercard_cda():
    case = REAL["cda"]
    icc = real_icc("cda")
    tag_9f4b = h(case["9F4B"])
    response = h(case["response_tlvs_without_9f4b"])  # 9F27, 9F36, 9F10 as returned; 9F4B came after 9F36
    as_returned = response[:9] + h("9F4B70") + tag_9f4b + response[9:]
    for response_tlvs in (response, as_returned):
        cda = verify_cda(
            icc.public_key,
            tag_9f4b,
            tag_9f37=h(case["unpredictable_number"]),
            pdol_data=b"",
            cdol1_data=h(case["cdol1_data"]),
            response_tlvs=response_tlvs,
        )
        assert cda.valid, cda.reasons
        assert cda.fields["cid"] == h("40")
        assert cda.fields["ac"] == h("16AFBA13C52FB173")
        assert cda.fields["icc_dynamic_number"] == h("4CC2FB1FAFB30915")


def test_real_chain_with_a_flipped_bit_is_invalid():
    case = REAL["dda"]
    tampered = bytearray(h(case["static_data"]))
    tampered[10] ^= 0x01  # one PAN digit in the records
    issuer = real_issuer("dda")
    icc = recover_icc_public_key(issuer.public_key, h(case["9F46"]), b"", h(case["9F47"]), bytes(tampered))
    assert icc.reasons == ("ICC public key certificate (9F46): hash of the recovered data does not match",)


# --- CAPK checksums: lumag/emv-tools data/{visa,mastercard}-test.keys @ fcd6aa0c ---------------

TEST_KEYS = json.loads((DATA / "emv_tools_test_capks.json").read_text())["keys"]


@pytest.mark.parametrize("entry", TEST_KEYS, ids=[f"{k['rid']}-{k['index']}" for k in TEST_KEYS])
def test_scheme_test_capk_checksums(entry):
    capk = Capk.from_record(
        rid=h(entry["rid"]),
        index=int(entry["index"], 16),
        suite=INTL,
        key=h(entry["modulus"]),
        exponent=h(entry["exponent"]),
        checksum=h(entry["checksum"]),
    )
    assert capk.checksum == h(entry["checksum"])


def test_named_capk_checksum_vectors():
    by_key = {(k["rid"], k["index"]): k for k in TEST_KEYS}
    expected = {  # vectors-public §3.4
        ("A000000004", "05"): "53D04903B496F59544A84309AF169251F2896874",
        ("A000000004", "EF"): "21766EBB0EE122AFB65D7845B73DB46BAB65427A",
        ("A000000003", "92"): "429C954A3859CEF91295F663C963E582ED6EB253",
        ("A000000003", "94"): "C4A3C43CCF87327D136B804160E47D43B60E6E0F",
    }
    for (rid, index), checksum in expected.items():
        k = by_key[rid, index]
        assert capk_checksum(h(rid), int(index, 16), h(k["modulus"]), h(k["exponent"])) == h(checksum)
    # the live keys of the chains above carry their checksum too
    assert real_capk(REAL["sda"]).checksum == h("D34A6A776011C7E7CE3AEC5F03AD2F8CFC5503CC")
    assert real_capk(REAL["dda"]).checksum == h("EBFA0D5D06D8CE702DA3EAE890701D45E274C845")


def test_capk_record_with_a_wrong_checksum_is_refused():
    k = TEST_KEYS[0]
    with pytest.raises(CapkError, match=f"CAPK A000000003/95 checksum 00{'00' * 19} does not match"):
        Capk.from_record(
            rid=h(k["rid"]),
            index=0x95,
            suite=INTL,
            key=h(k["modulus"]),
            exponent=h(k["exponent"]),
            checksum=bytes(20),
        )


def test_capk_validates_its_key():
    with pytest.raises(CapkError, match="RID \\(9F06\\) must be 5 bytes, got 4"):
        Capk(rid=h("A0000003"), index=1, suite=INTL, key=b"\xc1" * 128, exponent=b"\x03")
    with pytest.raises(CapkError, match="RSA CA exponent must be 03 or 010001, got 05"):
        Capk(rid=h("A000000333"), index=1, suite=INTL, key=b"\xc1" * 128, exponent=b"\x05")
    with pytest.raises(CapkError, match="SM2 CA public key must be 64 bytes \\(x‖y\\), got 65"):
        Capk(rid=h("A000000333"), index=0x18, suite=GM, key=bytes(65))


def test_generated_test_ca_matches_its_private_key():
    ca = generate_test_ca(INTL, bits=1024, exponent=65537, index=0x99)
    assert ca.capk.key == ca.private_key.modulus_bytes and ca.capk.exponent == h("010001")
    assert (ca.capk.rid, ca.capk.index) == (h("A000000333"), 0x99)
    assert ca.capk.checksum == INTL.hash(h("A000000333") + b"\x99" + ca.capk.key + h("010001"))
    gm = generate_test_ca(GM)
    assert gm.capk.key == sm2.public_key(gm.private_key)
    assert gm.capk.index == 0xE1 and gm.capk.exponent == b""
    assert gm.capk.checksum == INTL.hash(h("A000000333") + b"\xe1" + gm.capk.key)  # SHA-1 over RID‖index‖x‖y


def test_shipped_scheme_test_capks_load_with_verified_checksums():
    from citycard.crypto.capk import CapkError, find_capk, scheme_test_capks

    table = scheme_test_capks()
    assert len(table) == 24
    mastercard_05 = find_capk(bytes.fromhex("A000000004"), 0x05)
    assert mastercard_05.checksum.hex().upper() == "53D04903B496F59544A84309AF169251F2896874"
    assert len(mastercard_05.modulus) * 8 == 1024
    with pytest.raises(
        CapkError, match=r"unknown CAPK A000000003/01: known indexes for this RID: 92, 94, 95"
    ):
        find_capk(bytes.fromhex("A000000003"), 0x01)
