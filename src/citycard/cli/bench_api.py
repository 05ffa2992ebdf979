"""`citycard bench api`: card-status reads per second and loss reports per second through
`citycard serve` (one uvicorn worker, a SUBPROCESS) over real HTTP.

Set-up (not timed): a fresh database (SQLite file in a temp dir, or a new PostgreSQL database with
``--db postgresql``, dropped afterwards), ``--cards`` active cards for the reads and
``--loss-cards`` more for the loss reports, brought through the real lifecycle functions (apply →
… → activate, GM citizen cards without images), a terminal API key for the reads and an operator
login for the reports. Then ``citycard serve --port 0`` starts on that data dir.

Timed: ``--clients`` concurrent asyncio workers sharing one ``httpx.AsyncClient`` (keep-alive, a
connection per worker) read ``GET /v1/cards/{id}/status`` for ``--seconds``, over the cards in
turn; every answer must be 200 with the card's state. Then ``--loss-clients`` workers post
``POST /v1/cards/{id}/report-loss`` (each with its Idempotency-Key) until every loss card is
reported or ``--seconds`` pass; every answer must be 200 with state ``lost_oral`` — each is a
write transaction that blocks the card at the issuer, audits and emits ``card.lost``. Latency is
per request (send → answer, ``time.perf_counter``), p50/p99 nearest-rank. The client runs in this
process and shares the machine with the server: the figure is the pair's, not the server's alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from citycard.cli.bench import app
from citycard.cli.bench_auth import DbChoice, create_database, drop_database
from citycard.cli.bench_tap import percentile_ms
from citycard.cli.common import fail

SECONDS_DEFAULT = 10.0
# Four keep the one server worker busy (p50 ≈ 2 ms) while the httpx client, which shares the 2-core
# machine with the server, spends least per request; 16 mostly measure httpx's pool (docs/api.md).
CLIENTS_DEFAULT = 4
LOSS_CLIENTS_DEFAULT = 4
CARDS_DEFAULT = 50
LOSS_CARDS_DEFAULT = 200
SERVER_START_S = 120.0
REQUEST_TIMEOUT_S = 30.0
ERRORS_SHOWN = 10
WARM_UP_S = 1.0
BENCH_PASSWORD = "bench-operator-password"
ACTOR = "bench"


def prepare(directory: Path, url: str, *, cards: int, loss_cards: int) -> dict[str, Any]:
    """Migrate, make ``cards + loss_cards`` active cards, a terminal key and an operator login."""
    from citycard.api.auth import create_api_key, create_user
    from citycard.api.roles import Role
    from citycard.db import make_engine, upgrade, write_transaction
    from citycard.hsm import SoftHSM
    from citycard.platform import cardholders
    from citycard.platform import cards as platform_cards
    from citycard.platform.identity import check_character

    hsm = SoftHSM.open(directory / "hsm-keys.json", master_key_file=directory / "hsm-master.key")
    engine = make_engine(url)
    made: list[int] = []
    try:
        upgrade(engine)
        for index in range(cards + loss_cards):
            with write_transaction(engine) as conn:
                body = f"110105{19500101 + (index // 900) * 10_000:08d}{index % 900 + 100:03d}"
                holder = cardholders.register(conn, name=f"Bench {index}", id_number=body + check_character(body),
                                              kind="resident", actor=ACTOR)  # fmt: skip
                card_id = platform_cards.apply(conn, holder["id"], profile="citizen-card-gm", issuer="citybank",
                                               actor=ACTOR)["id"]  # fmt: skip
                platform_cards.approve(conn, card_id, actor=ACTOR)
                platform_cards.prepare(conn, card_id, hsm=hsm, actor=ACTOR)
                platform_cards.personalise(conn, card_id, hsm=hsm, image_dir=None, actor=ACTOR)
                platform_cards.issue(conn, card_id, hsm=hsm, actor=ACTOR)
                platform_cards.activate(conn, card_id, actor=ACTOR)
                made.append(card_id)
        with write_transaction(engine) as conn:
            key = create_api_key(conn, name="bench-terminal", role=Role.terminal, subject="BENCH001")["key"]
            create_user(conn, username="bench-operator", password=BENCH_PASSWORD, role=Role.operator)
    finally:
        engine.dispose()
    return {"read_cards": made[:cards], "loss_cards": made[cards:], "terminal_key": key}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(directory: Path, url: str) -> tuple[subprocess.Popen[str], int]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("CITYCARD_HSM_MASTER_KEY", "CITYCARD_DATABASE_URL")
    }
    env["CITYCARD_DATA_DIR"] = str(directory)
    env["CITYCARD_ADMIN_PASSWORD"] = BENCH_PASSWORD
    if not url.startswith("sqlite"):
        env["CITYCARD_DATABASE_URL"] = url
    log = (directory / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "citycard.cli.main", "serve", "--port", "0", "--data-dir", str(directory)],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, int(line.rsplit(":", 1)[1])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"citycard serve did not start: {(directory / 'server.log').read_text()[-2000:]}")


async def _reads(base: str, key: str, card_ids: list[int], *, seconds: float, clients: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    warm_up_count = [0]
    clock = time.perf_counter
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, limits=limits,
                                 timeout=REQUEST_TIMEOUT_S) as client:  # fmt: skip

        async def worker(offset: int, end: float, record: bool) -> None:
            index = offset
            while clock() < end:
                card_id = card_ids[index % len(card_ids)]
                index += clients
                sent = clock()
                try:
                    answer = await client.get(f"/v1/cards/{card_id}/status")
                except httpx.HTTPError as exc:
                    errors.append(f"card {card_id}: {type(exc).__name__}: {exc}")
                    continue
                if record:
                    latencies.append(clock() - sent)
                else:
                    warm_up_count[0] += 1
                if answer.status_code != 200 or answer.json().get("id") != card_id:
                    errors.append(f"card {card_id}: HTTP {answer.status_code} {answer.text[:200]}")

        await asyncio.gather(*(worker(i, clock() + WARM_UP_S, False) for i in range(clients)))
        warm_up_reads = warm_up_count[0]
        errors.clear()
        started = clock()
        await asyncio.gather(*(worker(i, started + seconds, True) for i in range(clients)))
        elapsed = clock() - started
    return {"reads_per_s": round(len(latencies) / elapsed, 1), "read_p50_ms": round(percentile_ms(latencies, 50), 2),
            "p99_ms": round(percentile_ms(latencies, 99), 2), "reads": len(latencies), "warm_up_reads": warm_up_reads,
            "read_errors": errors}  # fmt: skip


async def _losses(base: str, card_ids: list[int], *, seconds: float, clients: int) -> dict[str, Any]:
    import httpx

    clock = time.perf_counter
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        login = await client.post(
            "/v1/auth/login", json={"username": "bench-operator", "password": BENCH_PASSWORD}
        )
        login.raise_for_status()
        client.headers["Authorization"] = f"Bearer {login.json()['token']}"
        queue = list(reversed(card_ids))
        latencies: list[float] = []
        errors: list[str] = []
        started = clock()
        end = started + seconds

        async def worker() -> None:
            while queue and clock() < end:
                card_id = queue.pop()
                sent = clock()
                answer = await client.post(f"/v1/cards/{card_id}/report-loss", json={"formal": False},
                                           headers={"Idempotency-Key": f"bench-loss-{card_id}"})  # fmt: skip
                latencies.append(clock() - sent)
                if answer.status_code != 200 or answer.json().get("state") != "lost_oral":
                    errors.append(f"card {card_id}: HTTP {answer.status_code} {answer.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = clock() - started
    return {"loss_reports_per_s": round(len(latencies) / elapsed, 1),
            "loss_p99_ms": round(percentile_ms(latencies, 99), 2) if latencies else None,
            "loss_reports": len(latencies), "loss_errors": errors}  # fmt: skip


def run_bench(db: DbChoice, *, seconds: float, clients: int, loss_clients: int, cards: int, loss_cards: int,
              quiet: bool) -> dict[str, Any]:  # fmt: skip
    console = Console(stderr=True, quiet=quiet)
    with tempfile.TemporaryDirectory(prefix="citycard-bench-api-") as tmp:
        directory = Path(tmp)
        url = (
            create_database(db, directory)
            if db is DbChoice.postgresql
            else f"sqlite:///{directory / 'citycard.db'}"
        )
        proc = None
        try:
            console.log(f"set-up: {cards + loss_cards} active cards on {db.value}")
            setup = prepare(directory, url, cards=cards, loss_cards=loss_cards)
            proc, port = start_server(directory, url)
            base = f"http://127.0.0.1:{port}"
            console.log(f"reads: {clients} clients for {seconds} s")
            cpu_before = cpu_s(proc.pid)
            reads = asyncio.run(_reads(base, setup["terminal_key"], setup["read_cards"], seconds=seconds,
                                       clients=clients))  # fmt: skip
            # Server CPU per read (warm-up included, so slightly high): what one worker would do with a
            # core of its own, whatever the client and the other processes on the machine take.
            server_cpu = cpu_s(proc.pid) - cpu_before
            reads["server_cpu_ms_per_read"] = round(
                1000 * server_cpu / max(1, reads["reads"] + reads["warm_up_reads"]), 3
            )
            console.log(f"{reads['reads_per_s']:,.0f} reads/s, p99 {reads['p99_ms']} ms; loss reports")
            losses = asyncio.run(_losses(base, setup["loss_cards"], seconds=seconds, clients=loss_clients))
            proc.send_signal(signal.SIGTERM)
            server_exit = proc.wait(timeout=60)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            drop_database(url)
    errors = reads.pop("read_errors") + losses.pop("loss_errors")
    reads["server_reads_per_cpu_s"] = (
        round(1000 / reads["server_cpu_ms_per_read"]) if reads["server_cpu_ms_per_read"] else None
    )
    return {"reads_per_s": reads["reads_per_s"], "p99_ms": reads["p99_ms"],
            "loss_reports_per_s": losses["loss_reports_per_s"], **reads, **losses, "errors": len(errors),
            "error_samples": errors[:ERRORS_SHOWN], "db": db.value, "seconds": seconds, "clients": clients,
            "loss_clients": loss_clients, "server_exit": server_exit}  # fmt: skip


@app.command("api")
def api_command(
    seconds: Annotated[
        float, typer.Option("--seconds", help="Length of the read run (and loss-report cap).")
    ] = SECONDS_DEFAULT,
    clients: Annotated[int, typer.Option("--clients", help="Concurrent readers.")] = CLIENTS_DEFAULT,
    loss_clients: Annotated[
        int, typer.Option("--loss-clients", help="Concurrent loss reporters.")
    ] = LOSS_CLIENTS_DEFAULT,
    cards: Annotated[int, typer.Option("--cards", help="Active cards read in turn.")] = CARDS_DEFAULT,
    loss_cards: Annotated[
        int, typer.Option("--loss-cards", help="Active cards reported lost.")
    ] = LOSS_CARDS_DEFAULT,
    db: Annotated[DbChoice, typer.Option("--db", help="Database behind the server.")] = DbChoice.sqlite,
    json_output: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """Card-status reads/s and loss reports/s through `citycard serve` (one uvicorn worker) over HTTP.

    Prints {"reads_per_s", "p99_ms", "loss_reports_per_s", ...}. Example: citycard bench api --seconds 5 --json
    """
    if not 0 < seconds <= 600:
        fail(f"--seconds must be in (0, 600], got {seconds}")
    if not 1 <= clients <= 256:
        fail(f"--clients must be 1..256, got {clients}")
    if not 1 <= loss_clients <= 64:
        fail(f"--loss-clients must be 1..64, got {loss_clients}")
    if not 1 <= cards <= 10_000:
        fail(f"--cards must be 1..10000, got {cards}")
    if not 1 <= loss_cards <= 10_000:
        fail(f"--loss-cards must be 1..10000, got {loss_cards}")
    try:
        result = run_bench(db, seconds=seconds, clients=clients, loss_clients=loss_clients, cards=cards,
                           loss_cards=loss_cards, quiet=json_output)  # fmt: skip
    except (OSError, RuntimeError) as exc:
        fail(str(exc))
    for sample in result["error_samples"]:
        print(f"error: {sample}", file=sys.stderr)
    print(json.dumps(result) if json_output else json.dumps(result, indent=2))
