"""The exception file: exact membership, wildcard PSN, format checks with precise errors, deltas,
and a 100,000-entry list checked for correctness (speed is measured outside the tests)."""

from __future__ import annotations

import hashlib
import random
import struct
import zlib

import pytest

from citycard.kernel.params import ExceptionFile, ExceptionFileError, random_test_entries
from citycard.kernel.params.exception_file import HEADER_BYTES, KEY_BYTES, decode_key, encode_key

PAN = "6212345678901234"
PAN_19 = "6212345678901234567"


@pytest.fixture
def small() -> ExceptionFile:
    return ExceptionFile.build(
        [(PAN, "01"), (PAN_19, None), ("6228480000000000", "00"), ("6228480000000000", "03")], version=42
    )


def test_exact_membership_no_near_misses(small):
    assert small.contains(PAN, "01")
    assert not small.contains(PAN, "02")  # same PAN, another PSN
    assert not small.contains(PAN, "00")
    assert not small.contains("6212345678901235", "01")  # last digit differs
    assert not small.contains(PAN + "0", "01")  # PAN as a prefix of a longer PAN
    assert not small.contains(PAN[:-1], "01")
    assert small.contains("6228480000000000", "03") and not small.contains("6228480000000000", "02")
    assert len(small) == 4 and small.version == 42


def test_wildcard_psn_blocks_every_psn_of_the_pan(small):
    for psn in ("00", "01", "7", "99"):
        assert small.contains(PAN_19, psn)
    assert small.contains(PAN_19, None)
    assert not small.contains(PAN_19[:-1] + "8", "00")


def test_a_card_without_psn_is_blocked_when_any_entry_lists_its_pan(small):
    assert small.contains(PAN, None)
    assert small.contains("6228480000000000", None)
    assert not small.contains("6228480000000001", None)


def test_key_encoding_is_bcd_padded_with_f_and_round_trips():
    assert encode_key(PAN, "01") == bytes.fromhex("6212345678901234FFFF01")
    assert encode_key(PAN_19, None) == bytes.fromhex("6212345678901234567FFF")
    assert encode_key("621234567890", "9") == bytes.fromhex("621234567890FFFFFFFF09")
    assert decode_key(encode_key(PAN_19, "07")) == (PAN_19, "07")
    with pytest.raises(ExceptionFileError, match=r"is not a BCD PAN padded with F and a BCD PSN"):
        decode_key(bytes.fromhex("62123456789012F4FFFF01"))


@pytest.mark.parametrize(
    ("pan", "psn", "message"),
    [
        ("62123456789", "01", "PAN must be 12 to 19 digits, got 11"),
        ("62123456789012345678", "01", "PAN must be 12 to 19 digits, got 20"),
        ("62123456789O1234", "01", "PAN must be digits only, got '621234******1234'"),
        ("６212345678901234", "01", "PAN must be digits only, got '６21234******1234'"),
        (PAN, "100", "PSN (5F34) must be 1 or 2 digits (00 to 99), got '100'"),
        (PAN, "A1", "PSN (5F34) must be 1 or 2 digits (00 to 99), got 'A1'"),
        (PAN, "", "PSN (5F34) must be 1 or 2 digits (00 to 99), got ''"),
    ],
)
def test_bad_pan_or_psn_is_a_precise_error(small, pan, psn, message):
    with pytest.raises(ExceptionFileError) as info:
        small.contains(pan, psn)
    assert str(info.value) == message


def test_build_names_the_bad_entry_and_collapses_duplicates():
    with pytest.raises(ExceptionFileError) as info:
        ExceptionFile.build([(PAN, "01"), ("12", "01")], version=1)
    assert str(info.value) == "entry 2: PAN must be 12 to 19 digits, got 2"
    assert len(ExceptionFile.build([(PAN, "01"), (PAN, "01"), (PAN, "1")], version=1)) == 1
    with pytest.raises(
        ExceptionFileError, match=r"^list version must be an integer from 0 to 2\^64-1, got -1$"
    ):
        ExceptionFile.build([], version=-1)


