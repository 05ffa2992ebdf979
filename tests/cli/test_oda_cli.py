"""`citycard oda check` and `citycard oda example`: JSON out, one error line and exit 2 for bad input."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from citycard.cli.main import app
from citycard.cli.oda import example_case
from citycard.crypto import GM, INTL
from citycard.crypto.suite import Suite

runner = CliRunner()
REAL = Path(__file__).parents[1] / "crypto" / "data" / "emv_tools_rsa_chains.json"
CHECKS = ("issuer_certificate", "icc_certificate", "sda", "dda", "cda")


@functools.cache
def cached_case(suite: Suite, fdda_version: int | None = None) -> dict:
    return example_case(suite, fdda_version=fdda_version)


def case(suite: Suite = INTL, fdda_version: int | None = None) -> dict:
    return copy.deepcopy(cached_case(suite, fdda_version))


def run_check(tmp_path: Path, content: dict | str, *args: str):
    path = tmp_path / "case.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return runner.invoke(app, ["oda", "check", str(path), *args])


def flip(hex_text: str, index: int) -> str:
    raw = bytearray(bytes.fromhex(hex_text))
    raw[index] ^= 0x01
    return raw.hex().upper()


@pytest.mark.parametrize(
    ("suite", "fdda_version"), [(INTL, None), (INTL, 0), (INTL, 1), (GM, None), (GM, 0), (GM, 1)]
)
def test_generated_examples_check_valid(tmp_path, suite, fdda_version):
    result = run_check(tmp_path, case(suite, fdda_version))
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["suite"] == suite.name
    assert {name: out[name] for name in CHECKS} == dict.fromkeys(CHECKS, "valid")
    assert out["errors"] == [] and out["warnings"] == []
    assert out["issuer_public_key"] == out["issuer_public_key"].upper()
    assert len(bytes.fromhex(out["icc_public_key"])) == (64 if suite is GM else 96)


@pytest.mark.parametrize("suite", ["intl", "gm"])
def test_example_command_writes_a_case_that_checks_valid(tmp_path, suite):
    made = runner.invoke(app, ["oda", "example", "--suite", suite, "--fdda", "01"])
    assert made.exit_code == 0, made.stderr
    written = json.loads(made.stdout)
    assert ("sm2_public_key" in written["capk"]) is (suite == "gm")
    result = run_check(tmp_path, written, "--strict")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["cda"] == "valid"


def test_real_mastercard_chain_checks_valid(tmp_path):
    # lumag/emv-tools test/dda-test.c and cda-test.c @ fcd6aa0c (real, expired Mastercard card)
    dda, cda = (json.loads(REAL.read_text())[name] for name in ("dda", "cda"))
    capk = {key: dda["capk"][key] for key in ("rid", "index", "modulus", "exponent")}
    tags = {tag: dda[tag] for tag in ("90", "92", "9F32", "9F46", "9F47", "9F4B", "5A")}
    response = cda["response_tlvs_without_9f4b"]
    base = {"capk": capk, "tags": tags, "static_data": dda["static_data"], "today": "2015-01-01"}
    dda_case = base | {"dynamic_data": dda["dynamic_data"]}
    out = json.loads(run_check(tmp_path, dda_case).stdout)
    assert (out["issuer_certificate"], out["icc_certificate"], out["sda"], out["dda"], out["cda"]) == (
        "valid",
        "valid",
        "absent",
        "valid",
        "absent",
    )
    cda_case = base | {
        "tags": tags | {"9F4B": cda["9F4B"]},
        "cda": {
            "unpredictable_number": cda["unpredictable_number"],
            "cdol1_data": cda["cdol1_data"],
            "response_tlvs": response,
        },
    }
    out = json.loads(run_check(tmp_path, cda_case).stdout)
    assert (out["dda"], out["cda"]) == ("absent", "valid"), out["errors"]
    late = json.loads(run_check(tmp_path, dda_case | {"today": "2015-07-01"}).stdout)
    assert late["icc_certificate"] == "invalid"
    assert late["errors"] == ["ICC public key certificate (9F46): expired (valid to the end of 06/15)"]


@pytest.mark.parametrize("suite", [INTL, GM])
def test_flipped_bits_are_reported_invalid_with_exit_0(tmp_path, suite):
    broken = case(suite)
    broken["tags"]["9F46"] = flip(broken["tags"]["9F46"], 30)
    result = run_check(tmp_path, broken)
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert (out["issuer_certificate"], out["icc_certificate"], out["sda"]) == ("valid", "invalid", "valid")
    assert (out["dda"], out["cda"], out["icc_public_key"]) == ("invalid", "invalid", None)
    assert out["errors"][0].startswith("ICC public key certificate (9F46): ")
    assert "9F4B not checked: no valid ICC public key" in out["errors"]
    assert run_check(tmp_path, broken, "--strict").exit_code == 1


@pytest.mark.parametrize("suite", [INTL, GM])
def test_flipped_static_data_breaks_icc_certificate_and_sda(tmp_path, suite):
    broken = case(suite)
    broken["static_data"] = flip(broken["static_data"], 3)
    out = json.loads(run_check(tmp_path, broken).stdout)
    assert (out["issuer_certificate"], out["icc_certificate"], out["sda"]) == ("valid", "invalid", "invalid")


def test_flipped_terminal_data_breaks_dda_only(tmp_path):
    broken = case(GM)
    broken["dynamic_data"] = flip(broken["dynamic_data"], 0)
    out = json.loads(run_check(tmp_path, broken).stdout)
    assert {name: out[name] for name in CHECKS} == {
        "issuer_certificate": "valid",
        "icc_certificate": "valid",
        "sda": "valid",
        "dda": "invalid",
        "cda": "valid",
    }
    assert out["errors"] == ["signed dynamic application data (9F4B): SM2 signature does not verify"]


def test_table_output(tmp_path):
    result = run_check(tmp_path, case(INTL), "--table")
    assert result.exit_code == 0
    assert "issuer certificate" in result.stdout and "valid" in result.stdout


def test_pan_from_static_data_when_5a_tag_is_absent(tmp_path):
    data = case(INTL)
    del data["tags"]["5A"]
    out = json.loads(run_check(tmp_path, data).stdout)
    assert out["issuer_certificate"] == "valid" and out["warnings"] == []
    data["static_data"] = data["static_data"][24:]  # drop the 5A record object
    out = json.loads(run_check(tmp_path, data).stdout)
    assert out["warnings"] == [
        "no PAN (tags.5A, or 5A in static_data): issuer identifier and certificate PAN not checked"
    ]


# --- bad input: one line on stderr, exit 2 ----------------------------------------------------


def assert_bad_input(result, expected: str) -> None:
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0], lines[0]


def test_missing_file(tmp_path):
    result = runner.invoke(app, ["oda", "check", str(tmp_path / "absent.json")])
    assert_bad_input(result, "absent.json: no such file")


def test_not_json(tmp_path):
    assert_bad_input(run_check(tmp_path, '{"capk": '), "not JSON: Expecting value at line 1 column 10")


def test_json_that_is_not_an_object(tmp_path):
    assert_bad_input(run_check(tmp_path, "[1, 2]"), "a case is a JSON object, got list")


def test_missing_capk(tmp_path):
    data = case(INTL)
    del data["capk"]
    assert_bad_input(run_check(tmp_path, data), "case.json: capk: field required")


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        (("capk", "modulus"), "ABC", "capk.modulus: odd-length hex (3 digits)"),
        (("tags", "90"), "6A0G", "tags.90: not hex (bad character 'G')"),
        (("capk", "rid"), "A0000003", "capk: value error, rid must be 5 bytes, got 4"),
        (
            ("cda", "unpredictable_number"),
            1234,
            "cda.unpredictable_number: value error, must be a hex string, got int",
        ),
    ],
)
def test_bad_hex_fields(tmp_path, where, value, expected):
    data = case(INTL)
    data[where[0]][where[1]] = value
    result = run_check(tmp_path, data)
    assert_bad_input(result, expected.replace("value error, ", ""))


def test_unknown_tag_and_unknown_field(tmp_path):
    data = case(INTL)
    data["tags"]["9F99"] = "00"
    assert_bad_input(
        run_check(tmp_path, data), "tags: value error, unknown tag 9F99".replace("value error, ", "")
    )
    data = case(INTL)
    data["extra"] = 1
    assert_bad_input(run_check(tmp_path, data), "extra: extra inputs are not permitted")


def test_capk_with_both_kinds_of_key(tmp_path):
    data = case(GM)
    data["capk"]["modulus"] = "C1" * 128
    assert_bad_input(
        run_check(tmp_path, data), "give either modulus + exponent (RSA) or sm2_public_key (SM2)"
    )


def test_unknown_capk_that_cannot_recover_the_certificate(tmp_path):
    data = case(INTL)
    data["capk"]["modulus"] = "C1" * 128  # a 1024-bit key for a certificate made by a 1152-bit CA
    assert_bad_input(
        run_check(tmp_path, data),
        "CAPK A000000333/E0 (RSA) cannot process tags.90: issuer public key certificate (90) must be 128 bytes "
        "like its signer's modulus, got 144",
    )


def test_rsa_capk_for_an_sm2_card(tmp_path):
    data = case(GM)
    data["capk"] = case(INTL)["capk"]
    assert_bad_input(
        run_check(tmp_path, data), "it looks like an SM2 format 12 object: is the CA key RSA by mistake?"
    )


def test_bad_pan(tmp_path):
    data = case(INTL)
    data["tags"]["5A"] = "62123A"
    assert_bad_input(run_check(tmp_path, data), "tags.5A: PAN (5A) must be 12 to 19 digits, got '62123A'")


def test_missing_issuer_certificate(tmp_path):
    data = case(INTL)
    del data["tags"]["90"]
    assert_bad_input(run_check(tmp_path, data), "tags.90 (issuer public key certificate) is required")


def test_dda_without_terminal_data(tmp_path):
    data = case(INTL)
    del data["dynamic_data"]
    assert_bad_input(run_check(tmp_path, data), "tags.9F4B needs dynamic_data")


def test_example_rejects_an_unknown_suite():
    assert_bad_input(
        runner.invoke(app, ["oda", "example", "--suite", "des"]), "--suite: expected intl or gm, got 'des'"
    )


def test_help_shows_an_example():
    result = runner.invoke(app, ["oda", "check", "--help"])
    assert result.exit_code == 0
    assert "citycard oda example --suite gm > case.json" in result.stdout
    assert "citycard oda check case.json" in result.stdout


@pytest.mark.parametrize("suite", [INTL, GM])
def test_capk_named_by_rid_and_index_is_looked_up_in_the_table(tmp_path, monkeypatch, suite):
    from citycard.crypto import capk as capk_module

    case = example_case(suite)
    named = case["capk"]
    real = capk_module.Capk(
        rid=bytes.fromhex(named["rid"]),
        index=int(named["index"], 16),
        suite=suite,
        key=bytes.fromhex(named.get("sm2_public_key") or named["modulus"]),
        exponent=bytes.fromhex(named.get("exponent", "")),
    )
    table = {**capk_module.scheme_test_capks(), (real.rid, real.index): real}
    monkeypatch.setattr(capk_module, "scheme_test_capks", lambda: table)
    case["capk"] = {"rid": named["rid"], "index": named["index"]}
    out = json.loads(run_check(tmp_path, case).stdout)
    assert (out["issuer_certificate"], out["icc_certificate"], out["cda"]) == ("valid", "valid", "valid")
    assert out["suite"] == suite.name


def test_shipped_capk_that_did_not_sign_the_certificate_is_exit_2(tmp_path):
    # the emv-tools chain was signed by Mastercard's live 1408-bit key 05, the table holds the
    # 1024-bit *test* key 05: the lookup works and the size mismatch is reported
    dda = json.loads(REAL.read_text())["dda"]
    result = run_check(tmp_path, {"capk": {"rid": "A000000004", "index": "05"}, "tags": {"90": dda["90"]}})
    assert result.exit_code == 2
    assert "CAPK A000000004/05 (RSA) cannot process tags.90" in result.stderr


def test_unknown_capk_is_exit_2_with_the_known_indexes(tmp_path):
    dda = json.loads(REAL.read_text())["dda"]
    case = {"capk": {"rid": "A000000004", "index": "06"}, "tags": {"90": dda["90"]}}
    path = tmp_path / "case.json"
    path.write_text(json.dumps(case))
    proc = subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "oda", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown CAPK A000000004/06" in lines[0]
    assert "05" in lines[0]
    unknown_rid = {"capk": {"rid": "A000000333", "index": "0B"}, "tags": {"90": dda["90"]}}
    path.write_text(json.dumps(unknown_rid))
    proc = subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "oda", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "no key for RID A000000333" in proc.stderr
