"""DOL parse/build/split by EMV 4.3 Book 3 §5.4, on the PBOC CDOL1 and the qPBOC PDOL from pboc-notes."""

from __future__ import annotations

import pytest

from citycard.emv.dol import MAX_DOL_LENGTH, DOLError, build_dol, dol_length, fit, parse_dol, split_dol_data

H = bytes.fromhex

PBOC_CDOL1 = H("9F02069F03069F1A0295055F2A029A039C019F37049F21039F4E14")
QPBOC_PDOL = H("9F66049F02069F03069F1A0295055F2A029A039C019F3704DF6001")  # pboc-notes §5.2


def test_parse_pboc_cdol1():
    assert parse_dol(PBOC_CDOL1) == [
        ("9F02", 6),
        ("9F03", 6),
        ("9F1A", 2),
        ("95", 5),
        ("5F2A", 2),
        ("9A", 3),
        ("9C", 1),
        ("9F37", 4),
        ("9F21", 3),
        ("9F4E", 20),
    ]
    assert dol_length(PBOC_CDOL1) == 52


def test_build_pboc_cdol1_with_missing_long_and_short_values():
    values = {
        "9F02": H("000000000150"),  # exact: 1.50 yuan
        # 9F03 missing -> six 00 bytes
        "9F1A": H("000156"),  # n, too long -> cut on the left
        "95": H("0000008000FF"),  # b, too long -> cut on the right
        "5F2A": H("0156"),
        "9A": H("0611"),  # n, too short -> 00 on the left
        "9c": H("00"),  # lower-case key accepted
        "9F37": H("CAFE"),  # b, too short -> 00 on the right
        "9F21": H("235959"),
        "9F4E": b"CITY BUS 12",  # ans, too short -> 00 on the right
    }
    data = build_dol(PBOC_CDOL1, values)
    assert data.hex().upper() == "".join(
        [
            "000000000150",
            "000000000000",
            "0156",
            "0000008000",
            "0156",
            "000611",
            "00",
            "CAFE0000",
            "235959",
            "4349545920425553203132" + "00" * 9,
        ]
    )
    assert len(data) == dol_length(PBOC_CDOL1)

    back = split_dol_data(PBOC_CDOL1, data)
    assert list(back) == [tag for tag, _ in parse_dol(PBOC_CDOL1)]
    assert back["9F02"] == H("000000000150")
    assert back["9F03"] == bytes(6)
    assert back["9F1A"] == H("0156")
    assert back["95"] == H("0000008000")
    assert back["9A"] == H("000611")
    assert back["9F37"] == H("CAFE0000")
    assert back["9F4E"] == b"CITY BUS 12" + bytes(9)


def test_build_qpboc_pdol_gives_the_gpo_data_of_the_metro_reader():
    values = {
        "9F66": H("28000080"),
        "9F02": H("000000000200"),
        "9F03": H("000000000000"),
        "9F1A": H("0156"),
        "95": H("0000000000"),
        "5F2A": H("0156"),
        "9A": H("250101"),
        "9C": H("00"),
        "9F37": H("12345678"),
        "DF60": H("00"),
    }
    data = build_dol(QPBOC_PDOL, values)
    assert len(data) == 0x22  # GPO command data 83 22 ... (pboc-notes §5.2: 80A80000248322 28000080 ...)
    assert data[:4] == H("28000080")
    assert split_dol_data(QPBOC_PDOL, data) == values


def test_numeric_over_length_keeps_the_low_order_digits():
    assert build_dol([("9F02", 6)], {"9F02": H("99000000012345")}) == H("000000012345")
    assert build_dol([("9F02", 6)], {"9F02": H("012345")}) == H("000000012345")


def test_non_numeric_over_and_under_length():
    assert build_dol([("9F37", 2)], {"9F37": H("11223344")}) == H("1122")
    assert build_dol([("9F4E", 4)], {"9F4E": b"AB"}) == b"AB\x00\x00"


