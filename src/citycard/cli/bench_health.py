"""``citycard bench health``: the hospital desk's card access, both suites (docs/health-card.md §6).

In-process virtual card with its image journal on disk, the HSM in the process: loading the DDF1,
a desk's identity read (SELECT + EF05 + EXTERNAL AUTHENTICATE + EF06–EF08 + alerts), appending a
signed visit (sign, verify, five secure-messaging writes with their saves) and reading five
visits with their signatures verified. Medians over ``--runs``.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citycard.cli.bench import app

RECORDS = {
    "DDF1/EF05": [{"card_type": "2", "card_no": "110101199003071234"}],
    "DDF1/EF06": [
        {"name": "张三", "sex": "1", "birth_date": "1990-03-07", "id_number": "110101199003071234"}
    ],
    "DDF1/EF08": [{"expiry": "2036-01-01", "phone1": "13800000000"}],
    "DF02/EF05": [{"blood_abo": "1", "blood_rh": "1", "alerts": "8000"}],
}
RUNS_MAX = 1000


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def bench_suite(hsm: Any, suite: Any, directory: Path, runs: int) -> dict[str, float]:
    from citycard.card.health.perso import load_health_application
    from citycard.card.image import load_card, new_card
    from citycard.reader import InProcessTransport
    from citycard.terminals.health_card import HealthCardReader, HospitalSam, InstitutionSigner, VisitRecord

    hsm.create_health_masters(suite)
    hsm.create_institution_key("H001", suite, replace=True)
    signer = InstitutionSigner(hsm, "H001", suite)
    loads, identities, appends, reads = [], [], [], []
    for run in range(runs):
        path = directory / f"{suite.name}-{run % 2}.json"
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".ab").unlink(missing_ok=True)
        started = time.perf_counter()
        card = new_card([], hsm=hsm, image_path=path)
        load_health_application(card, hsm, suite, records=RECORDS)
        loads.append(time.perf_counter() - started)
        card = load_card(path, hsm=hsm)
        reader = HealthCardReader(InProcessTransport(card), sam=HospitalSam(hsm, "H001"))
        for number in range(5):
            started = time.perf_counter()
            reader.select()
            reader.read_identity()
            reader.read_alerts()
            identities.append(time.perf_counter() - started)
            moment = dt.datetime(2026, 11, 27, 1, number, tzinfo=dt.UTC)
            started = time.perf_counter()
            reader.append_visit(VisitRecord("H001", moment, "内科", "J06.9", 12_345, 8_000), signer=signer)
            appends.append(time.perf_counter() - started)
        reader.select()
        started = time.perf_counter()
        assert len(reader.read_visits()) == 5
        reads.append(time.perf_counter() - started)
    return {
        "load_ms": _ms(loads),
        "identity_ms": _ms(identities),
        "append_visit_ms": _ms(appends),
        "read_5_visits_ms": _ms(reads),
    }


@app.command("health")
def health_command(
    runs: Annotated[int, typer.Option("--runs", min=1, max=RUNS_MAX, help="Cards per suite.")] = 10,
    json_output: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """The hospital desk on the health DDF1, GM and INTL: load, identity read, append and read visits.

    Prints medians: {"GM": {"load_ms", "identity_ms", "append_visit_ms", "read_5_visits_ms"}, "INTL": {…}}.

    Example: citycard bench health --runs 10 --json
    """
    from citycard.crypto.suite import GM, INTL
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.ephemeral()
    with tempfile.TemporaryDirectory(prefix="citycard-bench-health-") as directory:
        result = {suite.name: bench_suite(hsm, suite, Path(directory), runs) for suite in (GM, INTL)}
    if not json_output:
        table = Table(title=f"citycard bench health (medians, {runs} cards per suite, in-process)")
        table.add_column("scenario")
        for name in result:
            table.add_column(name, justify="right")
        for key in result["GM"]:
            table.add_row(key, *(f"{result[name][key]:.3f}" for name in result))
        Console().print(table)
    print(json.dumps(result))
