"""The CAPK table: checksums at load, expiry, revocation (through real ODA), the HSM's test CAs."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.crypto import GM, INTL
from citycard.crypto.capk import capk_checksum, scheme_test_capks
from citycard.crypto.oda import recover_issuer_public_key
from citycard.hsm import SoftHSM
from citycard.kernel.params import CapkExpired, CapkNotFound, CapkTable, CapkTableError

UNIONPAY = bytes.fromhex("A000000333")
TODAY = dt.date(2026, 6, 1)
SM2_POINT = bytes.fromhex(  # the UnionPay SM2 test key 18 of the shipped table
    "37710FEB7CC3617767874E85509C268E8F931D68773E93A89F39A4247DFE2D28"
    "0FC5BC838353885B6DAD447C8F90116BD9D314047591989F67F319544D42A48B"
)
MODULUS = bytes.fromhex("C1" + "5A" * 127)


def rsa_entry(
    index: str = "E5",
    *,
    rid: bytes = UNIONPAY,
    key: bytes = MODULUS,
    checksum: bytes | None = None,
    extra: str = "",
) -> str:
    checksum = capk_checksum(rid, int(index, 16), MODULUS, b"\x03") if checksum is None else checksum
    return (
        f'[[capk]]\nrid = "{rid.hex().upper()}"\nindex = "{index}"\nalgorithm = "rsa"\n'
        f'key = "{key.hex().upper()}"\nexponent = "03"\nchecksum = "{checksum.hex().upper()}"\n{extra}'
    )


def load_error(text: str) -> str:
    with pytest.raises(CapkTableError) as info:
        CapkTable.from_toml(text, source="c.toml")
    return str(info.value)


def test_shipped_table_holds_the_scheme_test_keys_and_the_unionpay_test_keys():
    table = CapkTable.load()
    for (rid, index), capk in scheme_test_capks().items():
        assert table.lookup(rid, index, today=TODAY) is capk  # the same objects: read, not copied
    unionpay = [(c.index, c.suite.name, c.expiry) for c in table if c.rid == UNIONPAY]
    assert unionpay == [
        (0x08, "INTL", dt.date(2030, 12, 31)),
        (0x09, "INTL", dt.date(2030, 12, 31)),
        (0x0A, "INTL", dt.date(2030, 12, 31)),
        (0x0B, "INTL", dt.date(2030, 12, 31)),
        (0x18, "GM", None),
    ]
    assert table.lookup(UNIONPAY, 0x18, today=TODAY).key == SM2_POINT
    assert table.lookup(UNIONPAY, 0x08, today=TODAY).checksum.hex().upper() == (
        "EE23B616C95C02652AD18860E48787C079E8E85A"
    )
    assert len(table) == len(scheme_test_capks()) + 5
    assert table.revocation_list == frozenset()


def test_a_tampered_key_fails_the_checksum_and_names_the_entry():
    tampered = bytes([MODULUS[0]]) + b"\x5b" + MODULUS[2:]
    stored = capk_checksum(UNIONPAY, 0xE5, MODULUS, b"\x03").hex().upper()
    computed = capk_checksum(UNIONPAY, 0xE5, tampered, b"\x03").hex().upper()
    message = load_error(rsa_entry(key=tampered, checksum=bytes.fromhex(stored)))
    assert message == (
        f"c.toml: capk #1 (A000000333/E5): CAPK A000000333/E5 checksum {stored} does not match "
        f"SHA-1(RID‖index‖key‖exponent) = {computed}"
    )


def test_the_shipped_file_with_one_flipped_key_digit_does_not_load(tmp_path):
    from importlib import resources

    text = resources.files("citycard").joinpath("data/terminal/capks.toml").read_text(encoding="utf-8")
    assert "B61645EDFD5498FB" in text
    path = tmp_path / "capks.toml"
    path.write_text(text.replace("B61645EDFD5498FB", "B61645EDFD5498FC"), encoding="utf-8")
    with pytest.raises(
        CapkTableError, match=r"capk #1 \(A000000333/08\): CAPK A000000333/08 checksum EE23B6"
    ):
        CapkTable.load(path)


def test_expiry_is_checked_against_today():
    table = CapkTable.from_toml(rsa_entry(extra="expiry = 2027-03-31\n"))
    assert table.lookup(UNIONPAY, 0xE5, today=dt.date(2027, 3, 31)).index == 0xE5  # last valid day
    with pytest.raises(CapkExpired) as info:
        table.lookup(UNIONPAY, 0xE5, today=dt.date(2027, 4, 1))
    assert str(info.value) == "CAPK A000000333/E5 expired on 2027-03-31 (today is 2027-04-01)"
    assert isinstance(info.value, CapkTableError) and isinstance(info.value, ValueError)
    assert table.get(UNIONPAY, 0xE5) is not None  # still in the table, just not usable


def test_unknown_keys_name_what_is_known():
    table = CapkTable.from_toml(rsa_entry("E5") + rsa_entry("E7"))
    with pytest.raises(CapkNotFound) as info:
        table.lookup(UNIONPAY, 0xE6, today=TODAY)
    assert (
        str(info.value) == "no CAPK A000000333/E6 in the terminal's table: known indexes for this RID: E5, E7"
    )
    with pytest.raises(
        CapkNotFound, match=r"^no CAPK A000000999/01 in the terminal's table: no key for this RID"
    ):
        table.lookup(bytes.fromhex("A000000999"), 0x01, today=TODAY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            rsa_entry("E5") + rsa_entry("E5"),
            "c.toml: capk #2 (A000000333/E5): CAPK A000000333/E5 is already in the table",
        ),
        (
            "include_scheme_test_keys = true\n" + rsa_entry("95", rid=bytes.fromhex("A000000003")),
            "c.toml: capk #1 (A000000003/95): CAPK A000000003/95 is already in the table (a shipped scheme test key)",
        ),
        (
            rsa_entry("E5", extra='expiry = "2030-12-31"\n'),
            "c.toml: capk #1 (A000000333/E5): expiry (DF05) must be",
        ),
        (
            rsa_entry("E5").replace('"rsa"', '"ecc"'),
            "c.toml: capk #1 (A000000333/E5): algorithm must be 'rsa' or 'sm2'",
        ),
        (
            rsa_entry("E5").replace('index = "E5"', 'index = "E"'),
            "c.toml: capk #1: index (9F22) must be 2 hex digits",
        ),
        (rsa_entry("E5", extra='modulus = "00"\n'), "c.toml: capk #1: unknown key 'modulus'"),
        ('[[capk]]\nrid = "A000000333"\nindex = "E5"', "c.toml: capk #1: missing key 'algorithm'"),
        ("[capks]\n", "c.toml: unknown top-level key 'capks'"),
        (
            '[[revoked]]\nrid = "A000000333"\nindex = "08"\nserial = "0001"\n',
            "c.toml: revoked #1: revoked certificate A000000333/08: serial must be 3 bytes, got 2",
        ),
        (
            f'[[capk]]\nrid = "A000000333"\nindex = "E1"\nalgorithm = "sm2"\nkey = "{SM2_POINT.hex()}"\n'
            'exponent = "03"\nchecksum = "00"\n',
            "c.toml: capk #1 (A000000333/E1): an SM2 CA public key has no exponent",
        ),
    ],
)
def test_broken_tables_give_precise_messages(text, message):
    assert load_error(text).startswith(message)


def test_revocation_list_from_toml_feeds_real_issuer_certificate_recovery():
    hsm = SoftHSM.ephemeral()
    hsm.create_test_ca("ca-gm", GM, index=0xE1)
    hsm.create_issuer_key("issuer-gm", GM)
    tags = hsm.sign_issuer_certificate(
        "ca-gm", "issuer-gm", issuer_identifier="621234", expiry="1230", serial=bytes.fromhex("00A1B2")
    )
    revoked_toml = '[[revoked]]\nrid = "A000000333"\nindex = "E1"\nserial = "00A1B2"\n'
    table = CapkTable.from_toml(revoked_toml).with_hsm(hsm)
    assert table.is_revoked(UNIONPAY, 0xE1, bytes.fromhex("00A1B2"))
    assert not table.is_revoked(UNIONPAY, 0xE1, bytes.fromhex("00A1B3"))
    assert not table.is_revoked(UNIONPAY, 0xE0, bytes.fromhex("00A1B2"))
    capk = table.lookup(UNIONPAY, tags["8F"][0], today=TODAY)

    refused = recover_issuer_public_key(capk, tags["90"], today=TODAY, revocation_list=table.revocation_list)
    assert not refused.valid
    assert refused.reasons == ("issuer public key certificate (90): serial 00A1B2 is on the revocation list",)
    accepted = recover_issuer_public_key(
        capk, tags["90"], today=TODAY, revocation_list=CapkTable().revocation_list
    )
    assert accepted.valid and accepted.public_key is not None


def test_with_hsm_adds_the_projects_test_cas_in_both_suites():
    hsm = SoftHSM.ephemeral()
    rsa_ca = hsm.create_test_ca("ca-intl", INTL, index=0xE0)
    sm2_ca = hsm.create_test_ca("ca-gm", GM, index=0xE1)
    base = CapkTable.load()
    table = base.with_hsm(hsm)
    assert len(table) == len(base) + 2
    assert table.lookup(UNIONPAY, 0xE0, today=TODAY) == rsa_ca
    assert table.lookup(UNIONPAY, 0xE1, today=TODAY).key == sm2_ca.key
    assert table.lookup(UNIONPAY, 0xE1, today=TODAY).suite is GM
    assert (UNIONPAY, 0xE0) not in base  # the base table is unchanged
    assert table.with_hsm(hsm).as_dict() == table.as_dict()  # the same keys twice: no change


def test_with_hsm_refuses_a_different_key_under_an_index_already_taken():
    hsm = SoftHSM.ephemeral()
    hsm.create_test_ca("ca-clash", GM, index=0x18)  # UnionPay's SM2 test key index
    with pytest.raises(CapkTableError) as info:
        CapkTable.load().with_hsm(hsm)
    shipped = capk_checksum(UNIONPAY, 0x18, SM2_POINT).hex().upper()
    assert str(info.value).startswith(
        f"adding the HSM's CAPKs: CAPK A000000333/18 is listed twice with different keys (checksums {shipped} and "
    )


def test_revocation_entries_in_code_are_checked():
    with pytest.raises(CapkTableError, match=r"serial must be 3 bytes, got 4"):
        CapkTable().with_revoked([(UNIONPAY, 0x08, b"\x00\x00\x00\x01")])
    table = CapkTable().with_revoked([(UNIONPAY, 0x08, b"\x00\x00\x01")])
    assert table.revocation_list == {(UNIONPAY, 0x08, b"\x00\x00\x01")}
