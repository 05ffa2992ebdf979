"""`citycard blacklist ...` and `citycard exchange ...`: the platform's blacklists and sector data
exchange from the command line (docs/platform-exchange.md).

The database is ``--db URL``, else ``CITYCARD_DATABASE_URL``, else the SQLite file under the data
dir; it must already be migrated (``citycard serve`` migrates on start).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citycard.cli.common import fail, print_json

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

blacklist_app = typer.Typer(
    help="Platform blacklists per terminal class: publish, versions, full list or delta, stale terminals.",
    no_args_is_help=True,
)
exchange_app = typer.Typer(
    help="The sector data exchange: subscribers, their cursors, and the NATS JetStream relay.",
    no_args_is_help=True,
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Database URL (sqlite:///path or postgresql://…); default CITYCARD_DATABASE_URL."
    ),
]
ClassOption = Annotated[
    str, typer.Option("--class", help="Terminal class: bus, metro, taxi, pos, hospital, campus, gate.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _engine(db: str | None) -> Engine:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from citycard.db import database_url, make_engine, normalize_url

    url = normalize_url(db) if db else database_url()
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        fail(f"--db: {exc}")
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        fail(f"no database at {parsed.database} (give --db or set CITYCARD_DATABASE_URL)")
    return make_engine(url)


@contextmanager
def _transaction(db: str | None, *, write: bool) -> Iterator[Connection]:
    """A transaction on a migrated database; a PlatformError or a database error → one line, exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from citycard.db import current_revision, head_revision, read_transaction, write_transaction
    from citycard.platform.errors import PlatformError

    engine = _engine(db)
    try:
        with (write_transaction if write else read_transaction)(engine) as conn:
            revision = current_revision(conn)
            if revision != head_revision():
                fail(
                    f"the database is at revision {revision}, not {head_revision()}: run `citycard serve` once"
                )
            yield conn
    except PlatformError as exc:
        fail(f"{exc.code}: {exc.detail}")
    except SQLAlchemyError as exc:
        fail(f"database: {str(exc).strip().splitlines()[0]}")
    finally:
        engine.dispose()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


@blacklist_app.command("publish")
def publish_command(
    terminal_class: Annotated[str | None, typer.Option("--class", help="One terminal class.")] = None,
    every_class: Annotated[bool, typer.Option("--all", help="Every terminal class.")] = False,
    db: DbOption = None, actor: Annotated[str, typer.Option("--actor")] = "cli", json_output: JsonOption = False,
) -> None:  # fmt: skip
    """Publish the list as it stands now (no new version when nothing changed).

    Example: citycard blacklist publish --class bus --json ; citycard blacklist publish --all
    """
    from citycard.platform import blacklist

    if (terminal_class is None) == (not every_class):
        fail("give either --class NAME or --all")
    names = list(blacklist.TERMINAL_CLASSES) if every_class else [terminal_class]
    rows = []
    with _transaction(db, write=True) as conn:
        for name in names:
            blacklist.publish(conn, terminal_class=name, actor=actor, at=datetime.now(UTC))
            rows.append(_jsonable(blacklist.versions(conn, terminal_class=name, limit=1)[0]))
    if json_output:
        print_json(rows if every_class else rows[0])
        return
    for row in rows:
        print(
            f"{row['terminal_class']} list version {row['version']}: {row['entry_count']:,} entries "
            f"(+{row['added_count']:,} −{row['removed_count']:,}), body SHA-256 {row['body_sha256']}"
        )


