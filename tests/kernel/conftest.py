"""Virtual cards, terminals and a scripted card for the kernel tests.

The cards are real: personalised from the shipped profiles through STORE DATA with an ephemeral
HSM (once per session), each test working on its own copy of the image. Tests may build cards with
``citycard.card``; the kernel never imports it (DESIGN.md §2).

:class:`ScriptedCard` answers from a list of (C-APDU, R-APDU) pairs: record a real exchange with
:func:`record`, corrupt one answer, replay it. A command that differs from the script fails the
test at once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from citycard.emv.tlv import TLV, decode_one, encode
from citycard.kernel.context import Terminal, TerminalProfile
from citycard.kernel.params import AidTable, CapkTable, ExceptionFile, random_test_entries

BALANCE_FEN = 10_000
UN = bytes.fromhex("1A2B3C4D")
PROFILES = {
    "GM": "pboc-ec-only-gm",
    "INTL": "pboc-debit-intl",
    "GM-DEBIT": "pboc-debit-gm",
    "CITIZEN": "citizen-card-gm",
}
# A GM debit card whose CVM list asks for the offline plaintext PIN only, and whose CDOL2 leaves
# out 91 (so the terminal authenticates the issuer with EXTERNAL AUTHENTICATE).
PIN_CARD_CHANGES = {
    '"8E" = "000000000000000042031E031F00"': '"8E" = "00000000000000000103"',
    'cdol2 = "8A02910A9F02069F03069F1A0295055F2A029A039C019F3704"': (
        'cdol2 = "8A029F02069F03069F1A0295055F2A029A039C019F3704"'
    ),
}
PIN = "123456"  # the profiles' offline PIN
# Velocity checking (Book 3 §10.6.3): lower (9F14) 0 and upper (9F23) 3 consecutive offline
# transactions, in the first record.
VELOCITY_CHANGES = {
    'name = "pboc-debit-gm"': 'name = "velocity"',
    'tags = ["57", "5F20"]': 'tags = ["57", "5F20", "9F14", "9F23"]',
    '"9F07" = "FF00"': '"9F14" = "00"\n"9F23" = "03"\n"9F07" = "FF00"',
}
# An INTL card with Part 14: pboc-debit-intl plus the citizen card's transit file (SFI 15).
CITIZEN_INTL_CHANGES = {
    'name = "pboc-debit-intl"': 'name = "citizen-intl"',
    'pdol_contactless = "9F66049F02069F03069F1A0295055F2A029A039C019F3704"': (
        'pdol_contactless = "9F66049F02069F03069F1A0295055F2A029A039C019F3704DF6001DF6901"'
    ),
    'imk_enc = "imk-enc"\n': 'imk_enc = "imk-enc"\nimk_capp = "imk-capp"\n',
}
CITIZEN_INTL_PART14 = """
[part14]
indicator = "01"

[[part14.files]]
sfi = 0x15
type = "variable"
record_bytes = 64
size_bytes = 1024
use = "transit trip records"
"""


@dataclass
class Issued:
    """A personalised card image and what data preparation chose (PAN, PSN, CAPKs, HSM labels)."""

    path: Path
    prepared: Any
    suite: str

    @property
    def labels(self) -> dict[str, str]:
        suffix = "intl" if self.suite == "INTL" else "gm"
        return {
            "ac": f"imk-ac-{suffix}",
            "mac": f"imk-mac-{suffix}",
            "ca": f"test-ca-{suffix}",
            "issuer": f"issuer-623548-{suffix}",
        }


@pytest.fixture(scope="session")
def hsm():
    from citycard.hsm import SoftHSM

    return SoftHSM.ephemeral()


@pytest.fixture(scope="session")
def issued_cards(hsm, tmp_path_factory) -> Callable[[str], Issued]:
    from citycard.cli.bench_card import personalise_card

    made: dict[str, Issued] = {}

    def get(suite: str) -> Issued:
        if suite not in made:
            directory = tmp_path_factory.mktemp(f"card-{suite.lower()}")
            profile: str | Path = PROFILES.get(suite, "")
            if suite == "CITIZEN-INTL":  # the INTL debit card with the citizen card's trip file
                from citycard.card.perso.profile import profiles_dir

                text = (profiles_dir() / "pboc-debit-intl.toml").read_text(encoding="utf-8")
                for old, new in CITIZEN_INTL_CHANGES.items():
                    assert old in text, old
                    text = text.replace(old, new)
                profile = directory / "citizen-intl.toml"
                profile.write_text(text + CITIZEN_INTL_PART14, encoding="utf-8")
            if suite == "VELOCITY":  # a GM debit card that gives the terminal 9F14/9F23
                from citycard.card.perso.profile import profiles_dir

                text = (profiles_dir() / "pboc-debit-gm.toml").read_text(encoding="utf-8")
                for old, new in VELOCITY_CHANGES.items():
                    assert old in text, old
                    text = text.replace(old, new)
                profile = directory / "velocity.toml"
                profile.write_text(text, encoding="utf-8")
            if suite == "PIN":
                from citycard.card.perso.profile import profiles_dir

                text = (profiles_dir() / "pboc-debit-gm.toml").read_text(encoding="utf-8")
                for old, new in PIN_CARD_CHANGES.items():
                    assert old in text, old
                    text = text.replace(old, new)
                profile = directory / "pin-card.toml"
                profile.write_text(
                    text.replace('name = "pboc-debit-gm"', 'name = "pin-card"'), encoding="utf-8"
                )
            path, prepared = personalise_card(directory, hsm, profile=profile, balance_fen=BALANCE_FEN)
            made[suite] = Issued(path, prepared, suite)
        return made[suite]

    return get


@pytest.fixture
def new_card(hsm, issued_cards, tmp_path) -> Callable[..., Any]:
    """``new_card("GM")``: a fresh copy of the suite's card on the contactless interface."""
    from citycard.card import load_card

    def make(suite: str, *, interface: str = "contactless", copy: str = "card") -> Any:
        source = issued_cards(suite).path
        path = tmp_path / f"{copy}-{suite.lower()}.json"
        shutil.copyfile(source, path)
        card = load_card(path, hsm=hsm)
        card.interface = interface
        return card

    return make


