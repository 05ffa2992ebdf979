"""End to end with a REAL virtual card: the contact kernel goes online through an AcquirerLink that
encodes CUPS messages with the iso8583 builders and calls process_batch in-process (B2 does the TCP
version). The EC top-up script the issuer answers is applied by the card: its 9F79 then equals the
issuer's EC shadow balance and its EC ledger account."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from citycard.card import load_card
from citycard.cli.bench_card import personalise_card
from citycard.emv.tlv import decode_dict
from citycard.iso8583 import builders
from citycard.iso8583.message import decode, encode
from citycard.kernel.contact import FixedPinPad, run_contact
from citycard.kernel.context import Terminal, TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.params import AidTable, CapkTable
from citycard.reader import InProcessTransport

from .conftest import ACCOUNT_FEN, PIN_KEYS, SUITES, TERMINAL, balance, healthy, next_stan

PROFILES = {"INTL": "pboc-debit-intl", "GM": "pboc-debit-gm"}
CARD_EC_FEN = 10_000
UN = bytes.fromhex("1A2B3C4D")


class InProcessAcquirer:
    """The kernel's AcquirerLink: one CUPS 0200 per call, through the wire format, to the issuer."""

    def __init__(self, issuer, kind: str):
        self.issuer, self.kind = issuer, kind
        self.exchanges: list[tuple[dict, dict]] = []

    def authorise(self, field55, *, pan, psn, amount_fen, pin_block=None, tag_5f24=None, **_more):
        expiry = tag_5f24.hex()[:4] if tag_5f24 else None  # F14 = YYMM of 5F24
        request = builders.financial(
            self.kind,
            terminal=TERMINAL,
            card=builders.Card(pan=pan, psn=int(psn) if psn is not None else None, expiry_yymm=expiry),
            amount_fen=amount_fen,
            stan=next_stan(),
            when=dt.datetime.now(dt.UTC),
            ic=field55,
            pin_block=pin_block,
        )
        wire_request, _ = decode(encode(request))
        (response,) = self.issuer.process_batch([wire_request])
        response, _ = decode(encode(response))
        self.exchanges.append((wire_request, response))
        return response["39"].encode("ascii"), response.get("55", b"")


@pytest.fixture(scope="module")
def personalised(hsm, tmp_path_factory):
    made = {}

    def get(suite: str):
        if suite not in made:
            directory = tmp_path_factory.mktemp(f"issuer-card-{suite.lower()}")
            made[suite] = personalise_card(directory, hsm, profile=PROFILES[suite], balance_fen=CARD_EC_FEN)
        return made[suite]

    return get


@pytest.fixture
def real_card(issuer, personalised, tmp_path):
    """A fresh copy of the suite's personalised card, enrolled at the issuer; (card, prepared, terminal)."""

    def make(suite: str, *, pin: str | None = None):
        path, prepared = personalised(suite)
        copy = tmp_path / f"card-{suite.lower()}.json"
        shutil.copyfile(path, copy)
        card = load_card(copy, hsm=issuer.hsm)
        card.interface = "contact"
        issuer.enrol_card(
            pan=prepared.pan, psn=prepared.psn, expiry=prepared.expiry, suite=SUITES[suite], pin=pin,
            ec_balance_fen=CARD_EC_FEN, account_balance_fen=ACCOUNT_FEN,
        )  # fmt: skip
        terminal = Terminal(
            profile=TerminalProfile(), aids=AidTable.load(), capks=CapkTable.load().with_hsm(issuer.hsm)
        )
        return card, prepared, terminal

    return make


def card_ec_balance(card, aid: bytes) -> int:
    with InProcessTransport(card) as transport:
        transport.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00")
        return int(transport.transmit(bytes.fromhex("80CA9F7900"))[3:-2].hex())


def pay(card, terminal, acquirer, amount_fen, pin_pad=None):
    with InProcessTransport(card) as transport:
        return run_contact(
            transport, terminal, amount_fen=amount_fen, unpredictable_number=UN, acquirer=acquirer,
            random=lambda n: n - 1, pin_pad=pin_pad,
        )  # fmt: skip


@pytest.mark.parametrize("suite", ["INTL", "GM"])
def test_ec_load_end_to_end_with_the_virtual_card(issuer, real_card, suite):
    card, prepared, terminal = real_card(suite)
    acquirer = InProcessAcquirer(issuer, "ec_load")
    result = pay(card, terminal, acquirer, 3_000)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    ((request, response),) = acquirer.exchanges
    assert response["39"] == "00" and request["3"] == "600000"
    assert "72" in decode_dict(response["55"])
    assert result.data.get("DF31", b"")[:1] == b"\x20"  # the card ran the top-up script successfully
    new_balance = card_ec_balance(card, prepared.aid)
    assert new_balance == CARD_EC_FEN + 3_000
    row_balance = issuer_shadow(issuer, prepared.pan)
    assert new_balance == row_balance == balance(issuer, f"citybank:ec:{prepared.pan}:01")
    assert balance(issuer, f"citybank:card:{prepared.pan}:01") == ACCOUNT_FEN - 3_000
    assert healthy(issuer)


@pytest.mark.parametrize("suite", ["INTL", "GM"])
def test_purchase_end_to_end_with_the_virtual_card(issuer, real_card, suite):
    card, prepared, terminal = real_card(suite)
    acquirer = InProcessAcquirer(issuer, "purchase")
    result = pay(card, terminal, acquirer, 1_234)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert result.authorisation_response_code == b"00"
    assert balance(issuer, f"citybank:card:{prepared.pan}:01") == ACCOUNT_FEN - 1_234
    # a second purchase: the card's ATC moved on, the issuer accepts it
    assert pay(card, terminal, acquirer, 1).kind is Outcome.APPROVED_ONLINE
    assert healthy(issuer)


def issuer_shadow(issuer, pan: str) -> int:
    from sqlalchemy import select

    from citycard.host.issuer import tables

    with issuer.engine.connect() as conn:
        return conn.execute(
            select(tables.cards.c.ec_balance_fen).where(tables.cards.c.pan == pan)
        ).scalar_one()


@pytest.mark.parametrize("suite", ["INTL", "GM"])
def test_online_pin_end_to_end_with_the_virtual_card(issuer, real_card, suite):
    """The kernel asks for the online PIN (CVM 42 03) and enciphers it under the terminal PIN key —
    here the issuer's 3DES zone PIN key, as the server's translation delivers it, since the CUPS F52
    is 8 bytes on the wire whatever the card's suite; the issuer checks it against the PVV of the
    enrolled PIN under the card's suite's PVK."""
    card, prepared, terminal = real_card(suite, pin="8642")
    acquirer = InProcessAcquirer(issuer, "purchase")
    right = FixedPinPad("8642", pin_key=PIN_KEYS["INTL"], suite=SUITES["INTL"])
    result = pay(card, terminal, acquirer, 500, pin_pad=right)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert "52" in acquirer.exchanges[-1][0]
    wrong = FixedPinPad("1111", pin_key=PIN_KEYS["INTL"], suite=SUITES["INTL"])
    declined = pay(card, terminal, acquirer, 500, pin_pad=wrong)
    assert declined.kind is Outcome.DECLINED and declined.authorisation_response_code == b"55"
    assert balance(issuer, f"citybank:card:{prepared.pan}:01") == ACCOUNT_FEN - 500
    assert healthy(issuer)
