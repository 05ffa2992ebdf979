"""`citycard validator`: a bus validator or taxi terminal against a virtual card image, and its uploader.

```sh
citycard card new --profile citizen-card-gm --out card.json
citycard validator open-record --card card.json [--concession 02]     # test issuer: open the trip record
citycard validator tap --card card.json --journal bus.db --line K1 --tap entry --stop BCG
citycard validator tap --card card.json --journal bus.db --line K1 --tap exit --stop HTM [--json]
citycard validator tap --card card.json --journal taxi.db --kind taxi --line TAXI --metered 23.50
citycard validator status --journal bus.db [--json]
citycard validator upload --journal bus.db --url http://127.0.0.1:8000 --api-key cck_… --terminal-id BUS-K1-001
```

Keys come from the default software HSM (the one ``citycard card new`` used): the operator's Part 14
record key per suite (``--operator-key GM=LABEL``, default ``transit-operator-gm`` /
``transit-operator-intl``, generated on first use — a test operator). Exit codes: 0 approved (or
done), 1 declined / upload stopped, 2 bad input.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from citycard.cli.common import fail, print_json

app = typer.Typer(help="Bus validator / taxi terminal: taps into a journal, uploads to the platform.",
                  no_args_is_help=True)  # fmt: skip

JournalOption = Annotated[Path, typer.Option("--journal", help="The validator's SQLite journal file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TRANSIT_SFI = 0x15
DEFAULT_OPERATOR_KEYS = {"GM": "transit-operator-gm", "INTL": "transit-operator-intl"}
EXIT_DECLINED = 1


def _hsm() -> Any:
    from citycard.hsm import SoftHSM

    return SoftHSM.open()


def _operator_labels(hsm: Any, items: list[str]) -> dict[str, str]:
    from citycard.crypto.suite import GM, INTL

    labels = dict(DEFAULT_OPERATOR_KEYS)
    for item in items:
        suite, _, label = item.partition("=")
        if suite.upper() not in labels or not label:
            fail(f"--operator-key {item!r}: expected GM=LABEL or INTL=LABEL")
        labels[suite.upper()] = label
    existing = {info.label for info in hsm.list_keys()}
    for name, suite in (("GM", GM), ("INTL", INTL)):
        if labels[name] not in existing:
            hsm.generate_key(labels[name], "IMK-ENC", suite)
    return labels


def _card(path: Path, hsm: Any) -> Any:
    from citycard.card import ImageError, load_card

    if not path.is_file():
        fail(f"--card {path}: no such file")
    try:
        card = load_card(path, hsm=hsm)
    except (OSError, ImageError) as exc:
        fail(f"--card {path}: {exc}")
    card.interface = "contactless"
    return card


def _fen(text: str, what: str) -> int:
    from citycard.cli.terminal import parse_amount_fen

    try:
        return parse_amount_fen(text)
    except ValueError as exc:
        fail(f"{what}: {exc}")


@app.command("open-record")
def open_record(
    card: Annotated[
        Path, typer.Option("--card", help="A virtual card image with the transit file (SFI 15).")
    ],
    concession: Annotated[
        str, typer.Option("--concession", help="00 none, 01 student, 02 elderly, 03 disabled, 04 child")
    ] = "00",
    city_code: Annotated[str, typer.Option("--city-code", help="n4 city code of the fare table")] = "5104",
    suite: Annotated[
        str, typer.Option("--suite", help="GM or INTL: the card's keys to open it under")
    ] = "GM",
    operator_key: Annotated[list[str] | None, typer.Option("--operator-key", help="SUITE=LABEL")] = None,
) -> None:
    """Open the trip record (Part 14 APPEND RECORD at the service desk: contact GPO for 0, no money),
    as the platform's application loading does (citycard.platform.application_desk)."""
    from citycard.platform.application_desk import DeskError, desk_session

    suite = suite.upper()
    if suite not in DEFAULT_OPERATOR_KEYS:
        fail("--suite must be GM or INTL")
    if len(concession) != 2 or not concession.isdigit() or len(city_code) != 4 or not city_code.isdigit():
        fail("--concession is 2 digits and --city-code 4 digits")
    hsm = _hsm()
    labels = _operator_labels(hsm, operator_key or [])
    virtual = _card(card, hsm)
    pan = psn = None
    for application in virtual.applications:
        data = getattr(application, "data", None)
        if data is not None and data.tag("5A"):
            pan, psn = data.tag("5A").hex().upper().rstrip("F"), (data.tag("5F34") or b"\x00").hex()
            break
    if pan is None:
        fail(f"--card {card}: no PBOC application with a PAN (5A)")
    record = bytes.fromhex("0570") + b"\x01" + bytes.fromhex(city_code + concession) + bytes(58)
    try:
        with desk_session(virtual, suite_name=suite) as desk:
            apdu = hsm.capp_append_command(
                f"imk-capp-{suite.lower()}-{TRANSIT_SFI:02x}", labels[suite],
                tag_5a=pan, tag_5f34=psn, tag_9f36=desk.atc, sfi=TRANSIT_SFI, record=record,
            )  # fmt: skip
            desk.expect("APPEND RECORD", apdu)
    except (DeskError, KeyError, ValueError) as exc:
        fail(f"cannot open the trip record: {exc}")
    from citycard.card import save_card

    save_card(virtual)
    Console().print(f"trip record 0570 opened on {pan} PSN {psn} (concession {concession}, {suite} keys)")


