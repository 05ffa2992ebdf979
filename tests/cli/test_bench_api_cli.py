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


def test_read_generator_counts_only_right_answers(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The light load generator against a real `citycard serve`: good reads are timed and checked, a
    wrong key (401) and an unknown card (404) are errors, never reads."""
    import asyncio

    from citycard.cli import bench_api

    for name in ("CITYCARD_HSM_MASTER_KEY", "CITYCARD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'citycard.db'}"
    setup = bench_api.prepare(tmp_path, url, cards=2, loss_cards=0)
    proc, port = bench_api.start_server(tmp_path, url)
    try:

        def run(key: str, card_ids: list[int]) -> dict:
            return asyncio.run(bench_api._reads(bench_api.HOST, port, key, card_ids, seconds=0.3, clients=2))

        good = run(setup["terminal_key"], setup["read_cards"])
        assert good["read_errors"] == [] and good["reads"] > 0 and good["p99_ms"] >= good["read_p50_ms"] > 0
        assert good["client_cpu_ms_per_read"] > 0
        forged = run("cck_" + "0" * 43, setup["read_cards"])
        assert forged["read_errors"] and all("HTTP 401" in e for e in forged["read_errors"])
        assert forged["reads"] == 0 and forged["read_error_count"] >= len(forged["read_errors"])
        unknown = run(setup["terminal_key"], [999_999])
        assert unknown["read_errors"] and all("HTTP 404" in e for e in unknown["read_errors"])
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_parse_head_refuses_what_the_bench_cannot_frame() -> None:
    from citycard.cli.bench_api import parse_head

    assert parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0") == (404, 0)
    for head in (b"SSH-2.0-x", b"HTTP/1.1 abc OK\r\ncontent-length: 1", b"HTTP/1.1 200 OK\r\ncontent-length: -1",
                 b"HTTP/1.1 200 OK\r\ncontent-length: 99999999", b"HTTP/1.1 200 OK"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_head(head)
