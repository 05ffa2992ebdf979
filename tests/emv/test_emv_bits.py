"""Named bit fields: TVR, TSI, AIP, CVR, TTQ, CTQ on real values (DE55 vectors, PBOC IAD, qPBOC TTQs)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citycard.emv.bits import AIP, CTQ, CVR, FIELDS, TSI, TTQ, TVR, BitField, pboc_cvr_from_iad

H = bytes.fromhex


# --- TTQ (pboc-notes §5.1) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttq", "names"),
    [
        ("28000000", ["qpboc_supported", "offline_only_reader"]),  # offline-only reader (test tools)
        ("28000080", ["qpboc_supported", "offline_only_reader", "fdda_version_01_supported"]),  # metro reader
        (
            "26800000",
            ["qpboc_supported", "online_pin_supported", "signature_supported", "online_cryptogram_required"],
        ),
        (
            "F4000000",
            [
                "magstripe_mode_supported",
                "contactless_pboc_supported",
                "qpboc_supported",
                "contact_pboc_supported",
                "online_pin_supported",
            ],
        ),
    ],
)
def test_ttq_values_from_pboc_notes(ttq, names):
    assert TTQ.decode(H(ttq)) == names
    assert TTQ.encode(names) == H(ttq)


def test_ttq_offline_only_is_byte1_b4_and_qpboc_is_b6():
    ttq = TTQ.new(H("28000000"))
    assert ttq.is_set("qpboc_supported") and ttq.get("qpboc_supported") == 1
    assert "offline_only_reader" in ttq
    assert not ttq.is_set("contact_pboc_supported")
    ttq.clear("offline_only_reader")
    ttq.set("online_cryptogram_required")
    assert bytes(ttq) == H("20800000")


# --- TVR, TSI, AIP --------------------------------------------------------------------------------


def test_tvr_from_the_visa_de55():
    assert TVR.decode(H("8080008000")) == [
        "offline_data_authentication_not_performed",
        "icc_and_terminal_different_versions",
        "transaction_exceeds_floor_limit",
    ]
    assert TVR.decode(H("0000000000")) == []


def test_tvr_every_named_bit_has_its_own_position():
    seen = set()
    for name in TVR.names:
        value = TVR.encode([name])
        assert value.count(0) == 4 and bin(int.from_bytes(value, "big")).count("1") == 1, name
        assert value not in seen
        seen.add(value)
        assert TVR.decode(value) == [name]
    assert len(seen) == 27


@pytest.mark.parametrize(
    ("name", "tvr"),
    [
        ("offline_data_authentication_not_performed", "8000000000"),
        ("sda_failed", "4000000000"),
        ("icc_data_missing", "2000000000"),
        ("card_on_exception_file", "1000000000"),
        ("dda_failed", "0800000000"),
        ("cda_failed", "0400000000"),
        ("icc_and_terminal_different_versions", "0080000000"),
        ("expired_application", "0040000000"),
        ("application_not_yet_effective", "0020000000"),
        ("requested_service_not_allowed", "0010000000"),
        ("new_card", "0008000000"),
        ("cardholder_verification_not_successful", "0000800000"),
        ("unrecognised_cvm", "0000400000"),
        ("pin_try_limit_exceeded", "0000200000"),
        ("pin_entry_required_and_pin_pad_not_present", "0000100000"),
        ("pin_entry_required_pin_pad_present_but_pin_not_entered", "0000080000"),
        ("online_pin_entered", "0000040000"),
        ("transaction_exceeds_floor_limit", "0000008000"),
        ("lower_consecutive_offline_limit_exceeded", "0000004000"),
        ("upper_consecutive_offline_limit_exceeded", "0000002000"),
        ("transaction_selected_randomly_for_online_processing", "0000001000"),
        ("merchant_forced_transaction_online", "0000000800"),
        ("default_tdol_used", "0000000080"),
        ("issuer_authentication_failed", "0000000040"),
        ("script_processing_failed_before_final_generate_ac", "0000000020"),
        ("script_processing_failed_after_final_generate_ac", "0000000010"),
    ],
)
def test_tvr_bit_positions_book3_annex_c5(name, tvr):
    assert TVR.encode([name]) == H(tvr)


def test_kernel_style_tvr_building():
    tvr = TVR.new()
    tvr.set("expired_application")
    tvr.set("offline_data_authentication_not_performed")
    tvr.set("expired_application")  # idempotent
    assert bytes(tvr) == H("8040000000")
    assert tvr.names() == ["offline_data_authentication_not_performed", "expired_application"]
    assert (
        repr(tvr) == "TVR(8040000000: ['offline_data_authentication_not_performed', 'expired_application'])"
    )
    tvr.clear("expired_application")
    assert tvr.hex() == "8000000000"
    assert tvr == TVR.new(H("8000000000"))
    assert tvr != TSI.new()


def test_tsi_and_aip():
    assert TSI.decode(H("E800")) == [
        "offline_data_authentication_performed",
        "cardholder_verification_performed",
        "card_risk_management_performed",
        "terminal_risk_management_performed",
    ]
    assert AIP.decode(H("1C00")) == [  # Visa DE55
        "cardholder_verification_supported",
        "terminal_risk_management_to_be_performed",
        "issuer_authentication_supported",
    ]
    assert AIP.decode(H("1980")) == [  # moov-io (Mastercard) DE55: byte 2 b8 is RFU in contact EMV
        "cardholder_verification_supported",
        "terminal_risk_management_to_be_performed",
        "cda_supported",
        "rfu_byte2_bit8",
    ]
    assert AIP.encode(AIP.decode(H("1980"))) == H("1980")


# --- CVR (VIS 1.5 / PBOC) ---------------------------------------------------------------------------


def test_cvr_from_the_pboc_iad_sample():
    cvr = pboc_cvr_from_iad(H("07010103900002040A010000008800180FE8DE"))
    assert cvr == H("900002")
    assert CVR.decode(cvr) == ["second_gac_not_requested", "first_gac_returned_tc", "dda_performed"]


def test_cvr_from_the_visa_cvn10_iad():
    cvr = pboc_cvr_from_iad(H("06010A03A4A810"))
    assert CVR.decode(cvr) == [
        "second_gac_not_requested",
        "first_gac_returned_arqc",
        "offline_pin_verification_performed",
        "last_online_transaction_not_completed",
        "exceeded_velocity_checking_counters",
        "issuer_authentication_failure_on_last_online_transaction",
        "issuer_script_commands_processed=1",
    ]
    assert CVR.fields(cvr)["issuer_script_commands_processed"] == 1
    assert CVR.fields(cvr)["first_gac_ac_type"] == "first_gac_returned_arqc"
    assert CVR.fields(cvr)["unable_to_go_online"] is False


def test_cvr_multi_bit_fields():
    cvr = CVR.new()
    assert CVR.decode(bytes(cvr)) == ["second_gac_returned_aac", "first_gac_returned_aac"]
    cvr.set("first_gac_returned_arqc")
    cvr.set("second_gac_returned_tc")
    cvr.put("issuer_script_commands_processed", 15)
    cvr.set("issuer_script_processing_failed")
    assert bytes(cvr) == H("6000F8")
    assert cvr.is_set("first_gac_returned_arqc") and not cvr.is_set("first_gac_returned_tc")
    assert cvr.get("second_gac_ac_type") == 1
    cvr.set("first_gac_returned_tc")  # selecting another option replaces the code
    assert bytes(cvr) == H("5000F8")
    assert CVR.encode(CVR.decode(bytes(cvr))) == H("5000F8")
    assert CVR.encode(["issuer_script_commands_processed=3", "dda_performed"]) == H("000032")


def test_cvr_errors():
    cvr = CVR.new()
    with pytest.raises(ValueError, match=r"issuer_script_commands_processed must be 0..15, got 16"):
        cvr.put("issuer_script_commands_processed", 16)
    with pytest.raises(ValueError, match="holds a number; use put"):
        cvr.set("issuer_script_commands_processed")
    with pytest.raises(ValueError, match="is not a single bit"):
        cvr.clear("first_gac_returned_tc")
    with pytest.raises(ValueError, match="is an option; use set"):
        cvr.put("first_gac_returned_tc", 1)
    with pytest.raises(ValueError, match="'first_gac_returned_tc' and 'first_gac_returned_arqc' are both"):
        CVR.encode(["first_gac_returned_tc", "first_gac_returned_arqc"])
    with pytest.raises(ValueError, match=r"issuer_script_commands_processed='x' is not an integer"):
        CVR.encode(["issuer_script_commands_processed=x"])
    with pytest.raises(ValueError, match=r"IAD \(9F10\) byte 4 \(CVR length\) must be 03, got 04"):
        pboc_cvr_from_iad(H("06010A04A4A81000"))
    with pytest.raises(ValueError, match=r"at least 7 bytes"):
        pboc_cvr_from_iad(H("06010A03A4"))


# --- CTQ --------------------------------------------------------------------------------------------


def test_ctq():
    assert CTQ.decode(H("3040")) == [
        "go_online_if_oda_fails",
        "switch_interface_if_oda_fails",
        "issuer_update_processing_supported",
    ]
    assert CTQ.encode(["online_pin_required", "signature_required"]) == H("C000")


# --- lengths, names, properties ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "data", "message"),
    [
        (TVR, "00000000", r"^TVR \(95\) must be 5 bytes, got 4$"),
        (TSI, "000000", r"^TSI \(9B\) must be 2 bytes, got 3$"),
        (TTQ, "280000", r"^TTQ \(9F66\) must be 4 bytes, got 3$"),
        (CTQ, "", r"^CTQ \(9F6C\) must be 2 bytes, got 0$"),
        (CVR, "03900002", r"^CVR must be 3 bytes, got 4$"),
        (AIP, "19", r"^AIP \(82\) must be 2 bytes, got 1$"),
    ],
)
def test_exact_length(field, data, message):
    with pytest.raises(ValueError, match=message):
        field.decode(H(data))
    with pytest.raises(ValueError, match=message):
        field.new(H(data))


def test_unknown_names_are_refused_with_a_hint():
    with pytest.raises(
        ValueError, match=r"unknown TVR bit 'expired_app'; did you mean 'expired_application'\?"
    ):
        TVR.new().set("expired_app")
    with pytest.raises(ValueError, match=r"^unknown TTQ bit 'qpboc'"):
        TTQ.encode(["qpboc"])
    with pytest.raises(ValueError, match=r"unknown TSI bit 'xyz'$"):
        TSI.new().is_set("xyz")
    with pytest.raises(TypeError, match="takes a list of names"):
        TVR.encode("expired_application")


def test_fields_registry():
    assert set(FIELDS) == {"TVR", "TSI", "AIP", "CVR", "TTQ", "CTQ"}
    assert [(f.tag, f.length) for f in FIELDS.values()] == [
        ("95", 5),
        ("9B", 2),
        ("82", 2),
        (None, 3),
        ("9F66", 4),
        ("9F6C", 2),
    ]


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="overlapping"):
        BitField("X", None, 1, [(1, 0x80, "a"), (1, 0x80, "b")], "test")
    with pytest.raises(ValueError, match="used twice"):
        BitField("X", None, 1, [(1, 0x80, "a"), (1, 0x40, "a")], "test")
    with pytest.raises(ValueError, match="needs 4 option names"):
        BitField("X", None, 1, [(1, 0xC0, "f", ("x", "y"))], "test")
    with pytest.raises(ValueError, match="bad or overlapping row"):
        BitField("X", None, 1, [(2, 0x80, "a")], "test")


@pytest.mark.parametrize("field", list(FIELDS.values()), ids=list(FIELDS))
@given(data=st.data())
def test_decode_encode_round_trip_for_every_value(field, data):
    raw = data.draw(st.binary(min_size=field.length, max_size=field.length))
    assert field.encode(field.decode(raw)) == raw
    assert bytes(field.new(raw)) == raw
