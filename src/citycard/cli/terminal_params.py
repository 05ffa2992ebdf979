"""`citycard terminal blacklist ...`: build and query the terminal's exception file (blacklist).

The file format is described in :mod:`citycard.kernel.params.exception_file`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from citycard.cli.common import fail
from citycard.kernel.params.exception_file import (
    EXCEPTION_FILE_ENTRIES_MAX,
    LIST_VERSION_MAX,
    ExceptionFile,
    ExceptionFileError,
    masked_pan,
    random_test_entries,
)

EXIT_BLOCKED = 1  # `blacklist check`: the card is on the list (0 = not on it, 2 = bad input)

app = typer.Typer(
    help="Terminal parameters: the exception file (blacklist) of blocked cards.", no_args_is_help=True
)
blacklist_app = typer.Typer(
    help="The exception file: a sorted binary list of blocked (PAN, PSN), fast at 1,000,000 entries.",
    no_args_is_help=True,
)
app.add_typer(blacklist_app, name="blacklist")

BUILD_EXAMPLE = """
Example:

  citycard terminal blacklist build --count 1000000 --out blacklist.bin --seed 1
"""

CHECK_EXAMPLE = """
Example:

  citycard terminal blacklist check blacklist.bin 6212345678901234 --psn 01

Prints "blocked" (exit 1) or "not blocked" (exit 0); bad input: one error line, exit 2.
"""


@blacklist_app.command("build", epilog=BUILD_EXAMPLE)
def build_command(
    count: Annotated[
        int, typer.Option("--count", help=f"Random test entries, 0 to {EXCEPTION_FILE_ENTRIES_MAX:,}.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The exception file to write (replaced atomically).")],
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed: the same seed gives the same list.")
    ] = None,
    list_version: Annotated[int, typer.Option("--list-version", help="The list's version number.")] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write a random TEST exception file (62… PANs, PSN 00/01 or any) for benchmarks and demos."""
    if not 0 <= count <= EXCEPTION_FILE_ENTRIES_MAX:
        fail(f"--count must be 0 to {EXCEPTION_FILE_ENTRIES_MAX:,}, got {count:,}")
    if not 0 <= list_version <= LIST_VERSION_MAX:
        fail(f"--list-version must be 0 to 2^64-1, got {list_version}")
    if not out.parent.is_dir():
        fail(f"--out: folder {out.parent} does not exist")
    started = time.perf_counter()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=json_output,
    )
    with progress:
        task = progress.add_task("generating and encoding", total=count)
        exception_file = ExceptionFile.build(
            random_test_entries(count, seed=seed),
            version=list_version,
            progress=lambda done: progress.update(
                task, completed=done, description="sorting" if done == count else "generating and encoding"
            ),
        )
        progress.update(task, description="sorted; writing")
        try:
            exception_file.save(out)
        except OSError as exc:
            fail(f"--out: cannot write {out}: {exc.strerror}")
    result = {
        "file": str(out),
        "entries": len(exception_file),
        "list_version": exception_file.version,
        "bytes": len(exception_file.to_bytes()),
        "body_sha256": exception_file.body_sha256.hex().upper(),
        "build_s": round(time.perf_counter() - started, 3),
    }
    if json_output:
        print(json.dumps(result))
        return
    print(
        f"wrote {out}: {result['entries']:,} entries, list version {result['list_version']}, "
        f"{result['bytes']:,} bytes, body SHA-256 {result['body_sha256']}, in {result['build_s']:.1f} s"
    )


@blacklist_app.command("check", epilog=CHECK_EXAMPLE)
def check_command(
    file: Annotated[Path, typer.Argument(help="The exception file.")],
    pan: Annotated[str, typer.Argument(help="The card's PAN (5A), 12 to 19 digits.")],
    psn: Annotated[
        str | None,
        typer.Option("--psn", help="PAN sequence number (5F34), 2 digits; omit if the card has none."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Is the card on the list? A PSN matches itself or a list entry for every PSN of the PAN."""
    try:
        exception_file = ExceptionFile.load(file)
        blocked = exception_file.contains(pan, psn)
    except ExceptionFileError as exc:
        fail(str(exc))
    if json_output:
        print(
            json.dumps(
                {
                    "pan": masked_pan(pan),
                    "psn": psn,
                    "blocked": blocked,
                    "list_version": exception_file.version,
                    "entries": len(exception_file),
                }
            )
        )
    else:
        print("blocked" if blocked else "not blocked")
    if blocked:
        raise typer.Exit(EXIT_BLOCKED)
