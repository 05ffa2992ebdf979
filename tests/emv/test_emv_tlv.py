"""BER-TLV decoder/encoder: public vectors (pyemv, moov-io, Visa DE55, PBOC IAD), limits, properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.emv.tlv import (
    MAX_DEPTH,
    MAX_OBJECTS,
    MAX_VALUE_LENGTH,
    TLV,
    TLVError,
    decode,
    decode_dict,
    decode_one,
    encode,
    encode_length,
    encode_one,
    find,
    find_all,
    normalize_tag,
)

H = bytes.fromhex

# vectors-public §4.2 — moov-io/iso8583 exp/emv/emv_test.go @ b7a9ed4f, head of the DE55 up to 9F53.
MOOV_DE55 = (
    "4f07a00000000410105f2a0208405f2d047275656e82021980950500000000009a032410029c01009f0206000000010000"
    "9f03060000000000009f0607a00000000410109f090200029f1a0208409f1e0834543734353038359f21030909329f3303"
    "0000e89f34030000009f3501229f360200539f370409bc21069f3901919f4104000000069f530100"
)
# vectors-public §4.3 — Chuckks/Iso8583Lib IsoFileTest.kt, Visa DE55 (CVN 10 IAD).
VISA_DE55 = (
    "5F2A02048482021C008407A0000000032010950580800080009A032401089C01009F02060000000900009F0306000000"
    "0000009F090200839F100706010A03A4A8109F1A0204849F1E0836523635333530349F26082E078F5CEA112DAA9F2701"
    "809F3303E0B0C89F34030103029F3501229F4104000000019F530100"
)
PBOC_IAD = "07010103900002040A010000008800180FE8DE"  # pboc-notes §2.4, SM sample


# --- pyemv tests/test_tlv.py vectors (vectors-public §1.1) -------------------------------------------


@pytest.mark.parametrize(
    ("hex_in", "expected"),
    [
        ("9C00", {"9C": b""}),
        ("9C8101FF", {"9C": b"\xff"}),
        ("9F820101FF", {"9F8201": b"\xff"}),
        ("9C8400000001FF", {"9C": b"\xff"}),
        ("9C0101E0055F2A0202089F0200", {"9C": b"\x01", "E0": {"5F2A": b"\x02\x08"}, "9F02": b""}),
    ],
)
def test_pyemv_vectors(hex_in, expected):
    assert decode_dict(H(hex_in)) == expected


def test_pyemv_error_tag_malformed_at_offset_0():
    with pytest.raises(TLVError, match=r"^Tag malformed.*tag '9F', offset 0$") as info:
        decode(H("9F"))
    assert (info.value.tag, info.value.offset) == ("9F", 0)


def test_pyemv_error_value_malformed_names_tag_and_offset():
    with pytest.raises(TLVError) as info:
        decode(H("9C01"))
    assert str(info.value) == "Tag value malformed, expecting 1 byte(s): tag '9C', offset 2"
    assert (info.value.tag, info.value.offset) == ("9C", 2)


def test_tlv_error_is_a_value_error():
    assert issubclass(TLVError, ValueError)


# --- real DE55 strings ------------------------------------------------------------------------------


def test_moov_de55_decodes_and_reencodes_identically():
    raw = H(MOOV_DE55)
    objects = decode(raw)
    tags = [o.tag for o in objects]
    assert tags == [
        "4F", "5F2A", "5F2D", "82", "95", "9A", "9C", "9F02", "9F03", "9F06", "9F09", "9F1A", "9F1E",
        "9F21", "9F33", "9F34", "9F35", "9F36", "9F37", "9F39", "9F41", "9F53",
    ]  # fmt: skip
    values = decode_dict(raw)
    assert values["4F"] == H("A0000000041010")
    assert values["5F2A"] == H("0840")
    assert values["5F2D"] == b"ruen"
    assert values["82"] == H("1980")
    assert values["9A"] == H("241002")
    assert values["9F02"] == H("000000010000")
    assert values["9F1E"] == b"4T745085"
    assert values["9F53"] == H("00")
    assert encode(objects) == raw


def test_visa_de55_decodes_and_reencodes_identically():
    raw = H(VISA_DE55)
    values = decode_dict(raw)
    assert values["9F10"] == H("06010A03A4A810")
    assert values["84"] == H("A0000000032010")
    assert values["9F26"] == H("2E078F5CEA112DAA")
    assert values["95"] == H("8080008000")
    assert list(values) == [
        "5F2A", "82", "84", "95", "9A", "9C", "9F02", "9F03", "9F09", "9F10", "9F1A", "9F1E", "9F26",
        "9F27", "9F33", "9F34", "9F35", "9F41", "9F53",
    ]  # fmt: skip
    assert encode(decode(raw)) == raw


def test_offsets_point_at_each_tag():
    objects = decode(H(VISA_DE55))
    assert [(o.tag, o.offset) for o in objects[:4]] == [("5F2A", 0), ("82", 5), ("84", 9), ("95", 18)]


# --- PBOC shapes: IAD, 3-byte tags, padding, templates -----------------------------------------------


def test_pboc_iad_object():
    obj = decode_one(H("9F1013" + PBOC_IAD))
    assert (obj.tag, obj.length, obj.value) == ("9F10", 19, H(PBOC_IAD))
    assert obj.children is None


def test_three_byte_tags():
    objects = decode(H("DF81160100DF8129080102030405060708"))
    assert [(o.tag, o.value.hex().upper()) for o in objects] == [
        ("DF8116", "00"),
        ("DF8129", "0102030405060708"),
    ]
    assert encode(objects) == H("DF81160100DF8129080102030405060708")


def test_tag_longer_than_three_bytes_rejected():
    with pytest.raises(TLVError, match=r"longer than 3 bytes: tag '9F8181', offset 0"):
        decode(H("9F81810100"))


def test_padding_between_and_around_objects_is_skipped():
    objects = decode(H("009C0100FFFF9F020100FF00"))
    assert [(o.tag, o.offset) for o in objects] == [("9C", 1), ("9F02", 6)]


def test_padding_inside_a_template_is_skipped_but_kept_in_the_raw_value():
    obj = decode_one(H("700600" + "5A0112" + "FF00"))
    assert [c.tag for c in obj.children] == ["5A"]
    assert obj.value == H("005A0112FF00")
    assert encode([obj]) == H("70035A0112")  # re-encoding drops the padding


def test_padding_refused_when_asked():
    with pytest.raises(TLVError, match=r"'00' is not a valid first tag byte: offset 0"):
        decode(H("009C0100"), padding=False)


def test_trailing_bytes_after_one_template_rejected_with_offset():
    with pytest.raises(TLVError) as info:
        decode_one(H("70035A0112FFFF"))
    assert str(info.value) == "Trailing bytes after tag '70': 2 byte(s) at offset 5"
    assert info.value.offset == 5


def test_decode_one_checks_the_template_tag():
    with pytest.raises(TLVError, match=r"Expected template '70', got tag '77', offset 0"):
        decode_one(H("77035A0112"), tag="70")
    assert decode_one(H("70035A0112"), tag="70").children == [TLV("5A", b"\x12")]


def test_trailing_partial_object_rejected_with_offset():
    with pytest.raises(TLVError, match=r"length missing: tag '05', offset 4$"):
        decode(H("9C010005"))
    with pytest.raises(TLVError, match=r"subsequent byte missing: tag '9F', offset 3$"):
        decode(H("9C01009F"))


def test_length_past_the_end_of_a_template_rejected():
    # 5A claims 5 bytes but the 70 template only holds 3 after it
    with pytest.raises(TLVError, match=r"expecting 5 byte\(s\): tag '5A', offset 4$"):
        decode(H("70055A0512345678"))


def test_nested_fci_70_77_bf0c():
    ppse = H(
        "6F32840E325041592E5359532E4444463031A520BF0C1D"
        "610D4F08A000000333010101870101"
        "610C4F07A0000003330101870102"
    )
    fci = decode_one(ppse, tag="6F")
    assert [c.tag for c in fci.children] == ["84", "A5"]
    assert find([fci], "84").value == b"2PAY.SYS.DDF01"
    apps = find_all([fci], "61")
    assert [find(app.children, "4F").value.hex().upper() for app in apps] == [
        "A000000333010101",
        "A0000003330101",
    ]
    assert [a.offset for a in apps] == [23, 38]
    assert encode([fci]) == ppse
    with pytest.raises(TLVError, match=r"Duplicate tag '61' at offset 38 \(first at offset 23\)"):
        decode_dict(ppse)

    gpo = decode_one(H("770E8202180094080801010010010301"), tag="77")
    assert decode_dict(encode([gpo])) == {"77": {"82": H("1800"), "94": H("0801010010010301")}}
    record = decode_one(H("70199F74064543433030315F24032512319F690701112233440000"), tag="70")
    assert [c.tag for c in record.children] == ["9F74", "5F24", "9F69"]
    assert find([record], "9F74").value == b"ECC001"


def test_decode_dict_flat_dissolves_templates():
    raw = H("6F0B8401AAA506BF0C039F4D00")
    assert decode_dict(raw) == {"6F": {"84": b"\xaa", "A5": {"BF0C": {"9F4D": b""}}}}
    assert decode_dict(raw, flat=True) == {"84": b"\xaa", "9F4D": b""}


# --- lengths -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header"),
    [(0, "00"), (0x7F, "7F"), (0x80, "8180"), (0xFF, "81FF"), (0x100, "820100"), (0xFFFF, "82FFFF")],
)
def test_encode_uses_the_shortest_length_form(length, header):
    assert encode_length(length) == H(header)
    encoded = encode_one("90", b"\x00" * length)
    assert encoded[: 1 + len(H(header))] == H("90" + header)
    assert decode_one(encoded).length == length


def test_non_minimal_lengths_decode_and_reencode_minimally():
    assert encode(decode(H("9C8101FF"))) == H("9C01FF")
    assert encode(decode(H("9C820001FF"))) == H("9C01FF")
    assert encode(decode(H("9C8400000001FF"))) == H("9C01FF")


@pytest.mark.parametrize(
    ("hex_in", "message"),
    [
        ("9C80", r"indefinite form '80' not allowed: tag '9C', offset 1$"),
        ("9C850000000001FF", r"'85' announces 5 length bytes, at most 4 allowed: tag '9C', offset 1$"),
        ("9C8201", r"expecting 2 byte\(s\): tag '9C', offset 2$"),
        ("9C8400010001", r"length 65537 exceeds the limit of 65536 bytes: tag '9C', offset 1$"),
        ("9C84FFFFFFFF", r"length 4294967295 exceeds the limit"),
    ],
)
def test_length_errors(hex_in, message):
    with pytest.raises(TLVError, match=message):
        decode(H(hex_in))


def test_largest_value_decodes():
    raw = H("DF0183010000") + b"\x5a" * MAX_VALUE_LENGTH
    assert decode_one(raw).length == MAX_VALUE_LENGTH
    assert encode(decode(raw)) == raw


# --- limits --------------------------------------------------------------------------------------------


def _nest(depth: int) -> bytes:
    data = encode_one("9C", b"\x00")
    for _ in range(depth - 1):
        data = encode_one("E0", data)
    return data


def test_nesting_limit():
    assert len(list(decode(_nest(MAX_DEPTH)))) == 1
    with pytest.raises(TLVError, match=rf"^Nesting deeper than {MAX_DEPTH} levels: tag '9C', offset \d+$"):
        decode(_nest(MAX_DEPTH + 1))


def test_object_count_limit():
    assert len(decode(H("9C00") * MAX_OBJECTS)) == MAX_OBJECTS
    with pytest.raises(
        TLVError, match=rf"^More than {MAX_OBJECTS} data objects: tag '9C', offset {2 * MAX_OBJECTS}$"
    ):
        decode(H("9C00") * (MAX_OBJECTS + 1))


def test_object_count_limit_counts_nested_objects():
    half = MAX_OBJECTS // 2
    inner = H("9C00") * half
    raw = H("E082") + len(inner).to_bytes(2, "big") + inner + H("9C00") * half
    with pytest.raises(TLVError, match="More than"):
        decode(raw)  # 1 template + 2 * half primitives


# --- the TLV object and the encoder ---------------------------------------------------------------------


def test_tlv_builds_value_from_children_and_children_from_value():
    built = TLV("77", children=[TLV("82", H("1800")), TLV("9F36", H("0001"))])
    assert built.value == H("820218009F36020001")
    parsed = TLV("77", H("820218009F36020001"))
    assert parsed == built
    assert parsed.constructed and not parsed.children[0].constructed


def test_tlv_rejects_inconsistent_objects():
    with pytest.raises(TLVError, match="Primitive tag '9C' cannot have children"):
        TLV("9C", children=[])
    with pytest.raises(TLVError, match="Value and children of tag '70' disagree"):
        TLV("70", H("5A0112"), children=[TLV("5A", b"\x13")])
    with pytest.raises(TLVError, match=r"Tag value malformed"):
        TLV("70", H("5A05"))
    with pytest.raises(TLVError, match="subsequent byte missing"):
        TLV("9F", b"")
    with pytest.raises(TypeError, match="must be bytes"):
        TLV("9C", "00")  # type: ignore[arg-type]


def test_tag_strings_are_upper_case_hex():
    assert TLV("9f02", b"").tag == "9F02"
    assert normalize_tag("bf0c") == "BF0C"
    for bad in ["", "9", "ZZ", "9F 02", "00", "FF01", "9F0201", "5F"]:
        with pytest.raises(TLVError):
            normalize_tag(bad)


def test_encode_one_checks_constructed_values_and_limits():
    assert encode_one("70", H("5A0112")) == H("70035A0112")
    with pytest.raises(TLVError, match=r"expecting 5 byte\(s\): tag '5A'"):
        encode_one("70", H("5A0512"))
    with pytest.raises(TLVError, match=r"^Tag value of 65537 bytes exceeds the limit of 65536: tag '90'$"):
        encode_one("90", b"\x00" * (MAX_VALUE_LENGTH + 1))


def test_find_searches_depth_first():
    objects = decode(H("9F360101" + "7007A5059F36020102"))
    assert find(objects, "9f36").value == b"\x01"
    assert [o.value for o in find_all(objects, "9F36")] == [b"\x01", b"\x01\x02"]
    assert find(objects, "A5").offset == 6
    assert find(objects, "5A") is None


def test_decode_takes_bytes_not_text():
    with pytest.raises(TypeError, match="not str"):
        decode("9C00")  # type: ignore[arg-type]
    assert decode(bytearray(H("9C00"))) == [TLV("9C", b"")]


# --- properties ----------------------------------------------------------------------------------------


@st.composite
def tags(draw, constructed: bool) -> str:
    cls = draw(st.sampled_from([0x00, 0x40, 0x80, 0xC0]))
    form = 0x20 if constructed else 0x00
    size = draw(st.integers(1, 3))
    if size == 1:
        number = draw(st.integers(1 if cls == 0 and not constructed else 0, 30))
        return f"{cls | form | number:02X}"
    first = cls | form | 0x1F
    if first == 0xFF:
        first = 0xDF if not constructed else 0x7F  # FF is padding, never a tag's first byte
    if size == 2:
        return f"{first:02X}{draw(st.integers(0, 0x7F)):02X}"
    return f"{first:02X}{draw(st.integers(0x80, 0xFF)):02X}{draw(st.integers(0, 0x7F)):02X}"


values = st.one_of(st.binary(max_size=8), st.binary(min_size=120, max_size=300))  # short and long lengths
primitives = st.builds(lambda tag, value: TLV(tag, value), tags(False), values)
trees = st.recursive(
    primitives,
    lambda kids: st.builds(lambda tag, cs: TLV(tag, children=cs), tags(True), st.lists(kids, max_size=4)),
    max_leaves=12,
)
forests = st.lists(trees, max_size=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forests)
def test_decode_encode_round_trip(objects):
    raw = encode(objects)
    assert decode(raw) == objects
    assert encode(decode(raw)) == raw  # raw is canonical (shortest lengths, no padding)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_tlv_error(raw):
    funcs = (
        decode,
        decode_dict,
        decode_one,
        lambda b: decode_dict(b, flat=True),
        lambda b: decode(b, padding=False),
    )
    for func in funcs:
        with contextlib.suppress(TLVError):
            func(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forests, st.data())
def test_damaged_encodings_raise_only_tlv_error(objects, data):
    raw = bytearray(encode(objects))
    if not raw:
        return
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        with contextlib.suppress(TLVError):
            decode(candidate)
