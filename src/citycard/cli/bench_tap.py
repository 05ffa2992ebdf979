"""`citycard bench tap`: full qPBOC electronic-cash taps, card and kernel in one process.

One tap is what a bus validator does when a card touches it: power the card up, SELECT PPSE,
SELECT AID, GPO (the card decides, debits its EC balance, signs fDDA — and saves its image, as a
real card writes its EEPROM), READ RECORDs, fDDA (CA key → issuer key → ICC key → signature, RSA
or SM2), the exception file of 1,000,000 entries (:class:`citycard.kernel.params.ExceptionFile`,
built once per run in a temporary directory and loaded back from the file), the outcome and its
batch record. Each tap must end APPROVED_OFFLINE or the run stops.

Latencies are per tap (``time.perf_counter``), after a warm-up; p50 and p99 are nearest-rank
percentiles. The taps run three times: with the card saving its image after each state change into
its A/B journal (one in-place write + ``fdatasync`` — a real tap, docs/card.md §2); with every save
rewriting the whole base file the way image format /2 did (temp file, fsync, rename, directory
fsync) — the "before" of the journal, measured in the same run; and without saves (the card's write
cost taken out), so the kernel's own cost shows.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from citycard.cli.bench import app
from citycard.cli.common import fail

PROFILES = {"gm": "pboc-ec-only-gm", "intl": "pboc-debit-intl"}
TAPS_DEFAULT = 1_000
TAPS_MAX = 50_000  # 1 fen each from a 1000-yuan balance, with room to spare
WARM_UP_TAPS = 20
TAP_AMOUNT_FEN = 1
BALANCE_FEN = 100_000  # 1000 yuan, the PBOC EC ceiling (9F77)
BLACKLIST_ENTRIES_DEFAULT = 1_000_000
BLACKLIST_SEED = 239  # DB31/T 239-2020, the Shanghai gate timing standard


def percentile_ms(samples_s: list[float], percent: float) -> float:
    """Nearest-rank percentile of ``samples_s`` (seconds), in milliseconds.

    >>> percentile_ms([0.001 * i for i in range(1, 101)], 99)
    99.0
    """
    if not samples_s:
        raise ValueError("no samples")
    ordered = sorted(samples_s)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1] * 1000


def build_blacklist(directory: Path, entries: int, progress: Any = None) -> Any:
    """An exception file of ``entries`` random test cards, saved in ``directory`` and loaded back."""
    from citycard.kernel.params import ExceptionFile, random_test_entries

    built = ExceptionFile.build(
        random_test_entries(entries, seed=BLACKLIST_SEED), version=1, progress=progress
    )
    path = directory / "blacklist.ccxf"
    built.save(path)
    return ExceptionFile.load(path)


def run_taps(card: Any, terminal: Any, taps: int) -> list[float]:
    """``taps`` timed taps (after a warm-up); the seconds each took. Every tap must be approved offline."""
    from citycard.kernel.outcome import Outcome
    from citycard.kernel.qpboc import run_qpboc
    from citycard.reader import InProcessTransport

    clock = time.perf_counter
    samples: list[float] = []
    for number in range(WARM_UP_TAPS + taps):
        started = clock()
        with InProcessTransport(card) as transport:
            result = run_qpboc(transport, terminal, amount_fen=TAP_AMOUNT_FEN)
        elapsed = clock() - started
        if result.kind is not Outcome.APPROVED_OFFLINE:
            raise RuntimeError(f"tap {number + 1} ended {result.kind.value}: {'; '.join(result.reasons)}")
        if number >= WARM_UP_TAPS:
            samples.append(elapsed)
    return samples


def bench_tap(suite: str, taps: int, blacklist_entries: int, *, json_output: bool) -> dict[str, Any]:
    from citycard.card import load_card, save_card
    from citycard.cli.bench_card import personalise_card
    from citycard.crypto.suite import GM, INTL
    from citycard.hsm import SoftHSM
    from citycard.kernel.context import Terminal, TerminalProfile
    from citycard.kernel.params import AidTable, CapkTable

    hsm = SoftHSM.ephemeral()
    console = Console(stderr=True)
    with (
        tempfile.TemporaryDirectory(prefix="citycard-bench-tap-") as name,
        Progress(console=console, transient=True, disable=json_output) as progress,
    ):
        directory = Path(name)
        task = progress.add_task("personalising the card", total=None)
        path, _ = personalise_card(directory, hsm, profile=PROFILES[suite], balance_fen=BALANCE_FEN)
        progress.update(
            task, description=f"exception file of {blacklist_entries:,} entries", total=blacklist_entries
        )
        exceptions = build_blacklist(
            directory, blacklist_entries, lambda n: progress.update(task, completed=n)
        )
        profile = TerminalProfile.bus_validator(suite={"gm": GM, "intl": INTL}[suite])
        terminal = Terminal(profile, AidTable.load(), CapkTable.load().with_hsm(hsm), exceptions)
        figures: dict[str, list[float]] = {}
        for label, saves in (
            ("with image saves", "journal"),
            ("with base-file saves (format /2)", "base"),
            ("without saves", None),
        ):
            progress.update(task, description=f"{taps:,} taps {label}", total=None, completed=0)
            card = load_card(path, hsm=hsm)
            card.interface = "contactless"
            if saves is None:
                card.image_path = None  # the card's save() then does nothing
            elif saves == "base":
                card.save = functools.partial(save_card, card)  # every save a whole durable base write
            figures[label] = run_taps(card, terminal, taps)
    saved, unsaved = figures["with image saves"], figures["without saves"]
    base = figures["with base-file saves (format /2)"]
    result = {
        "taps": taps,
        "p50_ms": round(percentile_ms(saved, 50), 3),
        "p99_ms": round(percentile_ms(saved, 99), 3),
        "suite": suite.upper(),
        "blacklist_entries": len(exceptions),
        "without_saves": {
            "p50_ms": round(percentile_ms(unsaved, 50), 3),
            "p99_ms": round(percentile_ms(unsaved, 99), 3),
        },
        "base_file_saves": {
            "p50_ms": round(percentile_ms(base, 50), 3),
            "p99_ms": round(percentile_ms(base, 99), 3),
        },
    }
    if not json_output:
        table = Table(
            title=f"citycard bench tap ({suite.upper()}, {taps:,} taps, blacklist {len(exceptions):,})"
        )
        table.add_column("taps")
        table.add_column("p50", justify="right")
        table.add_column("p99", justify="right")
        for label, samples in figures.items():
            table.add_row(
                label, f"{percentile_ms(samples, 50):.3f} ms", f"{percentile_ms(samples, 99):.3f} ms"
            )
        Console().print(table)
    print(json.dumps(result))
    return result


@app.command("tap")
def tap_command(
    suite: Annotated[str, typer.Option("--suite", help="gm (SM2/SM3/SM4) or intl (RSA/SHA-1/3DES).")] = "gm",
    taps: Annotated[
        int, typer.Option("--taps", help=f"Timed taps per run (1 to {TAPS_MAX:,}).")
    ] = TAPS_DEFAULT,
    blacklist_entries: Annotated[
        int, typer.Option("--blacklist-entries", help="Entries in the exception file.")
    ] = BLACKLIST_ENTRIES_DEFAULT,
    json_output: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """Full qPBOC electronic-cash taps in-process (card + kernel, fDDA, blacklist of 1,000,000).

    Prints {"taps": N, "p50_ms": X, "p99_ms": X, ...} for taps with the card saving its image (A/B
    journal), the same figures without saves under "without_saves" and with whole base-file saves
    (the format /2 way) under "base_file_saves".

    Example: citycard bench tap --suite gm --json
    """
    if suite not in PROFILES:
        fail(f"--suite must be gm or intl, got {suite!r}")
    if not 1 <= taps <= TAPS_MAX:
        fail(f"--taps must be 1 to {TAPS_MAX:,}, got {taps}")
    if not 0 <= blacklist_entries <= 5_000_000:
        fail(f"--blacklist-entries must be 0 to 5,000,000, got {blacklist_entries}")
    bench_tap(suite, taps, blacklist_entries, json_output=json_output)
