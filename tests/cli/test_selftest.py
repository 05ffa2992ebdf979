"""`citycard selftest`: every public vector passes, and a wrong one fails."""

from __future__ import annotations

import copy
import json

from citycard.cli.selftest import RUNNERS, load_vectors, run_vectors


def test_selftest_json_all_pass(citycard):
    r = citycard("selftest", "--json", timeout=300)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["failed"] == 0
    assert report["passed"] == len(load_vectors()) >= 30
    suites = {row["suite"] for row in report["results"]}
    assert {"INTL", "GM"} <= suites


def test_selftest_table_names_every_vector(citycard):
    r = citycard("selftest", timeout=300)
    assert r.code == 0
    for row in load_vectors():
        assert row["id"] in r.out
    assert "vectors pass" in r.out


def test_every_vector_has_a_runner_and_a_source():
    for row in load_vectors():
        assert row["algorithm"] in RUNNERS, row["id"]
        assert row["source"].strip(), row["id"]


def test_a_changed_expected_value_fails():
    rows = {r["id"]: copy.deepcopy(r) for r in load_vectors()}
    rows["ac-10"]["expected"] = "3B76CF10FECD8788"  # last bit flipped
    rows["sm2-verify"]["inputs"]["message"] = rows["sm2-verify"]["inputs"]["message"][:-2] + "75"  # "…digesu"
    rows["oda-cda-mastercard"]["inputs"]["cda"]["unpredictable_number"] = "00000000"
    chosen = [rows[name] for name in ("ac-10", "sm2-verify", "oda-cda-mastercard")]
    outcomes = {o.id: o for o in run_vectors(chosen)}
    assert not outcomes["ac-10"].passed
    assert outcomes["ac-10"].got == "3B76CF10FECD8789"
    assert outcomes["sm2-verify"].got == "invalid"
    assert "cda=invalid" in outcomes["oda-cda-mastercard"].got


def test_a_broken_input_is_a_failure_not_a_crash():
    rows = [copy.deepcopy(r) for r in load_vectors() if r["id"] == "option-a-1"]
    rows[0]["inputs"]["imk"] = "0123"
    (outcome,) = run_vectors(rows)
    assert not outcome.passed
    assert outcome.got.startswith("ValueError")
