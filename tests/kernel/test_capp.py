"""Part 14 in a transit tap (pboc-notes §7): READ CAPP DATA before GPO, UPDATE CAPP DATA CACHE with
the operator's MAC (from the HSM) after the offline checks, the trip record and the fare committed
together — entry writes the record, exit reads it back; a bad MAC leaves record and balance alone.
"""

from __future__ import annotations

import pytest

from citycard.crypto.suite import GM, INTL
from citycard.kernel.capp import CappWrite, HsmCappSigner
from citycard.kernel.context import TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.qpboc import run_qpboc
from citycard.reader import InProcessTransport

from .conftest import BALANCE_FEN, make_terminal

TRIP_FILE, TRIP_ID = 0x15, bytes.fromhex("0570")
EMPTY = TRIP_ID + bytes(62)
ENTERED = TRIP_ID + b"\x01" + b"LINE2/STATION07".ljust(20) + bytes(41)
EXITED = TRIP_ID + b"\x02" + b"LINE2/STATION12".ljust(20) + bytes(41)
FARE_FEN = 300
SUITES = {"CITIZEN": GM, "CITIZEN-INTL": INTL}


def labels(suite) -> tuple[str, str]:
    """(the file's opening-key master as personalised, the transit operator's master)."""
    name = suite.name.lower()
    return f"imk-capp-{name}-{TRIP_FILE:02x}", f"transit-operator-{name}"


@pytest.fixture
def transit(hsm, capks):
    """A Part 14 bus validator (the operator's keys in the HSM, one per suite) and its signer."""
    for suite in (GM, INTL):
        operator = labels(suite)[1]
        if operator not in {info.label for info in hsm.list_keys()}:
            hsm.generate_key(operator, "IMK-ENC", suite)
    profile = TerminalProfile.bus_validator(capp=True)
    signer = HsmCappSigner(hsm, {s.name: labels(s)[1] for s in (GM, INTL)})
    return make_terminal(capks, profile=profile), signer


def open_trip_record(card, hsm, capks, issued) -> None:
    """A service desk opens the trip record (APPEND RECORD after a GPO, under the opening key)."""
    plain = make_terminal(capks, profile=TerminalProfile.bus_validator())
    with InProcessTransport(card) as transport:
        result = run_qpboc(transport, plain, amount_fen=1)
        assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
        suite = SUITES[issued.suite]
        opening, operator = labels(suite)
        apdu = hsm.capp_append_command(
            opening,
            operator,
            tag_5a=result.pan,
            tag_5f34=result.psn,
            tag_9f36=result.data["9F36"],
            sfi=TRIP_FILE,
            record=EMPTY,
        )
        assert transport.transmit(apdu) == b"\x90\x00"


def balance(result) -> int:
    return result.balance_fen_after


@pytest.mark.parametrize("kind", ["CITIZEN", "CITIZEN-INTL"])
def test_entry_writes_the_record_and_exit_reads_it_back(kind, new_card, hsm, capks, issued_cards, transit):
    issued = issued_cards(kind)
    card = new_card(kind)
    open_trip_record(card, hsm, capks, issued)
    terminal, signer = transit
    with InProcessTransport(card) as transport:
        entry = run_qpboc(
            transport,
            terminal,
            amount_fen=FARE_FEN,
            capp=CappWrite(TRIP_FILE, TRIP_ID, ENTERED),
            capp_signer=signer,
        )
    assert entry.kind is Outcome.APPROVED_OFFLINE, entry.reasons
    assert entry.suite == SUITES[kind].name
    assert entry.data["DF60"] == b"\x01"
    assert entry.capp_record_read == EMPTY and entry.capp_record_written == ENTERED
    assert balance(entry) == BALANCE_FEN - 1 - FARE_FEN  # the opening tap's 1 fen, then the fare
    assert entry.batch_record is not None
    names = [step.name for step in entry.steps]
    assert names.index("READ CAPP DATA") < names.index("GPO") < names.index("UPDATE CAPP DATA CACHE")
    assert names.index("FDDA") < names.index("UPDATE CAPP DATA CACHE")  # nothing declines after the commit

    seen = []

    def exit_record(read: bytes) -> bytes:
        seen.append(read)
        assert read[2] == 0x01  # an entry to close
        return EXITED

    with InProcessTransport(card) as transport:
        leave = run_qpboc(
            transport,
            terminal,
            amount_fen=FARE_FEN,
            capp=CappWrite(TRIP_FILE, TRIP_ID, exit_record),
            capp_signer=signer,
        )
    assert leave.kind is Outcome.APPROVED_OFFLINE, leave.reasons
    assert seen == [ENTERED] and leave.capp_record_read == ENTERED and leave.capp_record_written == EXITED
    assert balance(leave) == BALANCE_FEN - 1 - 2 * FARE_FEN
    with InProcessTransport(card) as transport:  # the card holds the exit record now
        transport.transmit(bytes.fromhex("00A404000E325041592E5359532E444446303100"))
        transport.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(leave.aid)]) + leave.aid + b"\x00")
        assert transport.transmit(bytes.fromhex("80B400A8020570")) == EXITED + b"\x90\x00"


