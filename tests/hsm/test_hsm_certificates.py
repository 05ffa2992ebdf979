"""ODA keys in the HSM: test CAs, issuer and ICC certificates, SDA and CAPKs, checked by the ODA verifiers."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from citycard.crypto import GM, INTL, oda
from citycard.crypto.capk import capk_checksum, generate_test_ca
from citycard.hsm import HSMError, SoftHSM
from citycard.hsm.keystore import KeyStore
from citycard.hsm.masterkey import MASTER_KEY_ENV

h = bytes.fromhex
SUITES = [INTL, GM]
RID = h("A000000333")
PAN = "6212345678901234567"
TODAY = dt.date(2026, 6, 15)
STATIC_DATA = h("5A0A6212345678901234567F5F24033012315F3401019F0702FF00") + h("7C00")
SCHEME_TEST_CAPKS = Path(__file__).parents[1] / "crypto" / "data" / "emv_tools_test_capks.json"
# Small RSA keys keep the tests quick; one test runs the defaults (CA 1984 bits).
BITS = {"ca": 1152, "issuer": 1024, "icc": 768}


def _chain(suite, hsm: SoftHSM | None = None) -> tuple[SoftHSM, object]:
    hsm = hsm or SoftHSM.ephemeral()
    capk = hsm.create_test_ca("test-ca", suite, index=0xE0 + (suite is GM), bits=BITS["ca"])
    hsm.create_issuer_key("issuer", suite, bits=BITS["issuer"])
    return hsm, capk


def _issuer_tags(hsm: SoftHSM) -> dict[str, bytes]:
    return hsm.sign_issuer_certificate(
        "test-ca", "issuer", issuer_identifier="621234", expiry="1230", serial=h("000001")
    )


@pytest.mark.parametrize("suite", SUITES)
def test_test_ca_capk_is_in_the_table_and_its_kcv_is_the_key_fingerprint(suite):
    hsm, capk = _chain(suite)
    assert (capk.rid, capk.suite) == (RID, suite)
    assert hsm.get_capk(RID, capk.index) == capk
    assert hsm.list_capks() == [capk]
    info = hsm.key_info("test-ca")
    assert info.key_type == ("CA-RSA" if suite is INTL else "CA-SM2")
    assert info.kcv_hex == hashlib.sha256(capk.key + capk.exponent).digest()[:3].hex().upper()
    assert hsm.public_key("test-ca").key == capk.key


@pytest.mark.parametrize("suite", SUITES)
def test_issuer_and_icc_certificates_verify_with_the_oda_module(suite):
    hsm, capk = _chain(suite)
    tags = _issuer_tags(hsm)
    assert set(tags) == ({"90", "92", "9F32", "8F"} if suite is INTL else {"90", "8F"})
    assert tags["8F"] == bytes([capk.index])
    issuer = oda.recover_issuer_public_key(
        capk, tags["90"], tags.get("92", b""), tags.get("9F32", b""), pan=PAN, today=TODAY
    )
    assert issuer.ok, issuer.reasons
    assert issuer.public_key == hsm.public_key("issuer")
    assert issuer.fields["serial"] == h("000001")

    icc_private, icc_tags = hsm.create_icc_key_and_certificate(
        "issuer", pan=PAN, expiry="1230", serial=h("000002"), static_data=STATIC_DATA, bits=BITS["icc"]
    )
    # RSA: a 96-byte ICC key does not fit the 92 bytes a 1024-bit issuer certificate holds → 9F48
    assert set(icc_tags) == ({"9F46", "9F48", "9F47"} if suite is INTL else {"9F46"})
    icc = oda.recover_icc_public_key(
        issuer.public_key,
        icc_tags["9F46"],
        icc_tags.get("9F48", b""),
        icc_tags.get("9F47", b""),
        STATIC_DATA,
        pan=PAN,
        today=TODAY,
    )
    assert icc.ok, icc.reasons
    assert icc.public_key == oda.PublicKey.of(icc_private, suite)
    # the exported ICC private key works in the card image: it signs a DDA the terminal accepts
    terminal_data = h("1A2B3C4D")
    signed = oda.sign_dynamic_data(icc_private, oda.icc_dynamic_data(h("0102")), terminal_data, suite=suite)
    assert oda.verify_dynamic_signature(icc.public_key, signed, terminal_data).valid
    # a certificate over other static data does not verify
    other = oda.recover_icc_public_key(
        issuer.public_key,
        icc_tags["9F46"],
        icc_tags.get("9F48", b""),
        icc_tags.get("9F47", b""),
        STATIC_DATA + b"\x00",
    )
    assert not other.valid


@pytest.mark.parametrize("suite", SUITES)
def test_sda_verifies_and_detects_changed_data(suite):
    hsm, capk = _chain(suite)
    tags = _issuer_tags(hsm)
    issuer_key = oda.recover_issuer_public_key(
        capk, tags["90"], tags.get("92", b""), tags.get("9F32", b"")
    ).public_key
    tag_93 = hsm.sign_static_data("issuer", STATIC_DATA, h("DAC1"))
    result = oda.verify_sda(issuer_key, tag_93, STATIC_DATA)
    assert result.valid, result.reasons
    assert result.fields["dac"] == h("DAC1")
    assert not oda.verify_sda(issuer_key, tag_93, STATIC_DATA[:-1] + b"\x01").valid


def test_default_sizes_make_a_1984_bit_ca_and_a_1408_bit_issuer():
    hsm = SoftHSM.ephemeral()
    capk = hsm.create_test_ca("ca", INTL, index=0x08)
    hsm.create_issuer_key("issuer", INTL)
    tags = hsm.sign_issuer_certificate(
        "ca", "issuer", issuer_identifier="621234", expiry="1230", serial=h("000001")
    )
    assert (len(capk.modulus), len(tags["90"]), len(hsm.public_key("issuer").key)) == (248, 248, 176)
    assert oda.recover_issuer_public_key(capk, tags["90"], tags.get("92", b""), tags["9F32"]).valid


@pytest.mark.parametrize("suite", SUITES)
def test_key_usage_and_suites_are_enforced(suite):
    hsm, _ = _chain(suite)
    other = GM if suite is INTL else INTL
    hsm.create_issuer_key("foreign-issuer", other, bits=BITS["issuer"])
    hsm.import_key("imk-ac", "IMK-AC", suite, bytes(16))
    with pytest.raises(
        HSMError, match=r"'issuer' \(type ISSUER-\w+\) may not sign an issuer public key certificate"
    ):
        hsm.sign_issuer_certificate(
            "issuer", "issuer", issuer_identifier="621234", expiry="1230", serial=h("000001")
        )
    with pytest.raises(HSMError, match=r"'test-ca' \(type CA-\w+\) may not sign static application data"):
        hsm.sign_static_data("test-ca", STATIC_DATA, h("DAC1"))
    with pytest.raises(
        HSMError, match=r"'imk-ac' \(type IMK-AC\) may not sign an ICC public key certificate"
    ):
        hsm.create_icc_key_and_certificate(
            "imk-ac", pan=PAN, expiry="1230", serial=h("000002"), static_data=b""
        )
    with pytest.raises(
        HSMError, match=rf"issuer key 'foreign-issuer' is {other.name}, CA 'test-ca' is {suite.name}"
    ):
        hsm.sign_issuer_certificate(
            "test-ca", "foreign-issuer", issuer_identifier="621234", expiry="1230", serial=h("000001")
        )
    with pytest.raises(HSMError, match=r"key 'imk-ac' \(type IMK-AC\) is not an issuer key"):
        hsm.sign_issuer_certificate(
            "test-ca", "imk-ac", issuer_identifier="621234", expiry="1230", serial=h("000001")
        )
    with pytest.raises(HSMError, match=r"key label 'issuer' already exists"):
        hsm.create_issuer_key("issuer", suite, bits=BITS["issuer"])
    with pytest.raises(HSMError, match=r"data authentication code \(9F45\) must be 2 bytes, got 3"):
        hsm.sign_static_data("issuer", STATIC_DATA, h("DAC1DA"))


def test_an_issuer_key_longer_than_its_ca_is_refused():
    hsm = SoftHSM.ephemeral()
    hsm.create_test_ca("ca", INTL, index=0xE0, bits=1024)
    hsm.create_issuer_key("issuer", INTL, bits=1152)
    with pytest.raises(
        HSMError, match=r"issuer certificate for 'issuer': the certified key \(144 bytes\) is longer"
    ):
        hsm.sign_issuer_certificate(
            "ca", "issuer", issuer_identifier="621234", expiry="1230", serial=h("000001")
        )


def test_import_scheme_test_capk_with_the_right_and_a_wrong_checksum():
    record = next(k for k in json.loads(SCHEME_TEST_CAPKS.read_text())["keys"] if k["index"] == "92")
    hsm = SoftHSM.ephemeral()
    modulus, checksum = h(record["modulus"]), h(record["checksum"])
    capk = hsm.import_capk(h(record["rid"]), 0x92, modulus, h(record["exponent"]), checksum)
    assert (capk.suite, capk.checksum.hex().upper()) == (INTL, "429C954A3859CEF91295F663C963E582ED6EB253")
    assert hsm.get_capk(h("A000000003"), 0x92) == capk
    assert hsm.import_capk(h(record["rid"]), 0x92, modulus, h("03"), checksum) == capk  # same again: a no-op
    wrong = bytes([checksum[0] ^ 1]) + checksum[1:]
    with pytest.raises(HSMError) as caught:
        hsm.import_capk(h(record["rid"]), 0x93, modulus, h("03"), wrong)
    message = str(caught.value)
    assert f"checksum {wrong.hex().upper()} does not match" in message
    assert capk_checksum(h("A000000003"), 0x93, modulus, h("03")).hex().upper() in message
    with pytest.raises(HSMError, match=r"no CAPK A000000003/93 in the HSM"):
        hsm.get_capk(h("A000000003"), 0x93)


@pytest.mark.parametrize("suite", SUITES)
def test_import_generated_capk_both_suites(suite):
    ca = generate_test_ca(suite, index=0xE5, bits=1024, expiry=dt.date(2030, 12, 31))
    capk = ca.capk
    hsm = SoftHSM.ephemeral()
    imported = hsm.import_capk(RID, 0xE5, capk.key, capk.exponent, capk.checksum, expiry=capk.expiry)
    assert imported == capk
    assert hsm.list_capks() == [capk]
    with pytest.raises(
        HSMError, match=r"CAPK refused: CAPK A000000333/E5 checksum (00){20} does not match"
    ) as caught:
        hsm.import_capk(RID, 0xE5, capk.key, capk.exponent, bytes(20), replace=True)
    assert str(caught.value).endswith(f"= {capk.checksum.hex().upper()}")
    other = generate_test_ca(suite, index=0xE5, bits=1024).capk
    with pytest.raises(HSMError, match=r"a different CAPK A000000333/E5 already exists"):
        hsm.import_capk(RID, 0xE5, other.key, other.exponent, other.checksum)
    assert hsm.import_capk(RID, 0xE5, other.key, other.exponent, other.checksum, replace=True) == other


@pytest.mark.parametrize("suite", SUITES)
def test_private_keys_are_wrapped_on_disk_and_survive_a_reopen(suite, tmp_path, monkeypatch):
    master = "5A" * 32
    monkeypatch.setenv(MASTER_KEY_ENV, master)
    store = tmp_path / "keys.json"
    hsm, capk = _chain(suite, SoftHSM.open(store))
    icc = hsm.create_icc_key_and_certificate(
        "issuer", pan=PAN, expiry="1230", serial=h("000002"), static_data=STATIC_DATA, bits=BITS["icc"]
    )
    raw = store.read_bytes()
    clear = KeyStore(h(master), path=store)  # the store's own view, to learn what must not be on disk
    secrets_on_disk = [clear.unwrap("test-ca")[1], clear.unwrap("issuer")[1]]
    if suite is GM:
        secrets_on_disk.append(icc.private_key)
    else:
        secrets_on_disk += [icc.private_key.private_exponent.to_bytes(96, "big").lstrip(b"\0")]
        secrets_on_disk += [clear.unwrap("issuer")[1][-40:]]  # a piece of the PKCS#8 DER
    for secret in secrets_on_disk:
        assert secret.hex().upper().encode() not in raw
        assert secret.hex().lower().encode() not in raw
        assert base64.b64encode(secret) not in raw
    assert "private_key" not in repr(icc)
    assert all(s.hex().upper() not in repr(icc).upper() for s in secrets_on_disk)

    reopened = SoftHSM.open(store)
    assert reopened.get_capk(RID, capk.index) == capk
    assert reopened.check_keys() == hsm.list_keys()
    tags = reopened.sign_issuer_certificate(
        "test-ca", "issuer", issuer_identifier="621234", expiry="1230", serial=h("000003")
    )
    assert oda.recover_issuer_public_key(capk, tags["90"], tags.get("92", b""), tags.get("9F32", b"")).valid


def test_a_tampered_capk_in_the_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, "5A" * 32)
    store = tmp_path / "keys.json"
    capk = generate_test_ca(INTL, index=0xE5, bits=1024).capk
    SoftHSM.open(store).import_capk(RID, 0xE5, capk.key, capk.exponent, capk.checksum)
    document = json.loads(store.read_text())
    record = document["capks"]["A000000333/E5"]
    record["key"] = record["key"][:-2] + ("00" if record["key"][-2:] != "00" else "01")
    store.write_text(json.dumps(document))
    with pytest.raises(HSMError, match=r"stored CAPK A000000333/E5 is damaged: CAPK A000000333/E5 checksum"):
        SoftHSM.open(store).get_capk(RID, 0xE5)
