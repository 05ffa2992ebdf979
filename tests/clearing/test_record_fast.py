"""The fast paths of the clearing parser (``parse_fields_fast``, and ``native_parser``'s C one when
it is built) against the general one.

For any upload, a fast path either declines (``None``) or gives exactly the record the general
parser gives; and ``parse_record`` (C, Python fast, then general) gives the general parser's record
or its error, word for word. Checked on canonical uploads of both field-55 layouts (the kernel's and the
synthetic one) and on mutations of them: fields replaced by any JSON value, field 55 bytes changed,
cut, lengthened, lower-cased or spaced, times moved or stripped of their zone.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import require_service

from citycard.clearing.batch import Checked, Cleared, check_records
from citycard.clearing.record import (
    UPLOAD_FIELDS,
    ClearingRecord,
    MalformedRecord,
    native_parser,
    parse_fields_fast,
    parse_record,
    parse_record_general,
    record_key,
)
from citycard.clearing.synthetic import SyntheticCard
from citycard.crypto import GM, INTL
from citycard.emv.tlv import flat_primitives
from citycard.kernel.outcome import field55

START = dt.datetime(2026, 11, 27, 1, 30, tzinfo=dt.UTC)
KERNEL_EXTRA = {  # what the kernel's field 55 carries besides the AC input (an 8-byte AID)
    "9F33": bytes.fromhex("E0E1C8"), "9F34": bytes.fromhex("3F0000"), "9F35": b"\x22",
    "9F1E": b"12345678", "84": bytes.fromhex("A000000333010101"), "9F09": b"\x00\x30",
}  # fmt: skip
TRANSIT = {
    "kind": "exit", "line": "3", "stop": "S07", "fare_fen": 200, "refund_fen": 300,
    "reasons": ["segment_fare"], "holder_kind": "resident",
}  # fmt: skip


def _uploads() -> list[dict[str, Any]]:
    """Canonical uploads: synthetic layout, the kernel's layout, both suites, with and without transit."""
    rng = random.Random(3)
    out = []
    for number, suite in enumerate((INTL, GM, INTL, GM)):
        card = SyntheticCard(
            f"62354800000{number:05d}", "01", suite, rng.randbytes(16), rng.randbytes(16), 5_000
        )
        for i in range(3):
            upload = card.tap(150 + i, START + dt.timedelta(minutes=i), operator="bus-1", route="R1",
                              vehicle="V1", terminal_id="T0001", rng=rng)  # fmt: skip
            out.append(upload)
            values = flat_primitives(bytes.fromhex(upload["field55"]))
            kernel = dict(upload, field55=field55({**values, **KERNEL_EXTRA}).hex().upper())
            out.append(kernel)
            out.append(dict(kernel, transit=dict(TRANSIT)))
    return out


UPLOADS = _uploads()
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=24),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _outcome(parse: Any, upload: Any) -> tuple[str, Any]:
    try:
        return ("record", parse(upload))
    except MalformedRecord as exc:
        return ("malformed", str(exc))


NATIVE = native_parser()


def _same(upload: Any) -> None:
    general = _outcome(parse_record_general, upload)
    fast = parse_fields_fast(upload)
    if fast is not None:
        assert general == ("record", ClearingRecord(*fast))
        assert fast[13].tzinfo is dt.UTC
    if NATIVE is not None:
        native = NATIVE(upload)
        if native is not None:  # the C path answers only what the Python one answers, to the object
            assert native == fast
            assert native[13].tzinfo is dt.UTC
            assert [type(value) for value in native] == [type(value) for value in fast]
    assert _outcome(parse_record, upload) == general


def test_canonical_uploads_take_the_fast_path_with_the_general_answer() -> None:
    for upload in UPLOADS:
        fast = parse_fields_fast(upload)
        assert fast is not None, upload
        assert ClearingRecord(*fast) == parse_record_general(upload)


def test_the_c_parser_is_built() -> None:
    require_service(
        NATIVE is not None, "clearing._record_native was not built (no C compiler or Python headers)"
    )


def test_the_c_parser_takes_the_validators_uploads() -> None:
    if NATIVE is None:
        pytest.skip("clearing._record_native is not built")
    for upload in UPLOADS:
        if "transit" in upload:  # left to Python (parse_transit)
            assert NATIVE(upload) is None
        else:
            assert NATIVE(upload) == parse_fields_fast(upload)


