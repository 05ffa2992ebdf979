"""`citycard card new`: personalise a virtual card from a profile.

Data preparation runs in the default software HSM (``SoftHSM.open()``: ``CITYCARD_DATA_DIR`` or
``~/.local/share/citycard``; a test issuer's missing keys are created there), the STORE DATA script
is run through a blank card's ``process`` with every status word checked, and the card image is
written. The summary shows the masked PAN and KCVs, never a key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citycard.card.perso import (
    PersoScript,
    PreparedCard,
    check_inputs,
    load_profile,
    perso_script,
    prepare_card,
)
from citycard.cli.card import app
from citycard.cli.common import fail, guarded, print_json
from citycard.hsm import SoftHSM

EXIT_CARD_REFUSED = 1  # the card answered a status word other than 9000: not the user's input
SW_OK = b"\x90\x00"

EXAMPLE = """
Example:

  citycard card new --profile citizen-card-gm --out card.json --script perso.json

Profiles: citizen-card-gm, pboc-debit-gm, pboc-debit-intl, pboc-ec-only-gm, or a TOML file.
"""


@app.command(name="new", epilog=EXAMPLE)
@guarded
def new(
    profile: Annotated[str, typer.Option("--profile", help="A shipped profile name or a profile TOML file.")],
    out: Annotated[Path, typer.Option("--out", help="The card image file to write.")],
    pan: Annotated[
        str | None, typer.Option(help="The PAN (BIN, length and Luhn digit checked); default: a new one.")
    ] = None,
    psn: Annotated[
        str | None, typer.Option(help="PAN sequence number, 2 digits; default: the profile's.")
    ] = None,
    pin: Annotated[
        str | None, typer.Option(help="Offline PIN, 4 to 12 digits; default: the profile's.")
    ] = None,
    script: Annotated[
        Path | None, typer.Option("--script", help="Also write the STORE DATA perso script (JSON) here.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing card image.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Prepare a card from a profile in the HSM, personalise a blank virtual card, save its image."""
    _check_paths(out, script, force=force)
    chosen = load_profile(profile)
    check_inputs(chosen, pan=pan, psn=psn, pin=pin)  # bad input ends here, before the HSM is touched
    hsm = SoftHSM.open()
    prepared = prepare_card(chosen, hsm, pan=pan, psn=psn, pin=pin)
    perso = perso_script(prepared)
    _personalise(prepared, perso, hsm, out)
    if script is not None:
        perso.save(script)
    summary = _summary(prepared, out, script, apdus=len(perso.apdus))
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)


def _check_paths(out: Path, script: Path | None, *, force: bool) -> None:
    for what, path in (("--out", out), ("--script", script)):
        if path is None:
            continue
        if not path.parent.is_dir():
            fail(f"{what} {path}: directory {path.parent} does not exist")
        if path.is_dir():
            fail(f"{what} {path} is a directory")
    if out.exists() and not force:
        fail(f"--out {out} exists: a card image holds balances and counters, use --force to replace it")
    if script is not None and script.resolve() == out.resolve():
        fail("--script and --out name the same file")


def _personalise(prepared: PreparedCard, perso: PersoScript, hsm: SoftHSM, out: Path) -> None:
    """A blank card with the PBOC application; every APDU of the script must answer 9000."""
    from citycard.card import new_card, save_card  # the card OS and the application: imported when used
    from citycard.card.pboc import PbocApplication

    temporary = out.with_name(f".{out.name}.new")
    temporary.unlink(missing_ok=True)
    card = new_card(
        [PbocApplication(prepared.aid)], hsm=hsm, image_path=temporary, perso_suite=prepared.perso_suite
    )
    card.power_on()
    for number, apdu in enumerate(perso.apdus):
        response = card.process(apdu)
        if response[-2:] != SW_OK:
            temporary.unlink(missing_ok=True)
            what = (
                "SELECT"
                if number == 0
                else f"STORE DATA block {number - 1:02X} ({_dgis_of(perso, number - 1)})"
            )
            print(f"error: the card answered {response[-2:].hex().upper()} to {what}", file=sys.stderr)
            raise typer.Exit(EXIT_CARD_REFUSED)
    if not card.applications[0].personalised:
        raise AssertionError("the last STORE DATA block was accepted but the application is not personalised")
    save_card(card, temporary)
    temporary.replace(out)


def _dgis_of(perso: PersoScript, block: int) -> str:
    """The DGI a block carries (the CLI's script has one DGI a block, or a part of one)."""
    position = 0
    for item in perso.dgis:
        if position <= block < position + item["blocks"]:
            return f"DGI {item['dgi']}"
        position += item["blocks"]
    raise AssertionError(f"block {block} is beyond the script's DGIs")


def _summary(prepared: PreparedCard, out: Path, script: Path | None, *, apdus: int) -> dict[str, Any]:
    return {
        "profile": prepared.profile,
        "pan": prepared.pan_masked,
        "psn": prepared.psn,
        "expiry": prepared.expiry.isoformat(),
        "suites": [s.name for s in prepared.suites],
        "aid": prepared.aid.hex().upper(),
        "kcvs": {group: dict(values) for group, values in prepared.kcvs.items()},
        "capks": {name: f"{c.rid.hex().upper()}/{c.index:02X}" for name, c in prepared.capks.items()},
        "ec_balance_fen": prepared.ec_balance_fen,
        "image": str(out),
        "script": str(script) if script is not None else None,
        "apdus": apdus,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"card personalised from {summary['profile']}", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("PAN", f"{summary['pan']}  PSN {summary['psn']}")
    table.add_row("expiry", summary["expiry"])
    table.add_row("suite", " + ".join(summary["suites"]))
    table.add_row("AID", summary["aid"])
    for group, values in summary["kcvs"].items():
        shown = "  ".join(f"{kind} {kcv}" for kind, kcv in values.items())
        table.add_row(f"KCVs {group}", shown)
    table.add_row("CAPK", "  ".join(f"{suite} {name}" for suite, name in summary["capks"].items()))
    balance = summary["ec_balance_fen"]
    shown = (
        "none (no electronic cash)"
        if balance is None
        else f"{balance // 100}.{balance % 100:02d} yuan ({balance} fen)"
    )
    table.add_row("EC balance", shown)
    table.add_row("image", summary["image"])
    if summary["script"]:
        table.add_row("perso script", f"{summary['script']} ({summary['apdus']} APDUs)")
    Console().print(table)
