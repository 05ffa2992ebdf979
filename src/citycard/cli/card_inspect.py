"""`citycard card info` and `citycard card apdu`: look inside a card image, drive a card with APDUs.

Both open the card with the default software HSM (``SoftHSM.open()``: ``CITYCARD_DATA_DIR`` or
``~/.local/share/citycard``), whose ``card-image`` key sealed the image. Secrets never print: a
sealed item shows as its KCV.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from citycard.card import Card, load_card, read_image, save_card
from citycard.cli.card import app
from citycard.cli.common import fail, parse_hex, print_json, to_hex
from citycard.cli.tlv import tlv_json
from citycard.emv import TLV, TLVError, decode, tag_info
from citycard.hsm import SoftHSM

APDUS_MAX = 1_000  # per invocation
LIST_ITEMS_SHOWN_MAX = 50  # log entries shown per list in the human output
TEXT_FORMATS = frozenset({"a", "an", "ans"})  # EMV formats whose value is shown as text too

SW_MEANINGS = {  # ISO/IEC 7816-4 §5.6, EMV Book 3 §6.3.5, PBOC
    0x9000: "success",
    0x6281: "part of returned data may be corrupted",
    0x6283: "selected file invalidated (application blocked)",
    0x6581: "memory failure (card image not written)",
    0x6700: "wrong length",
    0x6982: "security status not satisfied",
    0x6983: "authentication method blocked (PIN try limit reached)",
    0x6984: "referenced data invalidated",
    0x6985: "conditions of use not satisfied",
    0x6986: "command not allowed",
    0x6987: "expected secure messaging data objects missing",
    0x6988: "secure messaging data objects incorrect (MAC)",
    0x6A80: "incorrect data",
    0x6A81: "function not supported (card blocked)",
    0x6A82: "file or application not found",
    0x6A83: "record not found",
    0x6A84: "not enough memory",
    0x6A86: "incorrect P1 P2",
    0x6A88: "referenced data not found",
    0x6B00: "wrong P1 P2",
    0x6D00: "instruction not supported",
    0x6E00: "class not supported",
    0x6F00: "no precise diagnosis (internal error)",
}


def describe_sw(status: int) -> str:
    """A status word in words.

    >>> describe_sw(0x9000), describe_sw(0x611C), describe_sw(0x63C2), describe_sw(0x6C08)
    ('success', '28 bytes waiting for GET RESPONSE', 'verification failed, 2 tries left', 'wrong Le, exact length 8')
    """
    sw1, sw2 = status >> 8, status & 0xFF
    if sw1 == 0x61:
        return f"{sw2 or 256} bytes waiting for GET RESPONSE"
    if sw1 == 0x6C:
        return f"wrong Le, exact length {sw2 or 256}"
    if sw1 == 0x63 and sw2 & 0xF0 == 0xC0:
        return f"verification failed, {sw2 & 0x0F} tries left"
    return SW_MEANINGS.get(status, "unknown status word")


def _open_card(image: Path) -> Card:
    try:
        hsm = SoftHSM.open()
        return load_card(image, hsm=hsm)
    except ValueError as exc:  # ImageError and HSMError are ValueErrors with one precise line
        fail(str(exc))


# --- info ----------------------------------------------------------------------------------------
def public_state(value: Any) -> Any:
    """An application's image state fit to show: a sealed item becomes its KCV, an amount in fen
    (a key ending ``_fen``) shows yuan too."""
    if isinstance(value, dict):
        if isinstance(value.get("sealed"), str) and "kcv" in value:  # a sealed item: its KCV only
            return {key: item for key, item in value.items() if key != "sealed"}
        return {
            key: _amount(item) if key.endswith("_fen") and isinstance(item, int) else public_state(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [public_state(item) for item in value]
    return value


def _amount(fen: int) -> dict[str, Any]:
    sign = "-" if fen < 0 else ""
    return {"fen": fen, "yuan": f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"}


def info_document(image: Path, card: Card) -> dict[str, Any]:
    document = read_image(image)
    applications = []
    for app_obj, entry in zip(card.applications, document["applications"], strict=True):
        applications.append(
            {
                "aid": to_hex(app_obj.aid),
                "label": app_obj.label,
                "priority": app_obj.priority,
                "class": entry["class"],
                "personalised": app_obj.personalised,
                "state": public_state(entry["state"]),
            }
        )
    return {
        "file": str(image),
        "card_serial": document["card_serial"],
        "atr": to_hex(card.atr),
        "protocol": card.protocol,
        "card_blocked": card.card_blocked,
        "saved_at": document.get("saved_at"),
        "kcvs": document["kcvs"],
        "applications": applications,
    }


def _add_state(tree: Tree, value: Any) -> None:
    if isinstance(value, dict):
        if set(value) == {"fen", "yuan"}:
            tree.label = f"{tree.label}: {value['yuan']} yuan ({value['fen']} fen)"
            return
        if "kcv" in value and all(not isinstance(item, dict | list) for item in value.values()):
            tree.label = f"{tree.label}: KCV {value['kcv']}" + (
                f" ({value['kcv_method']})" if "kcv_method" in value else ""
            )
            return
        for key, item in value.items():
            _add_state(tree.add(escape(str(key))), item)
        return
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        tree.label = f"{tree.label} ({len(value)})"
        for index, item in enumerate(value[:LIST_ITEMS_SHOWN_MAX], 1):
            _add_state(tree.add(str(index)), item)
        if len(value) > LIST_ITEMS_SHOWN_MAX:
            tree.add(f"… {len(value) - LIST_ITEMS_SHOWN_MAX} more")
        return
    tree.label = f"{tree.label}: {escape(str(value))}"


@app.command("info")
def info_command(
    image: Annotated[Path, typer.Argument(metavar="CARD.json", help="The card image file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a card image: ATR, protocol, applications, counters, balances, logs and KCVs (never a key).

    Example:

      citycard card info card.json
      citycard card info card.json --json
    """
    card = _open_card(image)
    summary = info_document(image, card)
    if json_output:
        print_json(summary)
        return
    console = Console(highlight=False)
    table = Table(show_header=False, box=None)
    table.add_row("Card image", escape(summary["file"]))
    table.add_row("Serial", summary["card_serial"])
    table.add_row("ATR", f"{summary['atr']} ({summary['protocol']})")
    table.add_row("Card", "BLOCKED" if summary["card_blocked"] else "active")
    table.add_row("Saved at", str(summary["saved_at"]))
    for label, kcv in summary["kcvs"].items():
        table.add_row(f"Key {label}", f"KCV {kcv}")
    console.print(table)
    for index, entry in enumerate(summary["applications"], 1):
        state = "personalised" if entry["personalised"] else "blank"
        tree = Tree(f"[bold]{index}. {entry['aid']}[/bold]  {escape(entry['label'])}  ({state})")
        _add_state(tree.add("state"), entry["state"])
        console.print(tree)
    if not summary["applications"]:
        console.print("No applications.")


