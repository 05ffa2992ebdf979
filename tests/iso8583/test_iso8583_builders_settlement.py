"""The kinds added for the host servers: 0500 settlement totals and 0800 key exchange (builders.KINDS)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from citycard.iso8583 import Iso8583Error, builders, decode, encode

TERMINAL = builders.Terminal(terminal_id="T0000001", merchant_id="M00000000000001", batch=7)
WHEN = datetime(2026, 11, 27, 3, 4, 5, tzinfo=UTC)


def test_settlement_round_trips_and_classifies() -> None:
    fields = builders.settlement(terminal=TERMINAL, stan=12, when=WHEN, debit_count=3, debit_fen=4_550,
                                 credit_count=1, credit_fen=100)  # fmt: skip
    decoded, _ = decode(encode(fields))
    assert decoded == fields
    assert builders.classify(decoded).name == "settlement"
    assert decoded["60"] == "00000007201"  # 60.1 00, batch 000007, 60.3 201
    assert builders.parse_settlement_totals(decoded) == {
        "debit_count": 3, "debit_fen": 4_550, "credit_count": 1, "credit_fen": 100,
    }  # fmt: skip
    answer = builders.response(decoded, "00")
    assert answer["t"] == "0510" and builders.classify(answer).name == "settlement"


def test_settlement_rejects_bad_totals() -> None:
    with pytest.raises(Iso8583Error, match="debit count"):
        builders.settlement(terminal=TERMINAL, stan=1, when=WHEN, debit_count=1000, debit_fen=1)
    with pytest.raises(Iso8583Error, match="amount"):
        builders.settlement(terminal=TERMINAL, stan=1, when=WHEN, debit_count=1, debit_fen=-1)
    with pytest.raises(Iso8583Error, match="30 digits"):
        builders.parse_settlement_totals({"63": "12"})
    fields = builders.settlement(terminal=TERMINAL, stan=1, when=WHEN, debit_count=1, debit_fen=1)
    del fields["63"]
    with pytest.raises(Iso8583Error, match="lacks field 63"):
        builders.classify(fields)


def test_key_exchange_is_its_own_network_kind() -> None:
    fields = builders.network("key_exchange", terminal=TERMINAL, stan=5, when=WHEN)
    assert fields["60"][8:11] == "101"
    assert builders.classify(decode(encode(fields))[0]).name == "key_exchange"
    sign_on = builders.network("sign_on", terminal=TERMINAL, stan=6, when=WHEN)
    assert builders.classify(sign_on).name == "sign_on"
    reply = builders.response(fields, "00", f62=bytes(40))
    assert decode(encode(reply))[0]["62"] == bytes(40)
