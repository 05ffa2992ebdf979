"""The record checks and the pure function on their own: no database, real HSM and real MACs."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import require_service

from citycard.clearing import synthetic
from citycard.clearing.batch import CardState, Known, clear_batch, ec_account
from citycard.clearing.record import MalformedRecord, flat_tlv, parse_record
from citycard.crypto import libcrypto

from .conftest import LABELS

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture
def uploads(hsm, issued_cards) -> list[dict]:  # type: ignore[no-untyped-def]
    issued_cards("GM"), issued_cards("INTL")  # the IMKs exist
    cards = synthetic.make_cards(hsm, LABELS, count=4, balance_fen=5_000, bin_="621111")
    return list(synthetic.taps(cards, 12, start=NOW - dt.timedelta(hours=1)))


def known_for(uploads: list[dict], **state: object) -> Known:
    cards = {f"{u['pan']}:{u['psn']}": CardState("bank", **state) for u in uploads}  # type: ignore[arg-type]
    return Known(cards, set(), NOW)


@pytest.mark.parametrize(
    ("hex_", "message"),
    [
        ("7003820100", "constructed tag 70 at offset 0"),
        ("9F360200018201009F36020002", "9F36 repeated at offset 8"),
        ("9F360400", "9F36 at offset 0 runs past the end"),
        ("9F36", "object at offset 0 has no length"),
        ("9F36820001", "unsupported length byte 82"),
    ],
)
def test_flat_tlv_is_strict(hex_: str, message: str) -> None:
    with pytest.raises(MalformedRecord, match=message):
        flat_tlv(bytes.fromhex(hex_))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tap_at": "2026-11-27T08:00:00"}, "has no time zone"),
        ({"psn": "1"}, "psn: '1' does not match"),
        ({"amount_fen": 1.5}, "amount_fen: 1.5 is not an amount"),
        ({"amount_fen": 7}, "amount_fen 7 differs from field 55 9F02"),
        ({"balance_fen_after": 1}, "balance_fen_after 1 differs from the IAD balance"),
        ({"route": "R 1"}, "route: 'R 1' does not match"),
        ({"extra": 1}, "unknown fields extra"),
        ({"field55": "9F2701"}, "field55: 9F27 at offset 0 runs past the end"),
    ],
)
def test_parse_record_names_the_bad_field(uploads, change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MalformedRecord, match=message):
        parse_record(uploads[0] | change)


def test_a_tc_that_is_not_a_tc_is_malformed(uploads) -> None:  # type: ignore[no-untyped-def]
    field55 = uploads[0]["field55"].replace("9F270140", "9F270180")  # an ARQC, not a TC
    with pytest.raises(MalformedRecord, match="9F27: 80 is not a TC"):
        parse_record(uploads[0] | {"field55": field55})


def test_clear_batch_is_pure_and_checks_both_suites(uploads, verifier) -> None:  # type: ignore[no-untyped-def]
    known = known_for(uploads)
    first = clear_batch(uploads, keys=verifier, known=known, batch_id="b1")
    again = clear_batch(uploads, keys=verifier, known=known, batch_id="b1")
    assert first == again
    assert len(first.accepted) == 12 and first.exceptions == []
    assert {a.record.iad[7] for a in first.accepted} == {0x01, 0x04}  # 3DES and SM4 IADs
    # grouped fare postings (batch.fare_postings), one per operator here: each card debited with
    # its fares to that operator, the operator credited with their sum
    assert [p.key for p in first.postings] == [f"fares:b1:{n}" for n in range(len(first.postings))]
    expected: dict[tuple[str, str], int] = {}
    for a in first.accepted:
        account = ec_account(known.cards[a.record.card].issuer, a.record.pan, a.record.psn)
        expected[(a.record.operator, account)] = (
            expected.get((a.record.operator, account), 0) + a.record.amount_fen
        )
    found: dict[tuple[str, str], int] = {}
    for posting in first.postings:
        [credit] = [line for line in posting.lines if line.credit_fen]
        operator = credit.account.removeprefix("operator:")
        assert credit.credit_fen == sum(line.debit_fen for line in posting.lines)
        found.update({(operator, line.account): line.debit_fen for line in posting.lines if line.debit_fen})
    assert found == expected


def test_clear_batch_exception_reasons(uploads, verifier) -> None:  # type: ignore[no-untyped-def]
    mixed = [*uploads, uploads[0], {"pan": 1}]
    stranger = dict(uploads[1], pan="6299990000000001")
    mixed.append(stranger)
    known = Known(known_for(uploads).cards, {parse_record(uploads[2]).key}, NOW)
    result = clear_batch(mixed, keys=verifier, known=known, batch_id="b1")
    reasons = sorted((e.position, e.reason) for e in result.exceptions)
    assert reasons == [(2, "duplicate"), (12, "duplicate"), (13, "malformed"), (14, "unknown_card")]
    assert len(result.accepted) == 11


def _flip(upload: dict, tag_hex: str, offset: int) -> dict:
    """The upload with one byte of a field-55 value flipped (``offset`` bytes into the value;
    ``tag_hex`` is the tag and its length byte)."""
    field55 = upload["field55"]
    at = field55.index(tag_hex) + len(tag_hex) + 2 * offset  # tag_hex ends with the length byte
    byte = int(field55[at : at + 2], 16) ^ 0x01
    return dict(upload, field55=field55[:at] + f"{byte:02X}" + field55[at + 2 :])


@pytest.mark.parametrize("macs", ["libcrypto", "cryptography"])
def test_batch_verification_answers_as_one_by_one(uploads, verifier, macs, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """hsm.tc_batch (card keys once per card, a card's session keys in one ECB call) gives exactly
    SoftHSM.verify_arqc + verify_iad_mac's answers, in both suites, for good and tampered taps —
    with its MACs on the system's libcrypto and on cryptography."""
    if macs == "libcrypto":
        require_service(libcrypto.load() is not None, "the system's OpenSSL libcrypto 3 is not usable here")
    else:
        monkeypatch.setenv(libcrypto.DISABLE_ENV, "0")
    tampered = [
        _flip(uploads[0], "9F2608", 0),  # the TC
        _flip(uploads[1], "9F2608", 7),
        _flip(uploads[2], "9F3704", 1),  # the unpredictable number: the AC input changes
        _flip(uploads[3], "9F1013", 18),  # the IAD balance MAC's last byte
        _flip(uploads[4], "9F1013", 4),  # the CVR (in the AC input)
    ]
    records = [parse_record(u) for u in [*uploads, *tampered]]
    one_by_one = [verifier.forged(r) for r in records]
    assert one_by_one[:12] == [None] * 12
    assert all(reason is not None for reason in one_by_one[12:])
    assert verifier.forged_many(records) == one_by_one
    assert {r.iad[7] for r in records} == {0x01, 0x04}
    assert verifier.forged_many([]) == []


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        timezones=st.sampled_from(
            [
                dt.UTC,
                dt.timezone(dt.timedelta(0)),
                dt.timezone(dt.timedelta(hours=8)),
                dt.timezone(-dt.timedelta(hours=5)),
            ]
        )
    )
)
def test_the_bulk_writer_stores_times_as_sqlalchemy_would(moment: dt.datetime) -> None:
    """store._sqlite_stamp (no per-value processing) == UTCDateTime's bind on SQLite, and
    batch.china_day is the date in Asia/Shanghai."""
    from sqlalchemy.dialects import sqlite

    from citycard.clearing.batch import china_day
    from citycard.clearing.record import CHINA_TIME
    from citycard.clearing.store import _sqlite_stamp
    from citycard.clearing.tables import Tap

    bind = Tap.__table__.c.tap_at.type._cached_bind_processor(sqlite.dialect())
    assert _sqlite_stamp(moment) == bind(moment)
    assert china_day(moment) == moment.astimezone(CHINA_TIME).date().isoformat()


