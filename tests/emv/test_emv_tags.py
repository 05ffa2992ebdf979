"""Tag dictionary: scheme-keyed meanings, fallback, unknown tags, and the JSON tables' integrity."""

from __future__ import annotations

import pytest

from citycard.emv import tags as tags_module
from citycard.emv.tags import FORMATS, SCHEMES, SOURCES, check_scheme, tag_info, tag_name, tag_table
from citycard.emv.tlv import TLVError, is_constructed

# fmt: off
# The tags the contact and qPBOC flows use (issue list; EMV 4.3 Book 3 Annex A).
EMV_FLOW_TAGS = [
    "4F", "50", "57", "5A", "5F20", "5F24", "5F25", "5F28", "5F2A", "5F2D", "5F30", "5F34", "61", "6F",
    "70", "71", "72", "77", "80", "82", "84", "86", "87", "88", "8A", "8C", "8D", "8E", "8F", "90",
    "91", "92", "93", "94", "95", "9A", "9B", "9C", "9D", "A5", "BF0C", "9F5D", "9F66", "9F6C", "9F69",
    "9F63", "9F01", "9F02", "9F03", "9F04", "9F05", "9F06", "9F07", "9F08", "9F09", "9F0B", "9F0D",
    "9F0E", "9F0F", "9F10", "9F11", "9F12", "9F13", "9F14", "9F15", "9F16", "9F17", "9F18", "9F1A",
    "9F1B", "9F1C", "9F1D", "9F1E", "9F1F", "9F20", "9F21", "9F22", "9F23", "9F26", "9F27", "9F2D",
    "9F2E", "9F2F", "9F32", "9F33", "9F34", "9F35", "9F36", "9F37", "9F38", "9F39", "9F3A", "9F3B",
    "9F3C", "9F3D", "9F40", "9F41", "9F42", "9F43", "9F44", "9F45", "9F46", "9F47", "9F48", "9F49",
    "9F4A", "9F4B", "9F4C", "9F4D", "9F4E", "9F4F",
]

# PBOC-defined tags (pboc-notes §2.1).
PBOC_TAGS = [
    "9F77", "9F78", "9F79", "9F5D", "9F6D", "9F74", "9F7A", "9F7B", "9F69", "9F6C", "9F66", "DF4D",
    "DF4F", "DF60", "DF61", "DF62", "DF63", "DF69", "DF71", "DF79", "DF77", "DF78", "DF76", "DF72",
    "9F61", "9F62", "9F51", "9F52", "9F53", "9F54", "9F55", "9F56", "9F57", "9F58", "9F59", "9F68",
    "9F6B", "9F63", "DF31",
]
# fmt: on


@pytest.mark.parametrize("tag", EMV_FLOW_TAGS)
def test_every_flow_tag_has_an_emv_entry(tag):
    info = tag_info(tag, scheme="emv")
    assert info.scheme == "emv"
    assert info.name != "Unknown"


@pytest.mark.parametrize("tag", PBOC_TAGS)
def test_every_pboc_tag_has_a_pboc_entry(tag):
    info = tag_info(tag, scheme="pboc")
    assert info.scheme == "pboc"
    assert info.name != "Unknown"


@pytest.mark.parametrize(
    ("tag", "pboc_name", "emv_name"),
    [
        ("9F77", "Electronic Cash Balance Limit", "VLP Funds Limit"),
        ("9F78", "Electronic Cash Single Transaction Limit", "VLP Single Transaction Limit"),
        ("9F79", "Electronic Cash Balance", "VLP Available Funds"),
        ("9F63", "Product Identification Information", "PUNATC (Track1)"),
        ("9F53", "Consecutive Transaction Limit (International - Currency)", "Transaction Category Code"),
    ],
)
def test_pboc_meanings_differ_from_visa_and_mastercard(tag, pboc_name, emv_name):
    assert tag_name(tag) == pboc_name  # pboc is the default scheme
    assert tag_name(tag, "emv") == emv_name


