"""Selection, AFL, issuer response and field 55 details, with scripted cards."""

from __future__ import annotations

import pytest

from citycard.emv.tlv import encode_one
from citycard.kernel import selection
from citycard.kernel.card_link import CardFormatError, CardLink, command, parse_template
from citycard.kernel.context import TerminalProfile, Transaction
from citycard.kernel.online import parse_issuer_response
from citycard.kernel.outcome import Outcome, Stop, field55
from citycard.kernel.params import AidTable
from citycard.kernel.records import AflError, parse_afl
from citycard.reader import InProcessTransport

from .conftest import ScriptedCard

DEBIT, CREDIT, EC = "A000000333010101", "A000000333010102", "A000000333010106"
SELECT_PPSE = "00A404000E325041592E5359532E444446303100"
SELECT_PSE = "00A404000E315041592E5359532E444446303100"


def tlv(tag: str, *values: str) -> str:
    return encode_one(tag, bytes.fromhex("".join(values))).hex().upper()


def entry(aid: str, priority: int | None = None, label: str = "APP") -> str:
    return tlv(
        "61",
        tlv("4F", aid),
        tlv("50", label.encode().hex()),
        tlv("87", f"{priority:02X}") if priority else "",
    )


def ppse(*entries: str) -> str:
    return tlv("6F", tlv("84", b"2PAY.SYS.DDF01".hex()), tlv("A5", tlv("BF0C", "".join(entries)))) + "9000"


def fci(aid: str) -> str:
    return tlv("6F", tlv("84", aid), tlv("A5", tlv("50", b"APP".hex()))) + "9000"


def select(aid: str, next_occurrence: bool = False) -> str:
    return ("00A40402" if next_occurrence else "00A40400") + f"{len(aid) // 2:02X}{aid}00"


def context(interface="contactless") -> Transaction:
    return Transaction.new(TerminalProfile(), amount_fen=100, interface=interface)


def link_to(card: ScriptedCard) -> CardLink:
    transport = InProcessTransport(card)
    transport.connect()
    return CardLink(transport)


def test_ppse_candidates_are_ordered_by_priority_and_filtered_by_the_aid_table():
    aids = AidTable.load()
    card = ScriptedCard(
        [(SELECT_PPSE, ppse(entry("A000000004101001", 1), entry(DEBIT, 3), entry(EC, 2), entry(CREDIT)))]
    )
    candidates = selection.ppse_candidates(link_to(card), context(), aids.match)
    assert [c.aid.hex().upper() for c in candidates] == [EC, DEBIT, CREDIT]  # no priority sorts last


def test_partial_selection_matches_a_longer_card_aid():
    aids = AidTable.load()
    longer = DEBIT + "01"
    card = ScriptedCard([(SELECT_PPSE, ppse(entry(longer, 1)))])
    (candidate,) = selection.ppse_candidates(link_to(card), context(), aids.match)
    assert candidate.aid.hex().upper() == longer and candidate.params.aid.hex().upper() == DEBIT


def test_no_ppse_tries_another_interface():
    card = ScriptedCard([(SELECT_PPSE, "6A82")])
    with pytest.raises(Stop) as stop:
        selection.ppse_candidates(link_to(card), context(), AidTable.load().match)
    assert stop.value.kind is Outcome.TRY_ANOTHER_INTERFACE


def test_contact_confirmation_hook_and_the_choice_of_the_cardholder():
    aids = AidTable.load()
    confirm_me = entry(DEBIT, 0x81)  # priority 1, cardholder confirmation required
    record = tlv("70", confirm_me, entry(EC, 2)) + "9000"
    pse_fci = tlv("6F", tlv("84", b"1PAY.SYS.DDF01".hex()), tlv("A5", tlv("88", "01"))) + "9000"
    card = ScriptedCard([(SELECT_PSE, pse_fci), ("00B2010C00", record), ("00B2020C00", "6A83")])
    tx = context("contact")
    candidates = selection.contact_candidates(link_to(card), tx, aids, aids.match)
    assert [c.aid.hex().upper() for c in candidates] == [DEBIT, EC]
    assert candidates[0].confirmation_required
    without_hook = selection.choose(candidates, contactless=False)
    assert without_hook.aid.hex().upper() == EC  # no confirmation possible: skipped
    refused = selection.choose(candidates, contactless=False, confirm=lambda c: False)
    assert refused.aid.hex().upper() == EC
    agreed = selection.choose(candidates, contactless=False, confirm=lambda c: True)
    assert agreed.aid.hex().upper() == DEBIT
    picked = selection.choose(candidates, contactless=False, choose_hook=lambda cs: cs[-1])
    assert picked.aid.hex().upper() == EC