def test_round_trip_through_bytes_and_a_file(small, tmp_path):
    path = tmp_path / "blacklist.bin"
    small.save(path)
    loaded = ExceptionFile.load(path, full_check=True)
    assert loaded.to_bytes() == small.to_bytes() == path.read_bytes()
    assert (len(loaded), loaded.version, loaded.body_sha256) == (4, 42, small.body_sha256)
    assert list(loaded.entries()) == [  # key order: 0–9 sort before the F padding
        ("6212345678901234567", None),
        ("6212345678901234", "01"),
        ("6228480000000000", "00"),
        ("6228480000000000", "03"),
    ]
    assert ExceptionFile.from_bytes(bytearray(small.to_bytes())).contains(PAN, "01")


def test_layout_is_the_documented_one(small):
    data = small.to_bytes()
    magic, fmt, key_bytes, count, version, body_sha256, reserved, crc = struct.unpack(
        ">8sHHIQ32sII", data[:64]
    )
    assert (magic, fmt, key_bytes, count, version, reserved) == (b"CCXF\r\n\x1a\n", 1, 11, 4, 42, 0)
    assert crc == zlib.crc32(data[:60])
    assert body_sha256 == hashlib.sha256(data[64:]).digest()
    assert len(data) == 64 + 4 * 11
    assert data[64:75] == bytes.fromhex("6212345678901234567FFF")  # digits sort before the F padding
    assert data[75:86] == bytes.fromhex("6212345678901234FFFF01")


def _patched(data: bytes, offset: int, new: bytes, *, fix_crc: bool) -> bytes:
    out = bytearray(data)
    out[offset : offset + len(new)] = new
    if fix_crc:
        out[60:64] = zlib.crc32(out[:60]).to_bytes(4, "big")
    return bytes(out)


def _error(data: bytes) -> str:
    with pytest.raises(ExceptionFileError) as info:
        ExceptionFile.from_bytes(data)
    return str(info.value)


def test_corrupted_files_give_precise_errors(small):
    data = small.to_bytes()
    assert _error(data[:63]) == "exception file too short: 63 bytes, the header alone is 64"
    assert _error(b"CCXF\n\n\x1a\n" + data[8:]) == (
        "not an exception file: magic 434358460A0A1A0A, expected 434358460D0A1A0A"
    )
    # a flipped bit in the entry count (header CRC not updated): the header is corrupt
    flipped = _patched(data, 15, bytes([data[15] ^ 0x01]), fix_crc=False)
    assert _error(flipped).startswith("exception file header is corrupt: stored CRC-32 ")
    # the same change with a recomputed CRC (a buggy producer): the body size disagrees
    assert _error(_patched(data, 12, (5).to_bytes(4, "big"), fix_crc=True)) == (
        "exception file body is 44 bytes; the header says 5 entries × 11 = 55 bytes"
    )
    assert _error(_patched(data, 8, (2).to_bytes(2, "big"), fix_crc=True)) == (
        "exception file format version 2 is not supported (this reader knows 1)"
    )
    assert _error(_patched(data, 10, (8).to_bytes(2, "big"), fix_crc=True)) == (
        "exception file key size is 8 bytes, expected 11"
    )
    assert _error(_patched(data, 56, b"\x00\x00\x00\x01", fix_crc=True)) == (
        "exception file reserved header field is 00000001, expected 0"
    )
    # one byte of the body changed: the body checksum catches it
    body_hit = _patched(data, HEADER_BYTES + 3, b"\x99", fix_crc=False)
    assert _error(body_hit) == (
        f"exception file body is corrupt: SHA-256 {hashlib.sha256(body_hit[64:]).hexdigest().upper()}, "
        f"the header says {small.body_sha256.hex().upper()}"
    )
    # the stored checksum changed (CRC fixed so the header looks sound): still caught
    assert _error(_patched(data, 24, b"\x00" * 32, fix_crc=True)).startswith(
        "exception file body is corrupt: "
    )
    assert _error(data + b"\x00").startswith("exception file body is 45 bytes; the header says 4 entries")


