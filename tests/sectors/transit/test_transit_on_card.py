"""The fares on a real virtual citizen card, both suites: the platform opens the trip record (the
catalogue's fresh record), a validator reads it (READ CAPP DATA), prices the tap with price_tap, and
the kernel debits the fare and writes the new record with the operator's MAC in one qPBOC tap
(citycard.kernel.capp; pboc-notes §7)."""

from __future__ import annotations

import datetime as dt

import pytest
from tests.kernel.conftest import BALANCE_FEN, capks, hsm, issued_cards, make_terminal, new_card  # noqa: F401

from citycard.crypto.suite import GM, INTL
from citycard.kernel.capp import CappWrite, HsmCappSigner
from citycard.kernel.context import TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.qpboc import run_qpboc
from citycard.platform.application_catalogue import catalogue, encode_record
from citycard.reader import InProcessTransport
from citycard.sectors.transit import CardState, Tap, TripStatus, price_tap, unpack_record

SUITES = {"CITIZEN": GM, "CITIZEN-INTL": INTL}
T0 = dt.datetime(2026, 11, 27, 0, 0, tzinfo=dt.UTC)
PPSE = bytes.fromhex("00A404000E325041592E5359532E444446303100")


def _labels(suite) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    name = suite.name.lower()
    return f"imk-capp-{name}-15", f"transit-operator-{name}"


@pytest.fixture
def validator(hsm, capks):  # type: ignore[no-untyped-def]  # noqa: F811
    for suite in (GM, INTL):
        if _labels(suite)[1] not in {info.label for info in hsm.list_keys()}:
            hsm.generate_key(_labels(suite)[1], "IMK-ENC", suite)
    signer = HsmCappSigner(hsm, {s.name: _labels(s)[1] for s in (GM, INTL)})
    return make_terminal(capks, profile=TerminalProfile.bus_validator(capp=True)), signer


def _open(card, hsm, capks, suite, table) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The platform's service desk opens record 0570 with the catalogue's fresh transit record."""
    fresh = encode_record(catalogue()["transit"], {"city_code": table.city_code, "concession": "01"})
    with InProcessTransport(card) as transport:
        result = run_qpboc(
            transport, make_terminal(capks, profile=TerminalProfile.bus_validator()), amount_fen=1
        )
        assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
        opening, operator = _labels(suite)
        apdu = hsm.capp_append_command(
            opening, operator, tag_5a=result.pan, tag_5f34=result.psn, tag_9f36=result.data["9F36"],
            sfi=0x15, record=fresh,
        )  # fmt: skip
        assert transport.transmit(apdu) == b"\x90\x00"


def _read(card, aid: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """The validator's first look at the card: the trip record, to price the tap before GPO."""
    with InProcessTransport(card) as transport:
        transport.transmit(PPSE)
        transport.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00")
        reply = transport.transmit(bytes.fromhex("80B400A8020570"))
    assert reply[-2:] == b"\x90\x00"
    return reply[:-2]


def _tap(card, terminal, signer, table, tap: Tap, aid: bytes):  # type: ignore[no-untyped-def]
    before = _read(card, aid)
    state = CardState.of(before, table)
    decision = price_tap(
        table, card_state=state, tap=tap, holder_kind=table.holder_kind_of_code(state.trip.concession)
    )

    if decision.kind == "refused":
        return decision, None  # the validator declines: no GPO, nothing debited, nothing written

    def record(read: bytes) -> bytes:
        if read != before:  # another card, or the record changed since the first read
            raise ValueError("the trip record changed between the read and the tap")
        return decision.record_bytes

    with InProcessTransport(card) as transport:
        result = run_qpboc(
            transport, terminal, amount_fen=decision.amount_fen, capp=CappWrite(0x15, table.record_id, record),
            capp_signer=signer,
        )  # fmt: skip
    return decision, result


@pytest.mark.parametrize("kind", ["CITIZEN", "CITIZEN-INTL"])
def test_a_student_rides_a_segmented_line_and_a_flat_line(kind, table, new_card, hsm, capks, validator):  # noqa: F811
    card = new_card(kind)
    _open(card, hsm, capks, SUITES[kind], table)
    terminal, signer = validator
    aid = None
    with InProcessTransport(card) as transport:  # the AID the card selects contactless
        aid = run_qpboc(
            transport, make_terminal(capks, profile=TerminalProfile.bus_validator()), amount_fen=1
        ).aid
    balance = BALANCE_FEN - 2  # two 1-fen taps so far

    entry, result = _tap(card, terminal, signer, table, Tap("entry", "K1", "D10001", T0, stop="HTM"), aid)
    assert (entry.amount_fen, entry.reasons) == (200, ("max_fare_held", "concession:transit_half_fare"))
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    balance -= 200
    assert result.balance_fen_after == balance
    on_card = unpack_record(_read(card, aid), record_id=table.record_id)
    assert (on_card.status, on_card.stop, on_card.held_fen, on_card.concession) == (
        TripStatus.ENTERED,
        "HTM",
        200,
        1,
    )

    later = T0 + dt.timedelta(minutes=25)
    flat = _tap(card, terminal, signer, table, Tap("flat", "3", "D20002", later), aid)
    assert flat[0].reasons[0] == "previous_exit_missing" and flat[0].amount_fen == 100
    assert flat[1].kind is Outcome.APPROVED_OFFLINE, flat[1].reasons
    balance -= 100
    assert flat[1].balance_fen_after == balance
    on_card = unpack_record(_read(card, aid), record_id=table.record_id)
    assert (on_card.status, on_card.line, on_card.day_total_fen) == (TripStatus.EXITED, "3", 300)

    again = _tap(
        card, terminal, signer, table, Tap("flat", "3", "D20002", later + dt.timedelta(seconds=20)), aid
    )
    assert again[0].kind == "refused" and again[0].record_bytes is None and again[1] is None
    assert _read(card, aid) == flat[0].record_bytes  # the double tap wrote nothing
