"""`citycard host`: run an issuer host over ISO 8583/TCP, enrol cards, create terminal master keys.

``host serve`` opens the software HSM and the database of the data dir (or ``--db``), upgrades the
schema, provisions the issuer's keys if absent, and serves :class:`citycard.host.server.HostServer`
in front of :class:`citycard.host.issuer.IssuerHost` until SIGTERM/SIGINT, then finishes the
requests it has read (graceful shutdown). It prints one line ``listening on HOST:PORT`` when ready.
Terminal master keys are read from the HSM at start: create them with ``host terminal-key`` first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from citycard.cli.common import fail, print_json

if TYPE_CHECKING:
    from citycard.hsm import SoftHSM

app = typer.Typer(help="Issuer host: serve ISO 8583 over TCP, enrol cards, terminal master keys.")

YUAN_PATTERN = re.compile(r"(?P<yuan>\d{1,10})(?:\.(?P<fen>\d{1,2}))?")
EXPIRY_PATTERN = re.compile(r"(?P<yy>\d\d)(?P<mm>0[1-9]|1[0-2])")
TERMINAL_ID_PATTERN = re.compile(r"[0-9A-Za-z]{8}")  # F41 ans8; letters and digits so it is a key label too
PSN_MAX = 99  # 5F34 n2
SWITCH_INTERVAL_S = 0.0005  # GIL switch interval of `host serve` (default 0.005), see serve()


class SuiteChoice(StrEnum):
    gm = "gm"
    intl = "intl"


class WorkerChoice(StrEnum):
    process = "process"
    thread = "thread"


DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data dir for the HSM key store and the SQLite database.")
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: CITYCARD_DATABASE_URL or SQLite in the data dir)."),
]
IssuerOption = Annotated[str, typer.Option("--issuer", help="Issuer name from data/hosts/issuers.toml.")]


def parse_yuan_fen(text: str, option: str) -> int:
    """A non-negative yuan amount with at most two decimals, exactly, in fen.

    >>> parse_yuan_fen("12.5", "--balance"), parse_yuan_fen("0", "--balance")
    (1250, 0)
    """
    match = YUAN_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{option} {text!r} is not an amount in yuan such as 12.50")
    return int(match["yuan"]) * 100 + int((match["fen"] or "0").ljust(2, "0"))


def parse_expiry(text: str) -> date:
    """YYMM → the last day of that month (cards expire at the end of 5F24's month).

    >>> parse_expiry("3012")
    datetime.date(2030, 12, 31)
    """
    match = EXPIRY_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--expiry {text!r} must be YYMM with a month 01..12")
    year, month = 2000 + int(match["yy"]), int(match["mm"])
    first_of_next = date(year + month // 12, month % 12 + 1, 1)
    return date.fromordinal(first_of_next.toordinal() - 1)


def _use_data_dir(data_dir: Path | None) -> None:
    # The HSM and the database both follow CITYCARD_DATA_DIR; set it once for this process.
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.environ["CITYCARD_DATA_DIR"] = str(data_dir.resolve())


def open_hsm() -> SoftHSM:
    from citycard.hsm import HSMError, SoftHSM

    try:
        return SoftHSM.open()
    except HSMError as exc:
        fail(str(exc))


def open_engine(db: str | None, data_dir: Path | None) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from citycard.db import database_url, make_engine, normalize_url, upgrade

    url = normalize_url(db) if db else database_url(data_dir)
    try:
        # No pool pre-ping: it costs a round trip per issuer batch; after a database restart the
        # failed batch is retried message by message on fresh connections (IssuerHost.process_batch).
        engine = make_engine(url, pre_ping=False)
        upgrade(engine)
    except (SQLAlchemyError, OSError) as exc:  # driver errors: one line, not a traceback
        fail(f"database {url.split('@')[-1]}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return engine


def open_issuer(name: str, *, db: str | None, data_dir: Path | None) -> tuple[Any, SoftHSM]:
    """The named IssuerHost on the data dir's HSM and database, its keys provisioned; and the HSM."""
    from citycard.host.issuer import IssuerHost, load_issuer_configs

    configs = load_issuer_configs()
    if name not in configs:
        fail(f"--issuer {name!r} is unknown: expected one of {', '.join(sorted(configs))}")
    hsm = open_hsm()
    issuer = IssuerHost(configs[name], engine=open_engine(db, data_dir), hsm=hsm)
    issuer.provision_keys()
    return issuer, hsm


def issuer_worker(name: str, db: str | None, data_dir: Path | None) -> Any:
    """The IssuerHost of a ``--worker process`` child (its keys were provisioned by the parent)."""
    from citycard.db import database_url, make_engine, normalize_url
    from citycard.host.issuer import IssuerHost, load_issuer_configs
    from citycard.hsm import SoftHSM

    _use_data_dir(data_dir)
    url = normalize_url(db) if db else database_url(data_dir)
    return IssuerHost(
        load_issuer_configs()[name], engine=make_engine(url, pre_ping=False), hsm=SoftHSM.open()
    )


@app.command("serve")
def serve(
    issuer: IssuerOption,
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port).")] = 0,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    db: DbOption = None,
    data_dir: DataDirOption = None,
    no_mac: Annotated[
        bool, typer.Option("--no-mac", help="Accept requests from peers that never signed on.")
    ] = False,
    batch_max: Annotated[
        int, typer.Option("--batch-max", help="Requests per issuer batch (one commit each).")
    ] = 256,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log sign-ons and connections.")] = False,
    worker: Annotated[
        WorkerChoice,
        typer.Option("--worker", help="Run the issuer's batches in a child process or a thread."),
    ] = WorkerChoice.thread,
    lanes: Annotated[
        int,
        typer.Option(
            "--lanes",
            help="Issuer workers side by side, each taking the batches of its own terminals "
            "(crc32(F41) mod N); with --worker process each is a process of its own.",
        ),
    ] = 1,
) -> None:
    """Serve the issuer NAME over ISO 8583/TCP until SIGTERM; prints "listening on HOST:PORT"."""
    from citycard.host.issuer import IssuerHost
    from citycard.host.server import LANES_MAX, QUEUE_MAX, HostServer, threaded
    from citycard.host.worker import ProcessHandler, WorkerError

    if not 0 <= port <= 65_535:
        fail(f"--port must be 0..65535, got {port}")
    if not 1 <= batch_max <= QUEUE_MAX:
        fail(f"--batch-max must be 1..{QUEUE_MAX}, got {batch_max}")
    if not 1 <= lanes <= LANES_MAX:
        fail(f"--lanes must be 1..{LANES_MAX}, got {lanes}")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    _use_data_dir(data_dir)
    # The issuer's worker thread waits on the database and then needs the GIL back while the event
    # loop decodes and MACs; with the default 5 ms switch interval every database round trip can
    # cost up to 5 ms of waiting (the convoy effect). A short interval keeps batches short.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    issuer_host, hsm = open_issuer(issuer, db=db, data_dir=data_dir)
    handlers: list[Any] = []
    if worker is WorkerChoice.process:
        issuer_host.engine.dispose()  # the children open their own connections
        try:
            for _ in range(lanes):
                handlers.append(ProcessHandler("citycard.cli.host:issuer_worker", issuer, db, data_dir))
        except WorkerError as exc:
            for started in handlers:
                started.close()
            fail(str(exc))
    else:  # one IssuerHost per lane (its own batch state), sharing the engine's pool and the HSM
        handlers.append(threaded(issuer_host))
        for _ in range(lanes - 1):
            handlers.append(threaded(IssuerHost(issuer_host.config, engine=issuer_host.engine, hsm=hsm)))
    server = HostServer(
        handlers[0],
        lanes=handlers[1:],
        hsm=hsm,
        host=host,
        port=port,
        require_mac=not no_mac,
        institution_id=issuer_host.config.institution_id,
        batch_max=batch_max,
        pin_keys={name: labels.pin_key for name, labels in issuer_host.config.keys.items()},
    )

    async def run() -> None:
        try:
            bound = await server.start()
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        print(f"listening on {host}:{bound}", flush=True)
        await server.serve_forever()

    asyncio.run(run())


