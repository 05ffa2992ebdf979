"""`citycard bench api` end to end (short): a real `citycard serve` subprocess, real HTTP reads and
loss reports through the real platform."""

from __future__ import annotations

import json
import signal

import pytest


def test_bench_api_short_run(citycard, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CITYCARD_HSM_MASTER_KEY", "CITYCARD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    result = citycard("bench", "api", "--seconds", "1", "--cards", "3", "--loss-cards", "6", "--clients", "4",
                      "--json", timeout=300)  # fmt: skip
    assert result.code == 0, result.err
    figures = json.loads(result.out)
    assert {"reads_per_s", "p99_ms", "loss_reports_per_s"} <= set(figures)
    assert figures["reads_per_s"] > 0 and figures["p99_ms"] > 0 and figures["reads"] > 0
    assert figures["loss_reports"] == 6 and figures["loss_reports_per_s"] > 0
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["server_exit"] in (0, -signal.SIGTERM)


def test_bench_api_rejects_bad_options(citycard) -> None:
    result = citycard("bench", "api", "--seconds", "0")
    assert result.code == 2 and "--seconds" in result.err
    result = citycard("bench", "api", "--clients", "0")
    assert result.code == 2 and "--clients" in result.err
