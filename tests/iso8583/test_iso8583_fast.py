"""The fast codec (iso8583.fast) against the reference (pyiso8583 under iso8583.message).

For every input the fast path must give what the reference gives: the same field dict (in the same
order) or wire bytes, or the same Iso8583Error text. Random valid messages are built from the spec
table itself; malformed ones by mutating, truncating and extending valid ones, and as random bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.iso8583 import fast, message
from citycard.iso8583.builders import Card, Terminal, financial, response
from citycard.iso8583.message import Iso8583Error
from citycard.iso8583.spec import CUPS_POS

DATA_FIELDS = sorted((k for k in CUPS_POS if k.isdigit() and k != "1"), key=int)
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def value_for(key: str) -> st.SearchStrategy[Any]:
    """A valid value of field ``key`` drawn from its spec line."""
    spec = CUPS_POS[key]
    fmt, size, fixed = spec["fmt"], spec["max_len"], spec["len_type"] == 0
    low = size if fixed else 0
    if fmt == "b":
        return st.binary(min_size=low, max_size=size)
    if fmt == "n":
        return st.text("0123456789", min_size=low, max_size=size)
    if fmt == "z":
        return st.text("0123456789D", min_size=low, max_size=size)
    return st.text(PRINTABLE, min_size=low, max_size=size)


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(DATA_FIELDS), min_size=1, max_size=20, unique=True))
    fields: dict[str, Any] = {"t": draw(st.text("0123456789", min_size=4, max_size=4))}
    for key in draw(st.permutations(keys)):  # any insertion order: the encoder sorts
        fields[key] = draw(value_for(key))
    return fields


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    try:
        result = call(*args)
    except Iso8583Error as exc:
        return "error", str(exc)
    return "ok", list(result.items()) if isinstance(result, dict) else result


def reference_fields(raw: bytes) -> dict[str, Any]:
    return message.decode(raw)[0]


@settings(max_examples=400, deadline=None)
@given(valid_messages())
def test_valid_messages_take_the_fast_path_and_agree(fields):
    raw = message.encode(fields)
    assert fast._encode(fields) == raw  # the fast path itself, no fallback
    assert fast.encode(fields) == raw
    decoded = fast._decode(raw)
    assert list(decoded.items()) == list(reference_fields(raw).items())
    assert fast.decode_fields(raw) == decoded


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_messages(), st.data())
def test_mutated_bytes_decode_like_the_reference(fields, data):
    raw = bytearray(message.encode(fields))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    tail = data.draw(st.binary(max_size=3))
    for candidate in (bytes(raw), bytes(raw[:cut]), bytes(raw) + tail):
        assert outcome(fast.decode_fields, candidate) == outcome(reference_fields, candidate)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_decode_like_the_reference(raw):
    assert outcome(fast.decode_fields, raw) == outcome(reference_fields, raw)


odd_values = st.one_of(
    st.text(max_size=30),
    st.text("0123456789ABCDEFD ", max_size=40),
    st.binary(max_size=40),
    st.integers(),
    st.none(),
    st.just("٣٤"),  # digits outside ASCII: isdigit() is true, the spec says no
)


@settings(max_examples=600, deadline=None)
@given(valid_messages(), st.dictionaries(st.sampled_from([*DATA_FIELDS, "t", "p", "1", "h", "99"]), odd_values,
                                         max_size=3))  # fmt: skip
def test_odd_field_dicts_encode_like_the_reference(fields, changes):
    fields.update(changes)
    assert outcome(fast.encode, fields) == outcome(message.encode, fields)


def test_purchase_and_its_answer_use_the_fast_path_both_ways():
    request = financial(
        "purchase", terminal=Terminal("T0000001", "M00000000000001"),
        card=Card("6235480000000016", psn=1, expiry_yymm="3012", track2="6235480000000016D3012"),
        amount_fen=1234, stan=7, when=datetime(2026, 11, 27, 7, 0, tzinfo=UTC), ic=bytes.fromhex("9F360200019F2701 80".replace(" ", "")),
    )  # fmt: skip
    request["64"] = bytes(range(8))
    raw = fast._encode(request)
    assert raw == message.encode(request)
    assert fast._decode(raw) == request == reference_fields(raw)
    answer = response(request, "00", f38="123456", f55=bytes.fromhex("910A") + bytes(10))
    assert fast.decode_fields(fast._encode(answer)) == answer


@pytest.mark.parametrize(
    "raw, field",
    [
        (bytes.fromhex("0200") + bytes(8), "p"),  # bitmap sets no data field
        (bytes.fromhex("0A00") + bytes.fromhex("0020000000000000") + bytes.fromhex("000001"), "t"),
        (bytes.fromhex("0200") + bytes.fromhex("4000000000000000") + bytes.fromhex("1A") + bytes(9), "2"),
        (bytes.fromhex("0200") + bytes.fromhex("0020000000000000") + bytes.fromhex("00000A"), "11"),
    ],
)
def test_malformed_examples_give_the_reference_error(raw, field):
    with pytest.raises(Iso8583Error) as fast_error:
        fast.decode_fields(raw)
    with pytest.raises(Iso8583Error) as reference_error:
        message.decode(raw)
    assert str(fast_error.value) == str(reference_error.value)
    assert fast_error.value.field == field


def test_oversize_and_non_bytes_are_the_reference_errors():
    big = bytes.fromhex("0200") + bytes(5000)
    assert outcome(fast.decode_fields, big) == outcome(reference_fields, big)
    assert outcome(fast.decode_fields, bytearray(b"\x02\x00")) == outcome(
        reference_fields, bytearray(b"\x02\x00")
    )
