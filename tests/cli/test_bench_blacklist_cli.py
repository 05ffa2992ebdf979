"""`citycard bench blacklist`: the JSON shape scripts depend on. Figures are measured, not asserted."""

from __future__ import annotations

import json

import pytest


def test_bench_blacklist_json_shape(citycard):
    done = citycard("bench", "blacklist", "--entries", "2000", "--rounds", "2", "--json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert result["entries"] == 2000 + 2  # the flags, plus the card flagged in each timed round
    assert result["delta_bytes"] == 123 and result["backend"] == "sqlite" and result["rounds"] == 2
    for key in ("incremental_publish_ms", "delta_ms", "terminal_apply_ms", "full_publish_ms",
                "cold_incremental_publish_ms"):  # fmt: skip
        assert result[key] > 0, key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--entries", "0"), "--entries must be 1 to 2,000,000"),
        (("--rounds", "0"), "--rounds must be 1 to 100"),
    ],
)
def test_bench_blacklist_bad_input(citycard, args, message):
    done = citycard("bench", "blacklist", *args)
    assert done.code == 2 and done.err.strip() == f"error: {message}"
