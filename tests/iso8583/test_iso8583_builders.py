"""Builders and validators: every kind encodes, decodes, classifies and gets its response."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from citycard.crypto import INTL
from citycard.iso8583 import Iso8583Error, add_mac, decode, encode, ic_data, verify_mac
from citycard.iso8583.builders import (
    KINDS,
    Card,
    Terminal,
    amount_field,
    classify,
    financial,
    network,
    parse_amount,
    response,
    reversal,
    stan_field,
    time_fields,
)

WHEN = datetime(2026, 11, 27, 3, 4, 5, tzinfo=UTC)
TERMINAL = Terminal("T0000001", "104510000000001", batch=7, acquirer_id="48025810")
CARD = Card("6217000012345678901", psn=1, expiry_yymm="3012", track2="6217000012345678901D30122011234")
IC = bytes.fromhex("9F260811223344556677889F2701809F360200019F02060000000123455F2A020156DF310100")
FINANCIAL = ["authorisation", "pre_authorisation", "purchase", "ec_load", "advice"]


def round_trip(fields):
    decoded, _ = decode(encode(fields))
    assert decoded == fields
    return decoded


@pytest.mark.parametrize("name", ["sign_on", "echo"])
def test_network_messages(name):
    fields = round_trip(network(name, terminal=TERMINAL, stan=1, when=WHEN))
    assert fields["t"] == "0800"
    assert classify(fields) is KINDS[name]
    reply = round_trip(response(fields, "00", f62=bytes(16)))
    assert reply["t"] == "0810"
    assert classify(reply) is KINDS[name]
    assert reply["60"] == fields["60"] and reply["11"] == "000001"


@pytest.mark.parametrize("name", FINANCIAL)
def test_financial_messages(name):
    kind = KINDS[name]
    fields = financial(name, terminal=TERMINAL, card=CARD, amount_fen=12345, stan=42, when=WHEN, ic=IC)
    fields = round_trip(fields)
    assert (fields["t"], fields["3"], fields["60"][:2]) == (kind.mti, kind.processing_code, kind.type_code)
    assert fields["60"][2:8] == "000007"
    assert parse_amount(fields) == 12345
    assert fields["23"] == "001" and fields["22"] == "052"
    assert classify(fields) is kind
    assert ic_data(fields)[0].tag == "9F26"
    reply = round_trip(
        response(fields, "00", f38="123456", f55=bytes.fromhex("910A0102030405060708 3030".replace(" ", "")))
    )
    assert reply["t"] == f"{int(kind.mti) + 10:04d}"
    assert classify(reply) is kind
    assert {k: reply[k] for k in ("2", "3", "4", "11", "41", "42")} == {
        k: fields[k] for k in ("2", "3", "4", "11", "41", "42")
    }


def test_ec_load_has_own_processing_code():
    assert KINDS["ec_load"].processing_code != KINDS["purchase"].processing_code
    with pytest.raises(Iso8583Error) as info:
        financial("ec_load", terminal=TERMINAL, card=CARD, amount_fen=100, stan=1, when=WHEN)
    assert info.value.field == "55"


def test_pin_and_contactless_set_entry_mode():
    fields = financial(
        "purchase",
        terminal=TERMINAL,
        card=CARD,
        amount_fen=1,
        stan=1,
        when=WHEN,
        pin_block=bytes(8),
        contactless=True,
    )
    assert (fields["22"], fields["26"], fields["52"]) == ("071", "12", bytes(8))
    raw = add_mac(fields, bytes(16), INTL)
    assert verify_mac(raw, bytes(16), INTL)


def test_reversal_once_and_response():
    original = financial(
        "purchase", terminal=TERMINAL, card=CARD, amount_fen=500, stan=9, when=WHEN, pin_block=bytes(8)
    )
    rev = round_trip(reversal(original))
    assert rev["t"] == "0400" and rev["11"] == "000009" and rev["39"] == "98"
    assert "52" not in rev and "35" not in rev
    assert classify(rev) is KINDS["reversal"]
    reply = round_trip(response(rev, "00"))
    assert reply["t"] == "0410"
    with pytest.raises(Iso8583Error):
        reversal(rev)  # a reversal is not reversed


def test_time_fields():
    assert time_fields(WHEN) == {"7": "1127030405", "12": "110405", "13": "1127"}
    late = datetime(2026, 12, 31, 20, 0, 0, tzinfo=timezone(timedelta(hours=-5)))  # 2027-01-01 01:00 UTC
    assert time_fields(late) == {"7": "0101010000", "12": "090000", "13": "0101"}
    with pytest.raises(Iso8583Error) as info:
        time_fields(datetime(2026, 11, 27))
    assert info.value.field == "7"


@pytest.mark.parametrize("bad", [-1, 10**12, 1.5, True])
def test_amount_bounds(bad):
    with pytest.raises(Iso8583Error) as info:
        amount_field(bad)
    assert info.value.field == "4"


@pytest.mark.parametrize("bad", [0, 1_000_000, "1"])
def test_stan_bounds(bad):
    with pytest.raises(Iso8583Error) as info:
        stan_field(bad)
    assert info.value.field == "11"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"t": "0300"}, "t"),
        ({"t": "02X0"}, "t"),
        ({"t": "0200", "3": "310000"}, "3"),
        ({"t": "0800", "60": "00000001999"}, "60"),
        ({"t": "0210", "3": "000000"}, "39"),
    ],
)
def test_classify_rejects(fields, field):
    with pytest.raises(Iso8583Error) as info:
        classify(fields)
    assert info.value.field == field


def test_classify_missing_field_and_bad_amount():
    fields = financial("purchase", terminal=TERMINAL, card=CARD, amount_fen=1, stan=1, when=WHEN)
    with pytest.raises(Iso8583Error) as info:
        classify({k: v for k, v in fields.items() if k != "41"})
    assert info.value.field == "41"
    with pytest.raises(Iso8583Error) as info:
        classify({**fields, "4": "12"})
    assert info.value.field == "4"