def test_an_ac_input_tag_of_the_wrong_length_is_malformed(uploads) -> None:  # type: ignore[no-untyped-def]
    field55 = uploads[0]["field55"]
    at = field55.index("9F3704")
    short = field55[:at] + "9F3703" + field55[at + 6 : at + 12] + field55[at + 14 :]  # 9F37 of 3 bytes
    with pytest.raises(MalformedRecord, match="9F37 must be 4 bytes, got 3"):
        parse_record(uploads[0] | {"field55": short})


_TEXT_SHAPES = st.sampled_from(
    [
        lambda m: m.isoformat(),  # the validators' shape when the time is whole seconds in UTC
        lambda m: m.isoformat(timespec="seconds"),
        lambda m: m.isoformat(" ", timespec="seconds"),
        lambda m: m.isoformat(timespec="microseconds"),
        lambda m: m.astimezone(dt.timezone(dt.timedelta(hours=8))).isoformat(timespec="seconds"),
        lambda m: m.strftime("%G-W%V-%uT%H:%M:%S+00:00"),  # an ISO week date of the same length
        lambda m: m.strftime("%Y-%jT%H:%M:%S+00:00"),  # an ordinal date
        lambda m: m.isoformat(timespec="seconds").replace("+00:00", "Z"),
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    moment=st.datetimes(
        min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 30), timezones=st.just(dt.UTC)
    ),
    shape=_TEXT_SHAPES,
    whole=st.booleans(),
)
def test_tap_texts_sliced_from_the_upload_equal_the_formatted_ones(moment, shape, whole) -> None:  # type: ignore[no-untyped-def]
    """batch.tap_texts: the texts cut from an upload's tap_at == sqlite_stamp and china_day of the
    time parsed from it, whatever the text's shape (only the validators' shape is cut)."""
    from citycard.clearing.batch import china_day, sqlite_stamp, tap_texts

    if whole:
        moment = moment.replace(microsecond=0)
    text = shape(moment)
    try:
        parsed = dt.datetime.fromisoformat(text).astimezone(dt.UTC)
    except ValueError:
        return  # a shape this Python does not read: the parser refuses the upload before
    assert tap_texts(text, parsed) == (sqlite_stamp(parsed), china_day(parsed))
    assert tap_texts(None, parsed) == (sqlite_stamp(parsed), china_day(parsed))