@pytest.mark.parametrize("kind", ["CITIZEN", "CITIZEN-INTL"])
def test_a_bad_mac_leaves_record_and_balance_unchanged_and_says_why(
    kind, new_card, hsm, capks, issued_cards, transit
):
    issued = issued_cards(kind)
    card = new_card(kind)
    open_trip_record(card, hsm, capks, issued)
    terminal, _ = transit
    wrong = f"transit-wrong-{kind.lower()}"
    if wrong not in {info.label for info in hsm.list_keys()}:
        hsm.generate_key(wrong, "IMK-ENC", SUITES[kind])
    forger = HsmCappSigner(hsm, {SUITES[kind].name: wrong})
    with InProcessTransport(card) as transport:
        result = run_qpboc(
            transport,
            terminal,
            amount_fen=FARE_FEN,
            capp=CappWrite(TRIP_FILE, TRIP_ID, ENTERED),
            capp_signer=forger,
        )
    assert result.kind is Outcome.DECLINED
    assert result.reasons[-1] == (
        "Part 14 cache update refused (6988: the MAC does not verify): "
        "the card committed neither the fare nor the record"
    )
    assert result.batch_record is None and result.capp_record_written is None
    assert result.balance_fen_after is None  # the card's 9F5D was never committed
    assert result.capp_record_read == EMPTY
    with InProcessTransport(card) as transport:
        transport.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(result.aid)]) + result.aid + b"\x00")
        assert transport.transmit(bytes.fromhex("80B400A8020570")) == EMPTY + b"\x90\x00"
        assert int(transport.transmit(bytes.fromhex("80CA9F7900"))[3:-2].hex()) == BALANCE_FEN - 1


def test_a_record_never_opened_ends_the_application_before_gpo(new_card, transit):
    terminal, signer = transit
    with InProcessTransport(new_card("CITIZEN")) as transport:
        result = run_qpboc(
            transport,
            terminal,
            amount_fen=FARE_FEN,
            capp=CappWrite(TRIP_FILE, TRIP_ID, ENTERED),
            capp_signer=signer,
        )
    assert result.kind is Outcome.END_APPLICATION
    assert result.reasons[-1] == "Part 14 SFI 15 record 0570 is not opened on this card (6A83)"
    assert "GPO" not in [step.name for step in result.steps]


def test_a_part_14_terminal_needs_a_record_and_a_signer(new_card, capks, transit):
    terminal, _ = transit
    with InProcessTransport(new_card("CITIZEN")) as transport:
        with pytest.raises(ValueError, match="needs capp"):
            run_qpboc(transport, terminal, amount_fen=200)
        with pytest.raises(ValueError, match="together"):
            run_qpboc(
                transport, make_terminal(capks), amount_fen=200, capp=CappWrite(TRIP_FILE, TRIP_ID, ENTERED)
            )


def test_capp_write_checks_its_record():
    with pytest.raises(ValueError, match="SFI must be 1 to 30"):
        CappWrite(31, TRIP_ID, ENTERED)
    with pytest.raises(ValueError, match="record ID must be 2 bytes"):
        CappWrite(TRIP_FILE, b"\x05", ENTERED)
    with pytest.raises(ValueError, match="not its ID 0570"):
        CappWrite(TRIP_FILE, TRIP_ID, b"\x05\x71" + bytes(10)).record_after(EMPTY)