def test_full_check_catches_a_producer_that_did_not_sort():
    keys = [encode_key(PAN, "01"), encode_key(PAN_19, None)]  # wrong order: 0–9 sort before F
    body = b"".join(keys)
    unsorted = ExceptionFile._from_body(body, 2, 1).to_bytes()
    assert ExceptionFile.from_bytes(unsorted).version == 1  # the fast load trusts the producer
    with pytest.raises(ExceptionFileError) as info:
        ExceptionFile.from_bytes(unsorted, full_check=True)
    assert str(info.value) == (
        "exception file entry 2 (6212345678901234567FFF) is not above entry 1 (6212345678901234FFFF01): "
        "the body must be sorted without duplicates"
    )


def test_load_errors_name_the_file(tmp_path, small):
    path = tmp_path / "list.bin"
    path.write_bytes(small.to_bytes()[:-1])
    with pytest.raises(ExceptionFileError, match=r"list\.bin: exception file body is 43 bytes"):
        ExceptionFile.load(path)
    with pytest.raises(
        ExceptionFileError, match=r"missing\.bin: cannot read the exception file: No such file"
    ):
        ExceptionFile.load(tmp_path / "missing.bin")


def test_apply_delta_gives_the_same_list_as_a_rebuild(small):
    added = [("6200000000000000", "00"), ("6299999999999999999", None), ("6212345678901234", "02")]
    removed = [(PAN, "01"), ("6228480000000000", "03")]
    rebuilt = ExceptionFile.build(
        [(PAN_19, None), ("6228480000000000", "00"), *added],
        version=43,
    )
    updated = small.apply_delta(added, removed, 43, expected_body_sha256=rebuilt.body_sha256)
    assert updated.to_bytes() == rebuilt.to_bytes()
    assert updated.contains("6212345678901234", "02") and not updated.contains(PAN, "01")
    assert small.contains(PAN, "01")  # the old list is unchanged


@pytest.mark.parametrize(
    ("added", "removed", "version", "message"),
    [
        ([], [], 42, "delta to list version 42 does not follow this list's version 42"),
        ([(PAN, "01")], [], 43, "delta adds 621234******1234/01, which the list already holds"),
        ([], [(PAN, "02")], 43, "delta removes 621234******1234/02, which the list does not hold"),
        ([(PAN, "05")], [(PAN, "05")], 43, "delta adds and removes the same entry 621234******1234/05"),
        ([("1", "01")], [], 43, "delta added entry 1: PAN must be 12 to 19 digits, got 1"),
    ],
)
def test_inconsistent_deltas_are_refused(small, added, removed, version, message):
    with pytest.raises(ExceptionFileError) as info:
        small.apply_delta(added, removed, version)
    assert str(info.value) == message


def test_a_delta_whose_result_differs_from_the_platforms_checksum_asks_for_a_reload(small):
    with pytest.raises(ExceptionFileError, match=r"the platform says 00+: reload the full list$"):
        small.apply_delta([("6200000000000000", "00")], [], 43, expected_body_sha256=bytes(32))


def test_100k_entries_every_member_found_and_near_misses_not():
    entries = list(random_test_entries(100_000, seed=7))
    assert len({(pan, psn) for pan, psn in entries}) == 100_000
    listed = ExceptionFile.from_bytes(ExceptionFile.build(entries, version=1).to_bytes(), full_check=True)
    assert len(listed) == 100_000
    assert all(listed.contains(pan, psn) for pan, psn in entries)
    wildcard_pans = {pan for pan, psn in entries if psn is None}
    exact = {(pan, psn) for pan, psn in entries}
    rng = random.Random(8)
    for pan, psn in rng.sample(entries, 5_000):
        other_psn = "02"  # random_test_entries only lists 00, 01 or any
        assert listed.contains(pan, other_psn) == (pan in wildcard_pans)
        last = str((int(pan[-1]) + 1) % 10)
        neighbour = pan[:-1] + last
        expected = neighbour in wildcard_pans or (neighbour, psn) in exact
        assert listed.contains(neighbour, psn) == expected
    assert listed.to_bytes()[HEADER_BYTES : HEADER_BYTES + KEY_BYTES] == min(
        encode_key(pan, psn) for pan, psn in entries
    )


def test_random_test_entries_are_reproducible():
    assert list(random_test_entries(50, seed=1)) == list(random_test_entries(50, seed=1))
    assert list(random_test_entries(50, seed=1)) != list(random_test_entries(50, seed=2))