ParamsDirOption = Annotated[
    Path | None,
    typer.Option("--params-dir", help="Parameters kept by `validator params` (fares, blacklist, CAPKs)."),
]


def _validator(
    *, journal: Path, line: str, kind: str, terminal_id: str, operator: str | None, vehicle: str, fares: str,
    blacklist: Path | None, operator_key: list[str] | None, params_dir: Path | None,
) -> tuple[Any, Any]:  # fmt: skip
    """(the validator, the HSM) from the options; parameters from ``params_dir`` over the defaults."""
    from citycard.kernel.capp import HsmCappSigner
    from citycard.kernel.context import Terminal, TerminalProfile
    from citycard.kernel.params import AidTable, CapkTable, ExceptionFile, ExceptionFileError
    from citycard.sectors.transit import FareTableError, load_table, parse_table
    from citycard.terminals.journal import JournalError, TapJournal
    from citycard.terminals.parameters import ParameterError, load_parameters
    from citycard.terminals.validator import Validator, ValidatorConfig, ValidatorError

    try:
        table = (
            parse_table(Path(fares).read_text(encoding="utf-8"))
            if fares.endswith(".toml")
            else load_table(fares)
        )
    except (OSError, FareTableError) as exc:
        fail(f"--fares {fares}: {exc}")
    if line not in table.lines:
        fail(f"--line {line}: not in fare table version {table.version} ({', '.join(table.lines)})")
    try:
        exceptions = ExceptionFile.load(blacklist) if blacklist else None
    except (OSError, ExceptionFileError) as exc:
        fail(f"--blacklist {blacklist}: {exc}")
    hsm = _hsm()
    labels = _operator_labels(hsm, operator_key or [])
    capks = CapkTable.load().with_hsm(hsm)
    terminal = Terminal(TerminalProfile.bus_validator(capp=True), AidTable.load(), capks, exceptions)
    try:
        config = ValidatorConfig(terminal_id=terminal_id, operator=operator or table.lines[line].operator,
                                 kind=kind, line=line, vehicle=vehicle)  # type: ignore[arg-type]  # fmt: skip
        validator = Validator(config, fares=table, terminal=terminal, capp_signer=HsmCappSigner(hsm, labels),
                              journal=TapJournal(journal))  # fmt: skip
        if params_dir is not None:
            load_parameters(validator, params_dir, capk_base=capks)
    except (ValidatorError, JournalError, ParameterError) as exc:
        fail(str(exc))
    return validator, hsm


@app.command("tap")
def tap_command(
    card: Annotated[Path, typer.Option("--card", help="A virtual card image; saved afterwards.")],
    journal: JournalOption,
    line: Annotated[str, typer.Option("--line", help="The line this device serves (fare table id).")],
    tap_kind: Annotated[str, typer.Option("--tap", help="entry, exit, flat (bus) or taxi.")] = "flat",
    stop: Annotated[str | None, typer.Option("--stop", help="Stop id (segmented lines).")] = None,
    metered: Annotated[
        str | None, typer.Option("--metered", help="Taxi meter amount in yuan, e.g. 23.50.")
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help="bus or taxi.")] = "bus",
    terminal_id: Annotated[str, typer.Option("--terminal-id")] = "BUS-0001",
    operator: Annotated[str | None, typer.Option("--operator", help="Default: the line's operator.")] = None,
    vehicle: Annotated[str, typer.Option("--vehicle", help="≤ 8 characters")] = "V0001",
    fares: Annotated[
        str, typer.Option("--fares", help="Shipped fare table name, or a TOML file.")
    ] = "panzhihua",
    blacklist: Annotated[Path | None, typer.Option("--blacklist", help="Exception file (CCXF).")] = None,
    params_dir: ParamsDirOption = None,
    operator_key: Annotated[list[str] | None, typer.Option("--operator-key", help="SUITE=LABEL")] = None,
    json_output: JsonOption = False,
) -> None:
    """One tap: price from the card's trip record, qPBOC offline EC, journal (then green light)."""
    from citycard.reader import InProcessTransport
    from citycard.terminals.validator import ValidatorError

    metered_fen = _fen(metered, "--metered") if metered is not None else None
    validator, hsm = _validator(
        journal=journal, line=line, kind=kind, terminal_id=terminal_id, operator=operator, vehicle=vehicle,
        fares=fares, blacklist=blacklist, operator_key=operator_key, params_dir=params_dir,
    )  # fmt: skip
    virtual = _card(card, hsm)
    try:
        with InProcessTransport(virtual) as transport:
            out = validator.tap(
                transport, tap_kind=tap_kind, stop=stop, metered_fen=metered_fen, now=dt.datetime.now(dt.UTC)
            )
    except ValidatorError as exc:
        fail(str(exc))
    from citycard.card import save_card

    save_card(virtual)
    document = {
        "approved": out.approved, "amount_fen": out.amount_fen, "reason": out.reason,
        "journal_seq": out.journal_seq, "decision": None if out.decision is None else {
            "kind": out.decision.kind, "fare_fen": out.decision.fare_fen, "refund_fen": out.decision.refund_fen,
            "reasons": list(out.decision.reasons)},
        "balance_fen_after": out.result.balance_fen_after if out.result else None,
        "journal": validator.journal.counts(), "versions": validator.versions,
    }  # fmt: skip
    validator.journal.close()
    if json_output:
        print_json(document)
    else:
        light = "[green]APPROVED[/green]" if out.approved else "[red]DECLINED[/red]"
        fen = out.amount_fen
        Console().print(f"{light} {fen // 100}.{fen % 100:02d} yuan — {out.reason}"
                        + (f" (journal #{out.journal_seq})" if out.journal_seq else ""))  # fmt: skip
    if not out.approved:
        raise typer.Exit(EXIT_DECLINED)


