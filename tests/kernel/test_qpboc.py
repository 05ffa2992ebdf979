"""qPBOC end to end against the virtual card, both suites (issue 4 acceptance)."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.crypto.cryptogram import pboc_ac_data
from citycard.emv.bits import TSI, TVR
from citycard.emv.tlv import decode_dict
from citycard.kernel.context import TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.params import ExceptionFile
from citycard.kernel.qpboc import run_qpboc
from citycard.reader import InProcessTransport

from .conftest import BALANCE_FEN, UN, make_terminal


def tap(card, terminal, amount_fen=150, **kwargs):
    with InProcessTransport(card) as transport:
        return run_qpboc(transport, terminal, amount_fen=amount_fen, unpredictable_number=UN, **kwargs)


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_offline_ec_purchase_is_approved_with_a_tc_the_issuer_verifies(
    suite, new_card, terminal, hsm, issued_cards
):
    card = new_card(suite)
    result = tap(card, terminal, amount_fen=150)
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert result.suite == suite
    assert TVR.decode(result.tvr) == []
    assert TSI.new(result.tsi).is_set("offline_data_authentication_performed")
    assert result.balance_fen_after == BALANCE_FEN - 150
    record = result.batch_record
    assert record is not None
    issued = issued_cards(suite)
    assert record.pan == issued.prepared.pan and record.psn == issued.prepared.psn
    assert record.amount == "000000000150" and record.balance_fen_after == BALANCE_FEN - 150
    assert record.key == f"{record.pan}:{record.psn}:{record.atc}"
    # the TC is the card's: the issuer's HSM recomputes it from the batch record alone
    data = pboc_ac_data(
        tag_9f02=bytes.fromhex(record.amount),
        tag_9f03=bytes(6),
        tag_9f1a=bytes.fromhex(record.country),
        tag_95=bytes.fromhex(record.tvr),
        tag_5f2a=bytes.fromhex(record.currency),
        tag_9a=bytes.fromhex(record.date),
        tag_9c=bytes.fromhex(record.type),
        tag_9f37=bytes.fromhex(record.unpredictable_number),
        tag_82=bytes.fromhex(record.aip),
        tag_9f36=bytes.fromhex(record.atc),
        cvr=bytes.fromhex(record.iad)[3:7],
    )
    assert hsm.verify_arqc(
        issued.labels["ac"],
        tag_5a=record.pan,
        tag_5f34=record.psn,
        tag_9f36=bytes.fromhex(record.atc),
        data=data,
        tag_9f26=bytes.fromhex(record.ac),
    )
    ic_data = decode_dict(result.field55)
    assert ic_data["9F26"] == bytes.fromhex(record.ac) and ic_data["9F27"] == b"\x40"
    assert ic_data["9F37"] == UN and ic_data["84"] == result.aid
    names = [step.name for step in result.steps]
    assert names[:3] == ["pre-processing", "SELECT PPSE", f"SELECT {result.aid.hex().upper()}"]
    assert "FDDA" in names and names[-1] == "outcome"


# --- the outcomes the card decides ---------------------------------------------------------------


def test_fdda_version_00_when_the_reader_does_not_offer_01(new_card, capks):
    terminal = make_terminal(capks, profile=TerminalProfile(ttq=bytes.fromhex("36000000")))
    result = tap(new_card("GM"), terminal)
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert result.data["9F66"] == bytes.fromhex("36000000")


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_ec_balance_too_low_goes_online_on_an_online_capable_reader(suite, new_card, terminal):
    result = tap(new_card(suite), terminal, amount_fen=BALANCE_FEN + 1)
    assert result.kind is Outcome.ONLINE_REQUEST, result.reasons
    assert result.cid == 0x80
    assert decode_dict(result.field55)["9F27"] == b"\x80"
    assert result.batch_record is None and TVR.decode(result.tvr) == []


def test_ec_balance_too_low_is_declined_by_an_offline_only_reader(new_card, capks):
    terminal = make_terminal(capks, profile=TerminalProfile.bus_validator())
    result = tap(new_card("GM"), terminal, amount_fen=BALANCE_FEN + 1)
    assert result.kind is Outcome.DECLINED, result.reasons
    assert result.cid == 0x00
    assert "AAC" in result.reasons[-1]


def test_blacklisted_card_is_declined(new_card, capks, issued_cards):
    issued = issued_cards("GM")
    listed = ExceptionFile.build([(issued.prepared.pan, issued.prepared.psn)], version=1)
    card = new_card("GM")
    result = tap(card, make_terminal(capks, exceptions=listed))
    assert result.kind is Outcome.DECLINED
    assert TVR.new(result.tvr).is_set("card_on_exception_file")
    assert result.batch_record is None
    assert "exception file" in result.reasons[-1]


def test_a_blacklist_entry_for_every_psn_also_declines(new_card, capks, issued_cards):
    listed = ExceptionFile.build([(issued_cards("INTL").prepared.pan, None)], version=1)
    result = tap(new_card("INTL"), make_terminal(capks, exceptions=listed))
    assert result.kind is Outcome.DECLINED
    assert TVR.new(result.tvr).is_set("card_on_exception_file")


def test_amount_at_the_contactless_limit_tries_another_interface_without_touching_the_card(terminal):
    from .conftest import ScriptedCard

    card = ScriptedCard([])  # any APDU would fail the test
    result = tap(card, terminal, amount_fen=10_000_000)
    assert result.kind is Outcome.TRY_ANOTHER_INTERFACE
    assert "not allowed contactless" in result.reasons[-1]
    assert TVR.decode(result.tvr) == [] and [s.name for s in result.steps] == ["outcome"]


def test_amount_above_the_ec_limit_on_an_offline_only_reader_tries_another_interface(capks):
    from .conftest import ScriptedCard

    terminal = make_terminal(capks, profile=TerminalProfile.bus_validator())
    result = tap(ScriptedCard([]), terminal, amount_fen=100_001)  # 9F7B is 1000.00 yuan
    assert result.kind is Outcome.TRY_ANOTHER_INTERFACE


def test_amount_above_the_ec_limit_asks_the_card_for_an_online_cryptogram(new_card, terminal):
    result = tap(new_card("GM"), terminal, amount_fen=100_001)
    assert result.kind is Outcome.ONLINE_REQUEST, result.reasons
    assert result.data["9F66"][1] & 0x80  # TTQ byte 2 b8: online cryptogram required
    assert result.data["9F7A"] == b"\x00"


def test_card_taken_away_ends_the_application(new_card, terminal):
    from citycard.reader import NoCardError

    class Vanishing(InProcessTransport):
        def _exchange(self, apdu):
            if apdu[:2] == bytes.fromhex("80A8"):  # the card leaves the field during GPO
                raise NoCardError("card removed")
            return super()._exchange(apdu)

    with Vanishing(new_card("GM")) as transport:
        result = run_qpboc(transport, terminal, amount_fen=1)
    assert result.kind is Outcome.END_APPLICATION
    assert "card lost" in result.reasons[-1] and "card removed" in result.reasons[-1]


def test_the_transaction_date_is_the_terminals_local_date(new_card, terminal):
    when = dt.datetime(2027, 1, 1, 17, 30, tzinfo=dt.UTC)  # 01:30 on 2 January in Shanghai
    result = tap(new_card("GM"), terminal, when=when)
    assert result.data["9A"] == bytes.fromhex("270102") and result.data["9F21"] == bytes.fromhex("013000")


def test_citizen_card_without_part_14_pays_from_its_electronic_cash(new_card, terminal, issued_cards):
    card = new_card("CITIZEN")
    result = tap(card, terminal, amount_fen=200)
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert result.data["DF60"] == b"\x00"  # Part 14 is off by default
    assert result.balance_fen_after == BALANCE_FEN - 200
