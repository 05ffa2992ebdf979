"""`citycard bench health`: the JSON shape scripts depend on (figures are measured, not asserted)."""

from __future__ import annotations

import json


def test_bench_health_json_shape(citycard):
    r = citycard("bench", "health", "--runs", "1", "--json", timeout=600)
    assert r.code == 0, r.err
    figures = json.loads(r.out)
    assert sorted(figures) == ["GM", "INTL"]
    for suite in figures.values():
        assert sorted(suite) == ["append_visit_ms", "identity_ms", "load_ms", "read_5_visits_ms"]
        assert all(isinstance(v, float) and v > 0 for v in suite.values())


def test_bench_health_refuses_bad_runs(citycard):
    r = citycard("bench", "health", "--runs", "0")
    assert r.code == 2 and "runs" in r.err.lower()
