"""Fuzz: random CLA/INS/P1/P2/Lc/data never raise out of ``Card.process``; every answer ends in a
status word, and 6F00 (an internal error) comes only from the test application's deliberate crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.card import Card, load_card, new_card
from citycard.hsm import SoftHSM

h = bytes.fromhex
OPENERS = [  # reach the interesting states before the random commands
    h("00A404000E315041592E5359532E444446303100"),  # PSE
    h("00A404000E325041592E5359532E444446303100"),  # PPSE
    h("00A4040008A00000033301010100"),  # debit
    h("00A4040005A00000033300"),  # partial
    h("00A4040008A00000033301010600"),  # the blank application (STORE DATA)
    h("80AE80000299AA00"),  # a case-4 command (61xx in T=0)
]
CLASSES = st.one_of(st.sampled_from([0x00, 0x04, 0x0C, 0x80, 0x84, 0xFF]), st.integers(0, 255))
INSTRUCTIONS = st.one_of(
    st.sampled_from([0xA4, 0xC0, 0xB2, 0xE2, 0xCA, 0xA8, 0xAE, 0x84, 0x16, 0x20, 0xEE]), st.integers(0, 255)
)


@st.composite
def apdus(draw) -> bytes:
    header = bytes([draw(CLASSES), draw(INSTRUCTIONS), draw(st.integers(0, 255)), draw(st.integers(0, 255))])
    data = draw(st.binary(max_size=260))
    le = bytes([draw(st.integers(0, 255))])
    shape = draw(st.sampled_from(["case1", "case2", "case3", "case4", "raw", "lying-lc", "short"]))
    if shape == "case1":
        return header
    if shape == "case2":
        return header + le
    if shape in ("case3", "case4"):
        data = data[:255] or b"\x00"
        return header + bytes([len(data)]) + data + (le if shape == "case4" else b"")
    if shape == "lying-lc":
        return header + bytes([draw(st.integers(0, 255))]) + data
    if shape == "short":
        return header[: draw(st.integers(0, 3))]
    return header + data


def _check(apdu: bytes, answer: bytes) -> None:
    assert isinstance(answer, bytes) and 2 <= len(answer) <= 258
    sw1 = answer[-2]
    assert 0x61 <= sw1 <= 0x6F or sw1 == 0x90, answer.hex()
    if answer[-2:] == h("6F00"):
        assert len(apdu) >= 2 and apdu[1] == 0xEE, f"internal error on {apdu.hex()}"


def _cards(echo) -> list[Card]:
    blank = echo.EchoApplication(h("A000000333010106"), "EC", personalised=False)
    return [blank, *echo.apps()]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    protocol=st.sampled_from(["T=0", "T=1"]),
    interface=st.sampled_from(["contact", "contactless"]),
    openers=st.lists(st.sampled_from(OPENERS), max_size=3),
    commands=st.lists(apdus(), min_size=1, max_size=8),
)
def test_process_always_answers_a_status_word(echo, protocol, interface, openers, commands):
    card = Card(_cards(echo), protocol=protocol, interface=interface)
    for apdu in [*openers, *commands]:
        _check(apdu, card.process(apdu))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(apdus(), min_size=1, max_size=6), protocol=st.sampled_from(["T=0", "T=1"]))
def test_a_card_with_an_image_survives_random_commands_and_reloads(echo, registered, commands, protocol):
    hsm = SoftHSM.ephemeral()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "card.json"
        card = new_card(_cards(echo), hsm=hsm, image_path=path, protocol=protocol, durable=False)
        card.save()
        for apdu in [OPENERS[2], *commands]:
            _check(apdu, card.process(apdu))
        reloaded = load_card(path, hsm=hsm)
        assert [app.aid for app in reloaded.applications] == [app.aid for app in card.applications]
        assert reloaded.applications[1].counter == card.applications[1].counter
