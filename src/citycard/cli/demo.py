"""`citycard demo`: a day of the city, end to end (what `make demo` runs; docs/demo.md).

Human output: progress bars while the city runs, then the day's taps, the clearing desk's work,
the corrections, the settlement and the reconciliation. ``--json`` prints exactly the summary
document of issue 7 (every number read back from the journals, clearing tables and ledger).
Exit codes: 0 the city balanced (ledger balanced and EC reconciled), 1 it did not, 2 bad input.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycard.cli.common import fail

SEED_MAX = 2**31 - 1


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def demo(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON document.")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Keep the city here (a new or empty directory); default a temporary one."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the day's random choices (same seed, same day).")
    ] = 7,
) -> None:
    """A day of the city: cards issued through the platform, topped up online through the switch and
    the bank, a day of bus and taxi taps on offline validators, uploads over HTTP, clearing (a
    duplicate upload and a forged TC rejected, a lost card's taps refunded), daily corrections,
    settlement and reconciliation.

    Example: citycard demo --json
    """
    from citycard.demo.city import DemoError, run_demo

    if not 0 <= seed <= SEED_MAX:
        fail(f"--seed must be 0 to {SEED_MAX}, got {seed}")
    if data_dir is not None and data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        fail(f"--data-dir {data_dir}: must be a new or empty directory (the demo builds a new city)")
    console = Console(stderr=json_output, quiet=json_output)
    with tempfile.TemporaryDirectory(prefix="citycard-demo-") as scratch:
        where = data_dir or Path(scratch)
        with Progress(
            TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        ) as bars:  # fmt: skip
            tasks: dict[str, Any] = {}

            def progress(step: str, done: int, total: int) -> None:
                if step not in tasks:
                    tasks[step] = bars.add_task(step, total=total)
                bars.update(tasks[step], completed=done, total=total)

            try:
                document, state = run_demo(where, seed=seed, progress=progress)
            except DemoError as exc:
                console.print(f"[bold red]the city is not in order:[/] {exc}")
                raise typer.Exit(1) from None
    if json_output:
        print(json.dumps(document, ensure_ascii=False))
    else:
        _show(console, document, state)
    raise typer.Exit(0 if document["ledger_balanced"] and document["ec_reconciled"] else 1)


def _show(console: Console, document: dict[str, Any], state: Any) -> None:
    console.print(f"[bold]A day of the city[/] — day D = {state.day} (Asia/Shanghai), seed {state.seed}")
    taps = Table(title="the day's taps (Asia/Shanghai)")
    for column in ("time", "device", "rider", "tap", "result", "fen", "why"):
        taps.add_column(column, justify="right" if column == "fen" else "left")
    for row in state.log:
        taps.add_row(
            *row, style="red" if row[4] == "DECLINED" else "yellow" if row[1] == "platform" else None
        )
    console.print(taps)
    uploads = Table(title="uploads over HTTP → clearing")
    for column in ("terminal", "batches", "records", "exceptions", "note"):
        uploads.add_column(column)
    for u in state.uploads:
        uploads.add_row(u["terminal_id"], str(u["batches"]), str(u["records"]), str(u["exceptions"]),
                        u.get("injected", "") + (" (replayed)" if u["replayed"] else ""))  # fmt: skip
    console.print(uploads)
    if state.handled:
        console.print("clearing desk: " + ", ".join(f"{k} ×{v}" for k, v in sorted(state.handled.items())))
    for c in state.corrections:
        refunds = (
            ", ".join(f"{r['kind']} {_yuan(r['amount_fen'])} to {r['card']}" for r in c["refunds"]) or "none"
        )
        console.print(
            f"corrections {c['day']}: {c['cards']} cards, due {_yuan(c['due_fen'])}, collected "
            f"{_yuan(c['collected_fen'])}, refunds {refunds}, uncollected {_yuan(c['uncollected_fen'])}"
        )
    settle = Table(title="settlement (gross − fee = net, yuan)")
    for column in ("operator", "day", "taps", "gross", "fee", "net"):
        settle.add_column(column, justify="right" if column not in ("operator", "day") else "left")
    for s in state.settlements:
        settle.add_row(s["operator"], s["day"], str(s["taps"]), _yuan(s["gross_fen"]), _yuan(s["fee_fen"]),
                       _yuan(s["net_fen"]))  # fmt: skip
    console.print(settle)
    summary = Table(title="summary")
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    for key, value in document.items():
        if key == "settlement":
            value = ", ".join(f"{op} {_yuan(fen)}" for op, fen in value.items())
        elif key == "fares_total":
            value = _yuan(value)
        colour = "green" if value is True else "red" if value is False else ""
        summary.add_row(key, f"[{colour}]{value}[/]" if colour else str(value))
    console.print(summary)
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in state.timings_s.items())
    console.print(f"wall time: {sum(state.timings_s.values()):.1f} s ({timings})")
