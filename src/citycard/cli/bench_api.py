"""`citycard bench api`: card-status reads per second and loss reports per second through
`citycard serve` (one uvicorn worker, a SUBPROCESS) over real HTTP.

Set-up (not timed): a fresh database (SQLite file in a temp dir, or a new PostgreSQL database with
``--db postgresql``, dropped afterwards), ``--cards`` active cards for the reads and
``--loss-cards`` more for the loss reports, brought through the real lifecycle functions (apply →
… → activate, GM citizen cards without images), a terminal API key for the reads and an operator
login for the reports. Then ``citycard serve --port 0`` starts on that data dir.

Timed: ``--clients`` keep-alive connections read ``GET /v1/cards/{id}/status`` with the terminal
key for WARM_UP_S + ``--seconds``, over the cards in turn, one request in flight per connection.
The load generator is deliberately light (:class:`ReadConnection`: an asyncio Protocol sending
pre-built HTTP/1.1 requests and reading only the status line, Content-Length and the small JSON
body, ~0.05 ms of CPU per read): it shares the 2-core machine with the server, and httpx, which
it replaced, cost as much per request as the server itself, so the figure measured the pair.
Every answer must be 200 with the card's id and a state; anything else is an error sample, never
a read. Then ``--loss-clients`` workers post ``POST /v1/cards/{id}/report-loss`` (httpx: a write
costs the server many times a read, so the client's share does not matter there; each with its
Idempotency-Key) until every loss card is reported or ``--seconds`` pass; every answer must be 200
with state ``lost_oral`` — each is a write transaction that blocks the card at the issuer, audits
and emits ``card.lost``. Latency is per request (send → complete answer, ``time.perf_counter``),
p50/p99 nearest-rank. ``server_cpu_ms_per_read`` (from /proc) and ``client_cpu_ms_per_read``
say how the machine's CPU was split.
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
from citycard.cli.bench_db import DbChoice, create_database, drop_database
from citycard.cli.bench_tap import percentile_ms
from citycard.cli.common import fail

SECONDS_DEFAULT = 10.0
# Four connections keep the one server worker busy at p99 < 10 ms; 16 give ~30 % more reads/s (the
# worker handles several ready connections per event-loop turn) at p99 ~7 ms (docs/api.md).
CLIENTS_DEFAULT = 4
LOSS_CLIENTS_DEFAULT = 4
CARDS_DEFAULT = 50
LOSS_CARDS_DEFAULT = 200
SERVER_START_S = 120.0
REQUEST_TIMEOUT_S = 30.0
ERRORS_SHOWN = 10
ERRORS_KEPT = 100  # error samples a run keeps (a wrong key would otherwise fill memory at ~2,000/s)
WARM_UP_S = 1.0
BENCH_PASSWORD = "bench-operator-password"
HOST = "127.0.0.1"
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


# --- the read load: a light HTTP/1.1 keep-alive client (asyncio Protocol) ----------------------------
HEADER_END = b"\r\n\r\n"
HEADER_BYTES_MAX = 16_384  # an answer's head longer than this is refused (uvicorn's is ~120 bytes)
BODY_BYTES_MAX = 65_536  # a status answer is ~70 bytes; anything near this is a wrong answer


def status_request(host: str, port: int, card_id: int, key: str) -> bytes:
    """The pre-built ``GET /v1/cards/{id}/status`` a terminal sends (HTTP/1.1, keep-alive).

    >>> status_request("127.0.0.1", 8000, 7, "cck_x").split(b"\\r\\n")[:2]
    [b'GET /v1/cards/7/status HTTP/1.1', b'Host: 127.0.0.1:8000']
    """
    return (f"GET /v1/cards/{card_id}/status HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {key}\r\n"
            "Accept: application/json\r\n\r\n").encode("ascii")  # fmt: skip


def parse_head(head: bytes) -> tuple[int, int]:
    """(status code, Content-Length) of an answer's head (status line + headers, no blank line).

    Only what the bench needs: a head without Content-Length (chunked, or close-delimited) is an
    error here, since the status read always answers with a known length.

    >>> parse_head(b"HTTP/1.1 200 OK\\r\\ndate: x\\r\\ncontent-length: 61\\r\\ncontent-type: application/json")
    (200, 61)
    >>> parse_head(b"HTTP/1.1 200 OK\\r\\ntransfer-encoding: chunked")
    Traceback (most recent call last):
    ...
    ValueError: answer without Content-Length: b'HTTP/1.1 200 OK'
    """
    status_line, _, headers = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            value = value.strip()
            if not value.isdigit() or int(value) > BODY_BYTES_MAX:
                raise ValueError(f"bad Content-Length {value[:20]!r}")
            return int(parts[1]), int(value)
    raise ValueError(f"answer without Content-Length: {status_line[:80]!r}")


class ReadConnection(asyncio.Protocol):
    """One keep-alive connection that sends the next status read as soon as the previous answer is
    complete (one request in flight, as a terminal would), checks it and times it.

    No coroutine per request and no header dictionary: the generator's own cost per read must stay
    well below the server's, since both share the 2-core machine (docs/api.md, Performance).
    """

    def __init__(self, requests: list[tuple[bytes, int]], first: int, step: int, plan: ReadPlan) -> None:
        self.requests = requests
        self.index = first
        self.step = step
        self.plan = plan
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.card_id = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if self.plan.clock() >= self.plan.end:
            self._finish()
            return
        request, self.card_id = self.requests[self.index % len(self.requests)]
        self.index += self.step
        self.sent = self.plan.clock()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(HEADER_END)
            if head_end < 0:
                if len(self.buffer) > HEADER_BYTES_MAX:
                    self._fail(f"answer head over {HEADER_BYTES_MAX} bytes")
                return
            try:
                status, length = parse_head(self.buffer[:head_end])
            except ValueError as exc:
                self._fail(str(exc))
                return
            body_start = head_end + len(HEADER_END)
            if len(self.buffer) < body_start + length:
                return
            body = self.buffer[body_start : body_start + length]
            self.buffer = self.buffer[body_start + length :]
            self.plan.answer(self.card_id, self.sent, status, body)
            if self.buffer:
                self._fail(f"{len(self.buffer)} bytes nobody asked for")
                return
            self._send()
            return

    def _fail(self, why: str) -> None:
        self.plan.error(f"card {self.card_id}: {why}")
        self._finish()

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.plan.error(f"card {self.card_id}: connection lost ({exc or 'closed by the server'})")
            self.done.set_result(None)


class ReadPlan:
    """Shared by the connections of one run: the clock, when to stop, what counts, what went wrong."""

    def __init__(self, record_from: float, end: float) -> None:
        self.clock = time.perf_counter
        self.record_from = record_from
        self.end = end
        self.latencies: list[float] = []
        self.warm_up_reads = 0
        self.error_count = 0
        self.errors: list[str] = []  # the first ERRORS_KEPT, as samples

    def error(self, what: str) -> None:
        self.error_count += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(what)

    def answer(self, card_id: int, sent: float, status: int, body: bytes) -> None:
        """One complete answer: a read when it is 200 with this card's id and a state, else an error."""
        now = self.clock()
        try:
            card = json.loads(body) if status == 200 else None
        except ValueError:
            card = None
        if not isinstance(card, dict) or card.get("id") != card_id or not card.get("state"):
            self.error(f"card {card_id}: HTTP {status} {body[:200]!r}")
        elif sent >= self.record_from:
            self.latencies.append(now - sent)
        else:
            self.warm_up_reads += 1


