"""ISO 8583 encode/decode: pyiso8583 README vectors, CUPS field layout, F55 TLV, negatives, fuzz."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iso8583.specs import default_ascii

from citycard.emv import TLV
from citycard.emv import encode as tlv_encode
from citycard.iso8583 import CUPS_POS, F55_MAX_BYTES, Iso8583Error, decode, encode, ic_data, with_ic_data

H = bytes.fromhex

# vectors-public §4.3: Visa DE55 (Chuckks/Iso8583Lib IsoFileTest.kt)
VISA_DE55 = H(
    "5F2A02048482021C008407A0000000032010950580800080009A032401089C01009F02060000000900009F0306000000"
    "0000009F090200839F100706010A03A4A8109F1A0204849F1E0836523635333530349F26082E078F5CEA112DAA9F2701"
    "809F3303E0B0C89F34030103029F3501229F4104000000019F530100"
)

PURCHASE = {
    "t": "0200",
    "2": "6217000012345678901",
    "3": "000000",
    "4": "000000012345",
    "11": "000042",
    "14": "3012",
    "22": "051",
    "23": "001",
    "25": "00",
    "35": "6217000012345678901D30122011234",
    "41": "T0000001",
    "42": "104510000000001",
    "49": "156",
    "52": H("0123456789ABCDEF"),
    "55": VISA_DE55,
    "60": "22000001000",
}


# --- vectors-public §4.1: pyiso8583 README, through our wrapper with the library's ASCII spec ---


def test_readme_decode_vector():
    fields, parts = decode(b"02004000000000000000101234567890", spec=default_ascii)
    assert fields == {"t": "0200", "2": "1234567890"}
    assert parts["2"] == {"len": b"10", "data": b"1234567890"}


def test_readme_encode_vector():
    assert encode({"t": "0210", "39": "05"}, spec=default_ascii) == b"0210000000000200000005"


def test_readme_field_55_vector():
    # README: "field 55 binary with ASCII LLL length" — the library's ASCII spec with F55 switched to binary
    spec = {**default_ascii, "55": {**default_ascii["55"], "data_enc": "b", "max_len": 255}}
    raw = encode({"t": "0200", "55": H("9F02060000000123455F340102")}, spec=spec)
    assert raw == H("30323030303030303030303030303030303230303031339F02060000000123455F340102")


# --- the same field-55 example adapted to CUPS_POS (BCD MTI, binary bitmap, BCD LLL length) ---

tags = st.sampled_from(["9F02", "5F34", "9F26", "DF31", "9F8101", "DF8129", "9F63", "9F10", "82"])
tlvs = st.lists(
    st.builds(lambda tag, value: TLV(tag, value), tags, st.binary(max_size=40)), min_size=1, max_size=6
).filter(lambda objects: len(tlv_encode(objects)) <= F55_MAX_BYTES)


def test_field_55_example_under_cups():
    data = H("9F02060000000123455F340102")
    raw = encode({"t": "0200", "55": data})
    assert raw == H("020000000000000002000013") + data


@given(tlvs)
def test_field_55_property(objects):
    data = tlv_encode(objects)
    raw = encode({"t": "0200", "55": data})
    assert raw == H("02000000000000000200") + bytes.fromhex(f"{len(data):04d}") + data
    fields, parts = decode(raw)
    assert fields["55"] == data
    assert parts["55"]["data"] == data
    assert ic_data(fields) == objects
    assert tlv_encode(ic_data(fields)) == data  # byte-identical, 3-byte and unknown tags included


def test_visa_de55_round_trip_byte_identical():
    fields, _ = decode(encode(PURCHASE))
    objects = ic_data(fields)
    assert [o.tag for o in objects][:3] == ["5F2A", "82", "84"]
    assert tlv_encode(objects) == VISA_DE55
    assert with_ic_data(fields, objects)["55"] == VISA_DE55


def test_purchase_round_trip_and_layout():
    raw = encode(PURCHASE)
    fields, parts = decode(raw)
    assert fields == PURCHASE
    assert encode(fields) == raw
    assert raw[:2] == H("0200")
    assert parts["2"] == {"len": H("19"), "data": H("62170000123456789010")}  # right-padded BCD
    assert parts["4"]["data"] == H("000000012345")
    assert parts["22"]["data"] == H("0051")  # n3 left-padded
    assert parts["35"]["len"] == H("31")
    assert parts["49"]["data"] == b"156"
    assert parts["60"] == {"len": H("0011"), "data": H("220000010000")}


def test_ic_data_absent_and_malformed():
    assert ic_data({"t": "0200"}) == []
    with pytest.raises(Iso8583Error) as info:
        ic_data({"t": "0200", "55": H("9F0206000000")})
    assert info.value.field == "55"


# --- negatives: every failure is an Iso8583Error naming the field ---


def test_every_truncation_is_an_error():
    raw = encode(PURCHASE)
    for cut in range(len(raw)):
        with pytest.raises(Iso8583Error):
            decode(raw[:cut])


def test_truncation_names_field_and_offset():
    raw = encode({"t": "0800", "11": "000001", "41": "T0000001"})
    with pytest.raises(Iso8583Error) as info:
        decode(raw[:-1])
    assert (info.value.field, info.value.offset) == ("41", 13)
    assert "field 41" in str(info.value)


def test_trailing_bytes_are_an_error():
    with pytest.raises(Iso8583Error):
        decode(encode(PURCHASE) + b"\x00")


def test_bad_bitmap_field_not_in_spec():
    raw = H("0200") + H("0800000000000000") + H("00")  # bit 5 (settlement amount) is not in CUPS_POS
    with pytest.raises(Iso8583Error) as info:
        decode(raw)
    assert info.value.field == "5"


def test_bad_bitmap_without_fields():
    with pytest.raises(Iso8583Error) as info:
        decode(H("0200") + bytes(8))
    assert info.value.field == "p"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("2", "6" * 20),
        ("4", "1" * 13),
        ("41", "T00000012"),
        ("55", bytes(F55_MAX_BYTES + 1)),
        ("64", bytes(7)),
    ],
)
def test_field_too_long_or_wrong_size(field, value):
    with pytest.raises(Iso8583Error) as info:
        encode({"t": "0200", field: value})
    assert info.value.field == field


@pytest.mark.parametrize(
    ("field", "value"), [("4", "00000001234A"), ("11", "00 001"), ("2", "62170D"), ("t", "02A0")]
)
def test_non_digit_in_n_field_on_encode(field, value):
    with pytest.raises(Iso8583Error) as info:
        encode({"t": "0200", field: value} if field != "t" else {"t": value})
    assert info.value.field == field


def test_non_digit_in_n_field_on_decode():
    raw = bytearray(encode({"t": "0200", "4": "000000012345"}))
    raw[-1] = 0x4A  # BCD nibble A
    with pytest.raises(Iso8583Error) as info:
        decode(bytes(raw))
    assert info.value.field == "4"


def test_non_digit_mti_on_decode():
    with pytest.raises(Iso8583Error) as info:
        decode(H("02A0") + H("0000000000000200") + H("0001") + b"\x01")
    assert info.value.field == "t"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"2": "62"}, "t"),
        ({"t": "0200", "5": "1"}, "5"),
        ({"t": "0200", "55": "9F02"}, "55"),
        ({"t": "0200", "4": 12345}, "4"),
        ({"t": "0200", "41": "T000000\n"}, "41"),
        ({"t": "020"}, "t"),
    ],
)
def test_bad_input_on_encode(fields, field):
    with pytest.raises(Iso8583Error) as info:
        encode(fields)
    assert info.value.field == field


def test_decode_rejects_non_bytes_and_oversize():
    with pytest.raises(Iso8583Error):
        decode("0200")  # type: ignore[arg-type]
    with pytest.raises(Iso8583Error):
        decode(bytes(5000))


def test_every_field_in_spec_round_trips():
    samples = {"n": "1", "z": "1", "an": "A", "ans": "A", "b": b"\x01"}
    for key, field_spec in CUPS_POS.items():
        if key in ("h", "t", "p", "1"):
            continue
        fixed = field_spec["len_type"] == 0
        if field_spec["fmt"] == "b":
            value = bytes(range(field_spec["max_len"])) if fixed else b"\x01\x02"
        elif fixed:
            value = samples[field_spec["fmt"]] * field_spec["max_len"]
        else:
            value = samples[field_spec["fmt"]] * 3
        fields = {"t": "0200", key: value}
        assert decode(encode(fields))[0] == fields, key


# --- fuzz: malformed input only ever raises Iso8583Error ---


@settings(max_examples=1500)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_iso8583_error(raw):
    with contextlib.suppress(Iso8583Error):
        decode(raw)


@settings(max_examples=1500)
@given(st.data())
def test_mutated_messages_only_raise_iso8583_error(data):
    raw = bytearray(encode(PURCHASE))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        fields, _ = decode(bytes(raw[:cut]))
    except Iso8583Error:
        return
    ic_data_or_error(fields)


@settings(max_examples=300)
@given(st.integers(0, 9999).map("{:04d}".format), st.binary(min_size=8, max_size=200))
def test_valid_mti_random_body_only_raises_iso8583_error(mti, body):
    with contextlib.suppress(Iso8583Error):
        decode(bytes.fromhex(mti) + body)


def ic_data_or_error(fields):
    with contextlib.suppress(Iso8583Error):
        ic_data(fields)
