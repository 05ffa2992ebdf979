"""`citycard card serve CARD.json`: attach a virtual card to pcscd (vsmartcard's vpcd driver) until Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from citycard.cli.card import app
from citycard.cli.common import fail
from citycard.reader.vpcd import VPCD_HOST, VPCD_PORT

log = logging.getLogger("citycard.reader")


class InterfaceChoice(StrEnum):
    contact = "contact"
    contactless = "contactless"


def _print_apdu(command: bytes, response: bytes, seconds: float) -> None:
    print(f"> {command.hex().upper()}")
    print(f"< {response.hex().upper()}  ({seconds * 1000:.2f} ms)", flush=True)


@app.command("serve")
def serve(
    card_path: Annotated[
        Path,
        typer.Argument(metavar="CARD.json", help="Card image (from `citycard card new`); saved by the card."),
    ],
    port: Annotated[
        int,
        typer.Option(
            help=f"vpcd port: {VPCD_PORT} = 'Virtual PCD 00 00', {VPCD_PORT + 1} = 'Virtual PCD 00 01'."
        ),
    ] = VPCD_PORT,
    host: Annotated[str, typer.Option(help="Host where pcscd's vpcd driver listens.")] = VPCD_HOST,
    interface: Annotated[
        InterfaceChoice,
        typer.Option(
            help="The interface the card is presented on: PSE (contact) or PPSE/qPBOC (contactless)."
        ),
    ] = InterfaceChoice.contact,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print every APDU and its answer.")
    ] = False,
) -> None:
    """Serve a virtual card to pcscd through vsmartcard's vpcd driver, until Ctrl-C.

    Needs pcscd running with the vpcd driver (Debian: apt-get install pcscd vsmartcard-vpcd; start
    `pcscd` as root). Any PC/SC program then sees the card in "Virtual PCD 00 00". The card saves
    its own image after every state change; the bridge reconnects when pcscd restarts.

    Example: citycard card serve card.json --interface contactless --verbose
    """
    if not 0 < port < 65_536:
        fail(f"--port must be 1 to 65535, got {port}")
    from citycard.card.image import load_card  # the card stack loads only for this command
    from citycard.hsm import SoftHSM
    from citycard.reader.vpcd import VpcdBridge

    try:
        card = load_card(card_path, hsm=SoftHSM.open())
    except (OSError, ValueError) as exc:  # ImageError is a ValueError
        fail(str(exc))
    card.interface = interface.value

    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    bridge = VpcdBridge(card, host=host, port=port, on_apdu=_print_apdu if verbose else None)

    def stop(signum: int, frame: FrameType | None) -> None:
        bridge.stop()

    signal.signal(signal.SIGTERM, stop)
    reader = (
        f"Virtual PCD 00 {port - VPCD_PORT:02d}" if VPCD_PORT <= port < VPCD_PORT + 100 else f"port {port}"
    )
    print(
        f"serving {card_path} (ATR {card.atr.hex().upper()}, {interface.value}) to pcscd at {host}:{port} "
        f"→ reader {reader!r}; Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    try:
        bridge.serve_forever()
    except KeyboardInterrupt:
        bridge.stop()
    print(f"stopped after {bridge.apdus} APDUs in {time.monotonic() - started:.0f} s", file=sys.stderr)
