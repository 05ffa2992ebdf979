"""`citycard crypto ...` through a real process: published vectors in, exact output and exit codes."""

from __future__ import annotations

import pytest

IMK = "0123456789ABCDEFFEDCBA9876543210"


def test_derive_card_key_option_a(citycard):
    r = citycard("crypto", "derive-card-key", "--imk", IMK, "--pan", "12345678901234567", "--psn", "01")
    assert (r.code, r.out.strip(), r.err) == (0, "73AD54688CEF2934B0979857E3C719F1", "")


def test_derive_card_key_sm4_matches_library(citycard):
    from citycard.crypto import GM
    from citycard.crypto.keys import derive_card_key

    expected = derive_card_key(bytes.fromhex(IMK), tag_5a="6235489730000218", tag_5f34="01", suite=GM)
    r = citycard(
        "crypto",
        "derive-card-key",
        "--imk",
        IMK.lower(),
        "--pan",
        "6235489730000218",
        "--psn",
        "01",
        "--alg",
        "sm4",
    )
    assert (r.code, r.out.strip()) == (0, expected.hex().upper())


@pytest.mark.parametrize("alg", ["3des", "sm4"])
def test_session_key_matches_library(citycard, alg):
    from citycard.crypto import suite_for_alg
    from citycard.crypto.keys import session_key

    expected = session_key(bytes.fromhex(IMK), tag_9f36=bytes.fromhex("001C"), suite=suite_for_alg(alg))
    r = citycard("crypto", "session-key", "--card-key", IMK, "--atc", "001C", "--alg", alg)
    assert (r.code, r.out.strip()) == (0, expected.hex().upper())


def test_ac_vector(citycard):
    data = "000000002000000000000000012400000080000124110309003804823E58000001"
    r = citycard("crypto", "ac", "--session-key", "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB", "--data", data)
    assert (r.code, r.out.strip()) == (0, "3B76CF10FECD8789")


def test_arpc_vector(citycard):
    r = citycard(
        "crypto",
        "arpc",
        "--session-key",
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB",
        "--arqc",
        "1234567890ABCDEF",
        "--arc",
        "0000",
    )
    assert (r.code, r.out.strip()) == (0, "F5E6F44147E2F1B0")


@pytest.mark.parametrize(("length", "expected"), [("8", "E07B8DF1B4184282"), ("4", "E07B8DF1")])
def test_mac_vector(citycard, length, expected):
    r = citycard(
        "crypto", "mac", "--session-key", IMK, "--data", "8424000008FFFF1234567890123456", "--length", length
    )
    assert (r.code, r.out.strip()) == (0, expected)


SM2_PUB = (
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)
SM2_SIG = (
    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
)
MESSAGE_DIGEST = b"message digest".hex()


def test_sm2_verify_gbt32918_example(citycard):
    r = citycard(
        "crypto", "sm2-verify", "--public-key", SM2_PUB, "--message", MESSAGE_DIGEST, "--signature", SM2_SIG
    )
    assert (r.code, r.out.strip()) == (0, "valid")


def test_sm2_verify_wrong_message_is_invalid_exit_1(citycard):
    r = citycard(
        "crypto",
        "sm2-verify",
        "--public-key",
        SM2_PUB,
        "--message",
        b"message digesT".hex(),
        "--signature",
        SM2_SIG,
    )
    assert (r.code, r.out.strip()) == (1, "invalid")


def test_sm2_verify_other_id_is_invalid(citycard):
    r = citycard(
        "crypto",
        "sm2-verify",
        "--public-key",
        SM2_PUB,
        "--message",
        MESSAGE_DIGEST,
        "--signature",
        SM2_SIG,
        "--id",
        "ALICE",
    )
    assert (r.code, r.out.strip()) == (1, "invalid")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["derive-card-key", "--imk", IMK[:-1], "--pan", "1234567890123456", "--psn", "00"],
            "odd-length hex",
        ),
        (
            ["derive-card-key", "--imk", IMK[:-2], "--pan", "1234567890123456", "--psn", "00"],
            "must be 16 bytes, got 15",
        ),
        (["derive-card-key", "--imk", "ZZ" + IMK[2:], "--pan", "1234567890123456", "--psn", "00"], "not hex"),
        (["derive-card-key", "--imk", IMK, "--pan", "12345X", "--psn", "00"], "PAN (5A)"),
        (["derive-card-key", "--imk", IMK, "--pan", "1234567890123456"], "Missing option '--psn'"),
        (["session-key", "--card-key", IMK, "--atc", "01"], "ATC (9F36) must be 2 bytes, got 1"),
        (["ac", "--session-key", IMK, "--data", "00", "--alg", "aes"], "unknown algorithm 'aes'"),
        (
            ["arpc", "--session-key", IMK, "--arqc", "00" * 7, "--arc", "3030"],
            "ARQC (9F26) must be 8 bytes, got 7",
        ),
        (["mac", "--session-key", IMK, "--data", "00", "--length", "6"], "--length: must be 4 or 8"),
        (
            ["sm2-verify", "--public-key", SM2_PUB[:-2], "--message", "00", "--signature", SM2_SIG],
            "--public-key",
        ),
        (
            ["sm2-verify", "--public-key", SM2_PUB, "--message", "00", "--signature", SM2_SIG[:-2]],
            "must be 64 bytes, got 63",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(citycard, args, message):
    r = citycard("crypto", *args)
    assert r.code == 2
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("error: ")
    assert message in lines[0]
