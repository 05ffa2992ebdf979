"""The key store on disk: wrapped keys, master key sources, tampering, and no clear key anywhere."""

from __future__ import annotations

import base64
import errno
import json
import re
import stat

import pytest

from citycard.crypto import GM, INTL
from citycard.crypto.cryptogram import generate_ac
from citycard.crypto.keys import derive_card_key, session_key
from citycard.hsm import HSMError, SoftHSM, keystore
from citycard.hsm.masterkey import MASTER_KEY_ENV, master_key_kcv

h = bytes.fromhex
IMK = h("0123456789ABCDEFFEDCBA9876543210")
OTHER_IMK = h("FEDCBA98765432100123456789ABCDEF")
# KCV = the key encrypting one zero block: 3DES 08D7B4 (pyemv, vectors-public §2.2 "08D7");
# SM4 2677F4 (GB/T 32907 example: SM4-CBC of IMK with IV IMK, first block = SM4(IMK)[0…0]).
IMK_KCV = {"INTL": "08D7B4", "GM": "2677F4"}
MASTER_A = "11" * 32
MASTER_B = "22" * 32
PAN, PSN, ATC = "6217000012345678901", "01", h("0042")
AC_DATA = bytes(range(37))
SUITES = [INTL, GM]


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    """Every test gets its own data dir and starts without a master key in the environment."""
    directory = tmp_path / "data" / "citycard"
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(directory))
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    return directory


def _arqc(imk: bytes, suite) -> bytes:
    card_key = derive_card_key(imk, tag_5a=PAN, tag_5f34=PSN, suite=suite)
    return generate_ac(session_key(card_key, tag_9f36=ATC, suite=suite), AC_DATA, suite=suite)


def _verify(hsm: SoftHSM, label: str, arqc: bytes) -> bool:
    return hsm.verify_arqc(label, tag_5a=PAN, tag_5f34=PSN, tag_9f36=ATC, data=AC_DATA, tag_9f26=arqc)


def _rewrite(path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip_with_master_key_from_environment(suite, tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    store = tmp_path / "keys.json"
    info = SoftHSM.open(store).import_key("bank1/imk-ac", "IMK-AC", suite, IMK)
    assert info.kcv_hex == IMK_KCV[suite.name]
    assert info.created_at.utcoffset().total_seconds() == 0

    reopened = SoftHSM.open(store)
    again = reopened.key_info("bank1/imk-ac")
    assert (again.kcv_hex, again.key_type, again.suite, again.created_at) == (
        info.kcv_hex,
        "IMK-AC",
        suite,
        info.created_at,
    )
    assert _verify(reopened, "bank1/imk-ac", _arqc(IMK, suite)) is True
    assert json.loads(store.read_text())["master_kcv"] == master_key_kcv(h(MASTER_A)).hex().upper()


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip_with_key_file_created_0600_under_new_dirs(suite, data_dir):
    assert not data_dir.exists()
    hsm = SoftHSM.open()
    hsm.import_key("imk-ac", "IMK-AC", suite, IMK)

    key_file = data_dir / "hsm-master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9A-F]{64}\n", key_file.read_text())
    assert hsm.path == data_dir / "hsm-keys.json"
    assert stat.S_IMODE(hsm.path.stat().st_mode) == 0o600
    # no temporary file left behind
    assert sorted(p.name for p in data_dir.iterdir()) == ["hsm-keys.json", "hsm-master.key"]

    reopened = SoftHSM.open()
    assert reopened.key_info("imk-ac").kcv_hex == IMK_KCV[suite.name]
    assert reopened.master_kcv_hex == hsm.master_kcv_hex
    assert _verify(reopened, "imk-ac", _arqc(IMK, suite)) is True


def test_explicit_key_file_wins_over_environment(tmp_path, monkeypatch):
    key_file = tmp_path / "ceremony" / "master.key"
    hsm = SoftHSM.open(tmp_path / "k.json", master_key_file=key_file)
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_B)
    assert SoftHSM.open(tmp_path / "k.json", master_key_file=key_file).master_kcv_hex == hsm.master_kcv_hex
    assert hsm.master_kcv_hex != master_key_kcv(h(MASTER_B)).hex().upper()


@pytest.mark.parametrize("suite", SUITES)
def test_wrong_master_key_is_named_with_both_kcvs(suite, tmp_path, monkeypatch):
    store = tmp_path / "keys.json"
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    SoftHSM.open(store).import_key("imk-ac", "IMK-AC", suite, IMK)
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_B)
    kcv_a = master_key_kcv(h(MASTER_A)).hex().upper()
    kcv_b = master_key_kcv(h(MASTER_B)).hex().upper()
    with pytest.raises(HSMError) as caught:
        SoftHSM.open(store)
    assert str(caught.value) == (
        f"master key does not open key store {store} (KCV of master key {kcv_b} from environment "
        f"variable {MASTER_KEY_ENV} differs from the store's {kcv_a})"
    )
    assert MASTER_B not in str(caught.value)


