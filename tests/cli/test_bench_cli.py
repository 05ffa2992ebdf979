"""`citycard bench crypto`: the JSON shape scripts depend on. (Figures are measured, not asserted.)"""

from __future__ import annotations

import json

from citycard.cli.bench import arqc_verify_per_s
from citycard.crypto import GM, INTL


def test_bench_crypto_json_shape(citycard):
    r = citycard("bench", "crypto", "--json", timeout=600)
    assert r.code == 0, r.err
    figures = json.loads(r.out)
    assert set(figures) >= {"arqc_verify_per_s", "sm2_verify_ms", "sm2_sign_ms", "rsa1984_recover_ms"}
    assert set(figures["arqc_verify_per_s"]) == {"3des", "sm4"}
    assert all(rate > 0 for rate in figures["arqc_verify_per_s"].values())
    assert all(figures[name] > 0 for name in ("sm2_verify_ms", "sm2_sign_ms", "rsa1984_recover_ms"))


def test_arqc_scenario_really_verifies_both_suites():
    # the scenario raises if a single ARQC of its batch fails to verify
    assert arqc_verify_per_s(INTL, batch=20, rounds=1) > 0
    assert arqc_verify_per_s(GM, batch=20, rounds=1) > 0
