"""`citycard bench tap`: the JSON shape scripts depend on. Figures are measured, not asserted."""

from __future__ import annotations

import json

import pytest

from citycard.cli.bench_tap import percentile_ms


@pytest.mark.parametrize("suite", ["gm", "intl"])
def test_bench_tap_json_shape(citycard, suite):
    done = citycard(
        "bench", "tap", "--suite", suite, "--taps", "20", "--blacklist-entries", "10000", "--json"
    )
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert set(result) >= {"taps", "p50_ms", "p99_ms"}
    assert result["taps"] == 20 and result["suite"] == suite.upper()
    assert result["blacklist_entries"] == 10_000
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert 0 < result["without_saves"]["p50_ms"] <= result["without_saves"]["p99_ms"]


def test_bench_tap_table_without_json(citycard):
    done = citycard("bench", "tap", "--taps", "5", "--blacklist-entries", "100")
    assert done.code == 0, done.err
    assert "with image saves" in done.out and "without saves" in done.out
    assert json.loads(done.out.strip().splitlines()[-1])["taps"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--suite", "rsa"), "--suite must be gm or intl, got 'rsa'"),
        (("--taps", "0"), "--taps must be 1 to 50,000, got 0"),
        (("--blacklist-entries", "-1"), "--blacklist-entries must be 0 to 5,000,000, got -1"),
    ],
)
def test_bad_options_exit_2_with_one_line(citycard, args, message):
    done = citycard("bench", "tap", *args)
    assert done.code == 2
    assert done.err.strip() == f"error: {message}"


def test_percentiles_are_nearest_rank():
    samples = [0.001 * i for i in range(1, 11)]  # 1..10 ms
    assert percentile_ms(samples, 50) == pytest.approx(5.0)
    assert percentile_ms(samples, 99) == pytest.approx(10.0)
    assert percentile_ms([0.002], 99) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no samples"):
        percentile_ms([], 50)
