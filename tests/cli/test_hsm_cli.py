"""`citycard hsm ...` through a real process, on a key store in a temporary data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

IMK = "0123456789ABCDEFFEDCBA9876543210"


@pytest.fixture
def hsm_cli(tmp_path):
    env = {**os.environ, "CITYCARD_DATA_DIR": str(tmp_path)}
    env.pop("CITYCARD_HSM_MASTER_KEY", None)

    def run(*args: str, stdin: str | None = None):
        return subprocess.run(
            [sys.executable, "-m", "citycard.cli.main", "hsm", *args],
            capture_output=True,
            text=True,
            input=stdin,
            env=env,
            timeout=120,
            check=False,
        )

    run.data_dir = tmp_path
    return run


def test_import_from_stdin_with_kcv_then_list(hsm_cli):
    r = hsm_cli("import", "imk-ac", "--type", "IMK-AC", "--key", "-", "--kcv", "08D7", stdin=IMK + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "imk-ac IMK-AC INTL KCV 08D7B4"
    listed = json.loads(hsm_cli("keys", "--json").stdout)
    assert [(k["label"], k["type"], k["suite"], k["kcv"]) for k in listed] == [
        ("imk-ac", "IMK-AC", "INTL", "08D7B4")
    ]
    store = (hsm_cli.data_dir / "hsm-keys.json").read_text()
    assert IMK not in store.upper()
    assert hsm_cli("check").stdout.strip() == "1 keys unwrap and match their KCVs"


def test_wrong_kcv_refuses_and_stores_nothing(hsm_cli):
    r = hsm_cli("import", "imk-ac", "--type", "IMK-AC", "--key", IMK, "--kcv", "000000")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --kcv: the key's KCV is not 000000; nothing imported"
    assert json.loads(hsm_cli("keys", "--json").stdout) == []


def test_generate_sm4_key_and_bad_inputs(hsm_cli):
    r = hsm_cli("generate", "imk-mac-gm", "--type", "imk-mac", "--suite", "gm")
    assert r.returncode == 0
    assert r.stdout.startswith("imk-mac-gm IMK-MAC GM KCV ")
    again = hsm_cli("generate", "imk-mac-gm", "--type", "IMK-MAC", "--suite", "gm")
    assert again.returncode == 2 and again.stderr.startswith("error: ")
    bad_type = hsm_cli("generate", "x", "--type", "NOPE")
    assert bad_type.returncode == 2 and "unknown key type 'NOPE'" in bad_type.stderr
    bad_suite = hsm_cli("generate", "x", "--type", "IMK-AC", "--suite", "des")
    assert bad_suite.returncode == 2 and "unknown suite 'des'" in bad_suite.stderr


def test_test_ca_then_capks_and_capk_import_checksum(hsm_cli):
    r = hsm_cli("test-ca", "ca-gm", "--suite", "gm", "--index", "E1", "--json")
    assert r.returncode == 0, r.stderr
    capk = json.loads(r.stdout)
    assert (capk["rid"], capk["index"], capk["suite"], len(capk["key"])) == ("A000000333", "E1", "GM", 128)
    listed = json.loads(hsm_cli("capks", "--json").stdout)
    assert [c["checksum"] for c in listed] == [capk["checksum"]]
    # Mastercard test CAPK 05 from lumag/emv-tools data/mastercard-test.keys (vectors-public §3.4)
    from citycard.crypto.capk import scheme_test_capks

    mc05 = scheme_test_capks()[bytes.fromhex("A000000004"), 0x05]
    ok = hsm_cli(
        "capk-import",
        "--rid",
        "A000000004",
        "--index",
        "05",
        "--key",
        mc05.key.hex(),
        "--exponent",
        "03",
        "--checksum",
        "53D04903B496F59544A84309AF169251F2896874",
    )
    assert ok.returncode == 0, ok.stderr
    bad = hsm_cli(
        "capk-import",
        "--rid",
        "A000000004",
        "--index",
        "05",
        "--key",
        mc05.key.hex(),
        "--exponent",
        "03",
        "--checksum",
        "00" * 20,
        "--expiry",
        "2030-12-31",
    )
    assert bad.returncode == 2
    assert "checksum 0000000000000000000000000000000000000000 does not match" in bad.stderr
