"""`citycard hsm`: the key custodian's view of the software HSM — labels, types and KCVs, never keys.

The store is ``$CITYCARD_DATA_DIR/hsm-keys.json`` (default ``~/.local/share/citycard``) under the
master key from ``CITYCARD_HSM_MASTER_KEY`` or the key file next to it.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from citycard.cli.common import fail, guarded, parse_hex, print_json, to_hex
from citycard.crypto import SUITES, Suite
from citycard.crypto.capk import UNIONPAY_RID, Capk

if TYPE_CHECKING:
    from citycard.hsm import SoftHSM

app = typer.Typer(help="The software HSM: list, generate and import keys, test CAs and CAPKs (KCVs only).")

SuiteOption = Annotated[
    str, typer.Option("--suite", help="Algorithm suite: intl (3DES/RSA) or gm (SM4/SM2).")
]


def _hsm() -> SoftHSM:
    # imported here so that `citycard --help` does not load the HSM
    from citycard.hsm import HSMError, SoftHSM

    try:
        return SoftHSM.open()
    except HSMError as exc:
        fail(str(exc))


def _suite(name: str) -> Suite:
    for suite in SUITES:
        if suite.name == name.upper():
            return suite
    fail(f"--suite: unknown suite {name!r}: expected intl or gm")


def _capk_row(capk: Capk) -> dict[str, str | None]:
    return {
        "rid": to_hex(capk.rid),
        "index": f"{capk.index:02X}",
        "suite": capk.suite.name,
        "key": to_hex(capk.key),
        "exponent": to_hex(capk.exponent) or None,
        "checksum": to_hex(capk.checksum),
        "expiry": capk.expiry.isoformat() if capk.expiry else None,
    }


@app.command("keys")
@guarded
def keys_command(json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the keys: label, type, suite, KCV and creation time (UTC)."""
    infos = _hsm().list_keys()
    rows = [
        {
            "label": i.label,
            "type": i.key_type,
            "suite": i.suite.name,
            "kcv": i.kcv_hex,
            "created_at": i.created_at.isoformat(),
        }
        for i in infos
    ]
    if json_output:
        print_json(rows)
        return
    table = Table(title=f"HSM keys ({len(rows)})")
    for column in ("label", "type", "suite", "kcv", "created_at"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(row[c] for c in ("label", "type", "suite", "kcv", "created_at")))
    Console().print(table)


@app.command("generate")
@guarded
def generate_command(
    label: Annotated[str, typer.Argument(help="Key label, e.g. imk-ac-gm.")],
    key_type: Annotated[str, typer.Option("--type", help="Key type, e.g. IMK-AC, IMK-MAC, IMK-ENC, ZMK.")],
    suite: SuiteOption = "intl",
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing label.")] = False,
) -> None:
    """Generate a random symmetric key inside the HSM; prints its KCV.

    Example: citycard hsm generate imk-ac-gm --type IMK-AC --suite gm
    """
    info = _hsm().generate_key(label, key_type.upper(), _suite(suite), replace=replace)
    print(f"{info.label} {info.key_type} {info.suite.name} KCV {info.kcv_hex}")


