"""`citycard terminal pay`: one purchase through the terminal kernel, with a virtual or a real card.

``--card card.json`` loads a virtual card image (``citycard card new``) and saves it afterwards;
``--reader pcsc[:NAME]`` talks to whatever card is in a PC/SC reader — a real PBOC card, or a
virtual one that ``citycard card serve`` attached to pcscd. ``--contactless`` runs qPBOC (PPSE,
GPO with the card's decision, fDDA, blacklist); without it the contact flow. Each kernel step and
the outcome are printed (Rich), or one JSON document with ``--json``.

Terminal parameters: the shipped AID and CAPK tables (``citycard.kernel.params``) plus the test CAs
in the HSM (``SoftHSM.open()``, the one ``citycard card new`` used), an optional exception file.
Exit codes: 0 approved, 1 not approved (declined, online request, try another interface, end
application), 2 bad input, 3 reader or card not reachable.
"""

from __future__ import annotations

import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citycard.cli.common import EXIT_BAD_INPUT, fail, print_json

app = typer.Typer(help="A payment terminal on the citycard kernel: qPBOC and contact.", no_args_is_help=True)

EXIT_NOT_APPROVED = 1
EXIT_UNREACHABLE = 3
AMOUNT_PATTERN = re.compile(r"(?P<yuan>\d{1,10})(?:\.(?P<fen>\d{1,2}))?")
AMOUNT_FEN_MAX = 999_999_999_999  # n12


@app.callback()
def terminal() -> None:
    """A payment terminal on the citycard kernel: qPBOC and contact purchases."""


class SuiteChoice(StrEnum):
    gm = "gm"
    intl = "intl"


def parse_amount_fen(text: str) -> int:
    """A yuan amount with at most two decimals, exactly, in fen; ValueError names the problem.

    >>> parse_amount_fen("12.50"), parse_amount_fen("12.5"), parse_amount_fen("3"), parse_amount_fen("0.01")
    (1250, 1250, 300, 1)
    """
    match = AMOUNT_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"--amount {text!r} is not an amount in yuan such as 12.50 (digits, at most 2 decimals)"
        )
    fen = int(match["yuan"]) * 100 + int((match["fen"] or "0").ljust(2, "0"))
    if not 0 < fen <= AMOUNT_FEN_MAX:
        raise ValueError(f"--amount must be 0.01 to {AMOUNT_FEN_MAX // 100}.99 yuan, got {text!r}")
    return fen


def _reader_name(value: str) -> str | None:
    kind, _, name = value.partition(":")
    if kind != "pcsc":
        fail(f"--reader must be pcsc or pcsc:NAME, got {value!r}")
    return name or None


def _terminal(
    hsm: Any, *, suite: SuiteChoice | None, aids: Path | None, capks: Path | None, blacklist: Path | None
) -> Any:
    from citycard.crypto.suite import GM, INTL
    from citycard.kernel.context import Terminal, TerminalProfile
    from citycard.kernel.params import (
        AidTable,
        AidTableError,
        CapkTable,
        CapkTableError,
        ExceptionFile,
        ExceptionFileError,
    )

    try:
        aid_table = AidTable.load(aids)
        capk_table = CapkTable.load(capks).with_hsm(hsm)
        exceptions = ExceptionFile.load(blacklist) if blacklist is not None else None
    except (AidTableError, CapkTableError, ExceptionFileError) as exc:
        fail(str(exc))
    chosen = {SuiteChoice.gm: GM, SuiteChoice.intl: INTL}.get(suite) if suite else None  # type: ignore[call-overload]
    return Terminal(TerminalProfile(suite=chosen), aid_table, capk_table, exceptions)


def _print_apdu(command: bytes, response: bytes, seconds: float) -> None:
    print(f"> {command.hex().upper()}", file=sys.stderr)
    print(f"< {response.hex().upper()}  ({seconds * 1000:.2f} ms)", file=sys.stderr)


def _show(result: Any) -> None:
    from citycard.emv.bits import TSI, TVR

    console = Console()
    table = Table(title=f"citycard terminal pay ({result.interface})")
    table.add_column("ms", justify="right")
    table.add_column("step")
    table.add_column("detail")
    for step in result.steps:
        table.add_row(f"{step.at_ms:.1f}", step.name, step.detail)
    console.print(table)
    colour = "green" if result.approved else "yellow" if result.kind.value == "online_request" else "red"
    console.print(f"[bold {colour}]{result.kind.value.upper()}[/] — {result.reasons[-1]}")
    if result.pan:
        console.print(
            f"card {result.pan_masked} PSN {result.psn}, {result.aid.hex().upper()}, suite {result.suite}"
        )
    console.print(f"amount {result.amount_fen // 100}.{result.amount_fen % 100:02d} yuan")
    if result.balance_fen_after is not None:
        balance = result.balance_fen_after
        console.print(f"electronic cash balance after: {balance // 100}.{balance % 100:02d} yuan")
    console.print(
        f"TVR {result.tvr.hex().upper()} {TVR.decode(result.tvr)}; TSI {result.tsi.hex().upper()} {TSI.decode(result.tsi)}"
    )
    console.print(f"CVM results (9F34) {result.cvm_results.hex().upper()}")
    if result.batch_record is not None:
        record = result.batch_record
        console.print(f"offline batch record: ATC {record.atc}, TC {record.ac} (stored for upload)")
    if result.field55:
        console.print(f"field 55: {result.field55.hex().upper()}")


