"""The bus validator and taxi terminal over real virtual cards of both suites: segmented entry and
exit, flat, taxi, a free concession (0 fen with a TC), a double tap refused, a blacklisted card
refused; approved taps are in the journal with the clearing upload and the transit object."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import pytest

from citycard.clearing.record import parse_record
from citycard.kernel.params import ExceptionFile
from citycard.terminals.validator import ValidatorError

from .validators import BALANCE_AFTER_OPENING, KINDS, MORNING, make_validator, open_transit, tap


def minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


@pytest.mark.parametrize("kind", KINDS)
def test_entry_then_exit_on_a_segmented_line(kind, new_card, hsm, capks, tmp_path):
    card = new_card(kind)
    open_transit(card, hsm, capks, kind)
    v = make_validator(hsm, capks, tmp_path / "journal.db")
    entry = tap(v, card, tap_kind="entry", stop="BCG", now=MORNING)
    assert entry.approved, entry.reason
    assert entry.amount_fen == 400 and entry.decision.kind == "entry"
    assert entry.decision.reasons == ("max_fare_held",)
    assert entry.result.balance_fen_after == BALANCE_AFTER_OPENING - 400
    assert entry.journal_seq == 1
    leave = tap(v, card, tap_kind="exit", stop="NSG", now=MORNING + minutes(20))
    assert leave.approved, leave.reason
    assert leave.amount_fen == 0  # the exit debits nothing; the refund is clearing's
    assert leave.decision.fare_fen == 200 and leave.decision.refund_fen == 200
    assert leave.result.cid == 0x40 and leave.result.balance_fen_after == BALANCE_AFTER_OPENING - 400
    assert leave.journal_seq == 2
    pending = v.journal.pending()
    assert [e.seq for e in pending] == [1, 2]
    assert pending[1].upload["transit"] == {
        "kind": "exit", "line": "K1", "stop": "NSG", "fare_fen": 200, "refund_fen": 200,
        "reasons": ["segment_fare"], "holder_kind": "resident",
    }  # fmt: skip
    for entry_ in pending:  # clearing reads what the validator journaled
        record = parse_record(entry_.upload)
        assert record.terminal_id == "BUS-K1-001" and record.route == "K1" and record.vehicle == "D10001"
    assert parse_record(pending[0].upload).amount_fen == 400
    assert v.journal.counts() == {"taps": 2, "pending": 2, "acknowledged": 0, "declined": 0}


@pytest.mark.parametrize("kind", KINDS)
def test_flat_fare_with_a_transfer_then_a_double_tap_refused(kind, new_card, hsm, capks, tmp_path):
    card = new_card(kind)
    open_transit(card, hsm, capks, kind)
    k1 = make_validator(hsm, capks, tmp_path / "k1.db")
    line3 = make_validator(
        hsm, capks, tmp_path / "l3.db", terminal_id="BUS-3-007", line="3", vehicle="D30007"
    )
    assert tap(k1, card, tap_kind="entry", stop="BCG", now=MORNING).approved
    assert tap(k1, card, tap_kind="exit", stop="DDK", now=MORNING + minutes(10)).approved
    flat = tap(line3, card, tap_kind="flat", now=MORNING + minutes(30))
    assert flat.approved, flat.reason
    assert flat.amount_fen == 100 and flat.decision.reasons == ("flat_fare", "transfer")  # 200 − 100
    again = tap(line3, card, tap_kind="flat", now=MORNING + minutes(30.5))
    assert not again.approved and again.journal_seq is None
    assert again.reason == "tap refused by the fare rules: double_tap"
    assert again.decision.kind == "refused" and again.amount_fen == 0
    assert "GPO" not in [step.name for step in again.result.steps]  # nothing reached the card's purse
    assert line3.journal.counts() == {"taps": 1, "pending": 1, "acknowledged": 0, "declined": 1}
    later = tap(line3, card, tap_kind="flat", now=MORNING + minutes(32))  # after double_tap_seconds
    assert later.approved and later.amount_fen == 200  # no transfer chain


@pytest.mark.parametrize("kind", KINDS)
def test_taxi_metered_fare_plus_surcharge(kind, new_card, hsm, capks, tmp_path):
    card = new_card(kind)
    open_transit(card, hsm, capks, kind, concession=2)  # elderly: concessions do not apply to taxis
    taxi = make_validator(hsm, capks, tmp_path / "taxi.db", terminal_id="TAXI-88", kind="taxi", line="TAXI",
                          vehicle="CAB88")  # fmt: skip
    out = tap(taxi, card, tap_kind="taxi", metered_fen=2350, now=MORNING)
    assert out.approved, out.reason
    assert out.amount_fen == 2450 and out.decision.reasons == ("metered", "surcharge")
    assert out.result.balance_fen_after == BALANCE_AFTER_OPENING - 2450
    assert out.upload["transit"]["kind"] == "taxi" and out.upload["transit"]["holder_kind"] == "elderly"
    with pytest.raises(ValidatorError, match="takes taxi taps"):
        tap(taxi, card, tap_kind="flat", now=MORNING)


@pytest.mark.parametrize("kind", KINDS)
def test_a_free_concession_taps_for_zero_fen_with_a_tc(kind, new_card, hsm, capks, tmp_path):
    card = new_card(kind)
    open_transit(card, hsm, capks, kind, concession=2)  # elderly → transit_free
    v = make_validator(hsm, capks, tmp_path / "journal.db", line="3", vehicle="D30001")
    out = tap(v, card, tap_kind="flat", now=MORNING)
    assert out.approved, out.reason
    assert out.amount_fen == 0 and out.result.cid == 0x40
    assert out.decision.reasons == ("flat_fare", "concession:transit_free")
    assert out.result.balance_fen_after == BALANCE_AFTER_OPENING
    assert out.result.capp_record_written is not None
    record = parse_record(out.upload)
    assert record.amount_fen == 0 and record.balance_after_fen == BALANCE_AFTER_OPENING
    segmented = make_validator(hsm, capks, tmp_path / "k1.db", vehicle="D10009")
    entry = tap(segmented, card, tap_kind="entry", stop="HTM", now=MORNING + minutes(90))
    assert entry.approved and entry.amount_fen == 0  # a segmented entry under the concession


@pytest.mark.parametrize("kind", KINDS)
def test_a_blacklisted_card_is_refused_and_nothing_is_journaled(kind, new_card, hsm, capks, tmp_path):
    card = new_card(kind)
    open_transit(card, hsm, capks, kind)
    v = make_validator(hsm, capks, tmp_path / "journal.db", line="3", vehicle="D30001")
    first = tap(v, card, tap_kind="flat", now=MORNING)
    assert first.approved
    pan, psn = first.result.pan, first.result.psn
    assert v.apply_blacklist(ExceptionFile.build([(pan, psn), ("6235480000000000001", None)], version=7)) == 7
    assert v.versions["blacklist"] == 7
    out = tap(v, card, tap_kind="flat", now=MORNING + minutes(5))
    assert not out.approved and out.reason == "card on the exception file (blacklist)"
    assert out.result.balance_fen_after is None and out.result.capp_record_written is None
    assert v.journal.counts() == {"taps": 1, "pending": 1, "acknowledged": 0, "declined": 1}


def test_configuration_and_parameters_are_checked(hsm, capks, tmp_path):
    from citycard.sectors.transit import parse_table
    from citycard.terminals.validator import ValidatorConfig

    with pytest.raises(ValidatorError, match="vehicle: at most 8"):
        ValidatorConfig(terminal_id="B1", operator="pzh-bus", kind="bus", line="K1", vehicle="D100010001")
    with pytest.raises(ValidatorError, match="kind must be bus or taxi"):
        ValidatorConfig(terminal_id="B1", operator="pzh-bus", kind="tram", line="K1", vehicle="D1")  # type: ignore[arg-type]
    with pytest.raises(ValidatorError, match="no line 'K9'"):
        make_validator(hsm, capks, tmp_path / "a.db", line="K9")
    with pytest.raises(ValidatorError, match="line TAXI is metered: not for a bus device"):
        make_validator(hsm, capks, tmp_path / "b.db", line="TAXI")
    v = make_validator(hsm, capks, tmp_path / "c.db")
    text = (resources.files("citycard.data") / "transit" / "panzhihua.toml").read_text(encoding="utf-8")
    newer = parse_table(text.replace("version = 1\n", "version = 2\n", 1))
    v.apply_fares(newer)
    assert v.versions == {"fares": 2, "blacklist": 0, "capks": 0}
    without_k1 = parse_table(
        text.replace('id = "K1"', 'id = "K2"').replace("version = 1\n", "version = 3\n", 1)
    )
    with pytest.raises(ValidatorError, match="no line 'K1'"):
        v.apply_fares(without_k1)
    assert v.versions["fares"] == 2
    with pytest.raises(ValidatorError, match="aware datetime"):
        v.tap(None, tap_kind="entry", stop="BCG", now=dt.datetime(2026, 11, 27, 8))  # type: ignore[arg-type]


def test_a_full_journal_declines_before_the_card_pays(new_card, hsm, capks, tmp_path):
    from citycard.terminals.journal import TapJournal

    card = new_card("CITIZEN")
    open_transit(card, hsm, capks, "CITIZEN")
    v = make_validator(hsm, capks, tmp_path / "journal.db", line="3", vehicle="D30001")
    v.journal = TapJournal(tmp_path / "small.db", pending_max=1)
    assert tap(v, card, tap_kind="flat", now=MORNING).approved
    full = tap(v, card, tap_kind="flat", now=MORNING + minutes(5))
    assert not full.approved and full.reason == "journal full (1 taps await upload)" and full.result is None
    assert v.journal.counts() == {"taps": 1, "pending": 1, "acknowledged": 0, "declined": 1}
    v.journal.acknowledge([1], "BUS-K1-001:1-1")
    assert tap(v, card, tap_kind="flat", now=MORNING + minutes(10)).approved
