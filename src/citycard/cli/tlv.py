"""`citycard tlv`: decode BER-TLV (EMV Book 3 Annex B) and name each tag by scheme.

Output is a JSON array, hex upper case; bad input prints one precise line on stderr and exits 2.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from citycard.cli.common import fail, parse_hex, print_json, to_hex
from citycard.emv import TLV, TLVError, check_scheme, decode, tag_info

app = typer.Typer(
    help="BER-TLV tools: decode EMV/PBOC data objects and name their tags.",
    no_args_is_help=True,
)


def tlv_json(objects: list[TLV], scheme: str) -> list[dict[str, Any]]:
    """JSON-ready view of decoded objects: tag, name, length and either value or children."""
    out: list[dict[str, Any]] = []
    for obj in objects:
        node: dict[str, Any] = {"tag": obj.tag, "name": tag_info(obj.tag, scheme).name, "length": obj.length}
        if obj.children is None:
            node["value"] = to_hex(obj.value)
        else:
            node["children"] = tlv_json(obj.children, scheme)
        out.append(node)
    return out


@app.command("decode")
def decode_command(
    data: Annotated[str, typer.Argument(metavar="HEX", help="BER-TLV data as hex (spaces allowed).")],
    scheme: Annotated[
        str, typer.Option("--scheme", help="Tag names: pboc (JR/T 0025, falls back to emv) or emv.")
    ] = "pboc",
) -> None:
    """Decode BER-TLV data objects (nested templates too) into a JSON array.

    A primitive object prints as {"tag", "name", "length", "value"},
    a constructed one as {"tag", "name", "length", "children"}.
    00/FF padding between objects is skipped; hex is upper case.

    Example:

      citycard tlv decode 9F7906000000012345 --scheme pboc

      [{"tag": "9F79", "name": "Electronic Cash Balance", "length": 6,
        "value": "000000012345"}]
    """
    try:
        check_scheme(scheme)
    except ValueError as exc:
        fail(f"--scheme: {exc}")
    raw = parse_hex(data, "HEX")
    try:
        objects = decode(raw)
    except TLVError as exc:
        fail(str(exc))
    print_json(tlv_json(objects, scheme))