@app.command("pay")
def pay(
    amount: Annotated[
        str, typer.Option("--amount", help="Amount in yuan, e.g. 12.50 (exactly, to the fen).")
    ],
    card: Annotated[
        Path | None,
        typer.Option("--card", help="A virtual card image (citycard card new); saved afterwards."),
    ] = None,
    reader: Annotated[
        str | None,
        typer.Option(
            "--reader", help="pcsc (the first reader) or pcsc:NAME (a reader whose name contains NAME)."
        ),
    ] = None,
    contactless: Annotated[
        bool, typer.Option("--contactless", help="qPBOC on the contactless interface.")
    ] = False,
    suite: Annotated[
        SuiteChoice | None,
        typer.Option("--suite", help="Ask the card for SM (gm) or international (intl) algorithms (DF69)."),
    ] = None,
    aids: Annotated[
        Path | None, typer.Option("--aids", help="AID table TOML (default: the shipped one).")
    ] = None,
    capks: Annotated[
        Path | None, typer.Option("--capks", help="CAPK table TOML (default: the shipped one).")
    ] = None,
    blacklist: Annotated[
        Path | None, typer.Option("--blacklist", help="Exception file (binary CCXF list).")
    ] = None,
    pin: Annotated[
        str | None, typer.Option("--pin", help="Contact: the cardholder's PIN, if the card asks for one.")
    ] = None,
    apdus: Annotated[bool, typer.Option("--apdus", help="Print every APDU on stderr.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the outcome as one JSON document.")
    ] = False,
) -> None:
    """Run one purchase through the terminal kernel and print each step and the outcome.

    Exit codes: 0 approved, 1 not approved, 2 bad input, 3 reader or card not reachable.

    Example: citycard terminal pay --card card.json --amount 1.50 --contactless
    """
    try:
        amount_fen = parse_amount_fen(amount)
    except ValueError as exc:
        fail(str(exc))
    if (card is None) == (reader is None):
        fail("give exactly one of --card CARD.json or --reader pcsc[:NAME]")
    if pin is not None and not (pin.isdigit() and 4 <= len(pin) <= 12):
        fail("--pin must be 4 to 12 digits")
    from citycard.hsm import SoftHSM
    from citycard.reader import InProcessTransport, PcscTransport, TransportError

    hsm = SoftHSM.open()
    terminal = _terminal(hsm, suite=suite, aids=aids, capks=capks, blacklist=blacklist)
    trace = _print_apdu if apdus else None
    virtual = None
    if card is not None:
        from citycard.card import ImageError, load_card

        if not card.is_file():
            fail(f"--card {card}: no such file")
        try:
            virtual = load_card(card, hsm=hsm)
        except (OSError, ImageError) as exc:
            fail(f"--card {card}: {exc}")
        virtual.interface = "contactless" if contactless else "contact"
        transport: Any = InProcessTransport(virtual, trace=trace)
    else:
        transport = PcscTransport(_reader_name(reader or ""), trace=trace)
    try:
        with transport:
            result = _run(transport, terminal, amount_fen=amount_fen, contactless=contactless, pin=pin)
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    if virtual is not None:
        from citycard.card import save_card

        save_card(virtual)
    if json_output:
        print_json(result.as_dict())
    else:
        _show(result)
    raise typer.Exit(0 if result.approved else EXIT_NOT_APPROVED)


def _run(transport: Any, terminal: Any, *, amount_fen: int, contactless: bool, pin: str | None) -> Any:
    if contactless:
        from citycard.kernel.qpboc import run_qpboc

        return run_qpboc(transport, terminal, amount_fen=amount_fen)
    from citycard.kernel.contact import FixedPinPad, run_contact

    return run_contact(
        transport, terminal, amount_fen=amount_fen, pin_pad=FixedPinPad(pin) if pin is not None else None
    )


def main() -> None:  # pragma: no cover - `python -m citycard.cli.terminal` until main.py registers the group
    """Run this group alone, with the exit-code rules of ``citycard.cli.main``."""
    from citycard.cli.main import UsageError

    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
