"""`citycard serve` (the platform API and console) and `citycard api-key create|list|revoke`.

``serve`` opens the data dir (``--data-dir``, else ``CITYCARD_DATA_DIR``, else
``~/.local/share/citycard``): the SQLite database there — or PostgreSQL when
``CITYCARD_DATABASE_URL`` is set — brought to the newest migration, the HSM key store there, card
images under ``<data dir>/cards``. On an empty database it creates the ``admin`` operator with the
password in ``CITYCARD_ADMIN_PASSWORD``, or makes one up and prints it once. Then one uvicorn
worker serves the API (/v1, /docs) and the console (/console, when citycard.web is installed).
It prints ``listening on http://HOST:PORT`` when it accepts connections (``--port 0`` picks a free port).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from citycard.cli.common import fail, parse_suite_labels

HOST_DEFAULT = "127.0.0.1"
PORT_DEFAULT = 8000
BACKLOG = 2048  # pending connections the listening socket holds under a burst
ROLES = ("operator", "bank", "sector", "regulator", "terminal")

api_key_app = typer.Typer(help="API keys for sector systems and terminals (shown once at creation).",
                          no_args_is_help=True)  # fmt: skip

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data dir: SQLite database, HSM key store, card images "
                 "(default $CITYCARD_DATA_DIR or ~/.local/share/citycard)."),
]  # fmt: skip


def data_dir_of(data_dir: Path | None) -> Path:
    """The data dir to use, created if missing; exported as CITYCARD_DATA_DIR for the HSM."""
    from citycard.db.engine import DATA_DIR_ENV, DEFAULT_DATA_DIR

    chosen = data_dir or Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    chosen = chosen.expanduser().resolve()
    chosen.mkdir(parents=True, exist_ok=True)
    os.environ[DATA_DIR_ENV] = str(chosen)
    return chosen


def open_platform(data_dir: Path) -> tuple[Any, Any]:
    """(engine after ``upgrade()``, SoftHSM) for the data dir; one error line and exit 2 on failure."""
    from sqlalchemy.exc import SQLAlchemyError

    from citycard.db import database_url, make_engine, upgrade
    from citycard.hsm import HSMError, SoftHSM

    url = database_url(data_dir)
    try:
        # A SQLite file cannot drop a connection: no pre-ping (a query per request saved);
        # PostgreSQL keeps it, so a restarted server costs no failed request.
        engine = make_engine(url, pre_ping=not url.startswith("sqlite"))
        upgrade(engine)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        fail(f"database {url.split('@')[-1]}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    try:
        hsm = SoftHSM.open()
    except HSMError as exc:
        fail(str(exc))
    return engine, hsm


def build_app(data_dir: Path, **settings: Any) -> Any:
    """The API app on the data dir (console mounted when present), the admin bootstrapped;
    ``settings`` are further :class:`~citycard.api.ApiSettings` fields."""
    from citycard.api import ApiSettings, create_app
    from citycard.api.auth import ADMIN_PASSWORD_ENV, ADMIN_USERNAME, bootstrap_admin
    from citycard.db import write_transaction

    engine, hsm = open_platform(data_dir)
    with write_transaction(engine) as conn:
        made_up = bootstrap_admin(conn, os.environ.get(ADMIN_PASSWORD_ENV) or None)
    if made_up is not None:
        # Shown once, never stored in clear (the database keeps its scrypt hash).
        print(f"created operator {ADMIN_USERNAME!r} with one-time password: {made_up}", flush=True)
    app = create_app(engine=engine, hsm=hsm, settings=ApiSettings(image_dir=data_dir / "cards", **settings))
    app.state.console = mount_console(app)
    return app


def mount_console(app: Any) -> bool:
    """Mount the console (``citycard.web.mount``) when that package is installed; True if mounted.
    Done here, in the top layer, so that ``citycard.api`` never imports ``citycard.web`` (DESIGN §2)."""
    import importlib.util

    if importlib.util.find_spec("citycard.web") is None:
        return False
    from citycard.web import mount

    mount(app)
    return True


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the proto
    # says TCP, and uvicorn writes headers and body separately — with Nagle on, every answer would
    # wait ~40 ms for the client's delayed ACK. NODELAY on the listener is inherited as well (Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = HOST_DEFAULT,
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port).")] = PORT_DEFAULT,
    data_dir: DataDirOption = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
    clearing_labels: Annotated[
        list[str] | None,
        typer.Option(
            "--clearing-labels",
            help="SUITE=IMK_AC,IMK_MAC: the issuer keys validators' TCs are checked with "
            "(default imk-ac-intl,imk-mac-intl and imk-ac-gm,imk-mac-gm in the data dir's HSM).",
        ),
    ] = None,
    fare_table: Annotated[
        str, typer.Option("--fare-table", help="The fare table validators download (a shipped name).")
    ] = "panzhihua",
) -> None:
    """Serve the platform API (/v1, OpenAPI at /docs) and the console on one uvicorn worker.

    Validators upload their taps to /v1/clearing/uploads: the TCs are checked with the issuer keys
    of the data dir's HSM (docs/validators.md).

    Example: CITYCARD_ADMIN_PASSWORD=... citycard serve --port 8000 --data-dir ./city
    """
    import uvicorn

    if not 0 <= port <= 65535:
        fail(f"--port must be 0..65535, got {port}")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        fail(f"--log-level must be critical, error, warning, info or debug, got {log_level!r}")
    labels = parse_suite_labels(clearing_labels or [], "--clearing-labels")
    try:
        from citycard.sectors.transit import load_table

        load_table(fare_table)
    except (ValueError, OSError) as exc:
        fail(f"--fare-table {fare_table!r}: {exc}")
    directory = data_dir_of(data_dir)
    app = build_app(directory, clearing_labels=labels, fare_table=fare_table)
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            shown = f"[{host}]" if ":" in host else host
            print(f"listening on http://{shown}:{bound}", flush=True)

    # lifespan on: it runs the NATS relay of the event log while CITYCARD_NATS_URL is set
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                            timeout_keep_alive=30)  # fmt: skip
    Server(config).run(sockets=[sock])
    app.state.engine.dispose()


@api_key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Option("--name", help="Unique name, e.g. health or bus-0001.")],
    role: Annotated[str, typer.Option("--role", help="sector, terminal, bank, regulator or operator.")],
    subject: Annotated[
        str | None,
        typer.Option("--subject", help="Sector name (sector keys; default --name) or terminal id."),
    ] = None,
    data_dir: DataDirOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API key; the key is printed ONCE (the database keeps only its SHA-256).

    Example: citycard api-key create --role sector --name health
    """
    from citycard.api.auth import create_api_key
    from citycard.api.roles import Role
    from citycard.db import write_transaction
    from citycard.platform.errors import PlatformError

    if role not in ROLES:
        fail(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if subject is None and role == "sector":
        subject = name
    engine, _ = open_platform(data_dir_of(data_dir))
    try:
        with write_transaction(engine) as conn:
            made = create_api_key(conn, name=name, role=Role(role), subject=subject)
    except PlatformError as exc:
        fail(exc.detail)
    finally:
        engine.dispose()
    if json_output:
        print(json.dumps(made, default=str))
        return
    print(f"API key {made['name']} (id {made['id']}, role {made['role']}, subject {made['subject']}):")
    print(made["key"])
    print("store it now: it is not shown again", file=sys.stderr)


@api_key_app.command("list")
def api_key_list(data_dir: DataDirOption = None) -> None:
    """List API keys (names, roles, prefixes; never the keys)."""
    from citycard.api.auth import list_api_keys
    from citycard.db import read_transaction

    engine, _ = open_platform(data_dir_of(data_dir))
    try:
        with read_transaction(engine) as conn:
            print(json.dumps(list_api_keys(conn), default=str, indent=2))
    finally:
        engine.dispose()


@api_key_app.command("revoke")
def api_key_revoke(
    key_id: Annotated[int, typer.Argument(help="Key id (from list).")], data_dir: DataDirOption = None
) -> None:
    """Revoke an API key (other running servers stop accepting it within 2 s)."""
    from citycard.api.auth import revoke_api_key
    from citycard.db import write_transaction
    from citycard.platform.errors import PlatformError

    engine, _ = open_platform(data_dir_of(data_dir))
    try:
        with write_transaction(engine) as conn:
            print(json.dumps(revoke_api_key(conn, key_id)))
    except PlatformError as exc:
        fail(exc.detail)
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``api-key`` to the ``citycard`` command (one line in cli/main.py)."""
    app.command(name="serve")(serve)
    app.add_typer(api_key_app, name="api-key")