@app.command("enrol")
def enrol(
    issuer: IssuerOption,
    pan: Annotated[str, typer.Option("--pan", help="Card number (5A), 13..19 digits.")],
    psn: Annotated[int, typer.Option("--psn", help="PAN sequence number (5F34).")],
    expiry: Annotated[str, typer.Option("--expiry", help="Expiry YYMM (5F24 month).")],
    suite: Annotated[SuiteChoice, typer.Option("--suite", help="Algorithm suite of the card.")],
    pin: Annotated[str | None, typer.Option("--pin", help="Online PIN (stored only as a PVV).")] = None,
    ec_balance: Annotated[str, typer.Option("--ec-balance", help="Opening EC balance, yuan.")] = "0",
    balance: Annotated[str, typer.Option("--balance", help="Opening bank account balance, yuan.")] = "0",
    db: DbOption = None,
    data_dir: DataDirOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Enrol a card with the issuer: card record, ledger accounts, opening balances, PVV."""
    from citycard.crypto import GM, INTL

    if not (13 <= len(pan) <= 19 and pan.isdigit()):
        fail(f"--pan must be 13 to 19 digits, got {pan!r}")
    if not 0 <= psn <= PSN_MAX:
        fail(f"--psn must be 0..{PSN_MAX}, got {psn}")
    if pin is not None and not (4 <= len(pin) <= 12 and pin.isdigit()):
        fail("--pin must be 4 to 12 digits")
    try:
        expires = parse_expiry(expiry)
        ec_fen, bank_fen = parse_yuan_fen(ec_balance, "--ec-balance"), parse_yuan_fen(balance, "--balance")
    except ValueError as exc:
        fail(str(exc))
    _use_data_dir(data_dir)
    issuer_host, _ = open_issuer(issuer, db=db, data_dir=data_dir)
    chosen = GM if suite is SuiteChoice.gm else INTL
    try:
        issuer_host.enrol_card(
            pan=pan, psn=psn, expiry=expires, suite=chosen, pin=pin,
            ec_balance_fen=ec_fen, account_balance_fen=bank_fen,
        )  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    result = {"issuer": issuer, "pan": pan, "psn": psn, "expiry": expires.isoformat(), "suite": chosen.name,
              "ec_balance_fen": ec_fen, "balance_fen": bank_fen, "pin": pin is not None}  # fmt: skip
    if json_output:
        print_json(result)
    else:
        print(
            f"enrolled {pan}/{psn:02d} ({chosen.name}) with {issuer}: EC {ec_fen} fen, account {bank_fen} fen"
        )


@app.command("terminal-key")
def terminal_key(
    terminal_id: Annotated[str, typer.Option("--terminal-id", help="F41 terminal ID, 8 letters/digits.")],
    suite: Annotated[
        SuiteChoice, typer.Option("--suite", help="Suite of the TMK and its session keys.")
    ] = SuiteChoice.intl,
    replace: Annotated[bool, typer.Option("--replace", help="Replace an existing TMK.")] = False,
    data_dir: DataDirOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create the terminal master key tmk:<ID> in the HSM (prints its KCV only, never the key)."""
    from citycard.crypto import GM, INTL
    from citycard.hsm import HSMError

    if not TERMINAL_ID_PATTERN.fullmatch(terminal_id):
        fail(f"--terminal-id must be 8 letters or digits (F41), got {terminal_id!r}")
    _use_data_dir(data_dir)
    hsm = open_hsm()
    label = f"tmk:{terminal_id}"
    try:
        info = hsm.generate_key(label, "TMK", GM if suite is SuiteChoice.gm else INTL, replace=replace)
    except HSMError as exc:
        fail(str(exc))
    if json_output:
        print_json({"label": info.label, "suite": info.suite.name, "kcv": info.kcv_hex})
    else:
        print(f"{info.label} {info.suite.name} KCV {info.kcv_hex}")
