"""`citycard bench auth`: ISO 8583 authorisations per second through `citycard host serve` over TCP.

Set-up (not timed): a fresh database (SQLite file in a temp dir, or a new PostgreSQL database on
``CITYCARD_TEST_DATABASE_URL`` / the local default, dropped afterwards), the issuer's keys
provisioned in a fresh HSM, ``--cards`` cards enrolled in both suites, one TMK per terminal; then
``citycard host serve`` starts as a SUBPROCESS on that database. Each terminal connects, signs on
(PIK/MAK from F62) and gets its messages precomputed: 0200 purchases and 0100 authorisations of
1 fen with REAL ARQCs (card AC keys exported by the HSM as for personalisation, ATC increasing per
card, :mod:`citycard.host.loadgen`) and F64 under the terminal's MAK — so the timed loop only sends
and receives. Each card belongs to one terminal and reappears only after all that terminal's other
cards, so its ATCs arrive in order.

Timed: ``--terminals`` concurrent asyncio terminals, each with ``--depth`` requests outstanding
on its one connection, for ``--seconds``; the server verifies MACs and hands batches to the issuer
(ARQC verified in the HSM, ledger posted, one commit per batch). Every answer must be ``00``; others
are counted as errors and printed. The figures are medians over ``--runs`` runs; latency is per
request (send → answer, ``time.perf_counter``), p50/p99 nearest-rank. After the runs the server is
stopped with SIGTERM and the ledger's ``check_invariants`` is run on the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from citycard.cli.bench import app
from citycard.cli.bench_db import DbChoice, create_database, drop_database
from citycard.cli.bench_tap import percentile_ms
from citycard.cli.common import fail

SECONDS_DEFAULT = 10.0
TERMINALS_DEFAULT = 16
DEPTH_DEFAULT = 4  # requests outstanding per terminal connection
CARDS_DEFAULT = 1_000
RUNS_DEFAULT = 3
PLANNED_RATE = 4_000  # messages precomputed per second of run (a run ends early if they run out)
AMOUNT_FEN = 1
ACCOUNT_FEN = 10_000_000  # 100,000 yuan per card: far more than any run spends
SERVER_START_S = 120.0
REQUEST_TIMEOUT_S = 10.0
ERRORS_SHOWN = 10


def luhn_complete(digits: str) -> str:
    """``digits`` with its Luhn check digit appended.

    >>> luhn_complete("623548000000001")
    '6235480000000016'
    """
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return digits + str((10 - total % 10) % 10)


# --- set-up -----------------------------------------------------------------------------------
@dataclass
class Setup:
    directory: Path
    url: str
    issuer: str
    hsm: Any
    terminals: list[Any]
    cards_by_terminal: list[list[Any]]
    stan: list[int] = field(default_factory=list)
    worker: str = "thread"
    lanes: int = 1


def prepare(directory: Path, url: str, *, issuer_name: str, cards: int, terminals: int) -> Setup:
    """Provision keys, enrol ``cards`` (alternating INTL/GM), create one TMK per terminal."""
    from citycard.crypto import GM, INTL
    from citycard.db import make_engine, upgrade
    from citycard.host.issuer import IssuerHost, load_issuer_configs
    from citycard.host.loadgen import test_card
    from citycard.hsm import SoftHSM
    from citycard.iso8583.builders import Terminal

    config = load_issuer_configs()[issuer_name]
    hsm = SoftHSM.open(directory / "hsm-keys.json", master_key_file=directory / "hsm-master.key")
    engine = make_engine(url)
    try:
        upgrade(engine)
        issuer = IssuerHost(config, engine=engine, hsm=hsm)
        issuer.provision_keys()
        expiry = datetime(2030, 12, 31, tzinfo=UTC).date()
        made = []
        for index in range(cards):
            suite = (INTL, GM)[index % 2]
            pan = luhn_complete(f"{config.bins[0]}{index + 1:0{15 - len(config.bins[0])}d}")
            issuer.enrol_card(
                pan=pan, psn=1, expiry=expiry, suite=suite, pin=None, account_balance_fen=ACCOUNT_FEN
            )
            made.append(test_card(hsm, config.labels(suite).imk_ac, pan=pan, psn=1, suite=suite))
    finally:
        engine.dispose()
    terminal_list = []
    for index in range(terminals):
        terminal = Terminal(terminal_id=f"B{index:07d}", merchant_id=f"BENCH{index:010d}")
        hsm.generate_key(f"tmk:{terminal.terminal_id}", "TMK", (INTL, GM)[index % 2], replace=True)
        terminal_list.append(terminal)
    by_terminal = [made[index::terminals] for index in range(terminals)]
    if any(not group for group in by_terminal):
        raise ValueError(f"--cards {cards} must be at least --terminals {terminals}")
    return Setup(directory, url, issuer_name, hsm, terminal_list, by_terminal, [0] * terminals)


def start_server(setup: Setup) -> tuple[subprocess.Popen[str], int]:
    """``citycard host serve`` as a subprocess on the set-up's data dir and database."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("CITYCARD_HSM_MASTER_KEY", "CITYCARD_DATABASE_URL")
    }
    env["CITYCARD_DATA_DIR"] = str(setup.directory)
    log = (setup.directory / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "citycard.cli.main", "host", "serve", "--issuer", setup.issuer, "--port", "0",
         "--db", setup.url, "--data-dir", str(setup.directory), "--verbose", "--worker", setup.worker,
         "--lanes", str(setup.lanes)],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + SERVER_START_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, int(line.rsplit(":", 1)[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    tail = (setup.directory / "server.log").read_text()[-2000:]
    raise RuntimeError(f"host serve did not start: {tail}")


# --- the timed loop ----------------------------------------------------------------------------
def precompute(setup: Setup, client: Any, index: int, count: int) -> list[tuple[bytes, tuple[str, str]]]:
    """``count`` MACed requests for terminal ``index``, cycling over its cards."""
    terminal, cards = setup.terminals[index], setup.cards_by_terminal[index]
    out = []
    for number in range(count):
        setup.stan[index] = setup.stan[index] % 999_999 + 1
        card = cards[number % len(cards)]
        kind = "purchase" if number % 2 == 0 else "authorisation"
        fields = card.request(kind, terminal=terminal, stan=setup.stan[index], amount_fen=AMOUNT_FEN,
                              when=datetime.now(UTC))  # fmt: skip
        out.append((client.mac_message(fields), (fields["11"], fields["41"])))
    return out


async def timed_run(
    clients: list[Any], messages: list[list[tuple[bytes, tuple[str, str]]]], *, seconds: float, depth: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    clock = time.perf_counter
    started = clock()
    end = started + seconds

    async def worker(client: Any, queue: list[tuple[bytes, tuple[str, str]]]) -> None:
        while queue and clock() < end:
            raw, key = queue.pop()
            sent = clock()
            try:
                answer = await client.exchange_raw(raw, key, REQUEST_TIMEOUT_S)
            except (ConnectionError, TimeoutError, ValueError) as exc:
                errors.append(f"F11 {key[0]} {key[1]}: {type(exc).__name__}: {exc}")
                continue
            latencies.append(clock() - sent)
            if answer.get("39") != "00":
                errors.append(f"F11 {key[0]} {key[1]}: F39 {answer.get('39')!r}")

    tasks = []
    for client, queue in zip(clients, messages, strict=True):
        queue.reverse()  # pop() from the end = original order
        tasks += [worker(client, queue) for _ in range(depth)]
    await asyncio.gather(*tasks)
    elapsed = clock() - started
    ok = len(latencies) - sum(1 for e in errors if " F39 " in e)
    return {
        "auth_per_s": round(ok / elapsed, 1),
        "p50_ms": round(percentile_ms(latencies, 50), 2) if latencies else None,
        "p99_ms": round(percentile_ms(latencies, 99), 2) if latencies else None,
        "answered": len(latencies),
        "approved": ok,
        "errors": len(errors),
        "error_samples": errors[:ERRORS_SHOWN],
        "elapsed_s": round(elapsed, 3),
    }


# --- CPU per authorisation (Linux /proc; the load-independent figure on a shared machine) --------
CPU_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``--worker process`` runs the issuer in a child), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of ``pids`` (utime and stime of /proc/PID/stat); None off Linux."""
    total, seen = 0, False
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), after "pid (comm)"
        seen = True
    return total / CPU_TICKS_PER_S if seen else None


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (all cores; /proc/stat minus idle and iowait)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CPU_TICKS_PER_S


def database_pids(url: str) -> list[int]:
    """The PostgreSQL backends serving the benchmark's database when the server runs on this machine
    (their /proc entries exist); [] for SQLite (its work is inside the host process)."""
    from sqlalchemy.engine import make_url

    if make_url(url).get_backend_name() != "postgresql":
        return []
    import psycopg

    from citycard.cli.bench_db import _libpq

    with psycopg.connect(_libpq(url), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows if Path(f"/proc/{pid}/stat").exists()]


def cpu_per_auth_us(before: float | None, after: float | None, answered: int) -> float | None:
    if before is None or after is None or not answered:
        return None
    return round(1e6 * (after - before) / answered, 1)


async def drive(
    setup: Setup,
    port: int,
    *,
    seconds: float,
    depth: int,
    runs: int,
    console: Console,
    server_pid: int | None = None,
) -> list[dict]:
    from citycard.host.client import AsyncHostClient

    clients = []
    for terminal in setup.terminals:
        client = AsyncHostClient("127.0.0.1", port, hsm=setup.hsm, timeout_s=REQUEST_TIMEOUT_S)
        await client.connect()
        await client.sign_on(terminal_id=terminal.terminal_id, merchant_id=terminal.merchant_id)
        clients.append(client)
    per_terminal = max(depth * 4, int(PLANNED_RATE * seconds / len(clients)) + depth)
    results = []
    try:
        for run in range(runs):
            console.log(f"run {run + 1}/{runs}: precomputing {per_terminal * len(clients):,} requests")
            messages = [precompute(setup, client, i, per_terminal) for i, client in enumerate(clients)]
            server_pids = process_tree(server_pid) if server_pid is not None else []
            db_pids = database_pids(setup.url)
            cpu_before = cpu_seconds(server_pids), cpu_seconds(db_pids)
            client_before, machine_before = time.process_time(), machine_busy_seconds()
            result = await timed_run(clients, messages, seconds=seconds, depth=depth)
            client_cpu, machine_after = time.process_time() - client_before, machine_busy_seconds()
            # backends that appeared during the run (a lane's first connection) count from zero
            new_db_pids = [pid for pid in database_pids(setup.url) if pid not in db_pids]
            cpu_after = cpu_seconds(server_pids), cpu_seconds(db_pids + new_db_pids)
            if cpu_before[1] is None and new_db_pids:
                cpu_before = cpu_before[0], 0.0
            result["server_cpu_us_per_auth"] = cpu_per_auth_us(
                cpu_before[0], cpu_after[0], result["answered"]
            )
            result["db_cpu_us_per_auth"] = cpu_per_auth_us(cpu_before[1], cpu_after[1], result["answered"])
            # the load generator's own CPU (it shares the machine: what it takes, the server lacks)
            result["client_cpu_us_per_auth"] = cpu_per_auth_us(0.0, client_cpu, result["answered"])
            # everything busy on the machine per answer (with neighbours' work, if any): near
            # cores × 1e6 / auth_per_s the run was CPU-bound, well below it latency-bound
            result["machine_cpu_us_per_auth"] = cpu_per_auth_us(
                machine_before, machine_after, result["answered"]
            )
            result["load_average"] = [round(x, 2) for x in os.getloadavg()]
            console.log(f"run {run + 1}: {result['auth_per_s']:,.0f}/s p50 {result['p50_ms']} ms "
                        f"p99 {result['p99_ms']} ms errors {result['errors']} "
                        f"server CPU {result['server_cpu_us_per_auth']} µs/auth")  # fmt: skip
            results.append(result)
    finally:
        for client in clients:
            await client.close()
    return results


def server_summary(log: Path) -> dict[str, Any]:
    """Batches, mean batch size and the share of wall time inside the issuer, from the server's log."""
    import re

    lines = [line for line in log.read_text().splitlines() if "shut down: ServerStats(" in line]
    if not lines:
        return {}
    stats = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", lines[-1].split("ServerStats(", 1)[1])}
    batches = stats.get("batches") or 1
    return {
        "batches": int(stats.get("batches", 0)),
        "mean_batch": round(stats.get("batched", 0) / batches, 1),
        "handler_ms_per_batch": round(1000 * stats.get("handler_s", 0) / batches, 2),
        "mac_errors": int(stats.get("mac_errors", 0)),
        "format_errors": int(stats.get("format_errors", 0)),
    }


def ledger_check(url: str) -> list[str]:
    from citycard.db import make_engine
    from citycard.ledger import check_invariants

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return check_invariants(conn)
    finally:
        engine.dispose()


def run_bench(
    db: DbChoice,
    *,
    seconds: float,
    terminals: int,
    depth: int,
    cards: int,
    runs: int,
    issuer: str,
    quiet: bool,
    worker: str = "thread",
    lanes: int = 1,
) -> dict[str, Any]:
    console = Console(stderr=True, quiet=quiet)
    with tempfile.TemporaryDirectory(prefix="citycard-bench-auth-") as tmp:
        directory = Path(tmp)
        url = create_database(db, directory)
        proc = None
        try:
            console.log(f"set-up: {cards} cards, {terminals} terminals on {db.value}")
            setup = prepare(directory, url, issuer_name=issuer, cards=cards, terminals=terminals)
            setup.worker, setup.lanes = worker, lanes
            proc, port = start_server(setup)
            results = asyncio.run(
                drive(setup, port, seconds=seconds, depth=depth, runs=runs, console=console,
                      server_pid=proc.pid)
            )  # fmt: skip
            proc.send_signal(signal.SIGTERM)
            server_exit = proc.wait(timeout=60)
            problems = ledger_check(url)
            server_stats = server_summary(directory / "server.log")
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            drop_database(url)

    def median(key: str) -> float | None:
        values = [r[key] for r in results if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "auth_per_s": median("auth_per_s"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "server_cpu_us_per_auth": median("server_cpu_us_per_auth"),
        "db_cpu_us_per_auth": median("db_cpu_us_per_auth"),
        "client_cpu_us_per_auth": median("client_cpu_us_per_auth"),
        "machine_cpu_us_per_auth": median("machine_cpu_us_per_auth"),
        "errors": sum(r["errors"] for r in results),
        "db": db.value,
        "seconds": seconds,
        "terminals": terminals,
        "depth": depth,
        "cards": cards,
        "worker": worker,
        "lanes": lanes,
        "runs": results,
        "server_exit": server_exit,
        "server": server_stats,
        "ledger_invariants": problems,
    }


@app.command("auth")
def auth_command(
    db: Annotated[DbChoice, typer.Option("--db", help="Database of the issuer host.")] = DbChoice.sqlite,
    seconds: Annotated[float, typer.Option("--seconds", help="Length of each timed run.")] = SECONDS_DEFAULT,
    terminals: Annotated[
        int, typer.Option("--terminals", help="Concurrent terminal connections.")
    ] = TERMINALS_DEFAULT,
    depth: Annotated[int, typer.Option("--depth", help="Requests outstanding per terminal.")] = DEPTH_DEFAULT,
    cards: Annotated[
        int, typer.Option("--cards", help="Cards enrolled (half INTL, half GM).")
    ] = CARDS_DEFAULT,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs; medians are reported.")] = RUNS_DEFAULT,
    issuer: Annotated[
        str, typer.Option("--issuer", help="Issuer from data/hosts/issuers.toml.")
    ] = "citybank",
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker",
            help="host serve --worker: thread or process (default: process on PostgreSQL, else thread).",
        ),
    ] = None,
    lanes: Annotated[
        int | None,
        typer.Option(
            "--lanes",
            help="host serve --lanes: issuer workers side by side (default: 2 on PostgreSQL, 1 on SQLite, "
            "whose writers queue for one lock anyway).",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """Authorisations/s over TCP through `citycard host serve` (ARQC verified, ledger posted, committed).

    Prints {"auth_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_auth", "db_cpu_us_per_auth",
    "errors", "runs": [...], ...}: medians over --runs. The CPU figures (host serve process, and the
    benchmark database's PostgreSQL backends, per answered request) steady the comparison of runs
    on a shared machine; each run also records the load average.
    """
    if not 0 < seconds <= 600:
        fail(f"--seconds must be in (0, 600], got {seconds}")
    if not 1 <= terminals <= 256:
        fail(f"--terminals must be 1..256, got {terminals}")
    if not 1 <= depth <= 64:
        fail(f"--depth must be 1..64, got {depth}")
    if not terminals <= cards <= 100_000:
        fail(f"--cards must be {terminals}..100000 (at least one card per terminal), got {cards}")
    # the server set-up measured best on a 2-core machine (docs/hosts.md): two issuer processes side
    # by side on PostgreSQL; on SQLite one writer at a time holds the database lock anyway
    on_postgresql = db is DbChoice.postgresql
    worker = worker or ("process" if on_postgresql else "thread")
    lanes = lanes or (2 if on_postgresql else 1)
    if worker not in ("thread", "process"):
        fail(f"--worker must be thread or process, got {worker!r}")
    if not 1 <= lanes <= 16:
        fail(f"--lanes must be 1..16, got {lanes}")
    if not 1 <= runs <= 20:
        fail(f"--runs must be 1..20, got {runs}")
    try:
        result = run_bench(db, seconds=seconds, terminals=terminals, depth=depth, cards=cards, runs=runs,
                           issuer=issuer, quiet=json_output, worker=worker, lanes=lanes)  # fmt: skip
    except (OSError, RuntimeError) as exc:
        fail(str(exc))
    for run in result["runs"]:
        for sample in run["error_samples"]:
            print(f"error: {sample}", file=sys.stderr)
    print(json.dumps(result) if json_output else json.dumps(result, indent=2))