@blacklist_app.command("drain")
def drain_command(db: DbOption = None, json_output: JsonOption = False) -> None:
    """Publish what loss reports, unblocks and flags changed since the last drain (incremental
    versions; `citycard serve` does this by itself every half second).

    Example: citycard blacklist drain --json
    """
    from citycard.platform import blacklist_outbox

    drained, cursor, versions = 0, 0, {}
    for _ in range(1_000):  # rounds of at most DRAIN_EVENTS_MAX events, each its own transaction
        with _transaction(db, write=True) as conn:
            result = blacklist_outbox.drain(conn)
        drained, cursor = drained + result.events, result.cursor
        versions = result.versions or versions
        if result.events < blacklist_outbox.DRAIN_EVENTS_MAX:
            break
    answer = {"events": drained, "cursor": cursor, "versions": versions}
    if json_output:
        print_json(answer)
    elif drained == 0:
        print(f"nothing to publish (publisher cursor {cursor})")
    else:
        shown = ", ".join(f"{name} v{version}" for name, version in versions.items())
        print(f"{drained} change events published: {shown}")


@blacklist_app.command("show")
def show_command(
    terminal_class: ClassOption, db: DbOption = None,
    limit: Annotated[int, typer.Option("--limit", help="Versions to show, newest first.")] = 20,
    json_output: JsonOption = False,
) -> None:  # fmt: skip
    """The class's published versions, newest first.

    Example: citycard blacklist show --class bus
    """
    from citycard.platform import blacklist

    with _transaction(db, write=False) as conn:
        rows = [_jsonable(r) for r in blacklist.versions(conn, terminal_class=terminal_class, limit=limit)]
    if json_output:
        print_json(rows)
        return
    table = Table(title=f"{terminal_class} blacklist versions")
    for column in ("version", "entries", "added", "removed", "published", "by", "body SHA-256"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["version"]), f"{r['entry_count']:,}", str(r["added_count"]), str(r["removed_count"]),
            r["published_at"], r["published_by"], r["body_sha256"][:16] + "…",
        )  # fmt: skip
    Console().print(table)