def test_the_c_parser_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYCARD_NATIVE", "0")
    assert native_parser() is None
    assert parse_record(UPLOADS[0]) == parse_record_general(UPLOADS[0])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(UPLOADS),
    st.integers(0, 10_000),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.sampled_from(("+00:00", "Z", "+08:00", "+00:00x", "")),
)
def test_times_of_every_shape_and_range(
    upload: dict[str, Any], year: int, month: int, day: int, hour: int, minute: int, zone: str
) -> None:
    """Years to 9999 (whose Asia/Shanghai day may not exist), invalid months, days, hours, minutes,
    and other zones: the C path's date arithmetic against Python's."""
    _same(dict(upload, tap_at=f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00{zone}"))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(UPLOADS), st.integers(-1, 3), st.sampled_from(("9A", "9F02", "9F5D", "9F10")), st.data()
)
def test_dates_amounts_and_balances_near_the_limits(
    upload: dict[str, Any], days: int, tag: str, data: st.DataObject
) -> None:
    """9A moved around the tap's day, month ends and leap days; amounts and balances at the BCD limits."""
    moment = dt.datetime.fromisoformat(upload["tap_at"])
    moment = moment.replace(
        month=data.draw(st.sampled_from((1, 2, 3, 12))), day=data.draw(st.integers(1, 28))
    )
    moment = moment.replace(year=data.draw(st.sampled_from((2024, 2025, 2099))))
    local = (moment + dt.timedelta(hours=8, days=days)).date()
    values = flat_primitives(bytes.fromhex(upload["field55"]))
    values["9A"] = bytes.fromhex(local.strftime("%y%m%d")) if local.year < 2100 else values["9A"]
    fen = data.draw(st.sampled_from((0, 1, 9_999_999_999, 10_000_000_000, 999_999_999_999)))
    if tag == "9F02":
        values["9F02"] = bytes.fromhex(f"{fen:012d}")
        upload = dict(upload, amount_fen=fen)
    elif tag in ("9F5D", "9F10"):
        values["9F5D"] = bytes.fromhex(f"{fen:012d}")
        iad = bytearray(values["9F10"])
        iad[10:15] = bytes.fromhex(f"{fen % 10**10:010d}")
        values["9F10"] = bytes(iad)
        upload = dict(upload, balance_fen_after=fen)
    text = b"".join(bytes.fromhex(t) + bytes([len(v)]) + v for t, v in values.items()).hex().upper()
    _same(dict(upload, field55=text, tap_at=moment.isoformat()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(UPLOADS), st.sampled_from((*UPLOAD_FIELDS, "extra")), JSON_VALUES)
def test_a_field_replaced_by_any_value(upload: dict[str, Any], name: str, value: Any) -> None:
    _same(dict(upload, **{name: value}))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(UPLOADS), st.sampled_from(UPLOAD_FIELDS))
def test_a_field_left_out(upload: dict[str, Any], name: str) -> None:
    _same({key: value for key, value in upload.items() if key != name})


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(UPLOADS), st.data())
def test_field55_mutated(upload: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(bytes.fromhex(upload["field55"]))
    kind = data.draw(st.sampled_from(("byte", "cut", "insert", "lower", "space", "odd")))
    where = data.draw(st.integers(0, len(raw) - 1))
    if kind == "byte":
        raw[where] = data.draw(st.integers(0, 255))
        text = raw.hex().upper()
    elif kind == "cut":
        text = bytes(raw[:where]).hex().upper()
    elif kind == "insert":
        text = bytes(raw[:where] + data.draw(st.binary(min_size=1, max_size=4)) + raw[where:]).hex().upper()
    elif kind == "lower":
        text = raw.hex()
    elif kind == "space":
        text = raw.hex().upper()
        text = text[: 2 * where] + " " + text[2 * where :] + " "
    else:
        text = raw.hex().upper() + "0"
    _same(dict(upload, field55=text))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(UPLOADS),
    st.sampled_from(("amount_fen", "balance_fen_after")),
    st.integers(-3, 3),
    st.timedeltas(min_value=dt.timedelta(days=-3), max_value=dt.timedelta(days=3)),
    st.sampled_from(("utc", "china", "naive", "junk")),
)
def test_amounts_and_times_moved(
    upload: dict[str, Any], name: str, delta: int, shift: dt.timedelta, zone: str
) -> None:
    _same(dict(upload, **{name: upload[name] + delta}))
    moment = dt.datetime.fromisoformat(upload["tap_at"]) + shift
    text = {
        "utc": moment.isoformat(),
        "china": moment.astimezone(dt.timezone(dt.timedelta(hours=8))).isoformat(),
        "naive": moment.replace(tzinfo=None).isoformat(),
        "junk": moment.isoformat() + "x",
    }[zone]
    _same(dict(upload, tap_at=text))


class _Fake:
    """A verifier without the HSM: every tap of an odd ATC is forged."""

    def forged(self, record: ClearingRecord) -> str | None:
        return "odd" if record.atc % 2 else None


class _FakeTaps(_Fake):
    def forged_taps(self, taps: list[tuple[Any, ...]]) -> list[str | None]:
        return ["odd" if int.from_bytes(t[2], "big") % 2 else None for t in taps]


def test_check_records_same_rows_on_every_path() -> None:
    mixed: list[Any] = [*UPLOADS, dict(UPLOADS[0], pan="x"), "not an object", dict(UPLOADS[1], field55="9F")]
    expected = []
    for position, upload in enumerate(mixed):
        try:
            record = parse_record_general(upload)
        except MalformedRecord as exc:
            expected.append(Checked(position, record_key(upload), None, ("malformed", str(exc))))
            continue
        problem = None if record.atc % 2 == 0 else ("forged", "odd")
        expected.append(Checked(position, record.key, record, problem))
    compact = [c._replace(tap=Cleared.of(c.tap)) if c.tap is not None else c for c in expected]
    for keys in (_Fake(), _FakeTaps()):
        assert check_records(mixed, keys=keys) == expected
        got = check_records(mixed, keys=keys, compact=True)
        assert got == compact
        assert all(type(c.tap) is Cleared for c in got if c.tap is not None)
