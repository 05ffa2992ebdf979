"""`citycard oda check` and the kernel's ODA step agree: both run citycard.crypto.oda (issue 4)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from citycard.emv.bits import TVR
from citycard.emv.tlv import TLV, decode_dict, decode_one
from citycard.kernel.context import TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.qpboc import run_qpboc
from citycard.kernel.records import parse_afl
from citycard.reader import InProcessTransport

from .conftest import GPO, UN, Recorder, ScriptedCard, make_terminal, rewrite_template

WHEN = dt.datetime.now(dt.UTC).replace(microsecond=0)
FDDA_00 = TerminalProfile.bus_validator(ttq=bytes.fromhex("28000000"))  # fDDA 00: the UN alone is signed


def oda_check(path) -> subprocess.CompletedProcess[str]:
    """`citycard oda check CASE.json` (JSON out) in its own process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "oda", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tap(card, terminal):
    with InProcessTransport(card) as transport:
        return run_qpboc(transport, terminal, amount_fen=100, unpredictable_number=UN, when=WHEN)


def case_from(card: ScriptedCard, capks, aid: bytes) -> dict:
    """CASE.json for `citycard oda check` from a recorded qPBOC exchange (what the kernel saw)."""
    gpo = decode_dict(next(r for c, r in card.script if c[:2] == bytes.fromhex(GPO))[:-2], flat=True)
    records: dict[tuple[int, int], bytes] = {}
    tags: dict[str, bytes] = {}
    for command, response in card.script:
        if command[:2] == bytes.fromhex("00B2"):
            records[command[3] >> 3, command[2]] = response[:-2]
            tags.update(decode_dict(response[:-2], flat=True))
    static = b""
    for entry in parse_afl(gpo["94"]):
        for number, oda in entry.records():
            if oda:
                static += decode_one(records[entry.sfi, number]).value
    static += gpo["82"]  # 9F4A = 82
    capk = capks.lookup(aid[:5], tags["8F"][0], today=WHEN.date())
    key = (
        {"sm2_public_key": capk.key.hex()}
        if capk.suite.signature == "sm2"
        else {"modulus": capk.key.hex(), "exponent": capk.exponent.hex()}
    )
    case_tags = {
        tag: tags[tag].hex() for tag in ("90", "92", "9F32", "9F46", "9F47", "9F48", "5A") if tag in tags
    }
    case_tags["9F4B"] = gpo["9F4B"].hex()
    return {
        "capk": {"rid": aid[:5].hex(), "index": f"{capk.index:02X}", **key},
        "tags": case_tags,
        "static_data": static.hex(),
        "dynamic_data": UN.hex(),
        "today": WHEN.date().isoformat(),
    }


@pytest.mark.parametrize("suite", ["GM", "INTL"])
@pytest.mark.parametrize("corrupt", [False, True])
def test_oda_check_and_the_kernel_give_the_same_answer(
    suite, corrupt, new_card, capks, issued_cards, tmp_path
):
    terminal = make_terminal(capks, profile=FDDA_00)
    recorder = Recorder(new_card(suite))
    assert tap(recorder, terminal).kind is Outcome.APPROVED_OFFLINE
    card = ScriptedCard(recorder.pairs)
    if corrupt:
        index = card.answer(GPO)
        command, response = card.script[index]

        def flip(children):
            return [
                TLV("9F4B", c.value[:-7] + bytes([c.value[-7] ^ 0x40]) + c.value[-6:])
                if c.tag == "9F4B"
                else c
                for c in children
            ]

        card.script[index] = (command, rewrite_template(response, flip))
    result = tap(card, terminal)
    path = tmp_path / "case.json"
    path.write_text(json.dumps(case_from(card, capks, issued_cards(suite).prepared.aid)))
    checked = oda_check(path)
    assert checked.returncode in (0, 1), checked.stderr
    outcome = json.loads(checked.stdout)
    assert outcome["issuer_certificate"] == outcome["icc_certificate"] == "valid"
    kernel_failed = TVR.new(result.tvr).is_set("dda_failed")
    assert kernel_failed is corrupt
    assert (outcome["dda"] == "invalid") is corrupt
    if corrupt:  # the same words: one implementation behind both
        assert outcome["errors"], outcome
        for error in outcome["errors"]:
            assert error.split(": ", 1)[-1] in result.reasons[0], (error, result.reasons[0])
    else:
        assert result.kind is Outcome.APPROVED_OFFLINE and outcome["errors"] == []