def test_pboc_falls_back_to_emv():
    info = tag_info("9F02", scheme="pboc")
    assert info.scheme == "emv"
    assert (info.name, info.format, info.length_min, info.length_max, info.source) == (
        "Amount, Authorised (Numeric)",
        "n",
        6,
        6,
        "terminal",
    )


def test_pboc_only_tags_are_unknown_in_emv():
    assert tag_info("DF69", scheme="pboc").name == "SM Algorithm Support Indicator"
    assert tag_info("DF69", scheme="emv").name == "Unknown"


def test_entry_fields():
    ec = tag_info("9F79")
    assert (ec.format, ec.length_min, ec.length_max, ec.source, ec.name_zh) == (
        "n",
        6,
        6,
        "card",
        "电子现金余额",
    )
    aid = tag_info("4F")
    assert (aid.format, aid.length_min, aid.length_max, aid.template) == ("b", 5, 16, ("61",))
    assert tag_info("5A").format == "cn"
    assert tag_info("9F4E").format == "ans"
    assert tag_info("9F74").template == ("70",)
    assert tag_info("8A").source == "issuer"
    assert tag_info("BF0C").constructed and not tag_info("9F02").constructed


def test_unknown_tag_is_named_not_raised():
    for scheme in SCHEMES:
        info = tag_info("9F7F", scheme=scheme)
        assert (info.tag, info.name, info.format, info.source, info.known) == (
            "9F7F",
            "Unknown",
            "b",
            "unknown",
            False,
        )


def test_lookup_accepts_lower_case():
    assert tag_info("9f79").tag == "9F79"
    assert tag_info("bf0c", scheme="emv").name == "File Control Information (FCI) Issuer Discretionary Data"


def test_bad_scheme_is_a_precise_value_error():
    with pytest.raises(ValueError, match=r"^unknown tag scheme 'visa': expected one of 'pboc', 'emv'$"):
        tag_info("9F79", scheme="visa")
    with pytest.raises(ValueError, match="unknown tag scheme 'PBOC'"):
        check_scheme("PBOC")
    with pytest.raises(ValueError, match="unknown tag scheme"):
        tag_table("cup")


def test_malformed_tag_string_raises():
    with pytest.raises(TLVError):
        tag_info("9F")
    with pytest.raises(TLVError):
        tag_info("xyz")


def test_tag_table_merges_with_pboc_winning():
    emv = tag_table("emv")
    pboc = tag_table("pboc")
    assert set(emv) <= set(pboc)
    assert pboc["9F79"].scheme == "pboc" and emv["9F79"].scheme == "emv"
    assert pboc["9F02"] == emv["9F02"]
    pboc.clear()  # a copy: the dictionary itself is unchanged
    assert tag_info("9F79").scheme == "pboc"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tables_are_consistent(scheme):
    for tag, info in tags_module._table(scheme).items():
        assert info.tag == tag and tag == tag.upper()
        assert info.format in FORMATS
        assert info.source in SOURCES
        assert 0 <= info.length_min <= info.length_max
        if info.format == "n" and info.length_min == info.length_max:
            assert info.length_min <= 8, tag
        # templates hold the tag; constructed tags have format var
        if is_constructed(tag):
            assert info.format == "var", tag


def test_a_broken_table_entry_fails_loudly():
    with pytest.raises(ValueError, match=r"tags_x.json: tag 9F02: format 'z' not in"):
        tags_module._entry(
            "tags_x.json", "emv", "9F02", {"name": "x", "format": "z", "length": 6, "source": "card"}
        )
    with pytest.raises(ValueError, match=r"length \[6, 2\] is not n or \[min, max\]"):
        tags_module._entry(
            "tags_x.json", "emv", "9F02", {"name": "x", "format": "n", "length": [6, 2], "source": "card"}
        )
    with pytest.raises(ValueError, match="unknown keys"):
        tags_module._entry(
            "tags_x.json",
            "emv",
            "9F02",
            {"name": "x", "format": "n", "length": 6, "source": "card", "fmt": "n"},
        )
    with pytest.raises(ValueError, match="upper-case"):
        tags_module._entry(
            "tags_x.json", "emv", "9f02", {"name": "x", "format": "n", "length": 6, "source": "card"}
        )