async def _reads(host: str, port: int, key: str, card_ids: list[int], *, seconds: float,
                 clients: int) -> dict[str, Any]:  # fmt: skip
    """``clients`` keep-alive connections reading card statuses for WARM_UP_S + ``seconds``."""
    loop = asyncio.get_running_loop()
    requests = [(status_request(host, port, card_id, key), card_id) for card_id in card_ids]
    started = time.perf_counter() + WARM_UP_S
    plan = ReadPlan(record_from=started, end=started + seconds)
    cpu_before = time.process_time()
    connections = []
    for offset in range(clients):
        _, protocol = await loop.create_connection(
            lambda o=offset: ReadConnection(requests, o, clients, plan), host, port
        )
        connections.append(protocol)
    await asyncio.wait_for(
        asyncio.gather(*(c.done for c in connections)), WARM_UP_S + seconds + REQUEST_TIMEOUT_S
    )
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_before
    reads = len(plan.latencies)
    return {"reads_per_s": round(reads / elapsed, 1),
            "read_p50_ms": round(percentile_ms(plan.latencies, 50), 2) if reads else None,
            "p99_ms": round(percentile_ms(plan.latencies, 99), 2) if reads else None, "reads": reads,
            "warm_up_reads": plan.warm_up_reads,
            "client_cpu_ms_per_read": round(1000 * client_cpu / max(1, reads + plan.warm_up_reads), 3),
            "read_errors": plan.errors, "read_error_count": plan.error_count}  # fmt: skip


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
            base = f"http://{HOST}:{port}"
            console.log(f"reads: {clients} connections for {seconds} s")
            cpu_before = cpu_s(proc.pid)
            reads = asyncio.run(_reads(HOST, port, setup["terminal_key"], setup["read_cards"], seconds=seconds,
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
    loss_errors = losses.pop("loss_errors")
    errors = reads.pop("read_errors") + loss_errors
    error_count = reads.pop("read_error_count") + len(loss_errors)
    reads["server_reads_per_cpu_s"] = (
        round(1000 / reads["server_cpu_ms_per_read"]) if reads["server_cpu_ms_per_read"] else None
    )
    return {"reads_per_s": reads["reads_per_s"], "p99_ms": reads["p99_ms"],
            "loss_reports_per_s": losses["loss_reports_per_s"], **reads, **losses, "errors": error_count,
            "error_samples": errors[:ERRORS_SHOWN], "db": db.value, "seconds": seconds, "clients": clients,
            "loss_clients": loss_clients, "server_exit": server_exit}  # fmt: skip


@app.command("api")
def api_command(
    seconds: Annotated[
        float, typer.Option("--seconds", help="Length of the read run (and loss-report cap).")
    ] = SECONDS_DEFAULT,
    clients: Annotated[
        int, typer.Option("--clients", help="Keep-alive connections reading.")
    ] = CLIENTS_DEFAULT,
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