def test_compressed_numeric_is_padded_with_ff():
    # Book 3 §5.4: format cn is padded on the right with 'F' nibbles
    assert build_dol([("5A", 10)], {"5A": H("6228480012345678")}) == H("6228480012345678FFFF")


def test_constructed_and_unknown_tags():
    assert build_dol([("70", 3), ("BF0C", 1)], {"70": H("5A0112")}) == bytes(4)
    assert build_dol([("DF7F", 3)], {"DF7F": H("AB")}) == H("AB0000")  # unknown → format b
    assert build_dol([("DF7F", 3)], {}) == bytes(3)


def test_format_comes_from_the_scheme():
    # DF62 is n6 in PBOC (segmented-charging deduction limit) and unknown (so binary) in EMV
    assert build_dol([("DF62", 6)], {"DF62": H("0100")}, scheme="pboc") == H("000000000100")
    assert build_dol([("DF62", 6)], {"DF62": H("0100")}, scheme="emv") == H("010000000000")
    with pytest.raises(ValueError, match="unknown tag scheme 'amex'"):
        build_dol([("DF62", 6)], {"DF62": H("0100")}, scheme="amex")


def test_zero_length_entry():
    assert build_dol(H("9F0200"), {"9F02": H("000000000100")}) == b""
    assert split_dol_data(H("9F0200"), b"") == {"9F02": b""}


@pytest.mark.parametrize(
    ("fmt", "value", "length", "expected"),
    [
        ("n", "123456", 3, "123456"),
        ("n", "123456", 2, "3456"),
        ("n", "1234", 3, "001234"),
        ("b", "123456", 2, "1234"),
        ("b", "12", 3, "120000"),
        ("cn", "12", 3, "12FFFF"),
        ("cn", "123456", 2, "1234"),
        ("an", "4142", 3, "414200"),
        ("var", "", 2, "0000"),
    ],
)
def test_fit(fmt, value, length, expected):
    assert fit(H(value), length, fmt) == H(expected)


def test_parse_errors_name_tag_and_offset():
    with pytest.raises(DOLError, match=r"length byte missing: tag 'DF60', offset 5$"):
        parse_dol(H("9F6604DF60"))
    with pytest.raises(DOLError, match=r"subsequent byte missing: tag '9F', offset 2$"):
        parse_dol(H("9C019F"))
    with pytest.raises(DOLError, match=r"'00' is not a valid first tag byte: offset 0"):
        parse_dol(H("009C01"))
    with pytest.raises(
        DOLError, match=rf"DOL of {MAX_DOL_LENGTH + 2} bytes exceeds the limit of {MAX_DOL_LENGTH}"
    ):
        parse_dol(H("9C01") * (MAX_DOL_LENGTH // 2 + 1))
    assert issubclass(DOLError, ValueError)


def test_entry_list_errors():
    with pytest.raises(DOLError, match=r"DOL entry length must be 0\.\.255, got 256 for tag '9F02'"):
        build_dol([("9F02", 256)], {})
    with pytest.raises(DOLError, match="DOL entry malformed"):
        build_dol([("9F", 1)], {})
    with pytest.raises(TypeError, match="value of tag '9F02' must be bytes"):
        build_dol([("9F02", 6)], {"9F02": "000000000100"})  # type: ignore[dict-item]


def test_split_requires_the_exact_length():
    with pytest.raises(DOLError, match=r"^DOL data must be 52 bytes for this DOL, got 51$"):
        split_dol_data(PBOC_CDOL1, bytes(51))
    with pytest.raises(DOLError, match="got 53"):
        split_dol_data(PBOC_CDOL1, bytes(53))


def test_split_rejects_a_tag_listed_twice():
    with pytest.raises(DOLError, match="DOL lists tag '9C' twice"):
        split_dol_data(H("9C019C01"), H("0000"))
