"""`citycard bench clearing`: the JSON shape scripts depend on. Figures are measured, not asserted."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bench_clearing_json_shape(citycard, workers):
    done = citycard("bench", "clearing", "--records", "400", "--workers", workers, "--json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert set(result) >= {"records", "records_per_s"}
    assert result["records"] == result["accepted"] == 400 and result["workers"] == int(workers)
    assert result["records_per_s"] > 0 and result["db"] == "sqlite" and result["batches"] == 1


def test_bench_clearing_in_batches(citycard):
    """--batch-size: consecutive batches cleared one after another, every record exactly once."""
    done = citycard(
        "bench", "clearing", "--records", "450", "--batch-size", "200", "--workers", "2", "--json"
    )
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert (result["records"], result["accepted"], result["batches"]) == (450, 450, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--records", "0"), "--records must be 1…2000000, got 0"),
        (("--workers", "0"), "--workers must be 1…64, got 0"),
        (("--batch-size", "0"), "--batch-size must be 1…2000000, got 0"),
    ],
)
def test_bench_clearing_bad_input(citycard, args, message):
    done = citycard("bench", "clearing", *args)
    assert done.code == 2 and done.err.strip() == f"error: {message}"
