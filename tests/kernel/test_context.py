"""The transaction context: terminal data, DOL data, PAN, amounts."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.emv.dol import DOLError, build_dol
from citycard.kernel.context import TerminalProfile, Transaction, fen, n12
from citycard.kernel.params import AidTable

AID_EC = bytes.fromhex("A000000333010106")


def new(**kwargs) -> Transaction:
    kwargs.setdefault("amount_fen", 1250)
    kwargs.setdefault("interface", "contactless")
    return Transaction.new(TerminalProfile(), **kwargs)


def test_terminal_data_of_a_new_transaction():
    when = dt.datetime(2026, 6, 30, 16, 5, 9, tzinfo=dt.UTC)  # 00:05:09 on 1 July in Shanghai
    tx = new(when=when, unpredictable_number=bytes.fromhex("01020304"))
    assert tx.terminal["9F02"] == bytes.fromhex("000000001250")
    assert tx.terminal["9A"] == bytes.fromhex("260701") and tx.terminal["9F21"] == bytes.fromhex("000509")
    assert tx.terminal["9F37"] == bytes.fromhex("01020304") and tx.terminal["DF60"] == b"\x00"
    assert tx.today == dt.date(2026, 7, 1)


def test_the_aid_row_supplies_the_rest_and_the_profile_overrides_it():
    row = AidTable.load().get(AID_EC)
    tx = Transaction.new(TerminalProfile.bus_validator(), amount_fen=1, interface="contactless")
    tx.apply_aid(row)
    assert tx.terminal["9F66"] == bytes.fromhex("28000080")  # the bus validator's TTQ, not the row's
    assert tx.terminal["9F35"] == b"\x26" and tx.terminal["DF69"] == b"\x01"
    assert tx.terminal["9F1A"] == bytes.fromhex("0156") and tx.terminal["9F09"] == bytes.fromhex("0030")
    assert not tx.online_capable and not tx.contact_supported


@pytest.mark.parametrize(
    "dol",
    [
        "9F66049F02069F03069F1A0295055F2A029A039C019F3704DF6901",
        "9F02049F1A035A0A70029F37029F4E05",  # cut n on the left, pad n; cn padded with F; constructed zeros
        "",
    ],
)
def test_dol_data_follows_build_dol(dol):
    tx = new(unpredictable_number=bytes.fromhex("CAFEBABE"))
    tx.apply_aid(AidTable.load().get(AID_EC))
    tx.card["5A"] = bytes.fromhex("6235481234567890")
    raw = bytes.fromhex(dol)
    assert tx.dol_data(raw) == build_dol(raw, tx.dol_values())


def test_malformed_dol_raises():
    with pytest.raises(DOLError):
        new().dol_data(bytes.fromhex("9F66"))


def test_pan_from_5a_or_track_2():
    tx = new()
    tx.card["57"] = bytes.fromhex("6235481234567890D3012220")
    assert tx.pan == "6235481234567890"
    tx.card["5A"] = bytes.fromhex("6235481234567890123F")
    assert tx.pan == "6235481234567890123"


@pytest.mark.parametrize("amount", [0, -1, 10**12])
def test_amount_out_of_range(amount):
    with pytest.raises(ValueError, match="amount"):
        new(amount_fen=amount)


def test_naive_time_and_short_un_are_refused():
    with pytest.raises(ValueError, match="aware"):
        new(when=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="9F37"):
        new(unpredictable_number=b"\x01")


def test_n12_round_trip():
    assert fen(n12(123_456)) == 123_456
    with pytest.raises(ValueError, match="BCD"):
        fen(bytes.fromhex("00000000001A"))