@pytest.fixture(scope="session")
def capks(hsm, issued_cards) -> CapkTable:
    issued_cards("GM"), issued_cards("INTL")  # the test CAs exist in the HSM after personalisation
    return CapkTable.load().with_hsm(hsm)


@pytest.fixture(scope="session")
def blacklist() -> ExceptionFile:
    return ExceptionFile.build(random_test_entries(1_000, seed=4), version=1)


def make_terminal(capks: CapkTable, *, profile: TerminalProfile | None = None, exceptions=None, aids=None):
    return Terminal(
        profile=profile or TerminalProfile(),
        aids=aids or AidTable.load(),
        capks=capks,
        exceptions=exceptions,
    )


@pytest.fixture
def terminal(capks, blacklist) -> Terminal:
    return make_terminal(capks, exceptions=blacklist)


# --- a scripted card ----------------------------------------------------------------------------


class Recorder:
    """Wraps a card and keeps every (C-APDU, R-APDU) pair it answers."""

    def __init__(self, card: Any):
        self.card = card
        self.atr = card.atr
        self.pairs: list[tuple[bytes, bytes]] = []

    def power_on(self) -> bytes:
        return self.card.power_on()

    def process(self, apdu: bytes) -> bytes:
        response = self.card.process(apdu)
        self.pairs.append((apdu, response))
        return response


class ScriptedCard:
    """A card that answers from a script of (C-APDU, R-APDU) pairs, in order (STYLE.md)."""

    atr = bytes.fromhex("3B8880010000000000718100F9")

    def __init__(self, pairs: list[tuple[Any, bytes | str]]):
        self.script: list[tuple[Any, bytes]] = [
            (bytes.fromhex(c) if isinstance(c, str) else c, bytes.fromhex(r) if isinstance(r, str) else r)
            for c, r in pairs
        ]
        self.position = 0

    def process(self, apdu: bytes) -> bytes:
        if self.position >= len(self.script):
            raise AssertionError(f"the script has no answer left for {apdu.hex().upper()}")
        expected, response = self.script[self.position]
        if callable(expected):  # a predicate instead of the exact command
            if not expected(apdu):
                raise AssertionError(
                    f"APDU {self.position + 1}: {apdu.hex().upper()} does not fit the script"
                )
        elif apdu != expected:
            raise AssertionError(
                f"APDU {self.position + 1}: expected {expected.hex().upper()}, got {apdu.hex().upper()}"
            )
        self.position += 1
        return response

    def answer(self, prefix: str) -> int:
        """Index of the first pair whose C-APDU starts with ``prefix`` (hex)."""
        wanted = bytes.fromhex(prefix)
        return next(
            i for i, (c, _) in enumerate(self.script) if isinstance(c, bytes) and c.startswith(wanted)
        )

    def replace(self, prefix: str, response: bytes, *, occurrence: int = 0) -> None:
        wanted = bytes.fromhex(prefix)
        hits = [i for i, (c, _) in enumerate(self.script) if c.startswith(wanted)]
        index = hits[occurrence]
        self.script[index] = (self.script[index][0], response)


def rewrite_template(response: bytes, change: Callable[[list[TLV]], list[TLV]]) -> bytes:
    """A 9000 answer whose template's children went through ``change`` (re-encoded)."""
    template = decode_one(response[:-2])
    children = change(list(template.children or []))
    return encode([TLV(template.tag, children=children)]) + response[-2:]


READ_RECORD = "00B2"
GPO = "80A8"
