"""`citycard terminal pay`: one purchase through the terminal kernel, with a virtual or a real card.

``--card card.json`` loads a virtual card image (``citycard card new``) and saves it afterwards;
``--reader pcsc[:NAME]`` talks to whatever card is in a PC/SC reader — a real PBOC card, or a
virtual one that ``citycard card serve`` attached to pcscd. ``--contactless`` runs qPBOC (PPSE,
GPO with the card's decision, fDDA, blacklist); without it the contact flow. Each kernel step and
the outcome are printed (Rich), or one JSON document with ``--json``.

Terminal parameters: the shipped AID and CAPK tables (``citycard.kernel.params``) plus the test CAs
in the HSM (``SoftHSM.open()``, the one ``citycard card new`` used), an optional exception file.

``--online HOST:PORT`` gives the kernel an acquirer link over ISO 8583
(:mod:`citycard.terminals.acquirer_link`): the terminal first sends the reversals it still owes
(stored in ``<data dir>/terminal-<id>.json``), signs on when the HSM holds its TMK
(``tmk:<terminal id>``, made by ``citycard host terminal-key``) so its messages carry a MAC, then
pays; afterwards it reverses an approval the card declined and advises script results.
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
TERMINAL_ID_DEFAULT = "00000001"  # F41 / 9F1C
MERCHANT_ID_DEFAULT = "898510141110001"  # F42 / 9F16
ONLINE_TIMEOUT_S_DEFAULT = 10.0
ONLINE_TIMEOUT_S_MAX = 120.0
PORT_MAX = 65_535
AMOUNT_PATTERN = re.compile(r"(?P<yuan>\d{1,10})(?:\.(?P<fen>\d{1,2}))?")
AMOUNT_FEN_MAX = 999_999_999_999  # n12
# 9C for a load from the cardholder's designated account (指定账户圈存); PBOC Part 13 usage as seen in
# public terminal code — UNCERTAIN, check against JR/T 0025.13.
TRANSACTION_TYPE_EC_LOAD = 0x60


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


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--online``; ValueError names the problem.

    >>> parse_host_port("127.0.0.1:8583")
    ('127.0.0.1', 8583)
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= PORT_MAX:
        raise ValueError(f"--online must be HOST:PORT with a port 1 to {PORT_MAX}, got {text!r}")
    return host.strip("[]"), int(port)


def _terminal(
    hsm: Any,
    *,
    suite: SuiteChoice | None,
    aids: Path | None,
    capks: Path | None,
    blacklist: Path | None,
    terminal_id: str = TERMINAL_ID_DEFAULT,
    merchant_id: str = MERCHANT_ID_DEFAULT,
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
    profile = TerminalProfile(
        suite=chosen, terminal_id=terminal_id.encode("ascii"), merchant_id=merchant_id.encode("ascii")
    )
    return Terminal(profile, aid_table, capk_table, exceptions)


def _online_link(
    hsm: Any,
    online: str,
    *,
    terminal_id: str,
    merchant_id: str,
    contactless: bool,
    timeout_s: float,
    kind: str = "purchase",
) -> Any:
    """The acquirer link for ``--online``: connect, sign on when the HSM holds the TMK, and send the
    reversals still owed. A host that cannot be reached is not fatal: the kernel then meets an
    acquirer it cannot reach ("unable to go online", Book 3 §10.9)."""
    from citycard.hsm.masterkey import data_dir
    from citycard.iso8583 import builders
    from citycard.terminals.acquirer_link import Iso8583AcquirerLink, UnreachableClient, connect
    from citycard.terminals.store import TerminalStore, TerminalStoreError

    try:
        host, port = parse_host_port(online)
        store = TerminalStore(data_dir(), terminal_id)
    except (ValueError, TerminalStoreError) as exc:
        fail(str(exc))
    tmk_label = f"tmk:{terminal_id}"
    has_tmk = tmk_label in {info.label for info in hsm.list_keys()}
    note = "no TMK in the HSM: messages without MAC"
    client: Any = None
    try:
        client = connect(host, port, timeout_s=timeout_s, hsm=hsm, tmk_label=tmk_label if has_tmk else None)
        if has_tmk and hasattr(client, "sign_on"):
            client.sign_on(terminal_id=terminal_id, merchant_id=merchant_id)
            note = f"signed on with {tmk_label}: messages carry a MAC"
    except (ConnectionError, TimeoutError, OSError, ValueError) as exc:
        if client is not None:
            client.close()  # connected, but the sign-on failed: unusable without its keys
        client = UnreachableClient(f"{host}:{port}: {exc}")
        note = f"host unreachable: {exc}"
    link = Iso8583AcquirerLink(
        client,
        store,
        builders.Terminal(terminal_id=terminal_id, merchant_id=merchant_id),
        contactless=contactless,
        kind=kind,
    )
    link.log.append(note)
    link.send_pending_reversals()
    return link


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
    online: Annotated[
        str | None,
        typer.Option("--online", help="HOST:PORT of the acquirer host (ISO 8583) for online authorisation."),
    ] = None,
    terminal_id: Annotated[
        str, typer.Option("--terminal-id", help="Terminal id (F41, 9F1C), 8 letters or digits.")
    ] = TERMINAL_ID_DEFAULT,
    merchant_id: Annotated[
        str, typer.Option("--merchant-id", help="Merchant id (F42, 9F16), 15 characters.")
    ] = MERCHANT_ID_DEFAULT,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the host's answer.")
    ] = ONLINE_TIMEOUT_S_DEFAULT,
    ec_load: Annotated[
        bool,
        typer.Option(
            "--ec-load",
            help="Top up the card's electronic cash by --amount from the cardholder's bank account "
            "(圈存, contact, needs --online): the issuer answers with the 04DA9F79 script.",
        ),
    ] = False,
    apdus: Annotated[bool, typer.Option("--apdus", help="Print every APDU on stderr.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the outcome as one JSON document.")
    ] = False,
) -> None:
    """Run one purchase through the terminal kernel and print each step and the outcome.

    Exit codes: 0 approved, 1 not approved, 2 bad input, 3 reader or card not reachable.

    Example: citycard terminal pay --card card.json --amount 1.50 --contactless

    Online: citycard terminal pay --card card.json --amount 12.50 --online 127.0.0.1:8583 --json

    Top-up (圈存): citycard terminal pay --card card.json --amount 50.00 --ec-load --online 127.0.0.1:8583
    """
    try:
        amount_fen = parse_amount_fen(amount)
    except ValueError as exc:
        fail(str(exc))
    if (card is None) == (reader is None):
        fail("give exactly one of --card CARD.json or --reader pcsc[:NAME]")
    if pin is not None and not (pin.isdigit() and 4 <= len(pin) <= 12):
        fail("--pin must be 4 to 12 digits")
    if not (len(terminal_id) == 8 and terminal_id.isascii() and terminal_id.isalnum()):
        fail(f"--terminal-id must be 8 letters or digits, got {terminal_id!r}")
    if not (len(merchant_id) == 15 and merchant_id.isascii() and merchant_id.isprintable()):
        fail(f"--merchant-id must be 15 printable ASCII characters, got {merchant_id!r}")
    if not 0 < timeout <= ONLINE_TIMEOUT_S_MAX:
        fail(f"--timeout must be more than 0 and at most {ONLINE_TIMEOUT_S_MAX:g} s, got {timeout:g}")
    if ec_load and (online is None or contactless):
        fail("--ec-load is an online contact transaction: give --online HOST:PORT and not --contactless")
    if online is not None:
        try:
            parse_host_port(online)
        except ValueError as exc:
            fail(str(exc))
    from citycard.hsm import SoftHSM
    from citycard.reader import InProcessTransport, PcscTransport, TransportError

    hsm = SoftHSM.open()
    terminal = _terminal(
        hsm,
        suite=suite,
        aids=aids,
        capks=capks,
        blacklist=blacklist,
        terminal_id=terminal_id,
        merchant_id=merchant_id,
    )
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
    link = None
    if online is not None:
        link = _online_link(
            hsm,
            online,
            terminal_id=terminal_id,
            merchant_id=merchant_id,
            contactless=contactless,
            timeout_s=timeout,
            kind="ec_load" if ec_load else "purchase",
        )
    try:
        try:
            with transport:
                result = _run(
                    transport,
                    terminal,
                    amount_fen=amount_fen,
                    contactless=contactless,
                    pin=pin,
                    acquirer=link,
                    transaction_type=TRANSACTION_TYPE_EC_LOAD if ec_load else 0x00,
                )
        except TransportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_UNREACHABLE) from None
        if link is not None:
            link.complete(result)
    finally:
        if link is not None:
            link.client.close()
    if virtual is not None:
        from citycard.card import save_card

        save_card(virtual)
    if json_output:
        document = result.as_dict()
        if link is not None:
            document["online"] = {"log": link.log, "pending_reversals": len(link.store.pending)}
        print_json(document)
    else:
        _show(result)
        if link is not None:
            for line in link.log:
                Console().print(f"host: {line}")
    raise typer.Exit(0 if result.approved else EXIT_NOT_APPROVED)


def _run(
    transport: Any,
    terminal: Any,
    *,
    amount_fen: int,
    contactless: bool,
    pin: str | None,
    acquirer: Any = None,
    transaction_type: int = 0x00,
) -> Any:
    if contactless:
        from citycard.kernel.qpboc import run_qpboc

        return run_qpboc(transport, terminal, amount_fen=amount_fen, acquirer=acquirer)
    from citycard.kernel.contact import FixedPinPad, run_contact

    pin_pad: Any = None
    if pin is not None and acquirer is not None and hasattr(acquirer.client, "pin_block"):
        from citycard.terminals.pinpad import HostPinPad

        # online PINs under the session PIK the sign-on installed, so the issuer can check them
        pin_pad = HostPinPad(pin, acquirer.client, terminal_id=acquirer.terminal.terminal_id)
    elif pin is not None:
        pin_pad = FixedPinPad(pin)  # offline PIN; an online block under a throwaway key
    return run_contact(
        transport,
        terminal,
        amount_fen=amount_fen,
        pin_pad=pin_pad,
        acquirer=acquirer,
        transaction_type=transaction_type,
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
