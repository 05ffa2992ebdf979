"""clearing.parallel's work split: tapered card partitions and the batch digest shared by slices."""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import require_service

from citycard.clearing.batch import _record_json, _upload_json, digest_of, digest_of_parts, digest_part
from citycard.clearing.parallel import TAPER_SPLIT, partition, tapered
from citycard.clearing.record import native_json_part, native_partition

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
records = st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=4), max_size=30)


@settings(max_examples=200, deadline=None)
@given(records=records, cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6))
def test_the_digest_of_slices_is_the_digest_of_the_batch(records: list, cuts: list[int]) -> None:
    bounds = sorted({0, len(records), *(min(c, len(records)) for c in cuts)})
    parts = [digest_part(records[a:b]) for a, b in itertools.pairwise(bounds)]
    assert digest_of_parts(parts) == digest_of(records)
    assert digest_of_parts([]) == digest_of([]) == digest_of_parts([b"", b""])


texts = st.text(max_size=6) | st.sampled_from(
    ["", "6235480000000001", "T-01", 'a"b', "a\\b", "é", "\x7f", "\n", " "]
)
numbers = st.integers() | st.booleans() | st.floats(allow_nan=False) | st.none() | texts
upload_like = st.fixed_dictionaries(
    {
        name: texts
        for name in ("field55", "operator", "pan", "psn", "route", "tap_at", "terminal_id", "vehicle")
    }
    | {"amount_fen": st.integers() | numbers, "balance_fen_after": st.integers() | numbers},
    optional={
        "transit": st.none() | st.dictionaries(st.text(max_size=4), json_values, max_size=3),
        "extra": numbers,
    },
)


@settings(max_examples=1000, deadline=None)
@given(
    records=st.lists(upload_like | st.dictionaries(st.text(max_size=6), json_values, max_size=4), max_size=5)
)
def test_the_digest_of_uploads_is_their_canonical_json(records: list) -> None:
    """Uploads of the usual shape take digest_part's format string: the text is json.dumps's, for
    any texts (quotes, backslashes, controls, non-ASCII), numbers (bools, floats, big ints) and
    fields missing, extra or of another type."""
    expected = json.dumps(records, sort_keys=True, separators=(",", ":"), default=str)
    assert digest_part(records) == expected[1:-1].encode()
    assert digest_of(records) == hashlib.sha256(expected.encode()).hexdigest()


@settings(max_examples=500, deadline=None)
@given(
    records=st.lists(upload_like | st.dictionaries(st.text(max_size=6), json_values, max_size=4), max_size=5)
)
def test_the_c_writer_gives_the_python_text(records: list) -> None:
    """clearing._record_native.canonical_json_part against the Python writers, record by record."""
    native = native_json_part()
    if native is None:
        return  # not built: test_the_c_writer_is_built says so
    asked: list[object] = []

    def fallback(record: object) -> str:
        asked.append(record)
        return _record_json(record)

    assert native(records, fallback) == ",".join(_record_json(r) for r in records).encode()
    asked_ids = {id(r) for r in asked}
    for record in records:  # the C writer takes exactly the usual uploads without a transit object
        usual = _upload_json(record) is not None and "transit" not in record
        fits = usual and all(-(2**63) <= record[k] < 2**63 for k in ("amount_fen", "balance_fen_after"))
        assert (id(record) in asked_ids) == (not fits), record


def test_the_c_writer_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    require_service(native_json_part() is not None, "clearing._record_native was not built")
    monkeypatch.setenv("CITYCARD_NATIVE", "0")
    assert native_json_part() is None


def test_the_c_writer_refuses_a_fallback_that_is_not_text() -> None:
    native = native_json_part()
    if native is None:
        pytest.skip("clearing._record_native is not built")
    with pytest.raises(TypeError, match="fallback must return a str"):
        native([{"a": 1}], lambda record: b"{}")
    with pytest.raises(ZeroDivisionError):
        native([{"a": 1}], lambda record: 1 / 0)
    assert native([], _record_json) == b""


def test_the_usual_upload_takes_the_format_string() -> None:
    upload = {
        "pan": "6235480000000001", "psn": "01", "amount_fen": 200, "balance_fen_after": 9_800,
        "field55": "9F2608A1B2C3D4E5F60718", "terminal_id": "T0001", "operator": "bus-1", "route": "R12",
        "vehicle": "V-3", "tap_at": "2026-11-27T08:00:00.123456+00:00",
    }  # fmt: skip
    assert _upload_json(upload) == json.dumps(upload, sort_keys=True, separators=(",", ":"))
    for bad in (
        {**upload, "pan": 'x"'},
        {**upload, "amount_fen": True},
        {**upload, "extra": 1},
        {**upload, "transit": None},
    ):
        assert _upload_json(bad) is None
    with_transit = {**upload, "transit": {"kind": "exit", "refund_fen": 100}}
    assert _upload_json(with_transit) == json.dumps(with_transit, sort_keys=True, separators=(",", ":"))


def uploads(cards: int, taps: int) -> list[dict]:
    return [
        {"pan": f"62354800{card:08d}", "psn": "01", "atc": atc}
        for atc in range(taps)
        for card in range(cards)
    ]


def test_tapered_partitions_keep_cards_whole_and_are_small_at_both_ends() -> None:
    batch = uploads(cards=2_000, taps=5)
    parts = tapered(batch, 8)
    assert sorted(p for part in parts for p in part) == list(range(len(batch)))  # each record once
    owner: dict[str, int] = {}
    for index, part in enumerate(parts):
        assert part == sorted(part)  # upload order inside a partition
        for position in part:
            card = batch[position]["pan"]
            assert owner.setdefault(card, index) == index  # a card's taps never split
    assert len(parts) == 8 - 2 + 2 * TAPER_SPLIT
    sizes = [len(part) for part in parts]
    small, big = sizes[:TAPER_SPLIT] + sizes[-TAPER_SPLIT:], sizes[TAPER_SPLIT:-TAPER_SPLIT]
    assert max(small) * 2 < min(big)
    assert tapered(batch, 2) == partition(batch, 2)  # too few partitions to taper