def test_malformed_master_key_in_environment_is_refused_without_echo(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, "ABCDEF0123")
    with pytest.raises(HSMError, match=r"must be 64 hex digits, got 10 characters") as caught:
        SoftHSM.open(tmp_path / "k.json")
    assert "ABCDEF" not in str(caught.value)


def test_key_file_readable_by_others_is_refused(tmp_path):
    key_file = tmp_path / "master.key"
    key_file.write_text("33" * 32 + "\n")
    key_file.chmod(0o644)
    with pytest.raises(HSMError, match=r"has mode 0644; it must be 0600"):
        SoftHSM.open(tmp_path / "k.json", master_key_file=key_file)


@pytest.mark.parametrize("suite", SUITES)
def test_tampered_wrapped_blob_does_not_open(suite, tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    store = tmp_path / "keys.json"
    SoftHSM.open(store).import_key("imk-ac", "IMK-AC", suite, IMK)

    def flip_last_byte(document):
        blob = bytearray(base64.b64decode(document["keys"]["imk-ac"]["wrapped"]))
        blob[-1] ^= 0x01
        document["keys"]["imk-ac"]["wrapped"] = base64.b64encode(bytes(blob)).decode()

    _rewrite(store, flip_last_byte)
    hsm = SoftHSM.open(store)
    assert hsm.key_info("imk-ac").kcv_hex == IMK_KCV[suite.name]  # metadata still readable
    with pytest.raises(HSMError, match=r"wrapped key 'imk-ac' does not open under the master key"):
        _verify(hsm, "imk-ac", _arqc(IMK, suite))
    with pytest.raises(HSMError, match=r"'imk-ac' does not open"):
        hsm.check_keys()


@pytest.mark.parametrize("suite", SUITES)
def test_wrapped_blob_moved_to_another_label_or_type_does_not_open(suite, tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    store = tmp_path / "keys.json"
    hsm = SoftHSM.open(store)
    hsm.import_key("bank1/imk-ac", "IMK-AC", suite, IMK)
    hsm.import_key("bank2/imk-ac", "IMK-AC", suite, OTHER_IMK)
    hsm.import_key("bank1/imk-mac", "IMK-MAC", suite, OTHER_IMK)

    def swap(document):
        keys = document["keys"]
        keys["bank2/imk-ac"]["wrapped"] = keys["bank1/imk-ac"]["wrapped"]
        keys["bank2/imk-ac"]["kcv"] = keys["bank1/imk-ac"]["kcv"]
        keys["bank1/imk-mac"]["type"] = "IMK-AC"  # a MAC key relabelled as an AC key

    _rewrite(store, swap)
    reopened = SoftHSM.open(store)
    with pytest.raises(HSMError, match=r"wrapped key 'bank2/imk-ac' does not open"):
        _verify(reopened, "bank2/imk-ac", _arqc(IMK, suite))
    with pytest.raises(HSMError, match=r"wrapped key 'bank1/imk-mac' does not open"):
        _verify(reopened, "bank1/imk-mac", _arqc(OTHER_IMK, suite))
    assert _verify(reopened, "bank1/imk-ac", _arqc(IMK, suite)) is True  # the untouched key still works


def test_edited_kcv_is_caught_on_unwrap(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    store = tmp_path / "keys.json"
    SoftHSM.open(store).import_key("imk-ac", "IMK-AC", INTL, IMK)
    _rewrite(store, lambda d: d["keys"]["imk-ac"].update(kcv="ABCDEF"))
    with pytest.raises(HSMError, match=r"'imk-ac' unwraps to KCV 08D7B4, but the store records ABCDEF"):
        SoftHSM.open(store).check_keys()


@pytest.mark.parametrize("suite", SUITES)
def test_store_file_never_holds_a_clear_key(suite, tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    store = tmp_path / "keys.json"
    hsm = SoftHSM.open(store)
    hsm.import_key("imk-ac", "IMK-AC", suite, IMK)
    hsm.import_key("imk-mac", "IMK-MAC", suite, OTHER_IMK)
    hsm.generate_key("zmk", "ZMK", suite)
    raw = store.read_bytes()
    for key in (IMK, OTHER_IMK, h(MASTER_A)):
        assert key.hex().upper().encode() not in raw
        assert key.hex().lower().encode() not in raw
        assert key not in raw
        assert base64.b64encode(key) not in raw
    shown = repr(hsm) + str(hsm) + repr(hsm.list_keys())
    assert shown.count("08D7B4" if suite is INTL else "2677F4") == 1  # the KCV is what is shown
    for key in (IMK, OTHER_IMK):
        assert key.hex().upper() not in shown.upper()
    assert repr(hsm) == f"SoftHSM(path={store}, keys=3)"


def test_duplicate_label_needs_replace_and_replace_drops_the_old_key(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    store = tmp_path / "keys.json"
    hsm = SoftHSM.open(store)
    hsm.import_key("imk-ac", "IMK-AC", INTL, IMK)
    arqc = _arqc(IMK, INTL)
    assert _verify(hsm, "imk-ac", arqc) is True  # now cached
    with pytest.raises(HSMError, match=r"key label 'imk-ac' already exists \(use replace=True"):
        hsm.import_key("imk-ac", "IMK-AC", INTL, OTHER_IMK)
    replaced = hsm.import_key("imk-ac", "IMK-AC", INTL, OTHER_IMK, replace=True)
    assert replaced.kcv_hex != "08D7B4"
    assert _verify(hsm, "imk-ac", arqc) is False  # the cache did not keep the old key
    assert SoftHSM.open(store).key_info("imk-ac").kcv_hex == replaced.kcv_hex


def test_delete_is_persisted_and_unknown_labels_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    store = tmp_path / "keys.json"
    hsm = SoftHSM.open(store)
    hsm.import_key("imk-ac", "IMK-AC", GM, IMK)
    hsm.import_key("tmk", "TMK", GM, OTHER_IMK)
    assert _verify(hsm, "imk-ac", _arqc(IMK, GM)) is True
    hsm.delete_key("imk-ac")
    with pytest.raises(HSMError, match=rf"no key labelled 'imk-ac' in key store {re.escape(str(store))}"):
        _verify(hsm, "imk-ac", _arqc(IMK, GM))
    assert [info.label for info in SoftHSM.open(store).list_keys()] == ["tmk"]
    with pytest.raises(HSMError, match=r"no key labelled 'nope'"):
        hsm.delete_key("nope")


@pytest.mark.parametrize(
    ("label", "ok"),
    [
        ("bank1/imk-ac:2024.1", True),
        ("A" * 64, True),
        ("", False),
        ("-lead", False),
        ("a b", False),
        ("A" * 65, False),
    ],
)
def test_label_format(label, ok):
    hsm = SoftHSM.ephemeral()
    if ok:
        assert hsm.import_key(label, "ZMK", INTL, IMK).label == label
    else:
        with pytest.raises(HSMError, match=r"key label .* is invalid: 1 to 64 characters"):
            hsm.import_key(label, "ZMK", INTL, IMK)


def test_bad_key_type_length_and_asymmetric_generate_are_refused():
    hsm = SoftHSM.ephemeral()
    with pytest.raises(HSMError, match=r"unknown key type 'IMK-XX': expected one of IMK-AC, IMK-MAC"):
        hsm.import_key("k", "IMK-XX", INTL, IMK)
    with pytest.raises(HSMError, match=r"SM4 key must be 16 bytes, got 8"):
        hsm.import_key("k", "IMK-AC", GM, IMK[:8])
    with pytest.raises(HSMError, match=r"a CA-RSA key is made by create_test_ca or create_issuer_key"):
        hsm.generate_key("k", "CA-RSA", INTL)
    assert hsm.list_keys() == []


@pytest.mark.parametrize("suite", SUITES)
def test_generated_keys_have_their_kcv_and_3des_parity(suite):
    hsm = SoftHSM.ephemeral()
    info = hsm.generate_key("imk-ac", "IMK-AC", suite)
    keys = hsm.export_card_keys_for_personalisation({"AC": "imk-ac"}, tag_5a=PAN, tag_5f34=PSN, suite=suite)
    assert re.fullmatch(r"[0-9A-F]{6}", info.kcv_hex)
    assert hsm.check_keys() == [info]
    assert len(keys["AC"]) == 16


def test_ephemeral_writes_nothing(data_dir):
    hsm = SoftHSM.ephemeral()
    hsm.import_key("imk-ac", "IMK-AC", INTL, IMK)
    hsm.generate_key("zmk", "ZMK", GM)
    assert hsm.path is None
    assert repr(hsm) == "SoftHSM(path=memory, keys=2)"
    assert not data_dir.exists()
    assert _verify(hsm, "imk-ac", _arqc(IMK, INTL)) is True


def test_not_a_key_store_and_bad_json_are_precise(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HSMError, match=r"key store .*bad.json is not valid JSON"):
        SoftHSM.open(bad)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(HSMError, match=r"other.json is not a citycard HSM key store"):
        SoftHSM.open(other)


def test_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(MASTER_KEY_ENV, MASTER_A)
    directory = tmp_path / "store"
    hsm = SoftHSM.open(directory / "keys.json")
    hsm.import_key("imk-ac", "IMK-AC", INTL, IMK)
    before = (directory / "keys.json").read_bytes()

    def disk_full(src, dst):  # the one failure a test cannot cause for real (root ignores permissions)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keystore.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        hsm.import_key("imk-mac", "IMK-MAC", INTL, OTHER_IMK)
    with pytest.raises(OSError, match="No space left"):
        hsm.delete_key("imk-ac")
    monkeypatch.undo()
    assert [info.label for info in hsm.list_keys()] == ["imk-ac"]
    assert (directory / "keys.json").read_bytes() == before
    assert [p.name for p in directory.iterdir()] == ["keys.json"]  # temporary files removed