def test_aid_list_fallback_with_partial_selection_and_next_occurrence():
    aids = AidTable.load()
    first, second = DEBIT + "01", DEBIT + "02"
    card = ScriptedCard(
        [
            (SELECT_PSE, "6A82"),
            (select(DEBIT), fci(first)),
            (select(DEBIT, True), fci(second)),
            (select(DEBIT, True), "6A82"),
            (select(CREDIT), "6A82"),
            (select("A000000333010103"), "6A82"),
            (select(EC), "6283"),  # blocked: not a candidate
        ]
    )
    tx = context("contact")
    candidates = selection.contact_candidates(link_to(card), tx, aids, aids.match)
    assert [c.aid.hex().upper() for c in candidates] == [first, second]


def test_final_select_refuses_an_fci_for_another_application():
    aids = AidTable.load()
    card = ScriptedCard([(SELECT_PPSE, ppse(entry(EC, 1))), (select(EC), fci(DEBIT))])
    link, tx = link_to(card), context()
    (candidate,) = selection.ppse_candidates(link, tx, aids.match)
    assert not selection.final_select(link, tx, candidate)


@pytest.mark.parametrize(
    ("afl", "message"),
    [
        ("", "not whole 4-byte entries"),
        ("0801", "not whole 4-byte entries"),
        ("09010100", "SFI byte 09"),
        ("F8010100", "SFI byte F8"),
        ("08000100", "first record is 0"),
        ("08030200", "last record 2 is before the first 3"),
        ("08010203", "3 records for ODA, the entry has 2"),
        ("08" + "01FF00" + "10" + "01FF00", "more than 64 records"),
    ],
)
def test_malformed_afls(afl, message):
    with pytest.raises(AflError, match=message):
        parse_afl(bytes.fromhex(afl))


def test_strict_templates():
    assert parse_template(bytes.fromhex("7003 5A0112".replace(" ", "")), "X", "70").tag == "70"
    for data, message in (
        ("70035A011200", "Trailing bytes"),
        ("77035A0112", "expected template 70"),
        ("70045A0112", "malformed"),
    ):
        with pytest.raises(CardFormatError, match=message):
            parse_template(bytes.fromhex(data), "READ RECORD", "70")


def test_command_encoding():
    assert command(bytes.fromhex("00A40400"), b"AB").hex().upper() == "00A4040002414200"
    with pytest.raises(ValueError, match="at most 255"):
        command(bytes.fromhex("80A80000"), bytes(256))


def test_issuer_response_parsing():
    ic = bytes.fromhex(
        tlv("91", "1122334455667788", "3030") + tlv("72", tlv("9F18", "00000001"), tlv("86", "04DA9F790A"))
    )
    response = parse_issuer_response(b"00", ic)
    assert response.approved and response.tag_91 == bytes.fromhex("11223344556677883030")
    assert len(response.scripts_72) == 1 and not response.scripts_71
    assert not parse_issuer_response(b"05", b"").approved
    with pytest.raises(ValueError, match="8A"):
        parse_issuer_response(b"0", b"")
    with pytest.raises(ValueError, match="91 twice"):
        parse_issuer_response(b"00", ic[:12] + ic[:12])


def test_field55_order_and_limit():
    values = {"9F02": bytes(6), "9F26": bytes(8), "95": bytes(5), "5A": bytes(8)}
    assert field55(values).hex().upper() == "9F2608" + "00" * 8 + "9505" + "00" * 5 + "9F0206" + "00" * 6
    with pytest.raises(ValueError, match="at most 255"):
        field55({"9F10": bytes(250), "9F26": bytes(8)})
