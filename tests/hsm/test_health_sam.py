"""The hospital SAM in the HSM (hsm/health.py): key types and usages, persistence, no clear key out,
institution signatures in both suites (crypto/record_signature.py)."""

from __future__ import annotations

import pytest

from citycard.crypto import record_signature, sm2
from citycard.crypto.suite import GM, INTL
from citycard.hsm import SoftHSM
from citycard.hsm.keytypes import HSMError

SUITES = [GM, INTL]


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_keys_persist_and_sign_after_reopening(suite, tmp_path):
    key_file = tmp_path / "master.key"
    key_file.write_text("11" * 32)
    key_file.chmod(0o600)
    hsm = SoftHSM.open(tmp_path / "keys.json", master_key_file=key_file)
    masters = hsm.create_health_masters(suite)
    info = hsm.create_institution_key("H001", suite)
    assert [m.label for m in masters][:2] == [
        f"health-{suite.name.lower()}-ddf1-rk",
        f"health-{suite.name.lower()}-ddf1-uk",
    ]
    assert info.key_type == ("INSTITUTION-SM2" if suite is GM else "INSTITUTION-RSA")
    cryptogram = hsm.health_auth_cryptogram(suite, df="DF02", diversifier=bytes(8), challenge=b"\x01" * 8)
    public = hsm.institution_public_key("H001", suite)

    reopened = SoftHSM.open(tmp_path / "keys.json", master_key_file=key_file)
    assert (
        reopened.health_auth_cryptogram(suite, df="DF02", diversifier=bytes(8), challenge=b"\x01" * 8)
        == cryptogram
    )
    algorithm, key_id, signature = reopened.sign_institution_record("H001", suite, b"canonical record")
    assert key_id == record_signature.key_id(public, algorithm=algorithm)
    assert record_signature.verify(public, b"canonical record", signature, algorithm=algorithm)
    assert not record_signature.verify(public, b"canonical recorD", signature, algorithm=algorithm)
    # nothing of a clear key in the store file or the HSM's repr
    assert "11" * 16 not in (tmp_path / "keys.json").read_text() and "keys=" in repr(reopened)


def test_usages_are_enforced_both_ways():
    hsm = SoftHSM.ephemeral()
    hsm.create_health_masters(GM)
    hsm.generate_key("imk-ac", "IMK-AC", GM)
    with pytest.raises(HSMError, match="may not verify an ARQC"):
        hsm.verify_arqc(
            "health-gm-ddf1-rk",
            tag_5a="6225880123456789",
            tag_5f34="01",
            tag_9f36=b"\x00\x01",
            data=bytes(37),
            tag_9f26=bytes(8),
        )
    with pytest.raises(HSMError, match="may not compute a health card authentication cryptogram"):
        hsm.generate_key("health-gm-df01-rk", "IMK-AC", GM, replace=True)
        hsm.health_auth_cryptogram(GM, df="DF01", diversifier=bytes(8), challenge=bytes(8))
    hsm.generate_key("health-intl-ddf1-rk", "HEALTH-MK", GM)  # a GM key under an INTL label
    with pytest.raises(HSMError, match="belongs to suite GM, not INTL"):
        hsm.health_auth_cryptogram(INTL, df="DDF1", diversifier=bytes(8), challenge=bytes(8))
    with pytest.raises(HSMError, match="no GM record key of institution 'H404'"):
        hsm.sign_institution_record("H404", GM, b"x")
    with pytest.raises(HSMError, match="header is 04"):
        hsm.health_sm_command(
            GM,
            df="DDF1",
            diversifier=bytes(8),
            challenge=bytes(8),
            header=b"\x00\xdc\x01\x0c",
            plain=b"\x80\x00",
        )


def test_record_signature_algorithms_and_refusals():
    d = sm2.generate_private_key()
    assert record_signature.algorithm_for(GM) == record_signature.SM2_SM3
    assert record_signature.algorithm_for(INTL, pss=True) == record_signature.RSA_PSS_SHA256
    signature = record_signature.sign(d, b"m", algorithm=record_signature.SM2_SM3)
    public = sm2.public_key(d)
    assert record_signature.verify(public, b"m", signature, algorithm=record_signature.SM2_SM3)
    assert not record_signature.verify(public, b"m", signature[:-1], algorithm=record_signature.SM2_SM3)
    with pytest.raises(record_signature.SignatureError, match="RSA private key"):
        record_signature.sign(d, b"m", algorithm=record_signature.RSA_PKCS1_SHA256)
    with pytest.raises(record_signature.SignatureError, match="not a DER"):
        record_signature.verify(b"\x30\x00", b"m", bytes(256), algorithm=record_signature.RSA_PKCS1_SHA256)
    with pytest.raises(record_signature.SignatureError, match="1 to 4096 bytes"):
        record_signature.sign(d, b"", algorithm=record_signature.SM2_SM3)
    with pytest.raises(record_signature.SignatureError, match="algorithm 9"):
        record_signature.key_id(public, algorithm=9)
