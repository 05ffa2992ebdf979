"""The contact flow end to end against the virtual card, with an issuer stand-in on the real HSM."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.crypto.cryptogram import pboc_ac_data_from_tags
from citycard.emv.bits import TSI, TVR
from citycard.emv.tlv import TLV, decode_dict, encode, encode_one
from citycard.kernel.contact import (
    FixedPinPad,
    parse_cvm_list,
    pin_block_format_0,
    results_of_scripts,
    run_contact,
)
from citycard.kernel.context import TerminalProfile
from citycard.kernel.online import OnlineError
from citycard.kernel.outcome import Outcome
from citycard.kernel.params import AidTable
from citycard.reader import InProcessTransport

from .conftest import BALANCE_FEN, PIN, UN, Issued, Recorder, ScriptedCard, make_terminal, rewrite_template

WHEN = dt.datetime.now(dt.UTC).replace(microsecond=0)
NEVER = lambda n: n - 1  # noqa: E731 — random transaction selection never picks this transaction


def ac_input(values: dict[str, bytes]) -> bytes:
    return pboc_ac_data_from_tags(values)


class Issuer:
    """An issuer host stand-in: checks the ARQC in the HSM, answers ARC + ARPC, and scripts."""

    def __init__(self, hsm, issued, *, approve=True, down=False, scripts_72=(), scripts_71=()):
        self.hsm, self.issued = hsm, issued
        self.approve, self.down = approve, down
        self.scripts_72, self.scripts_71 = scripts_72, scripts_71
        self.requests: list[dict] = []

    def authorise(self, field55, *, pan, psn, amount_fen, pin_block=None, tag_5f24=None, tag_57=None):
        if self.down:
            raise OnlineError("connection refused")
        values = decode_dict(field55)
        self.requests.append(
            {"values": values, "pan": pan, "psn": psn, "amount_fen": amount_fen, "pin_block": pin_block}
        )
        label = self.issued.labels["ac"]
        where = {"tag_5a": pan, "tag_5f34": psn, "tag_9f36": values["9F36"]}
        good = self.hsm.verify_arqc(label, data=ac_input(values), tag_9f26=values["9F26"], **where)
        arc = b"00" if good and self.approve else b"05"
        arpc = self.hsm.generate_arpc(label, tag_9f26=values["9F26"], tag_8a=arc, **where)
        scripts = b"".join(make(self.hsm, self.issued, values, pan, psn) for make in self.scripts_72)
        scripts += b"".join(make(self.hsm, self.issued, values, pan, psn) for make in self.scripts_71)
        return arc, encode_one("91", arpc + arc) + scripts


def ec_load(
    new_balance_fen: int, *, template: str = "72", script_id: bytes = b"\x00\x00\x00\x01", corrupt=False
):
    def make(hsm, issued, values, pan, psn):
        command = hsm.ec_load_script(
            issued.labels["mac"],
            tag_5a=pan,
            tag_5f34=psn,
            tag_9f36=values["9F36"],
            tag_9f26=values["9F26"],
            new_balance_fen=new_balance_fen,
        )
        if corrupt:
            command = command[:-1] + bytes([command[-1] ^ 0xFF])
        return encode([TLV(template, children=[TLV("9F18", script_id), TLV("86", command)])])

    return make


def pay(card, terminal, amount_fen=2_000, **kwargs):
    kwargs.setdefault("random", NEVER)
    with InProcessTransport(card) as transport:
        return run_contact(
            transport, terminal, amount_fen=amount_fen, unpredictable_number=UN, when=WHEN, **kwargs
        )


def balance_of(card, aid: bytes) -> int:
    with InProcessTransport(card) as transport:
        transport.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00")
        return int(transport.transmit(bytes.fromhex("80CA9F7900"))[3:-2].hex())


# --- online approval with ARPC, both suites ------------------------------------------------------


@pytest.mark.parametrize("suite", ["INTL", "GM-DEBIT"])
def test_online_approval_with_arpc(suite, new_card, capks, hsm, issued_cards):
    issued = issued_cards(suite)
    issuer = Issuer(hsm, issued)
    card = new_card(suite, interface="contact")
    result = pay(card, make_terminal(capks), acquirer=issuer)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert result.suite == ("INTL" if suite == "INTL" else "GM")
    assert result.authorisation_response_code == b"00"
    tsi = TSI.new(result.tsi)
    for bit in (
        "offline_data_authentication_performed",
        "cardholder_verification_performed",
        "card_risk_management_performed",
        "issuer_authentication_performed",
        "terminal_risk_management_performed",
    ):
        assert tsi.is_set(bit), bit
    # no PIN pad: online PIN (42 03) fails, the list falls to signature; floor limit 0: online
    assert TVR.decode(result.tvr) == [
        "pin_entry_required_and_pin_pad_not_present",
        "transaction_exceeds_floor_limit",
    ]
    assert result.cvm_results == bytes.fromhex("1E0300")
    (request,) = issuer.requests
    assert request["pan"] == issued.prepared.pan and request["amount_fen"] == 2_000
    assert request["values"]["9F27"] == b"\x80" and request["values"]["84"] == issued.prepared.aid
    # the second cryptogram is a TC the issuer's HSM accepts too
    final = result.data
    assert final["9F27"] == b"\x40"
    assert hsm.verify_arqc(
        issued.labels["ac"],
        tag_5a=issued.prepared.pan,
        tag_5f34=issued.prepared.psn,
        tag_9f36=final["9F36"],
        data=ac_input(final),
        tag_9f26=final["9F26"],
    )
    steps = [step.name for step in result.steps]
    assert (
        steps.index("CDA")
        < steps.index("GENERATE AC")
        < steps.index("online")
        < steps.index("GENERATE AC (second)")
    )


def test_online_pin_is_enciphered_for_the_issuer(new_card, capks, hsm, issued_cards):
    from citycard.crypto.blockcipher import tdes_ecb_decrypt

    issued = issued_cards("INTL")
    issuer = Issuer(hsm, issued)
    pad = FixedPinPad("1234")
    result = pay(new_card("INTL", interface="contact"), make_terminal(capks), acquirer=issuer, pin_pad=pad)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert result.cvm_results == bytes.fromhex("420300")
    assert TVR.new(result.tvr).is_set("online_pin_entered")
    block = issuer.requests[0]["pin_block"]
    assert tdes_ecb_decrypt(pad.pin_key, block) == pin_block_format_0("1234", issued.prepared.pan)


def test_online_decline(new_card, capks, hsm, issued_cards):
    issuer = Issuer(hsm, issued_cards("INTL"), approve=False)
    result = pay(new_card("INTL", interface="contact"), make_terminal(capks), acquirer=issuer)
    assert result.kind is Outcome.DECLINED
    assert result.authorisation_response_code == b"05"
    assert result.data["9F27"] == b"\x00"  # the card closed with an AAC
    assert "declined by the issuer (ARC 05)" in result.reasons[-1]


def test_wrong_arqc_is_declined_by_the_issuer(new_card, capks, hsm, issued_cards):
    card_of_intl = issued_cards("INTL")
    wrong_keys = Issued(card_of_intl.path, card_of_intl.prepared, "GM-DEBIT")  # the GM IMKs for an INTL card
    issuer = Issuer(hsm, wrong_keys)
    result = pay(new_card("INTL", interface="contact"), make_terminal(capks), acquirer=issuer)
    assert result.kind is Outcome.DECLINED
    assert result.authorisation_response_code == b"05"


def test_unable_to_go_online_declines_by_the_default_action_codes(new_card, capks, hsm, issued_cards):
    issuer = Issuer(hsm, issued_cards("INTL"), down=True)
    result = pay(new_card("INTL", interface="contact"), make_terminal(capks), acquirer=issuer)
    assert result.kind is Outcome.DECLINED
    assert result.authorisation_response_code == b"Z3"  # TAC default D84000A800 holds "floor limit exceeded"


def test_without_an_acquirer_an_arqc_is_an_online_request(new_card, capks):
    result = pay(new_card("INTL", interface="contact"), make_terminal(capks))
    assert result.kind is Outcome.ONLINE_REQUEST
    ic_data = decode_dict(result.field55)
    assert ic_data["9F27"] == b"\x80" and ic_data["95"] == result.tvr


# --- electronic cash on contact, and top-up by script -------------------------------------------


def test_contact_electronic_cash_is_approved_offline_with_cda(new_card, capks, issued_cards):
    card = new_card("GM", interface="contact")
    result = pay(card, make_terminal(capks), amount_fen=300)
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert TVR.decode(result.tvr) == []
    assert TSI.new(result.tsi).is_set("offline_data_authentication_performed")
    assert result.batch_record is not None and result.batch_record.pan == issued_cards("GM").prepared.pan
    assert balance_of(card, issued_cards("GM").prepared.aid) == BALANCE_FEN - 300


def test_ec_top_up_script_after_the_second_generate_ac(new_card, capks, hsm, issued_cards):
    issued = issued_cards("INTL")
    issuer = Issuer(hsm, issued, scripts_72=[ec_load(50_000)])
    card = new_card("INTL", interface="contact")
    result = pay(card, make_terminal(capks), acquirer=issuer)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert results_of_scripts(result.script_results) == [(2, 0, b"\x00\x00\x00\x01")]
    assert TSI.new(result.tsi).is_set("script_processing_performed")
    assert decode_dict(result.field55)["DF31"] == result.script_results
    assert balance_of(card, issued.prepared.aid) == 50_000


def test_a_script_with_a_bad_mac_fails_and_is_reported(new_card, capks, hsm, issued_cards):
    issued = issued_cards("INTL")
    issuer = Issuer(hsm, issued, scripts_72=[ec_load(50_000, corrupt=True, script_id=b"\x00\x00\x00\x07")])
    card = new_card("INTL", interface="contact")
    result = pay(card, make_terminal(capks), acquirer=issuer)
    assert result.kind is Outcome.APPROVED_ONLINE
    assert results_of_scripts(result.script_results) == [(1, 1, b"\x00\x00\x00\x07")]
    assert TVR.new(result.tvr).is_set("script_processing_failed_after_final_generate_ac")
    assert balance_of(card, issued.prepared.aid) == BALANCE_FEN


def test_script_before_the_second_generate_ac(new_card, capks, hsm, issued_cards):
    issued = issued_cards("INTL")
    issuer = Issuer(hsm, issued, scripts_71=[ec_load(20_000, template="71")])
    card = new_card("INTL", interface="contact")
    result = pay(card, make_terminal(capks), acquirer=issuer)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert results_of_scripts(result.script_results) == [(2, 0, b"\x00\x00\x00\x01")]
    assert balance_of(card, issued.prepared.aid) == 20_000


# --- offline PIN, PIN try limit, EXTERNAL AUTHENTICATE --------------------------------------------


def test_offline_pin_and_external_authenticate(new_card, capks, hsm, issued_cards):
    issuer = Issuer(hsm, issued_cards("PIN"))
    result = pay(
        new_card("PIN", interface="contact"), make_terminal(capks), acquirer=issuer, pin_pad=FixedPinPad(PIN)
    )
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert result.cvm_results == bytes.fromhex("010302")
    assert not TVR.new(result.tvr).is_set("issuer_authentication_failed")
    assert "issuer authentication" in [s.name for s in result.steps]
    assert [s.detail for s in result.steps if s.name == "issuer authentication"] == ["passed"]


def test_pin_try_limit_exceeded(new_card, capks, issued_cards):
    card = new_card("PIN", interface="contact")
    pad = FixedPinPad("000000")
    result = pay(card, make_terminal(capks), pin_pad=pad)
    assert pad.entries == 3  # the card's limit
    tvr = TVR.new(result.tvr)
    assert tvr.is_set("pin_try_limit_exceeded") and tvr.is_set("cardholder_verification_not_successful")
    assert result.cvm_results == bytes.fromhex("010301")
    assert result.kind is Outcome.ONLINE_REQUEST  # TAC online F8 in byte 3
    # the next transaction sees the blocked PIN from the try counter, without a VERIFY
    again = FixedPinPad(PIN)
    denial = AidTable.from_toml(_aids_with_denial("0000200000"))
    result = pay(card, make_terminal(capks, aids=denial), pin_pad=again)
    assert again.entries == 0
    assert TVR.new(result.tvr).is_set("pin_try_limit_exceeded")
    assert result.kind is Outcome.DECLINED  # TAC denial holds "PIN try limit exceeded"
    assert result.data["9F27"][0] & 0xC0 == 0x00


def _aids_with_denial(tac_denial: str) -> str:
    from importlib import resources

    text = resources.files("citycard").joinpath("data/terminal/aids.toml").read_text(encoding="utf-8")
    return text.replace('tac_denial = "0010000000"', f'tac_denial = "{tac_denial}"')


def test_pin_bypass_sets_pin_not_entered(new_card, capks):
    class Bypass:
        def offline_pin(self, *, tries_left):
            return None

        def online_pin_block(self, *, pan):
            return None

    result = pay(new_card("PIN", interface="contact"), make_terminal(capks), pin_pad=Bypass())
    tvr = TVR.new(result.tvr)
    assert tvr.is_set("pin_entry_required_pin_pad_present_but_pin_not_entered")
    assert tvr.is_set("cardholder_verification_not_successful")


def test_no_pin_pad_sets_pin_pad_not_present(new_card, capks):
    result = pay(new_card("PIN", interface="contact"), make_terminal(capks))
    assert TVR.new(result.tvr).is_set("pin_entry_required_and_pin_pad_not_present")


# --- CDA failures ---------------------------------------------------------------------------------


def recorded(card, terminal, **kwargs) -> ScriptedCard:
    recorder = Recorder(card)
    result = pay(recorder, terminal, **kwargs)
    assert result.kind in (Outcome.APPROVED_OFFLINE, Outcome.ONLINE_REQUEST), result.reasons
    return ScriptedCard(recorder.pairs)


def _corrupt_9f4b(children):
    return [
        TLV("9F4B", c.value[:-3] + bytes([c.value[-3] ^ 1]) + c.value[-2:]) if c.tag == "9F4B" else c
        for c in children
    ]


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_cda_signature_failure_on_the_generate_ac_answer_declines(suite, new_card, capks):
    terminal = make_terminal(capks)
    amount = 300 if suite == "GM" else 2_000  # GM: an offline EC TC; INTL: an ARQC
    card = recorded(new_card(suite, interface="contact"), terminal, amount_fen=amount)
    index = card.answer("80AE")
    command, response = card.script[index]
    card.script[index] = (command, rewrite_template(response, _corrupt_9f4b))
    if suite == "INTL":  # the terminal closes the ARQC with a second GENERATE AC asking for an AAC
        del card.script[index + 1 :]
        card.script.append((is_aac_request, AAC_ANSWER))
    result = pay(card, terminal, amount_fen=amount)
    assert result.kind is Outcome.DECLINED, result.reasons
    assert TVR.new(result.tvr).is_set("cda_failed")
    assert "CDA failed" in " ".join(result.reasons)


def is_aac_request(apdu: bytes) -> bool:
    return apdu[:4] == bytes.fromhex("80AE0000")  # GENERATE AC, P1 00: an AAC, no CDA


AAC_ANSWER = encode_one("80", b"\x00\x00\x02" + bytes(8) + bytes.fromhex("0701010300000004")) + b"\x90\x00"


def test_cda_failure_before_generate_ac_asks_for_no_offline_approval(new_card, capks):
    terminal = make_terminal(capks)
    card = recorded(new_card("GM", interface="contact"), terminal, amount_fen=300)
    index = next(i for i, (_, r) in enumerate(card.script) if b"\x9f\x46" in r[:-2] and r[:1] == b"\x70")
    command, response = card.script[index]
    card.script[index] = (
        command,
        rewrite_template(
            response,
            lambda ch: [
                TLV("9F46", c.value[:-1] + bytes([c.value[-1] ^ 1])) if c.tag == "9F46" else c for c in ch
            ],
        ),
    )
    gac = card.answer("80AE")
    card.script[gac] = (is_aac_request, AAC_ANSWER)
    del card.script[gac + 1 :]
    result = pay(card, terminal, amount_fen=300)
    assert TVR.new(result.tvr).is_set("cda_failed")
    assert result.kind is Outcome.DECLINED
    assert next(s.detail for s in result.steps if s.name == "terminal action analysis").startswith(
        "AAC: CDA failed"
    )


# --- selection ---------------------------------------------------------------------------------


def test_card_without_a_pse_is_found_through_the_aid_list(new_card, capks):
    class NoPse:
        def __init__(self, card):
            self.card, self.atr = card, card.atr

        def process(self, apdu):
            if apdu.startswith(bytes.fromhex("00A404000E") + b"1PAY.SYS.DDF01"):
                return bytes.fromhex("6A82")
            return self.card.process(apdu)

    result = pay(NoPse(new_card("GM", interface="contact")), make_terminal(capks), amount_fen=300)
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert result.steps[0].name == "SELECT PSE" and "AID list" in result.steps[0].detail
    assert any(s.name == "AID list" and "A000000333010106" in s.detail for s in result.steps)


def test_blocked_card_ends_the_application(capks):
    card = ScriptedCard([("00A404000E315041592E5359532E444446303100", "6A81")])
    result = pay(card, make_terminal(capks))
    assert result.kind is Outcome.END_APPLICATION and "6A81" in result.reasons[-1]


def test_cvm_list_parsing():
    x, y, rules = parse_cvm_list(bytes.fromhex("000003E8000007D0410302031F00"))
    assert (x, y) == (1000, 2000)
    assert [(r.method, r.next_on_failure) for r in rules] == [(1, True), (2, False), (0x1F, False)]
    with pytest.raises(ValueError, match="CVM list"):
        parse_cvm_list(bytes.fromhex("000000000000000041"))


def test_random_transaction_selection_sends_a_small_amount_online(new_card, capks):
    always = lambda n: 0  # noqa: E731 — number 1: always under the target percentage
    profile = TerminalProfile()
    result = pay(
        new_card("GM", interface="contact"),
        make_terminal(capks, profile=profile),
        amount_fen=300,
        random=always,
    )
    assert TVR.new(result.tvr).is_set("transaction_selected_randomly_for_online_processing")
    assert result.kind is Outcome.ONLINE_REQUEST


def test_online_decline_in_the_gm_suite(new_card, capks, hsm, issued_cards):
    issuer = Issuer(hsm, issued_cards("GM-DEBIT"), approve=False)
    result = pay(new_card("GM-DEBIT", interface="contact"), make_terminal(capks), acquirer=issuer)
    assert result.kind is Outcome.DECLINED and result.suite == "GM"
    assert result.data["9F27"] == b"\x00"


def test_contact_electronic_cash_in_the_intl_suite(new_card, capks, issued_cards):
    text = _aids_with_denial("0010000000").replace(
        'aid = "A000000333010101"\nlabel = "PBOC DEBIT"',
        'aid = "A000000333010101"\nlabel = "PBOC DEBIT"\nfloor_limit_fen = 100_000',
    )
    card = new_card("INTL", interface="contact")
    result = pay(card, make_terminal(capks, aids=AidTable.from_toml(text)), amount_fen=300)
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert result.suite == "INTL" and TVR.decode(result.tvr) == ["pin_entry_required_and_pin_pad_not_present"]
    assert balance_of(card, issued_cards("INTL").prepared.aid) == BALANCE_FEN - 300


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_qpboc_arqc_is_authorised_online_through_the_acquirer(suite, new_card, capks, hsm, issued_cards):
    from citycard.kernel.qpboc import run_qpboc

    issuer = Issuer(hsm, issued_cards(suite))
    with InProcessTransport(new_card(suite)) as transport:
        result = run_qpboc(transport, make_terminal(capks), amount_fen=BALANCE_FEN + 1, acquirer=issuer)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert issuer.requests[0]["values"]["9F27"] == b"\x80"


def test_velocity_checking_reads_the_counters_and_sets_the_tvr_bits(new_card, capks):
    """Book 3 §10.6.3: 9F14/9F23 from the records, ATC (9F36) and last online ATC (9F13) by GET
    DATA; ATC − last online ATC above a limit sets its bit; 9F13 = 0 sets "new card"."""
    recorder = Recorder(new_card("VELOCITY", interface="contact"))
    result = pay(recorder, make_terminal(capks))
    sent = [command.hex().upper() for command, _ in recorder.pairs]
    assert "80CA9F3600" in sent and "80CA9F1300" in sent
    bits = TVR.decode(result.tvr)
    assert "lower_consecutive_offline_limit_exceeded" in bits  # ATC 1 − 0 > 0
    assert "upper_consecutive_offline_limit_exceeded" not in bits  # 1 − 0 ≤ 3
    assert "new_card" in bits  # never online: 9F13 = 0
    assert TSI.new(result.tsi).is_set("terminal_risk_management_performed")


def test_velocity_upper_limit_after_offline_transactions(new_card, capks):
    card = new_card("VELOCITY", interface="contact")
    for _ in range(3):  # three transactions that never reach the issuer: the ATC moves, 9F13 stays 0
        assert pay(card, make_terminal(capks)).kind is Outcome.ONLINE_REQUEST
    result = pay(card, make_terminal(capks))
    assert int.from_bytes(result.data["9F36"], "big") - 0 > 3
    bits = TVR.decode(result.tvr)
    assert "lower_consecutive_offline_limit_exceeded" in bits
    assert "upper_consecutive_offline_limit_exceeded" in bits
