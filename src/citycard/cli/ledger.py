"""`citycard ledger`: check the ledger's invariants and list balances (docs/ledger.md).

The database is ``--db URL``, else ``CITYCARD_DATABASE_URL``, else the SQLite file
``$CITYCARD_DATA_DIR/citycard.db``. Both commands only read; they never migrate or create a database.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from citycard.cli.common import fail, guarded, print_json

if TYPE_CHECKING:
    from sqlalchemy import Connection

app = typer.Typer(
    help="The double-entry ledger: invariant check and balances (read-only).", no_args_is_help=True
)

EXIT_PROBLEMS = 1  # `ledger check` found broken invariants
DEFAULT_LIMIT = 1_000

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Database URL (sqlite:///path or postgresql://…); default CITYCARD_DATABASE_URL."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextmanager
def _reading(db: str | None) -> Iterator[tuple[str, Connection]]:
    """A read transaction on the ledger database, or one ``error:`` line and exit 2."""
    # imported here so that `citycard --help` does not load SQLAlchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from citycard.db import current_revision, database_url, head_revision, make_engine, normalize_url
    from citycard.db.engine import read_transaction

    url = normalize_url(db) if db else database_url()
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        fail(f"--db: {exc}")
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        fail(f"no database at {parsed.database} (give --db or set CITYCARD_DATABASE_URL)")
    engine = make_engine(url)
    try:
        with read_transaction(engine) as conn:
            revision = current_revision(conn)
            if revision is None:
                fail(f"{shown} holds no citycard tables (never migrated)")
            if revision != head_revision():
                print(
                    f"note: {shown} is at revision {revision}, newest is {head_revision()}", file=sys.stderr
                )
            yield shown, conn
    except SQLAlchemyError as exc:
        fail(f"cannot read {shown}: {str(exc).strip().splitlines()[0]}")
    finally:
        engine.dispose()


@app.command("check")
@guarded
def check_command(db: DbOption = None, json_output: JsonOption = False) -> None:
    """Check every invariant: layers and postings balance, stored balances equal the journal, no
    forbidden negative balance. Exit 0 healthy, 1 with the problems listed.

    Example: citycard ledger check --db postgresql://root@127.0.0.1:5432/city --json
    """
    from citycard.ledger import check_invariants, journal_counts

    with _reading(db) as (shown, conn):
        problems = check_invariants(conn)
        counts = journal_counts(conn)
    if json_output:
        print_json({"database": shown, "ok": not problems, "problems": problems, **counts})
    else:
        console = Console(soft_wrap=True)  # one problem per line, never wrapped (grep-able)
        summary = f"{counts['accounts']} accounts, {counts['postings']} postings, {counts['lines']} lines"
        if problems:
            console.print(f"[red]ledger check: {len(problems)} problem(s)[/red] in {shown} ({summary})")
            for problem in problems:
                console.print(f"  - {problem}", highlight=False)
        else:
            console.print(f"[green]ledger check: ok[/green] — {shown} ({summary})")
    if problems:
        raise typer.Exit(EXIT_PROBLEMS)


@app.command("balances")
@guarded
def balances_command(
    db: DbOption = None,
    layer: Annotated[
        str | None, typer.Option("--layer", help="pending, cleared or settled; default: all layers.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", help="At most this many accounts (code order).")
    ] = DEFAULT_LIMIT,
    after: Annotated[
        str | None, typer.Option("--after", help="Start after this account code (paging).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """List accounts with their balances in fen (credits − debits) per layer.

    Example: citycard ledger balances --layer settled --json
    """
    from citycard.ledger import ACCOUNTS_PER_PAGE_MAX, Layer, list_balances

    chosen = None
    if layer is not None:
        try:
            chosen = Layer[layer.strip().upper()]
        except KeyError:
            fail(f"--layer: unknown layer {layer!r}: expected pending, cleared or settled")
    if not 1 <= limit <= ACCOUNTS_PER_PAGE_MAX:
        fail(f"--limit: {limit} outside 1…{ACCOUNTS_PER_PAGE_MAX}")
    with _reading(db) as (shown, conn):
        rows = list_balances(conn, limit=limit, after=after)
    if json_output:
        print_json(
            [
                {
                    "code": r.code,
                    "kind": r.kind,
                    "allow_negative": r.allow_negative,
                    "balance_fen": r.in_layer(chosen),
                    "pending_fen": r.pending_fen,
                    "cleared_fen": r.cleared_fen,
                    "settled_fen": r.settled_fen,
                    "total_fen": r.total_fen,
                }
                for r in rows
            ]
        )
        return
    title = f"Balances in fen — {chosen.name.lower() if chosen else 'all layers'} — {shown}"
    table = Table(title=title)
    table.add_column("account")
    table.add_column("kind")
    if chosen is None:
        for name in ("pending", "cleared", "settled", "total"):
            table.add_column(name, justify="right")
        for r in rows:
            table.add_row(
                r.code, r.kind, *(str(v) for v in (r.pending_fen, r.cleared_fen, r.settled_fen, r.total_fen))
            )
    else:
        table.add_column(chosen.name.lower(), justify="right")
        for r in rows:
            table.add_row(r.code, r.kind, str(r.in_layer(chosen)))
    Console().print(table)
