"""`citycard bench auth` end to end (short): a real `host serve` subprocess, real ARQCs, real ledger."""

from __future__ import annotations

import json

import pytest
from tests import dbtools
from tests.conftest import require_service


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_bench_auth_short_run(citycard, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if db == "postgresql":
        problem = dbtools.postgres_problem()
        require_service(problem is None, problem or "")
    for name in ("CITYCARD_HSM_MASTER_KEY", "CITYCARD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    result = citycard("bench", "auth", "--db", db, "--seconds", "1", "--runs", "1", "--cards", "40",
                      "--terminals", "2", "--json", timeout=300)  # fmt: skip
    assert result.code == 0, result.err
    figures = json.loads(result.out)
    assert {"auth_per_s", "p50_ms", "p99_ms"} <= set(figures)
    assert figures["auth_per_s"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert figures["errors"] == 0 and figures["runs"][0]["approved"] > 0
    assert figures["ledger_invariants"] == [] and figures["server_exit"] == 0
    # PostgreSQL runs two issuer processes side by side by default; SQLite one thread
    expected = ("process", 2) if db == "postgresql" else ("thread", 1)
    assert (figures["worker"], figures["lanes"]) == expected
    assert figures["client_cpu_us_per_auth"] > 0 and figures["machine_cpu_us_per_auth"] > 0


def test_bench_auth_rejects_bad_options(citycard) -> None:
    result = citycard("bench", "auth", "--terminals", "5", "--cards", "2")
    assert result.code == 2 and "--cards" in result.err
    result = citycard("bench", "auth", "--seconds", "0")
    assert result.code == 2 and "--seconds" in result.err
    result = citycard("bench", "auth", "--lanes", "17")
    assert result.code == 2 and "--lanes must be 1..16, got 17" in result.err