def test_the_batch_collector_is_undone_after_the_batch() -> None:
    import gc

    from citycard.clearing.parallel import batch_collector

    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert gc.isenabled()
    kept = [[i] for i in range(1000)]  # made before: frozen during the batch
    with batch_collector():
        assert not gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(kept)
    assert gc.isenabled() and gc.get_threshold() == threshold and gc.get_freeze_count() == frozen
    try:
        with batch_collector():
            raise RuntimeError("the batch failed")
    except RuntimeError:
        pass
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    gc.disable()  # a process that had it off keeps it off
    try:
        with batch_collector():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_digest_fed_part_by_part_is_the_digest_of_the_parts() -> None:
    from citycard.clearing.batch import DigestOfParts

    parts = [digest_part([{"a": 1}]), b"", digest_part([{"b": 2}, {"c": "x"}])]
    digest = DigestOfParts()
    for count, part in enumerate(parts, start=1):
        digest.add(part)
        assert digest.hexdigest() == digest_of_parts(parts[:count])  # asking does not end it
    assert digest.hexdigest() == digest_of([{"a": 1}, {"b": 2}, {"c": "x"}])


class _Upload(dict):  # a Mapping that is not exactly a dict: the general path
    pass


ODD_UPLOADS = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"pan": st.from_regex(r"[0-9]{16}", fullmatch=True), "psn": st.sampled_from(["01", "02"])}
        ),
        st.fixed_dictionaries({"pan": st.text(max_size=5)}),  # no PSN
        st.builds(_Upload, pan=st.text(max_size=3), psn=st.text(max_size=2)),
        st.none(),
        st.text(max_size=4),
        st.lists(st.integers(), max_size=2),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(uploads=ODD_UPLOADS, parts=st.integers(min_value=1, max_value=9))
def test_partition_puts_every_record_where_its_card_text_goes(uploads: list, parts: int) -> None:
    from citycard.clearing.parallel import _bucket

    expected: list[list[int]] = [[] for _ in range(parts)]
    for position, upload in enumerate(uploads):
        expected[_bucket(upload, parts)].append(position)
    assert partition(uploads, parts) == expected
    assert _bucket({"pan": "6230", "psn": "01"}, parts) == zlib.crc32(b"6230:01") % parts
    assert _bucket({"pan": "6230"}, parts) == zlib.crc32(b"6230:None") % parts
    assert _bucket(["x"], parts) == zlib.crc32(b"") % parts


CARD_TEXTS = (
    st.text(max_size=4) | st.from_regex(r"[0-9]{12,19}", fullmatch=True) | st.sampled_from(["é", "\x00"])
)
USUAL_OR_ODD = st.lists(
    st.one_of(
        st.fixed_dictionaries({"pan": CARD_TEXTS, "psn": CARD_TEXTS}, optional={"atc": st.integers()}),
        st.fixed_dictionaries({"pan": st.integers() | st.none(), "psn": CARD_TEXTS}),
        st.fixed_dictionaries({"psn": CARD_TEXTS}),
        st.builds(_Upload, pan=st.text(max_size=3), psn=st.text(max_size=2)),
        st.none(),
    ),
    max_size=40,
)


@settings(max_examples=600, deadline=None)
@given(
    uploads=USUAL_OR_ODD,
    parts=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_the_c_partition_gives_the_python_lists(uploads: list, parts: int, data: st.DataObject) -> None:
    """partition in C: the same lists as in Python for any batch and any grouping of the buckets;
    a batch with any record the C path does not read (not a dict, PAN or PSN missing, not ASCII
    text) is left to Python whole."""
    native = native_partition()
    if native is None:
        pytest.skip("clearing._record_native is not built")
    groups = data.draw(
        st.lists(st.integers(min_value=0, max_value=parts - 1), min_size=parts, max_size=parts)
    )
    fast = partition(uploads, parts, groups)
    with pytest.MonkeyPatch.context() as patched:
        patched.setenv("CITYCARD_NATIVE", "0")
        assert native_partition() is None
        assert partition(uploads, parts, groups) == fast
    usual = all(
        type(u) is dict and all(isinstance(u.get(k), str) and u[k].isascii() for k in ("pan", "psn"))
        for u in uploads
    )
    assert (native(uploads, parts, groups) is not None) == usual


def test_the_c_partition_refuses_bad_arguments() -> None:
    native = native_partition()
    require_service(native is not None, "clearing._record_native was not built")
    batch = uploads(cards=3, taps=2)
    with pytest.raises(ValueError, match="buckets must be 1 to 65536, got 0"):
        native(batch, 0, [])
    with pytest.raises(ValueError, match="one group index per bucket"):
        native(batch, 3, [0, 1])
    with pytest.raises(ValueError, match="group 3 out of 0 to 2"):
        native(batch, 3, [0, 1, 3])
    with pytest.raises(TypeError, match="uploads must be a sequence"):
        native(7, 3, [0, 1, 2])
    assert native([], 2, [1, 1]) == [[], []]
    assert native(batch, 1, [0]) == [list(range(len(batch)))]


def test_batches_clearing_at_once_share_the_collector_setting_until_the_last_ends() -> None:
    import gc

    from citycard.clearing.parallel import batch_collector

    frozen = gc.get_freeze_count()
    first, second = batch_collector(), batch_collector()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first batch ends while the second still clears
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled() and gc.get_freeze_count() == frozen