@app.command("import")
@guarded
def import_command(
    label: Annotated[str, typer.Argument(help="Key label.")],
    key_type: Annotated[str, typer.Option("--type", help="Key type, e.g. IMK-AC.")],
    key: Annotated[str, typer.Option("--key", help="The clear key in hex, or - to read it from stdin.")],
    suite: SuiteOption = "intl",
    kcv: Annotated[
        str | None, typer.Option("--kcv", help="Expected KCV (hex); refuse the key if it differs.")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing label.")] = False,
) -> None:
    """Import a known clear symmetric key (a test IMK, a key-ceremony component); prints its KCV.

    Prefer --key - so the key does not land in the shell history.
    Example: echo 0123456789ABCDEFFEDCBA9876543210 | citycard hsm import imk-ac --type IMK-AC --key - --kcv 08D7B4
    """
    text = sys.stdin.readline().strip() if key == "-" else key
    clear = parse_hex(text, "--key")
    hsm = _hsm()
    chosen = _suite(suite)
    if kcv is not None:
        from citycard.crypto.keys import key_check_value

        expected = parse_hex(kcv, "--kcv")
        chosen.check_key(clear)
        if (
            not 1 <= len(expected) <= 3
            or key_check_value(clear, suite=chosen, length=len(expected)) != expected
        ):
            fail(f"--kcv: the key's KCV is not {to_hex(expected)}; nothing imported")
    info = hsm.import_key(label, key_type.upper(), chosen, clear, replace=replace)
    print(f"{info.label} {info.key_type} {info.suite.name} KCV {info.kcv_hex}")


@app.command("delete")
@guarded
def delete_command(label: Annotated[str, typer.Argument(help="Key label.")]) -> None:
    """Delete a key from the store."""
    _hsm().delete_key(label)
    print(f"{label} deleted")


@app.command("check")
@guarded
def check_command() -> None:
    """Unwrap every key and check its KCV: an audit of the whole store (exit 2 on the first bad key)."""
    infos = _hsm().check_keys()
    print(f"{len(infos)} keys unwrap and match their KCVs")


@app.command("test-ca")
@guarded
def test_ca_command(
    label: Annotated[str, typer.Argument(help="Label for the CA private key.")],
    suite: SuiteOption = "gm",
    index: Annotated[str, typer.Option("--index", help="CA public key index (9F22), hex.")] = "E1",
    rid: Annotated[str, typer.Option("--rid", help="RID (9F06), hex.")] = UNIONPAY_RID.hex().upper(),
    bits: Annotated[int, typer.Option("--bits", help="RSA modulus size.")] = 1984,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a TEST certification authority (never a scheme key) and print its CAPK.

    Example: citycard hsm test-ca ca-gm --suite gm --index E1
    """
    capk = _hsm().create_test_ca(
        label,
        _suite(suite),
        rid=parse_hex(rid, "--rid", length=5),
        index=parse_hex(index, "--index", length=1)[0],
        bits=bits,
    )
    row = _capk_row(capk)
    if json_output:
        print_json(row)
    else:
        print(f"CAPK {row['rid']}/{row['index']} {row['suite']} checksum {row['checksum']}")


@app.command("capk-import")
@guarded
def capk_import_command(
    rid: Annotated[str, typer.Option("--rid", help="RID (9F06), 5 bytes hex.")],
    index: Annotated[str, typer.Option("--index", help="Index (9F22), 1 byte hex.")],
    key: Annotated[str, typer.Option("--key", help="RSA modulus, or SM2 x‖y (64 bytes), hex.")],
    checksum: Annotated[str, typer.Option("--checksum", help="SHA-1 checksum (DF03), 20 bytes hex.")],
    exponent: Annotated[
        str, typer.Option("--exponent", help="RSA exponent (03 or 010001); empty for SM2.")
    ] = "",
    expiry: Annotated[str | None, typer.Option("--expiry", help="Last day of validity, YYYY-MM-DD.")] = None,
) -> None:
    """Import a CA public key after checking its SHA-1 checksum over RID‖index‖key‖exponent."""
    try:
        last_day = dt.date.fromisoformat(expiry) if expiry else None
    except ValueError:
        fail(f"--expiry: not a date (YYYY-MM-DD): {expiry!r}")
    capk = _hsm().import_capk(
        parse_hex(rid, "--rid", length=5),
        parse_hex(index, "--index", length=1)[0],
        parse_hex(key, "--key"),
        parse_hex(exponent, "--exponent"),
        parse_hex(checksum, "--checksum", length=20),
        last_day,
    )
    print(f"CAPK {to_hex(capk.rid)}/{capk.index:02X} {capk.suite.name} imported, checksum verified")


@app.command("capks")
@guarded
def capks_command(json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the CA public keys in the HSM."""
    rows = [_capk_row(c) for c in _hsm().list_capks()]
    if json_output:
        print_json(rows)
        return
    table = Table(title=f"CAPKs ({len(rows)})")
    for column in ("rid", "index", "suite", "checksum", "expiry"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["rid"], row["index"], row["suite"], row["checksum"], row["expiry"] or "-")
    Console().print(table)
