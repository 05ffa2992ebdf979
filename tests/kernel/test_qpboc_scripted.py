"""Negative qPBOC cases with scripted cards: a real virtual-card exchange, recorded, one answer
corrupted, replayed (STYLE.md "scripted-card test"). Each asserts the outcome and the TVR/TSI bits."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.crypto import oda as crypto_oda
from citycard.emv.bits import TSI, TVR
from citycard.emv.tlv import TLV, decode_dict
from citycard.kernel.context import TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.qpboc import run_qpboc
from citycard.reader import InProcessTransport

from .conftest import GPO, READ_RECORD, UN, Recorder, ScriptedCard, make_terminal, rewrite_template

WHEN = dt.datetime.now(dt.UTC).replace(microsecond=0)
POS = TerminalProfile()  # online-capable, contact interface (the AID row's TTQ 36000080)
BUS = TerminalProfile.bus_validator()  # offline only, no contact


def tap(card, terminal, amount_fen=150):
    with InProcessTransport(card) as transport:
        return run_qpboc(transport, terminal, amount_fen=amount_fen, unpredictable_number=UN, when=WHEN)


@pytest.fixture
def script(new_card, capks):
    """``script("GM")``: a ScriptedCard holding an approved purchase recorded from a fresh card."""

    def make(suite: str, profile: TerminalProfile = POS) -> ScriptedCard:
        recorder = Recorder(new_card(suite))
        result = tap(recorder, make_terminal(capks, profile=profile))
        assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
        return ScriptedCard(recorder.pairs)

    return make


def record_index(card: ScriptedCard, sfi: int, record: int) -> int:
    return card.answer(f"00B2{record:02X}{(sfi << 3) | 4:02X}")


def change_record(card: ScriptedCard, sfi: int, record: int, change) -> None:
    index = record_index(card, sfi, record)
    command, response = card.script[index]
    card.script[index] = (command, rewrite_template(response, change))


def change_gpo(card: ScriptedCard, change) -> None:
    index = card.answer(GPO)
    command, response = card.script[index]
    card.script[index] = (command, rewrite_template(response, change))


def replace_value(tag: str, value: bytes):
    return lambda children: [TLV(tag, value) if c.tag == tag else c for c in children]


def test_replay_of_the_recording_is_approved(script, capks):
    card = script("GM")
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.APPROVED_OFFLINE
    assert card.position == len(card.script)


def test_gpo_6985_tries_another_interface(script, capks):
    card = script("GM")
    card.replace(GPO, bytes.fromhex("6985"))
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.TRY_ANOTHER_INTERFACE
    assert "6985" in result.reasons[-1]
    assert TVR.decode(result.tvr) == [] and TSI.decode(result.tsi) == []


def test_gpo_other_error_ends_the_application(script, capks):
    card = script("INTL")
    card.replace(GPO, bytes.fromhex("6A80"))
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION and "6A80" in result.reasons[-1]


@pytest.mark.parametrize("afl", ["080101", "", "0C010100", "08020100", "08000000", "08010102"])
def test_malformed_afl_ends_the_application(script, capks, afl):
    card = script("GM")
    change_gpo(card, replace_value("94", bytes.fromhex(afl)))
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION
    assert "AFL" in result.reasons[-1]
    assert TVR.decode(result.tvr) in ([], ["icc_data_missing"])  # an empty 94 is missing data
    assert not TSI.new(result.tsi).is_set("offline_data_authentication_performed")


def test_trailing_bytes_after_a_record_template_end_the_application(script, capks):
    card = script("GM")
    index = record_index(card, 2, 1)
    command, response = card.script[index]
    card.script[index] = (command, response[:-2] + bytes.fromhex("5F340101") + response[-2:])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION
    assert "Trailing bytes" in result.reasons[-1]
    assert not TSI.new(result.tsi).is_set("offline_data_authentication_performed")


def test_trailing_bytes_after_the_gpo_template_end_the_application(script, capks):
    card = script("INTL")
    index = card.answer(GPO)
    command, response = card.script[index]
    card.script[index] = (command, response[:-2] + b"\x90\x00" + response[-2:])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION and "Trailing bytes" in result.reasons[-1]


def test_wrong_record_template_ends_the_application(script, capks):
    card = script("GM")
    index = record_index(card, 3, 1)
    command, response = card.script[index]
    card.script[index] = (command, b"\x77" + response[1:])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION
    assert "expected template 70, got 77" in result.reasons[-1]


def test_wrong_gpo_template_ends_the_application(script, capks):
    card = script("GM")
    index = card.answer(GPO)
    command, response = card.script[index]
    card.script[index] = (command, b"\x70" + response[1:])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION
    assert "expected template 77 or 80, got 70" in result.reasons[-1]


def test_missing_expiry_date_ends_the_application(script, capks):
    card = script("INTL")
    change_record(card, 2, 1, lambda children: [c for c in children if c.tag != "5F24"])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION
    assert "5F24" in result.reasons[-1]
    assert TVR.decode(result.tvr) == ["icc_data_missing"]


def test_missing_atc_in_the_gpo_answer_ends_the_application(script, capks):
    card = script("GM")
    change_gpo(card, lambda children: [c for c in children if c.tag != "9F36"])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION and "9F36" in result.reasons[-1]
    assert TVR.new(result.tvr).is_set("icc_data_missing")


def test_missing_icc_certificate_fails_fdda_with_icc_data_missing(script, capks):
    card = script("GM", BUS)
    change_record(card, 3, 2, lambda children: [c for c in children if c.tag != "9F46"])
    result = tap(card, make_terminal(capks, profile=BUS))
    assert result.kind is Outcome.DECLINED
    assert set(TVR.decode(result.tvr)) == {"icc_data_missing", "dda_failed"}


def test_duplicate_data_across_records_ends_the_application(script, capks):
    card = script("GM")
    change_record(card, 3, 1, lambda children: [*children, TLV("5F24", bytes.fromhex("301231"))])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION
    assert "duplicate data: 5F24 in SFI 3 record 1 was already in SFI 2 record 1" in result.reasons[-1]


def test_duplicate_data_inside_one_record_ends_the_application(script, capks):
    card = script("INTL")
    change_record(card, 1, 1, lambda children: [*children, children[0]])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION and "duplicate data: 57" in result.reasons[-1]


def test_a_record_repeating_a_gpo_value_with_another_value_ends_the_application(script, capks):
    card = script("GM")
    change_record(card, 2, 1, replace_value("5F34", b"\x07"))  # GPO said 01
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.END_APPLICATION and "duplicate data: 5F34" in result.reasons[-1]


def test_cid_left_out_is_read_from_the_cvr(script, capks):
    card = script("GM")
    change_gpo(card, lambda children: [c for c in children if c.tag != "9F27"])
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.APPROVED_OFFLINE
    assert result.cid == 0x40 and decode_dict(result.field55)["9F27"] == b"\x40"


# --- fDDA failures: the CTQ decides --------------------------------------------------------------


def corrupt_signature(children):
    out = []
    for child in children:
        if child.tag == "9F4B":
            value = bytearray(child.value)
            value[-5] ^= 0x01
            child = TLV("9F4B", bytes(value))
        out.append(child)
    return out


@pytest.mark.parametrize(
    ("suite", "ctq", "profile", "outcome"),
    [
        ("GM", "1000", POS, Outcome.TRY_ANOTHER_INTERFACE),  # switch interface; the POS has contact
        ("GM", "1000", BUS, Outcome.DECLINED),  # switch interface, but the bus reader has no contact
        ("INTL", "3000", POS, Outcome.ONLINE_REQUEST),  # go online first
        ("INTL", "2000", BUS, Outcome.DECLINED),  # go online, but the reader is offline-only
        ("INTL", "0000", POS, Outcome.DECLINED),
    ],
)
def test_corrupt_fdda_signature_outcome_follows_the_ctq(script, capks, suite, ctq, profile, outcome):
    card = script(suite, profile)
    change_gpo(card, lambda children: replace_value("9F6C", bytes.fromhex(ctq))(corrupt_signature(children)))
    result = tap(card, make_terminal(capks, profile=profile))
    assert result.kind is outcome, result.reasons
    assert TVR.decode(result.tvr) == ["dda_failed"]
    assert TSI.new(result.tsi).is_set("offline_data_authentication_performed")
    assert any("FDDA failed" in reason for reason in result.reasons)
    assert result.batch_record is None


def test_changed_signed_record_fails_fdda(script, capks):
    card = script("INTL", BUS)
    change_record(card, 2, 2, replace_value("9F08", bytes.fromhex("0020")))
    result = tap(card, make_terminal(capks, profile=BUS))
    assert result.kind is Outcome.DECLINED
    assert TVR.decode(result.tvr) == ["dda_failed"]
    assert "ICC public key certificate" in result.reasons[0]


def issuer_serial(capks, card: ScriptedCard, suite: str, issued) -> tuple[bytes, int, bytes]:
    tags = {}
    for command, response in card.script:
        if command.startswith(bytes.fromhex(READ_RECORD)) and response[-2:] == b"\x90\x00":
            tags.update(decode_dict(response[:-2], flat=True))
    rid, index = issued.prepared.aid[:5], tags["8F"][0]
    capk = capks.lookup(rid, index, today=WHEN.date())
    recovered = crypto_oda.recover_issuer_public_key(
        capk, tags["90"], tags.get("92", b""), tags.get("9F32", b"")
    )
    return rid, index, recovered.fields["serial"]


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_revoked_issuer_certificate_fails_fdda(script, capks, issued_cards, suite):
    card = script(suite, BUS)
    revoked = capks.with_revoked([issuer_serial(capks, card, suite, issued_cards(suite))])
    result = tap(card, make_terminal(revoked, profile=BUS))
    assert result.kind is Outcome.DECLINED
    assert TVR.decode(result.tvr) == ["dda_failed"]
    assert "on the revocation list" in result.reasons[0]


def test_expired_ca_key_fails_fdda(script, capks, issued_cards):
    from citycard.crypto.capk import Capk
    from citycard.kernel.params import CapkTable

    card = script("GM", BUS)
    rid = issued_cards("GM").prepared.aid[:5]
    current = next(c for c in capks if c.rid == rid and c.index == 0xE1)
    expired = Capk(
        rid=rid, index=0xE1, suite=current.suite, key=current.key, expiry=WHEN.date() - dt.timedelta(days=1)
    )
    table = CapkTable([c for c in capks if (c.rid, c.index) != (rid, 0xE1)] + [expired])
    result = tap(card, make_terminal(table, profile=BUS))
    assert result.kind is Outcome.DECLINED and TVR.decode(result.tvr) == ["dda_failed"]
    assert "expired" in result.reasons[0]


def test_unknown_ca_key_fails_fdda(script, capks):
    card = script("INTL", BUS)
    change_record(card, 3, 2, replace_value("8F", b"\x7e"))
    result = tap(card, make_terminal(capks, profile=BUS))
    assert result.kind is Outcome.DECLINED and TVR.decode(result.tvr) == ["dda_failed"]
    assert "no CAPK A000000333/7E" in result.reasons[0]


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_expired_issuer_certificate_fails_fdda(script, capks, hsm, issued_cards, suite):
    issued = issued_cards(suite)
    card = script(suite, BUS)
    _, _, serial = issuer_serial(capks, card, suite, issued)
    stale = hsm.sign_issuer_certificate(
        issued.labels["ca"],
        issued.labels["issuer"],
        issuer_identifier=issued.prepared.pan[:6],
        expiry="1224",
        serial=serial,
    )
    for command, response in card.script:  # the record holding 90
        if command.startswith(bytes.fromhex(READ_RECORD)) and "90" in decode_dict(response[:-2]).get(
            "70", {}
        ):
            index = card.script.index((command, response))
            card.script[index] = (command, rewrite_template(response, replace_value("90", stale["90"])))
            break
    result = tap(card, make_terminal(capks, profile=BUS))
    assert result.kind is Outcome.DECLINED
    assert TVR.decode(result.tvr) == ["dda_failed"]
    assert "issuer public key certificate (90) expired at the end of 12/24" in result.reasons[0]


def test_expired_application_is_declined_unless_the_card_asks_to_go_online(script, capks):
    card = script("GM")
    change_record(card, 2, 1, replace_value("5F24", bytes.fromhex("240131")))
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.DECLINED  # CTQ 1000: no "go online if expired"
    assert TVR.decode(result.tvr) == ["expired_application"]
    card = script("GM")
    change_record(card, 2, 1, replace_value("5F24", bytes.fromhex("240131")))
    change_gpo(card, replace_value("9F6C", bytes.fromhex("0800")))
    result = tap(card, make_terminal(capks, profile=POS))
    assert result.kind is Outcome.ONLINE_REQUEST


def test_the_script_is_compared_apdu_by_apdu():
    card = ScriptedCard([("00A404000E325041592E5359532E444446303100", "6A82")])
    with pytest.raises(AssertionError, match="expected 00A4"):
        card.process(bytes.fromhex("00B2010C00"))
