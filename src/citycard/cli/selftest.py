"""`citycard selftest`: every algorithm against the public vectors, as a table.

The vectors are data (``citycard/data/public_vectors.json``, sources in each row); this module
only maps an algorithm name to the library call that must reproduce the expected value.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citycard.crypto import GM, INTL, Suite

h = bytes.fromhex
Inputs = dict[str, Any]


def _suite(row: dict[str, Any]) -> Suite:
    return GM if row["suite"] == "GM" else INTL


def _key(value: str, suite: Suite) -> bytes:
    # "@card-key:IMK:PAN:PSN" lets a row use a card key derived by option A as its input key.
    if value.startswith("@card-key:"):
        from citycard.crypto.keys import derive_card_key

        _, imk, pan, psn = value.split(":")
        return derive_card_key(h(imk), tag_5a=pan, tag_5f34=psn, suite=suite)
    return h(value)


def _sm3(i: Inputs, s: Suite) -> str:
    from citycard.crypto.hashes import sm3

    return sm3(h(i["message"])).hex()


def _sm4_ecb(i: Inputs, s: Suite) -> str:
    from citycard.crypto.blockcipher import sm4_ecb_encrypt

    return sm4_ecb_encrypt(h(i["key"]), h(i["plaintext"])).hex()


def _sm4_ecb_iterated(i: Inputs, s: Suite) -> str:
    from citycard.crypto.blockcipher import sm4_ecb_encrypt

    block, key = h(i["plaintext"]), h(i["key"])
    for _ in range(int(i["iterations"])):
        block = sm4_ecb_encrypt(key, block)
    return block.hex()


def _sm4_cbc(i: Inputs, s: Suite) -> str:
    from citycard.crypto.blockcipher import sm4_cbc_encrypt

    return sm4_cbc_encrypt(h(i["key"]), h(i["plaintext"]), iv=h(i["iv"])).hex()


def _sm2_public_key(i: Inputs, s: Suite) -> str:
    from citycard.crypto import sm2

    return sm2.public_key(h(i["private_key"])).hex()


def _sm2_za(i: Inputs, s: Suite) -> str:
    from citycard.crypto import sm2

    return sm2.z_a(h(i["public_key"]), h(i["user_id"])).hex()


def _sm2_sign(i: Inputs, s: Suite) -> str:
    from citycard.crypto import sm2

    return sm2.sign(h(i["private_key"]), h(i["message"]), k=int(i["k"], 16)).hex()


def _sm2_verify(i: Inputs, s: Suite) -> str:
    from citycard.crypto import sm2

    return "valid" if sm2.verify(h(i["public_key"]), h(i["message"]), h(i["signature"])) else "invalid"


def _derive_card_key(i: Inputs, s: Suite) -> str:
    from citycard.crypto.keys import derive_card_key

    return derive_card_key(h(i["imk"]), tag_5a=i["pan"], tag_5f34=i["psn"], suite=s).hex()


def _card_key_kcv(i: Inputs, s: Suite) -> str:
    from citycard.crypto.keys import key_check_value

    return key_check_value(h(_derive_card_key(i, s)), suite=s, length=2).hex()


def _kcv(i: Inputs, s: Suite) -> str:
    from citycard.crypto.keys import key_check_value

    return key_check_value(h(i["key"]), suite=s, length=2).hex()


def _ac(i: Inputs, s: Suite) -> str:
    from citycard.crypto.cryptogram import generate_ac

    return generate_ac(_key(i["session_key"], s), h(i["data"]), suite=s).hex()


def _arpc(i: Inputs, s: Suite) -> str:
    from citycard.crypto.cryptogram import generate_arpc

    key = _key(i["session_key"], s)
    return generate_arpc(key, tag_9f26=h(i["arqc"]), tag_8a=h(i["arc"]), suite=s).hex()


def _mac(i: Inputs, s: Suite) -> str:
    from citycard.crypto.cryptogram import pboc_mac

    return pboc_mac(_key(i["session_key"], s), h(i["data"]), suite=s, length=int(i["length"])).hex()


def _script_encipher_cbc(i: Inputs, s: Suite) -> str:
    from citycard.crypto.script import encipher_script_data

    return encipher_script_data(h(i["session_key"]), h(i["data"]), suite=s, cbc=True).hex()


def _pin_change_block(i: Inputs, s: Suite) -> str:
    from citycard.crypto.script import pin_change_block

    return pin_change_block(new_pin=i["pin"], card_ac_key=h(i["card_ac_key"])).hex()


def _tlv(i: Inputs, s: Suite) -> str:
    from citycard.emv import tlv

    def show(objects: list[Any]) -> str:
        parts = []
        for obj in objects:
            if obj.children is not None:
                parts.append(f"{obj.tag}{{{show(obj.children)}}}")
            else:
                parts.append(f"{obj.tag}={obj.value.hex().upper()}")
        return ";".join(parts)

    return show(tlv.decode(h(i["data"])))


def _capk_checksum(i: Inputs, s: Suite) -> str:
    from citycard.crypto.hashes import sha1

    return sha1(h(i["rid"]) + h(i["index"]) + h(i["modulus"]) + h(i["exponent"])).hex()


def _oda_case(i: Inputs, s: Suite) -> str:
    from citycard.cli.oda import Case, check_case

    out = check_case(Case.model_validate(i))
    names = ("issuer_certificate", "icc_certificate", "sda", "dda", "cda")
    return " ".join(f"{name.split('_')[0]}={out[name]}" for name in names)


RUNNERS: dict[str, Callable[[Inputs, Suite], str]] = {
    "sm3": _sm3,
    "sm4-ecb": _sm4_ecb,
    "sm4-ecb-iterated": _sm4_ecb_iterated,
    "sm4-cbc": _sm4_cbc,
    "sm2-public-key": _sm2_public_key,
    "sm2-za": _sm2_za,
    "sm2-sign": _sm2_sign,
    "sm2-verify": _sm2_verify,
    "derive-card-key": _derive_card_key,
    "card-key-kcv": _card_key_kcv,
    "kcv": _kcv,
    "ac": _ac,
    "arpc": _arpc,
    "mac": _mac,
    "script-encipher-cbc": _script_encipher_cbc,
    "pin-change-block": _pin_change_block,
    "tlv": _tlv,
    "capk-checksum": _capk_checksum,
    "oda-case": _oda_case,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    id: str
    algorithm: str
    suite: str
    source: str
    expected: str
    got: str
    passed: bool
    ms: float


def load_vectors() -> list[dict[str, Any]]:
    text = resources.files("citycard.data").joinpath("public_vectors.json").read_text(encoding="utf-8")
    return json.loads(text)["vectors"]


def run_vectors(vectors: list[dict[str, Any]]) -> list[Outcome]:
    """Run each vector through its runner; an exception is a failure with the error as the result."""
    outcomes = []
    for row in vectors:
        runner = RUNNERS.get(row["algorithm"])
        started = time.perf_counter()
        if runner is None:
            got = f"no runner for algorithm {row['algorithm']!r}"
        else:
            try:
                got = runner(row["inputs"], _suite(row))
            except (ValueError, KeyError, ImportError, ArithmeticError) as exc:
                got = f"{type(exc).__name__}: {exc}"
        elapsed_ms = (time.perf_counter() - started) * 1000
        expected = row["expected"]
        passed = got.upper() == expected.upper()
        if all(c in string.hexdigits for c in got):
            got = got.upper()  # hex results are shown upper case, like every citycard command
        outcomes.append(
            Outcome(
                row["id"],
                row["algorithm"],
                row["suite"],
                row["source"],
                expected,
                got,
                passed,
                elapsed_ms,
            )
        )
    return outcomes


def _short(value: str, width: int = 34) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def selftest(
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run every algorithm against the public test vectors and print a table of results.

    Exit code 0 when every vector passes, 1 otherwise.
    """
    outcomes = run_vectors(load_vectors())
    failed = [o for o in outcomes if not o.passed]
    if json_output:
        print(
            json.dumps(
                {
                    "passed": len(outcomes) - len(failed),
                    "failed": len(failed),
                    "results": [_as_dict(o) for o in outcomes],
                },
                indent=2,
            )
        )
    else:
        table = Table(title="citycard selftest — public vectors", show_lines=False)
        table.add_column("vector", no_wrap=True, min_width=18)
        table.add_column("suite", no_wrap=True, min_width=5)
        table.add_column("result", no_wrap=True, min_width=6, max_width=34)
        table.add_column("ms", justify="right", no_wrap=True, min_width=7)
        table.add_column("source", no_wrap=True, overflow="ellipsis")
        for o in outcomes:
            mark = "[green]PASS[/green]" if o.passed else f"[red]FAIL[/red] got {_short(o.got, 24)}"
            table.add_row(o.id, o.suite, mark, f"{o.ms:.1f}", o.source)
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
        console.print(table)
        colour = "green" if not failed else "red"
        console.print(f"[{colour}]{len(outcomes) - len(failed)} of {len(outcomes)} vectors pass[/{colour}]")
    raise typer.Exit(0 if not failed else 1)


def _as_dict(o: Outcome) -> dict[str, Any]:
    return {field: getattr(o, field) for field in Outcome.__slots__}
