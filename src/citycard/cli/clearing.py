"""`citycard clearing`: intake of offline TC batches, the exceptions queue, settlement, reconciliation.

The database is ``--db URL``, else ``CITYCARD_DATABASE_URL``, else ``$CITYCARD_DATA_DIR/citycard.db``
(migrated on start). TCs are verified with the default software HSM (``--hsm`` / ``--master-key`` to
choose another) under the IMK labels ``imk-ac-intl``/``imk-mac-intl`` and ``imk-ac-gm``/``imk-mac-gm``
unless ``--labels SUITE=AC,MAC`` says otherwise (docs/clearing.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from citycard.cli.common import fail, parse_suite_labels, print_json

app = typer.Typer(help="Clearing of offline EC taps: intake, exceptions, settlement.", no_args_is_help=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL; default CITYCARD_DATABASE_URL.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
EXCEPTIONS_SHOWN_MAX = 1_000


def _engine(db: str | None) -> Any:
    from citycard.db import database_url, make_engine, normalize_url, upgrade

    engine = make_engine(normalize_url(db) if db else database_url())
    upgrade(engine)
    return engine


def _spec(hsm: Path | None, master_key: Path | None, labels: list[str]) -> Any:
    from citycard.clearing.verify import SuiteLabels, VerifierSpec
    from citycard.hsm.keystore import default_store_path

    chosen = parse_suite_labels(labels)
    return VerifierSpec(
        hsm or default_store_path(), master_key, {s: SuiteLabels(*pair) for s, pair in chosen.items()}
    )


@app.command("intake")
def intake_command(
    batch_file: Annotated[Path, typer.Argument(help="JSON: a list of upload records (docs/clearing.md).")],
    batch_id: Annotated[str, typer.Option("--batch-id", help="The uploader's batch id (idempotency key).")],
    workers: Annotated[int, typer.Option("--workers", help="Processes for the pure clearing function.")] = 1,
    hsm: Annotated[Path | None, typer.Option("--hsm", help="HSM key-store file.")] = None,
    master_key: Annotated[Path | None, typer.Option("--master-key", help="HSM master key file.")] = None,
    labels: Annotated[list[str] | None, typer.Option("--labels", help="SUITE=IMK_AC,IMK_MAC")] = None,
    db: DbOption = None,
) -> None:
    """Clear one uploaded batch exactly once; prints {"batch_id", "records", "accepted", ...}."""
    from citycard.clearing.store import ClearingError, intake

    try:
        uploads = json.loads(batch_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"{batch_file}: {exc}")
    if not isinstance(uploads, list):
        fail(f"{batch_file}: expected a JSON list of records")
    try:
        result = intake(
            _engine(db), batch_id, uploads, keys=_spec(hsm, master_key, labels or []), workers=workers
        )
    except ClearingError as exc:
        fail(str(exc))
    print_json(result.__dict__)


@app.command("exceptions")
def exceptions_command(
    status: Annotated[
        str, typer.Option("--status", help="open, accepted, rejected, refunded or all")
    ] = "open",
    db: DbOption = None,
) -> None:
    """The exceptions queue (JSON), oldest first."""
    import sqlalchemy as sa

    from citycard.clearing.tables import ExceptionItem

    query = sa.select(ExceptionItem).order_by(ExceptionItem.id).limit(EXCEPTIONS_SHOWN_MAX)
    if status != "all":
        query = query.where(ExceptionItem.status == status)
    with _engine(db).connect() as conn:
        rows = conn.execute(query).all()
    print_json(
        [
            {
                "id": r.id,
                "batch_id": r.batch_id,
                "key": r.key,
                "reason": r.reason,
                "detail": r.detail,
                "status": r.status,
                "handled_by": r.handled_by,
                "note": r.note,
            }
            for r in rows
        ]
    )


@app.command("handle")
def handle_command(
    exception_id: Annotated[int, typer.Argument(help="Exception id.")],
    action: Annotated[str, typer.Option("--action", help="accept, reject or refund")],
    operator: Annotated[str, typer.Option("--operator", help="Who decides (audited).")],
    note: Annotated[str, typer.Option("--note")] = "",
    db: DbOption = None,
) -> None:
    """The operator's handling of one exception (once; audited)."""
    from citycard.clearing.store import ClearingError, handle_exception

    try:
        status = handle_exception(_engine(db), exception_id, action=action, operator=operator, note=note)
    except ClearingError as exc:
        fail(str(exc))
    print_json({"id": exception_id, "status": status})


@app.command("settle")
def settle_command(
    day: Annotated[str, typer.Option("--day", help="Settlement day YYYY-MM-DD (Asia/Shanghai).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write settlement-DAY.csv/.json here.")
    ] = None,
    db: DbOption = None,
) -> None:
    """Settle every operator's unsettled taps up to ``--day`` with the fee split; print the lines."""
    from citycard.clearing.store import ClearingError, settle, settlement_csv, settlement_json

    try:
        lines = settle(_engine(db), day)
    except (ClearingError, ValueError) as exc:
        fail(str(exc))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"settlement-{day}.csv").write_text(settlement_csv(lines), encoding="utf-8")
        (out_dir / f"settlement-{day}.json").write_text(settlement_json(lines), encoding="utf-8")
    print(settlement_json(lines), end="")


@app.command("reconcile")
def reconcile_command(db: DbOption = None) -> None:
    """Expected vs collected per operator, ledger invariants, EC chip vs ledger (JSON); exit 1 if off."""
    from citycard.clearing.store import reconcile

    report = reconcile(_engine(db))
    print_json(report)
    if not (report["ledger_balanced"] and report["ec_reconciled"]):
        raise typer.Exit(1)