# --- apdu ----------------------------------------------------------------------------------------
def _tlv_lines(objects: list[TLV], depth: int = 1) -> list[str]:
    lines = []
    for obj in objects:
        info = tag_info(obj.tag, "pboc")
        if obj.children is None:
            text = ""
            if (
                info.format in TEXT_FORMATS
                and obj.value.isascii()
                and obj.value.decode("ascii").isprintable()
            ):
                text = f' "{obj.value.decode("ascii")}"'
            lines.append(f"{'  ' * depth}{obj.tag} {info.name}: {to_hex(obj.value)}{text}")
        else:
            lines.append(f"{'  ' * depth}{obj.tag} {info.name}")
            lines.extend(_tlv_lines(obj.children, depth + 1))
    return lines


def _decoded(data: bytes) -> list[TLV] | None:
    if not data:
        return None
    try:
        return decode(data, padding=False)
    except TLVError:
        return None


@app.command("apdu")
def apdu_command(
    image: Annotated[Path, typer.Argument(metavar="CARD.json", help="The card image file.")],
    apdus: Annotated[list[str], typer.Argument(metavar="HEX...", help="C-APDUs in hex, sent in order.")],
    contactless: Annotated[
        bool, typer.Option("--contactless", help="Present the card on the contactless interface (PPSE).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Send APDUs to a card and print each answer (status word in words, data as TLV when it is).

    The card is powered on first and its image saved after the last APDU.

    Example:

      citycard card apdu card.json 00A404000E315041592E5359532E444446303100 00B2010C00

      citycard card apdu card.json --contactless 00A404000E325041592E5359532E444446303100
    """
    if len(apdus) > APDUS_MAX:
        fail(f"at most {APDUS_MAX} APDUs per call, got {len(apdus)}")
    commands = [parse_hex(text, f"APDU {index}") for index, text in enumerate(apdus, 1)]
    card = _open_card(image)
    card.interface = "contactless" if contactless else "contact"
    card.power_on()
    exchanges = []
    for command in commands:
        started = dt.datetime.now(dt.UTC)
        answer = card.process(command)
        elapsed_us = (dt.datetime.now(dt.UTC) - started) // dt.timedelta(microseconds=1)
        status = int.from_bytes(answer[-2:], "big")
        objects = _decoded(answer[:-2])
        exchanges.append(
            {
                "c_apdu": to_hex(command),
                "r_apdu": to_hex(answer),
                "data": to_hex(answer[:-2]),
                "sw": f"{status:04X}",
                "sw_meaning": describe_sw(status),
                "tlv": tlv_json(objects, "pboc") if objects is not None else None,
                "elapsed_us": elapsed_us,
                "_objects": objects,
            }
        )
    card.power_off()
    try:
        save_card(card)
    except (OSError, ValueError) as exc:
        fail(f"card image {image} not saved: {exc}")
    if json_output:
        print_json([{key: value for key, value in x.items() if not key.startswith("_")} for x in exchanges])
        return
    for exchange in exchanges:
        print(f"> {exchange['c_apdu']}")
        print(f"< {exchange['r_apdu']}")
        print(f"  SW {exchange['sw']}: {exchange['sw_meaning']}")
        if exchange["_objects"] is not None:
            print("\n".join(_tlv_lines(exchange["_objects"])))
