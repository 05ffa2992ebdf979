"""The card OS as a terminal sees it: scripted C-APDU → R-APDU exchanges over the test application.

Every status-word path of the OS is here: 9000, 6283 (blocked application, with FCI), 6A81 (blocked
card), 6A82, 6A83, 6A86, 6700, 6985, 6D00, 6E00, 6A80, 6F00, 6581, T=0 61xx/6Cxx and GET RESPONSE.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import operator

import pytest

from citycard.card import Card, new_card
from citycard.crypto import GM, INTL
from citycard.hsm import SoftHSM

h = bytes.fromhex

SELECT_PSE = "00A404000E315041592E5359532E444446303100"
SELECT_PPSE = "00A404000E325041592E5359532E444446303100"
PSE_FCI = "6F1C840E315041592E5359532E4444463031A50A8801015F2D047A68656E"
PPSE_FCI = (
    "6F5F840E325041592E5359532E4444463031A54DBF0C4A"
    "61194F08A000000333010101500A50424F43204445424954870101"
    "611A4F08A000000333010102500B50424F4320435245444954870102"
    "61114F08A00000000410100150054F54484552"
)
DIRECTORY = [
    "701B61194F08A000000333010101500A50424F43204445424954870101",
    "701C611A4F08A000000333010102500B50424F4320435245444954870102",
    "701361114F08A00000000410100150054F54484552",
]
SELECT_DEBIT = "00A4040008A00000033301010100"
DEBIT_FCI = "6F1B8408A000000333010101A50F500A50424F43204445424954870101"
CREDIT_FCI = "6F1C8408A000000333010102A510500B50424F4320435245444954870102"
OTHER_FCI = "6F138408A000000004101001A50750054F54484552"
GPO = "80A8000002830000"
DEBIT_RECORD_1 = "700A5A086217000012345678"


def run(card: Card, script: list[tuple[str, str]]) -> None:
    """Send each C-APDU; each R-APDU must be exactly the expected hex."""
    for number, (c_apdu, expected) in enumerate(script, 1):
        r_apdu = card.process(h(c_apdu)).hex().upper()
        assert r_apdu == expected, f"step {number}: {c_apdu} → {r_apdu}, expected {expected}"


@pytest.fixture
def card(echo) -> Card:
    return Card(echo.apps())


# --- ATR and power ---------------------------------------------------------------------------------
def test_atr_t1_has_a_correct_tck_and_t0_has_none(echo):
    t1 = Card(echo.apps()).atr
    assert t1.hex().upper() == "3B8E800163697479636172642050424F433311"
    assert t1[1] >> 4 == 0x8 and t1[2:4] == h("8001")  # TD1, TD2 = T=1
    assert functools.reduce(operator.xor, t1[1:]) == 0  # TCK: XOR of T0..TCK is zero
    t0 = Card(echo.apps(), protocol="T=0").atr
    assert t0.hex().upper() == "3B6E000063697479636172642050424F4333"
    assert len(t0) == 4 + (t0[1] & 0x0F)  # no TCK when only T=0 is indicated


def test_power_on_and_reset_drop_the_selection(card):
    run(card, [(SELECT_DEBIT, DEBIT_FCI + "9000"), ("80CA9F3600", "9F360200009000")])
    debit = card.applications[0]
    assert card.reset() == card.atr
    assert card.selected is None and debit.deselections == 1
    run(card, [("80CA9F3600", "6985"), (SELECT_DEBIT, DEBIT_FCI + "9000")])
    assert card.power_on() == card.atr
    run(card, [(GPO, "6985")])


# --- PSE, PPSE and the directory ----------------------------------------------------------------------
def test_pse_fci_and_directory_records_on_contact(card):
    run(
        card,
        [
            (SELECT_PSE, PSE_FCI + "9000"),
            ("00B2010C00", DIRECTORY[0] + "9000"),
            ("00B2020C00", DIRECTORY[1] + "9000"),
            ("00B2030C00", DIRECTORY[2] + "9000"),
            ("00B2040C00", "6A83"),  # end of the directory
            ("00B2011400", "6A82"),  # SFI 2 is no file of the PSE
            ("00B2010800", "6A86"),  # P2 without the "SFI" reference bits 100
            ("00B2000C00", "6A86"),  # record 0
            (GPO, "6985"),  # the PSE is no application
            ("00100000", "6D00"),
        ],
    )


def test_pse_only_on_contact_and_ppse_only_on_contactless(card):
    run(card, [(SELECT_PPSE, "6A82"), (SELECT_PSE, PSE_FCI + "9000")])
    card.interface = "contactless"
    run(card, [(SELECT_PSE, "6A82"), (SELECT_PPSE, PPSE_FCI + "9000"), ("00B2010C00", "6985")])


def test_directories_list_only_personalised_applications(echo):
    blank = echo.EchoApplication(h("A000000333010106"), "EC", personalised=False)
    card = Card([blank, *echo.apps()[:1]])
    run(card, [(SELECT_PSE, PSE_FCI + "9000"), ("00B2010C00", DIRECTORY[0] + "9000"), ("00B2020C00", "6A83")])
    card.interface = "contactless"
    run(card, [(SELECT_PPSE, "6F30840E325041592E5359532E4444463031A51EBF0C1B" + DIRECTORY[0][4:] + "9000")])


# --- SELECT by AID ------------------------------------------------------------------------------------
def test_partial_name_and_next_occurrence_walk_the_matches_then_6a82(card):
    run(
        card,
        [
            ("00A4040005A00000033300", DEBIT_FCI + "9000"),  # first match of the RID
            ("00A4040205A00000033300", CREDIT_FCI + "9000"),  # next occurrence
            ("00A4040205A00000033300", "6A82"),  # no more
            ("00A4040205A00000033300", "6A82"),
            ("80CA9F3600", "9F360200009000"),  # a failed SELECT leaves the credit application selected
            ("00A4040007A000000333010100", DEBIT_FCI + "9000"),  # 7-byte partial name
            ("00A4040205A00000000400", OTHER_FCI + "9000"),  # next of a name the current app lacks: first
            ("00A4040008A00000033301010300", "6A82"),  # no such AID
            ("00A4040005A00000033400", "6A82"),
        ],
    )


def test_exact_name_next_occurrence_after_the_last_match_is_6a82(card):
    run(
        card,
        [("00A4040008A00000033301010200", CREDIT_FCI + "9000"), ("00A4040208A00000033301010200", "6A82")],
    )


def test_select_replaces_and_deselects_the_previous_application(card):
    debit, credit, _ = card.applications
    run(card, [(SELECT_DEBIT, DEBIT_FCI + "9000"), ("00A4040008A00000033301010200", CREDIT_FCI + "9000")])
    assert (debit.selections, debit.deselections, credit.selections) == (1, 1, 1)
    assert card.selected is credit


@pytest.mark.parametrize("p1p2", ["0000", "0400", "0401", "040C", "0204", "0402"])
def test_select_p1_p2(card, p1p2):
    expected = {"0400": DEBIT_FCI + "9000", "0402": DEBIT_FCI + "9000"}.get(p1p2, "6A86")
    run(card, [(f"00A4{p1p2}08A00000033301010100", expected)])


@pytest.mark.parametrize(
    "apdu",
    [
        "00A4040004A000000300",  # a 4-byte name is shorter than a RID
        "00A4040011A0000003330101010000000000000000000000",  # 17 bytes
        "00A4040000",  # no name at all
        "00A40400",
        "00A4040008A0000003330101",  # Lc 08, 6 bytes follow
        "00A404",  # no full header
    ],
)
def test_select_lengths_6700(card, apdu):
    run(card, [(apdu, "6700")])


# --- class, instruction, conditions -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "apdu",
    [
        "90A4040008A00000033301010100",
        "FFCA000000",
        "01A4040008A00000033301010100",
        "80A4040008A00000033301010100",
        "84C0000000",
    ],
)
def test_class_not_supported_6e00(card, apdu):
    run(card, [(apdu, "6E00")])


def test_unknown_instruction_6d00_with_and_without_an_application(card):
    run(
        card,
        [
            ("00100000", "6D00"),
            ("80500000", "6D00"),
            (SELECT_DEBIT, DEBIT_FCI + "9000"),
            ("80500000", "6D00"),
        ],
    )


@pytest.mark.parametrize(
    "apdu", [GPO, "00B2010C00", "80CA9F7900", "80AE80000100", "0084000008", "0020008008241234FFFFFFFFFF"]
)
def test_application_commands_without_an_application_6985(card, apdu):
    run(card, [(apdu, "6985")])


def test_commands_go_to_the_selected_application(card):
    run(
        card,
        [
            (SELECT_DEBIT, DEBIT_FCI + "9000"),
            ("00B2010C00", DEBIT_RECORD_1 + "9000"),
            ("00B2030C00", "6A83"),
            ("80AE80000299AA00", "770A9F36020001DF010299AA9000"),
            ("80CA9F3600", "9F360200019000"),
        ],
    )
    assert len(card.process(h("0084000008"))) == 10


# --- blocked application, blocked card ---------------------------------------------------------------
def test_blocked_application_answers_its_fci_with_6283_and_stays_selectable(echo):
    card = Card(echo.apps(blocked=True))
    run(card, [(SELECT_DEBIT, DEBIT_FCI + "6283"), ("80CA9F3600", "9F360200009000")])
    assert card.selected is card.applications[0]


def test_blocked_card_answers_6a81_to_every_select(card):
    run(card, [(SELECT_DEBIT, DEBIT_FCI + "9000"), ("8416000004AABBCCDD", "9000")])
    assert card.card_blocked
    run(
        card,
        [
            ("80CA9F3600", "9F360200009000"),  # the current transaction goes on
            (SELECT_PSE, "6A81"),
            (SELECT_DEBIT, "6A81"),
            ("00A4040005A00000033300", "6A81"),
            ("00A4000008A00000033301010100", "6A81"),
        ],
    )
    card.reset()
    run(card, [(SELECT_PSE, "6A81")])


@pytest.mark.parametrize("attribute", ["blocks_card", "card_blocked"])
def test_an_application_reporting_a_card_block_blocks_the_card(card, attribute):
    setattr(card.applications[2], attribute, True)
    run(card, [(SELECT_PSE, "6A81"), (SELECT_DEBIT, "6A81")])
    assert card.card_blocked


def test_an_application_refusing_selection_answers_its_status_word_and_selects_nothing(card):
    credit = card.applications[1]
    credit.select = lambda ctx: 0x6A81
    run(
        card,
        [
            (SELECT_DEBIT, DEBIT_FCI + "9000"),
            ("00A4040008A00000033301010200", "6A81"),
            ("80CA9F3600", "6985"),
        ],
    )
    assert card.selected is None


# --- T=0 -----------------------------------------------------------------------------------------------
def test_t0_case_4_answers_61xx_and_get_response_delivers(echo):
    card = Card(echo.apps(), protocol="T=0")
    run(
        card,
        [
            (SELECT_DEBIT, "611D"),
            ("00C000001D", DEBIT_FCI + "9000"),
            ("00C000001D", "6985"),  # delivered: nothing waits any more
            ("80AE80000299AA00", "610C"),
            ("00C0000020", "6C0C"),  # Le too large: the exact length
            ("00C0000004", "770A9F366108"),  # Le smaller: part, and 61xx for the rest
            ("00C0000008", "020001DF010299AA9000"),
            ("00C0000000", "6985"),
        ],
    )


def test_t0_another_command_discards_waiting_data(echo):
    card = Card(echo.apps(), protocol="T=0")
    run(card, [(SELECT_DEBIT, "611D"), ("80500000", "6D00"), ("00C000001D", "6985")])


def test_t0_get_response_p1_p2_and_data_are_checked(echo):
    card = Card(echo.apps(), protocol="T=0")
    run(card, [(SELECT_DEBIT, "611D"), ("00C001001D", "6A86"), ("00C000001D", DEBIT_FCI + "9000")])


def test_t0_case_2_wrong_le_gets_6cxx_then_the_exact_le_gets_the_data(echo):
    card = Card(echo.apps(), protocol="T=0")
    run(
        card,
        [
            (SELECT_DEBIT, "611D"),
            ("00B2010C00", "6C0C"),
            ("00B2010C0C", DEBIT_RECORD_1 + "9000"),
            ("80CA9F3600", "6C05"),
            ("80CA9F3605", "9F360200009000"),
        ],
    )


def test_t0_blocked_application_warning_comes_after_get_response(echo):
    card = Card(echo.apps(blocked=True), protocol="T=0")
    run(card, [(SELECT_DEBIT, "611D"), ("00C000001D", DEBIT_FCI + "6283")])


def test_t1_returns_data_directly_and_get_response_is_6985(card):
    run(card, [(SELECT_DEBIT, DEBIT_FCI + "9000"), ("00C0000000", "6985")])


# --- STORE DATA ----------------------------------------------------------------------------------------
def blank_card(echo, **options) -> Card:
    return Card([echo.EchoApplication(h("A000000333010106"), "EC", personalised=False)], **options)


SELECT_EC = "00A4040008A00000033301010600"
EC_FCI = "6F108408A000000333010106A50450024543"


def test_store_data_sequence_dgis_and_last_block(echo, tmp_path):
    hsm = SoftHSM.ephemeral()
    card = new_card(
        [echo.EchoApplication(h("A000000333010106"), "EC", personalised=False)],
        hsm=hsm,
        image_path=tmp_path / "c.json",
    )
    app = card.applications[0]
    run(
        card,
        [
            (SELECT_EC, EC_FCI + "9000"),
            ("80E2000106010103700100", "6A86"),  # block 01 before block 00
            ("80E2000007010103700100" + "9102FF0001AA", "6700"),  # Lc says 07, more follows
            ("80E200000C010103700100" + "9102FF0001AA", "9000"),  # two DGIs, one- and three-byte L
            ("80E2000006010203700100", "6A86"),  # block 00 again
            ("80E2100106010203700100", "6A86"),  # P1 b6-b5 = 01
            ("80E2000103010300", "9000"),  # empty DGI
            ("80E2000205010403" + "7001", "9000"),  # DGI 0104 (3 bytes) begins...
            ("80E2000301" + "00", "9000"),  # ... and ends in the next block (CPS split)
            ("80E2800403" + "010203", "6A80"),  # a last block that ends inside a DGI
        ],
    )
    assert app.dgis == [(0x0101, h("700100")), (0x9102, h("AA")), (0x0103, b""), (0x0104, h("700100"))]
    assert not (tmp_path / "c.json").exists()  # nothing saved before the last block
    run(card, [("80E2800403" + "DEAD00", "6A80")])  # the application refuses a DGI: its SW
    run(card, [("80E2800413" + "800010" + "0123456789ABCDEFFEDCBA9876543210", "9000")])
    assert app.personalised and app.key == h("0123456789ABCDEFFEDCBA9876543210")
    assert (tmp_path / "c.json").exists()  # saved by the last block
    run(card, [("80E2000006010403700100", "6985")])  # personalised: no more STORE DATA
    run(
        card,
        [
            (SELECT_PSE, PSE_FCI + "9000"),
            ("00B2010C00", "7010610E4F08A0000003330101065002454390 00".replace(" ", "")),
        ],
    )


def test_store_data_last_block_that_fails_personalisation_keeps_the_card_blank(echo):
    card = blank_card(echo)
    run(card, [(SELECT_EC, EC_FCI + "9000"), ("80E2800006010103700100", "6985")])
    assert not card.applications[0].personalised


def test_store_data_accepts_ber_81_lengths(echo):
    card = blank_card(echo)
    record = "7081" + "80" + "5A" * 0x80  # 131 bytes
    apdu = "80E2000087" + "0101" + "8183" + record  # DGI 0101, L = 81 83 (BER form)
    run(card, [(SELECT_EC, EC_FCI + "9000"), (apdu, "9000")])
    assert card.applications[0].dgis == [(0x0101, h(record))]


def test_store_data_a_long_dgi_split_over_blocks_and_enciphered_split(echo):
    hsm = SoftHSM.ephemeral()
    record = h("7082012C") + bytes(range(256)) + bytes(44)  # 304 bytes: L = FF 0130
    key = h("0123456789ABCDEFFEDCBA9876543210")
    enciphered = hsm.encipher_perso_dgi("perso-kek", GM, key)  # 32 bytes
    card = Card(
        [echo.EchoApplication(h("A000000333010106"), "EC", personalised=False)],
        perso_decryptor=new_card([], hsm=hsm, perso_suite=GM).perso_decryptor,
    )
    first = h("0101FF0130") + record[:250]
    blocks = [
        "80E20000" + f"{len(first):02X}" + first.hex(),
        "80E20001" + f"{len(record) - 250:02X}" + record[250:].hex(),
        "80E23002" + "0F" + "8000" + "20" + enciphered[:12].hex(),  # an enciphered DGI split too
        "80E2B003" + "14" + enciphered[12:].hex(),
    ]
    run(card, [(SELECT_EC, EC_FCI + "9000"), *((block, "9000") for block in blocks)])
    app = card.applications[0]
    assert app.dgis == [(0x0101, record), (0x8000, key)] and app.personalised


def test_store_data_split_state_is_dropped_by_a_new_select(echo):
    card = blank_card(echo)
    run(
        card,
        [
            (SELECT_EC, EC_FCI + "9000"),
            ("80E2000005" + "010106" + "7004", "9000"),  # DGI 0101 waits for 4 more bytes
            (SELECT_EC, EC_FCI + "9000"),
            ("80E2000006" + "010203700100", "9000"),  # a fresh start: a whole DGI, not a continuation
        ],
    )
    assert card.applications[0].dgis == [(0x0102, h("700100"))]


def test_store_data_needs_a_selected_blank_application(card, echo):
    run(
        card,
        [
            ("80E2000006010103700100", "6985"),
            (SELECT_PSE, PSE_FCI + "9000"),
            ("80E2000006010103700100", "6985"),
        ],
    )
    run(card, [(SELECT_DEBIT, DEBIT_FCI + "9000"), ("80E2000006010103700100", "6985")])


def test_store_data_sequence_restarts_with_a_new_select(echo):
    card = blank_card(echo)
    run(
        card,
        [
            (SELECT_EC, EC_FCI + "9000"),
            ("80E2000006010103700100", "9000"),
            (SELECT_EC, EC_FCI + "9000"),
            ("80E2000106010203700100", "6A86"),
            ("80E2000006010203700100", "9000"),
        ],
    )


@pytest.mark.parametrize("suite", [INTL, GM])
def test_store_data_enciphered_dgis_are_deciphered_with_the_perso_kek(echo, suite, tmp_path):
    hsm = SoftHSM.ephemeral()
    key = h("0123456789ABCDEFFEDCBA9876543210")
    enciphered = hsm.encipher_perso_dgi("perso-kek", suite, key)
    assert key not in enciphered and len(enciphered) == 16 + suite.block_bytes
    card = new_card(
        [echo.EchoApplication(h("A000000333010106"), "EC", personalised=False)],
        hsm=hsm,
        perso_suite=suite,
        image_path=tmp_path / "c.json",
    )
    block = "8000" + f"{len(enciphered):02X}" + enciphered.hex()
    run(
        card,
        [
            (SELECT_EC, EC_FCI + "9000"),
            ("80E2300004" + "80000101", "6A80"),  # 1 byte is no whole cipher block
            ("80E2B000" + f"{len(block) // 2:02X}" + block, "9000"),
        ],
    )
    assert card.applications[0].key == key
    assert key.hex().upper() not in (tmp_path / "c.json").read_text().upper()


def test_store_data_enciphered_without_a_transport_key_6985(echo):
    card = blank_card(echo)
    run(card, [(SELECT_EC, EC_FCI + "9000"), ("80E230000B" + "8000" + "08" + "00" * 8, "6985")])


# --- robustness --------------------------------------------------------------------------------------------
def test_an_application_crash_is_6f00_logged_without_the_data(card, caplog, echo):
    with caplog.at_level(logging.ERROR, logger="citycard.card.os"):
        run(card, [(SELECT_DEBIT, DEBIT_FCI + "9000"), ("80EE00000411223344", "6F00")])
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    text = record.getMessage()
    assert "RuntimeError on 80EE0000 (+5 bytes)" in text and "process" in text
    assert echo.CARD_KEY.hex() not in text.lower() and "11223344" not in text
    run(card, [("80CA9F3600", "9F360200009000")])  # and the card goes on


@pytest.mark.parametrize("apdu", [None, "00A4", 12, bytearray(h("00A4040005A00000033300"))])
def test_process_never_raises_on_odd_arguments(card, apdu):
    answer = card.process(h(apdu) if isinstance(apdu, str) else apdu)
    assert answer in (h("6F00"), h("6700"), h(DEBIT_FCI + "9000"))


def test_context_clock_is_injectable_and_must_be_aware(echo):
    moment = dt.datetime(2025, 1, 1, 16, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    card = Card(echo.apps(), clock=lambda: moment)
    assert card.now() == dt.datetime(2025, 1, 1, 8, 0, tzinfo=dt.UTC)
    naive = Card(echo.apps(), clock=lambda: dt.datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        naive.now()


def test_card_construction_checks(echo):
    apps = echo.apps()
    with pytest.raises(ValueError, match="share an AID"):
        Card([apps[0], echo.EchoApplication(apps[0].aid, "AGAIN")])
    with pytest.raises(ValueError, match="needs a sealer"):
        Card(apps, image_path="card.json")
    with pytest.raises(ValueError, match="T=0 or T=1"):
        Card(apps, protocol="T=2")
    card = Card(apps)
    with pytest.raises(ValueError, match="contact or contactless"):
        card.interface = "nfc"
    assert card.interface == "contact"
