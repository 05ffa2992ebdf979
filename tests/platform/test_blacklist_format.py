"""The blacklist delta file (platform.blacklist_format): list N + delta(N→M) == list M, byte for byte
(hypothesis), and a damaged or misapplied delta is refused with the reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.kernel.params import ExceptionFile, ExceptionFileError
from citycard.platform.blacklist_format import (
    DELTA_HEADER_BYTES,
    apply_delta,
    decode_delta,
    encode_delta,
    encode_delta_to,
)

# A small PAN space, so that the two lists share entries and wildcards meet exact PSNs.
cards = st.tuples(
    st.sampled_from(["6212345678901234", "6212345678901242", "62123456789012345", "621234567890123456"]),
    st.one_of(st.none(), st.sampled_from(["00", "01", "02", "99"])),
)
lists = st.sets(cards, max_size=16)


@settings(max_examples=300, deadline=None)
@given(before=lists, after=lists, from_version=st.integers(0, 2**40), step=st.integers(1, 1000))
def test_a_delta_applied_to_the_previous_list_equals_the_new_list(before, after, from_version, step):
    old = ExceptionFile.build(before, version=from_version)
    new = ExceptionFile.build(after, version=from_version + step)
    data = encode_delta(added=after - before, removed=before - after, from_version=from_version, result=new)
    assert len(data) == DELTA_HEADER_BYTES + 11 * len(after ^ before)
    assert apply_delta(old, data).to_bytes() == new.to_bytes()
    delta = decode_delta(data)
    assert (delta.from_version, delta.to_version, delta.result_count) == (from_version, new.version, len(new))
    assert set(delta.added) == after - before and set(delta.removed) == before - after


@settings(max_examples=200, deadline=None)
@given(before=lists, after=lists, position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(before, after, position, bit):
    old = ExceptionFile.build(before, version=1)
    new = ExceptionFile.build(after, version=2)
    data = bytearray(encode_delta(added=after - before, removed=before - after, from_version=1, result=new))
    data[position % len(data)] ^= 1 << bit
    with pytest.raises(ExceptionFileError):
        apply_delta(old, bytes(data))


def test_the_header_layout():
    new = ExceptionFile.build([("6212345678901234", "01")], version=5)
    data = encode_delta(added=[("6212345678901234", "01")], removed=[], from_version=4, result=new)
    assert data[:8] == b"CCXD\r\n\x1a\n"
    assert data[8:12].hex() == "0001000b"  # format 1, 11-byte keys
    assert int.from_bytes(data[12:16]) == 1 and int.from_bytes(data[16:20]) == 0
    assert int.from_bytes(data[20:28]) == 4 and int.from_bytes(data[28:36]) == 5
    assert data[40:72] == new.body_sha256
    assert data[112:].hex().upper() == "6212345678901234FFFF01"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d[:100], "too short"),
        (lambda d: b"CCXF" + d[4:], "not a delta file"),
        (lambda d: d + b"\x00", "body is 12 bytes"),
    ],
)
def test_malformed_delta_files_are_named(change, message):
    new = ExceptionFile.build([("6212345678901234", "01")], version=2)
    data = encode_delta(added=[("6212345678901234", "01")], removed=[], from_version=1, result=new)
    with pytest.raises(ExceptionFileError, match=message):
        decode_delta(change(data))


def test_a_delta_that_does_not_go_up_is_not_written():
    same = ExceptionFile.build([], version=3)
    with pytest.raises(ExceptionFileError, match="must go up"):
        encode_delta(added=[], removed=[], from_version=3, result=same)


@settings(max_examples=100, deadline=None)
@given(before=lists, after=lists, from_version=st.integers(0, 2**40))
def test_the_delta_from_stored_facts_equals_the_delta_from_the_list(before, after, from_version):
    """The platform builds deltas from the version row (count, checksum), never from list M itself."""
    new = ExceptionFile.build(after, version=from_version + 1)
    changes = {"added": after - before, "removed": before - after, "from_version": from_version}
    from_facts = encode_delta_to(**changes, to_version=new.version, result_count=len(new),
                                 result_sha256=new.body_sha256)  # fmt: skip
    assert from_facts == encode_delta(**changes, result=new)
    with pytest.raises(ExceptionFileError, match="32 bytes"):
        encode_delta_to(**changes, to_version=new.version, result_count=len(new), result_sha256=b"\x00")