@blacklist_app.command("export")
def export_command(
    terminal_class: ClassOption,
    out: Annotated[
        Path, typer.Option("--out", help="File to write: the exception file, or the delta with --from.")
    ],
    from_version: Annotated[
        int | None, typer.Option("--from", help="Write the delta from this version.")
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", help="List version (default: the latest).")
    ] = None,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write the full list (the kernel's exception file; `citycard terminal blacklist check` reads it)
    or, with --from, the delta file a terminal holding that version applies.

    Example: citycard blacklist export --class bus --from 41 --out bus-41-42.ccxd
    """
    from citycard.platform import blacklist

    if not out.parent.is_dir():
        fail(f"--out: folder {out.parent} does not exist")
    with _transaction(db, write=False) as conn:
        if from_version is None:
            full = blacklist.full_list(conn, terminal_class=terminal_class, version=version)
            data, what, shown_version = full.to_bytes(), "full list", full.version
        else:
            data = blacklist.delta(
                conn, terminal_class=terminal_class, from_version=from_version, to_version=version
            )
            what, shown_version = f"delta from {from_version}", int.from_bytes(data[28:36])
    try:
        out.write_bytes(data)
    except OSError as exc:
        fail(f"--out: cannot write {out}: {exc.strerror}")
    result = {"file": str(out), "kind": what, "version": shown_version, "bytes": len(data)}
    if json_output:
        print_json(result)
    else:
        print(f"wrote {out}: {terminal_class} {what} to version {shown_version}, {len(data):,} bytes")


@blacklist_app.command("stale")
def stale_command(db: DbOption = None, json_output: JsonOption = False) -> None:
    """Terminals behind their class's latest list or silent too long (exit 1 when there are any).

    Example: citycard blacklist stale --json
    """
    from citycard.platform import blacklist

    with _transaction(db, write=False) as conn:
        rows = [_jsonable(r) for r in blacklist.stale(conn, now=datetime.now(UTC))]
    if json_output:
        print_json(rows)
    else:
        table = Table(title="stale terminals")
        for column in ("terminal", "class", "holds", "behind", "silent (h)", "why"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r["terminal_id"], r["terminal_class"], str(r["version"]), str(r["versions_behind"]),
                f"{r['silent_s'] / 3600:.1f}", ", ".join(r["reasons"]),
            )  # fmt: skip
        Console().print(table)
    if rows:
        raise typer.Exit(1)


@blacklist_app.command("flag")
def flag_command(
    pan: Annotated[str, typer.Argument(help="The card's PAN.")],
    reason: Annotated[str, typer.Option("--reason", help="fraud, counterfeit or negative_balance.")],
    psn: Annotated[str | None, typer.Option("--psn", help="PSN (2 digits); omit for every PSN.")] = None,
    detail: Annotated[str, typer.Option("--detail")] = "",
    amount_fen: Annotated[int | None, typer.Option("--amount-fen", help="The negative balance, fen.")] = None,
    terminal_class: Annotated[
        str | None, typer.Option("--class", help="Only this class (default all).")
    ] = None,
    actor: Annotated[str, typer.Option("--actor")] = "cli",
    db: DbOption = None,
) -> None:
    """Flag a card; it is on the next published list.

    Example: citycard blacklist flag 6235480000000011 --psn 01 --reason fraud --detail "cloned"
    """
    from citycard.platform import blacklist

    with _transaction(db, write=True) as conn:
        flag_id = blacklist.flag(
            conn, pan=pan, psn=psn, reason=reason, detail=detail, actor=actor, at=datetime.now(UTC),
            terminal_class=terminal_class, amount_fen=amount_fen,
        )  # fmt: skip
    print(f"flag {flag_id}")


@exchange_app.command("subscribers")
def subscribers_command(db: DbOption = None, json_output: JsonOption = False) -> None:
    """Subscribers with their filter, cursor and lag (events not yet acknowledged).

    Example: citycard exchange subscribers --json
    """
    from citycard.platform import exchange

    with _transaction(db, write=False) as conn:
        rows = [_jsonable(r) for r in exchange.list_subscribers(conn)]
    if json_output:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(title="exchange subscribers")
    for column in ("name", "sector", "kinds", "cursor", "lag"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"], r["sector"], ",".join(r["kinds"]) or "(all)", str(r["cursor"]), str(r["lag"])
        )
    Console().print(table)


@exchange_app.command("relay")
def relay_command(
    db: DbOption = None,
    sector: Annotated[
        str | None,
        typer.Option("--sector", help="A sector's own relay: its stream CITYCARD_EVENTS_<SECTOR>, "
                     "subjects citycard.sector.<sector>.<kind>, full events of consenting cardholders."),
    ] = None,
) -> None:  # fmt: skip
    """Relay the event log to NATS JetStream (CITYCARD_NATS_URL) until Ctrl-C. The shared stream
    carries events about cardholders redacted; a --sector relay carries them for that sector's
    consenting cardholders.

    Example: CITYCARD_NATS_URL=nats://127.0.0.1:4222 citycard exchange relay [--sector health]
    """
    import dataclasses
    import re

    import nats

    from citycard.platform import nats_relay

    config = nats_relay.config_from_env()
    if config is None:
        fail(f"{nats_relay.NATS_URL_ENV} is not set: nothing to relay to")
    if sector is not None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", sector):
            fail("--sector must be 1 to 32 characters of a-z 0-9 _ starting with a letter")
        config = dataclasses.replace(
            config, sector=sector, stream=f"CITYCARD_EVENTS_{sector.upper()}",
            subject_prefix=f"citycard.sector.{sector}", subscriber=f"nats-relay-{sector.replace('_', '-')}",
        )  # fmt: skip
    engine = _engine(db)

    async def main() -> nats_relay.RelayStats:
        stop = asyncio.Event()
        try:
            return await nats_relay.run_relay(engine, config, stop=stop)
        except asyncio.CancelledError:
            stop.set()
            raise

    try:
        stats = asyncio.run(main())
    except KeyboardInterrupt:
        print("relay stopped")
        return
    except (OSError, nats.errors.Error) as exc:
        fail(f"NATS at {config.url}: {exc}")
    finally:
        engine.dispose()
    print(f"relayed {stats.published} events ({stats.duplicates} duplicates dropped by the stream)")
