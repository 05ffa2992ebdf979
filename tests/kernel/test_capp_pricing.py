"""Pricing after READ CAPP DATA (the fare depends on the trip record; 9F02 goes in GPO) and
zero-fen taps: the card approves 0 fen offline with a TC and commits the record; a refusal
declines before GPO with nothing written. Real virtual cards of both suites.
"""

from __future__ import annotations

import pytest

from citycard.kernel.capp import CappWrite, PricingRefused
from citycard.kernel.outcome import Outcome
from citycard.kernel.qpboc import run_qpboc
from citycard.reader import InProcessTransport

from .conftest import BALANCE_FEN
from .test_capp import EMPTY, ENTERED, EXITED, TRIP_FILE, TRIP_ID, open_trip_record, transit  # noqa: F401

KINDS = ["CITIZEN", "CITIZEN-INTL"]


def read_back(card, aid: bytes) -> tuple[bytes, int]:
    """(the trip record, the EC balance) as the card holds them."""
    with InProcessTransport(card) as transport:
        transport.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00")
        record = transport.transmit(bytes.fromhex("80B400A8020570"))
        balance = transport.transmit(bytes.fromhex("80CA9F7900"))
    assert record[-2:] == b"\x90\x00" and balance[-2:] == b"\x90\x00"
    return record[:-2], int(balance[3:-2].hex())


def tap(card, terminal, signer, price, *, amount_fen=400):
    with InProcessTransport(card) as transport:
        return run_qpboc(
            transport, terminal, amount_fen=amount_fen, capp=CappWrite(TRIP_FILE, TRIP_ID, price=price),
            capp_signer=signer,
        )  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_the_exit_is_priced_from_the_entry_record_and_may_debit_nothing(
    kind,
    new_card,
    hsm,
    capks,
    issued_cards,
    transit,  # noqa: F811
):
    card = new_card(kind)
    open_trip_record(card, hsm, capks, issued_cards(kind))
    terminal, signer = transit
    seen: list[bytes] = []

    def price(read: bytes) -> tuple[int, bytes]:
        seen.append(read)
        return (400, ENTERED) if read[2] == 0x00 else (0, EXITED)  # the maximum on entry, 0 on exit

    entry = tap(card, terminal, signer, price)
    assert entry.kind is Outcome.APPROVED_OFFLINE, entry.reasons
    assert entry.amount_fen == 400 and entry.data["9F02"] == bytes.fromhex("000000000400")
    assert entry.balance_fen_after == BALANCE_FEN - 1 - 400
    names = [step.name for step in entry.steps]
    assert names.index("READ CAPP DATA") < names.index("pricing") < names.index("GPO")

    leave = tap(card, terminal, signer, price)
    assert leave.kind is Outcome.APPROVED_OFFLINE, leave.reasons
    assert seen == [EMPTY, ENTERED]
    assert leave.amount_fen == 0 and leave.data["9F02"] == bytes(6)
    assert leave.cid == 0x40 and leave.batch_record is not None  # a TC for 0 fen
    assert leave.batch_record.amount_fen == 0
    assert leave.batch_record.balance_fen_after == BALANCE_FEN - 1 - 400
    assert leave.capp_record_written == EXITED
    assert read_back(card, leave.aid) == (EXITED, BALANCE_FEN - 1 - 400)


@pytest.mark.parametrize("kind", KINDS)
def test_a_pricing_refusal_declines_before_gpo_and_changes_nothing(
    kind,
    new_card,
    hsm,
    capks,
    issued_cards,
    transit,  # noqa: F811
):
    card = new_card(kind)
    open_trip_record(card, hsm, capks, issued_cards(kind))
    terminal, signer = transit

    def refuse(read: bytes) -> tuple[int, bytes]:
        raise PricingRefused("double_tap")

    result = tap(card, terminal, signer, refuse)
    assert result.kind is Outcome.DECLINED
    assert result.reasons[-1] == "tap refused by the fare rules: double_tap"
    assert "GPO" not in [step.name for step in result.steps]
    assert result.batch_record is None and result.capp_record_written is None
    assert result.capp_record_read == EMPTY
    assert read_back(card, result.aid) == (EMPTY, BALANCE_FEN - 1)

    def broken(read: bytes) -> tuple[int, bytes]:
        raise ValueError("lines[K9]: unknown line")

    result = tap(card, terminal, signer, broken)
    assert result.kind is Outcome.DECLINED
    assert result.reasons[-1] == "tap not priced: lines[K9]: unknown line"
    assert read_back(card, result.aid) == (EMPTY, BALANCE_FEN - 1)


def test_a_priced_amount_or_record_out_of_range_declines_before_gpo(
    new_card,
    hsm,
    capks,
    issued_cards,
    transit,  # noqa: F811
):
    card = new_card("CITIZEN")
    open_trip_record(card, hsm, capks, issued_cards("CITIZEN"))
    terminal, signer = transit
    for price, reason in (
        (lambda read: (-1, ENTERED), "tap not priced: the priced amount must be 0 to 999999999999 fen, got -1"),
        (lambda read: (True, ENTERED), "tap not priced: the priced amount must be an integer number of fen, got True"),
        (lambda read: (100, b"\x05\x71" + bytes(62)), "tap not priced: Part 14 record starts 0571, not its ID 0570"),
    ):  # fmt: skip
        result = tap(card, terminal, signer, price)
        assert result.kind is Outcome.DECLINED and result.reasons[-1] == reason
        assert "GPO" not in [step.name for step in result.steps]


def test_the_priced_amount_is_checked_against_the_aid_limits(
    new_card,
    hsm,
    capks,
    issued_cards,
    transit,  # noqa: F811
):
    card = new_card("CITIZEN")
    open_trip_record(card, hsm, capks, issued_cards("CITIZEN"))
    terminal, signer = transit
    row = terminal.aids.match(bytes.fromhex("A000000333010101"))
    too_much = row.contactless_transaction_limit_fen
    result = tap(card, terminal, signer, lambda read: (too_much, ENTERED))
    assert result.kind is Outcome.TRY_ANOTHER_INTERFACE
    assert result.reasons[-1].startswith(f"priced amount {too_much} fen is not allowed contactless by AID")
    assert read_back(card, result.aid)[1] == BALANCE_FEN - 1


def test_a_price_and_a_record_together_are_refused():
    with pytest.raises(ValueError, match="exactly one of record and price"):
        CappWrite(TRIP_FILE, TRIP_ID, ENTERED, price=lambda read: (1, ENTERED))
    with pytest.raises(ValueError, match="exactly one of record and price"):
        CappWrite(TRIP_FILE, TRIP_ID)


def test_a_price_needs_a_card_with_part_14(new_card, capks, transit):  # noqa: F811
    terminal, signer = transit
    result = tap(new_card("GM"), terminal, signer, lambda read: (100, ENTERED))
    assert result.kind is Outcome.END_APPLICATION
    assert result.reasons[-1] == "the card offers no Part 14 file (DF61): the tap cannot be priced"