@app.command("params")
def params_command(
    params_dir: Annotated[Path, typer.Option("--params-dir", help="Where the device keeps its parameters.")],
    journal: JournalOption,
    url: Annotated[str, typer.Option("--url", help="The platform, e.g. http://127.0.0.1:8000")],
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="CITYCARD_TERMINAL_KEY", help="The terminal's API key.")
    ],
    terminal_id: Annotated[str, typer.Option("--terminal-id")],
    line: Annotated[str, typer.Option("--line", help="The line this device serves.")],
    kind: Annotated[str, typer.Option("--kind", help="bus or taxi.")] = "bus",
    vehicle: Annotated[str, typer.Option("--vehicle")] = "V0001",
    json_output: JsonOption = False,
) -> None:
    """Download fares, the blacklist (delta) and CAPKs newer than held; keep them; report the versions."""
    import httpx

    from citycard.terminals.parameters import ParameterError, download_parameters

    validator, _ = _validator(
        journal=journal, line=line, kind=kind, terminal_id=terminal_id, operator=None, vehicle=vehicle,
        fares="panzhihua", blacklist=None, operator_key=None, params_dir=params_dir,
    )  # fmt: skip
    try:
        report = download_parameters(
            validator, base_url=url, api_key=api_key, store_dir=params_dir, capk_base=validator.terminal.capks
        )
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_DECLINED) from None
    except httpx.HTTPError as exc:
        print(f"error: platform not reachable: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_DECLINED) from None
    finally:
        validator.journal.close()
    document = {
        "versions": report.versions,
        "changed": list(report.changed),
        "stale": report.status.get("stale"),
    }
    if json_output:
        print_json(document)
    else:
        Console().print(f"holds {report.versions}; changed: {', '.join(report.changed) or 'nothing'}")


@app.command("status")
def status_command(journal: JournalOption, json_output: JsonOption = False) -> None:
    """Taps journaled, pending upload, acknowledged, declined."""
    from citycard.terminals.journal import JournalError, TapJournal

    if not journal.is_file():
        fail(f"--journal {journal}: no such file")
    try:
        with TapJournal(journal) as j:
            counts = j.counts()
    except JournalError as exc:
        fail(str(exc))
    if json_output:
        print_json(counts)
    else:
        Console().print(", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command("upload")
def upload_command(
    journal: JournalOption,
    url: Annotated[str, typer.Option("--url", help="The platform, e.g. http://127.0.0.1:8000")],
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="CITYCARD_TERMINAL_KEY", help="The terminal's API key.")
    ],
    terminal_id: Annotated[str, typer.Option("--terminal-id")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Taps per batch (1–1000).")] = 500,
    json_output: JsonOption = False,
) -> None:
    """Upload every pending tap (resumes where the last run stopped; exit 1 if it stopped early)."""
    import dataclasses

    from citycard.terminals.journal import JournalError, TapJournal
    from citycard.terminals.uploader import Uploader

    if not journal.is_file():
        fail(f"--journal {journal}: no such file")
    try:
        with TapJournal(journal) as j, Uploader(j, base_url=url, api_key=api_key, terminal_id=terminal_id,
                                                batch_size=batch_size) as uploader:  # fmt: skip
            report = uploader.upload_pending()
            counts = j.counts()
    except (JournalError, ValueError) as exc:
        fail(str(exc))
    document = {**dataclasses.asdict(report), "journal": counts}
    if json_output:
        print_json(document)
    else:
        Console().print(f"{report.batches} batches, {report.records} taps, {report.acknowledged} acknowledged; "
                        f"{counts['pending']} pending" + (f" — stopped: {report.failed}" if report.failed else ""))  # fmt: skip
    if report.failed:
        raise typer.Exit(EXIT_DECLINED)
