"""The blacklist delta file: what a terminal downloads to go from list version N to version M.

The full list is the kernel's exception file (:mod:`citycard.kernel.params.exception_file`,
format "CCXF" version 1), so a terminal loads the platform's list directly. A delta is its
companion format "CCXD" (docs/platform-exchange.md "Delta file"); all integers big-endian::

    offset size  field
         0    8  magic  43 43 58 44 0D 0A 1A 0A  ("CCXD\\r\\n\\x1a\\n")
         8    2  format version = 1
        10    2  key size in bytes = 11 (the exception file's key: BCD PAN ‖ PSN, FF = any PSN)
        12    4  added count a
        16    4  removed count r
        20    8  from list version N (the version the terminal must hold)
        28    8  to list version M (> N)
        36    4  entry count of list M
        40   32  SHA-256 of list M's body: equal to the exception file's body checksum of version M,
                 so the terminal proves that list N + delta == list M, byte for byte
        72   32  SHA-256 of this delta's body (a corrupt download is named before it is applied)
       104    4  reserved = 0
       108    4  CRC-32 (zlib) of bytes 0..107
       112 11×a  added keys, strictly ascending
          11×r  removed keys, strictly ascending

A terminal applies it with :func:`apply_delta` (strict: the terminal's version must be N, every
added key absent, every removed key present, and the result's SHA-256 must match); any failure
means "download the full list".

>>> from citycard.kernel.params import ExceptionFile
>>> old = ExceptionFile.build([("6212345678901234", "01")], version=1)
>>> new = ExceptionFile.build([("6212345678901299", None)], version=2)
>>> data = encode_delta(added=[("6212345678901299", None)], removed=[("6212345678901234", "01")],
...                     from_version=1, result=new)
>>> len(data), apply_delta(old, data).to_bytes() == new.to_bytes()
(134, True)
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from citycard.kernel.params.exception_file import (
    EXCEPTION_FILE_ENTRIES_MAX,
    KEY_BYTES,
    BlockedCard,
    ExceptionFile,
    ExceptionFileError,
    decode_key,
    encode_key,
)

DELTA_MAGIC = b"CCXD\r\n\x1a\n"
DELTA_FORMAT_VERSION = 1
DELTA_HEADER = struct.Struct(">8sHHIIQQI32s32sII")
DELTA_HEADER_BYTES = DELTA_HEADER.size  # 112
_CRC_OFFSET = DELTA_HEADER_BYTES - 4
DELTA_ENTRIES_MAX = 1_000_000  # adds + removes in one delta; past it a terminal reloads the full list

assert DELTA_HEADER_BYTES == 112


@dataclass(frozen=True)
class Delta:
    """A decoded delta file: the change from list ``from_version`` to ``to_version``."""

    from_version: int
    to_version: int
    added: tuple[BlockedCard, ...]
    removed: tuple[BlockedCard, ...]
    result_count: int
    result_sha256: bytes


def _sorted_keys(entries: Iterable[tuple[str, str | None]], what: str) -> list[bytes]:
    keys: set[bytes] = set()
    for number, (pan, psn) in enumerate(entries, 1):
        try:
            keys.add(encode_key(pan, psn))
        except ExceptionFileError as exc:
            raise ExceptionFileError(f"delta {what} entry {number}: {exc}") from None
    return sorted(keys)


def encode_delta(
    *,
    added: Iterable[tuple[str, str | None]],
    removed: Iterable[tuple[str, str | None]],
    from_version: int,
    result: ExceptionFile,
) -> bytes:
    """The delta file from list ``from_version`` to ``result`` (whose version and checksum it carries)."""
    return encode_delta_to(
        added=added, removed=removed, from_version=from_version, to_version=result.version,
        result_count=len(result), result_sha256=result.body_sha256,
    )  # fmt: skip


def encode_delta_to(
    *,
    added: Iterable[tuple[str, str | None]],
    removed: Iterable[tuple[str, str | None]],
    from_version: int,
    to_version: int,
    result_count: int,
    result_sha256: bytes,
) -> bytes:
    """The delta file from list ``from_version`` to list ``to_version`` of ``result_count`` entries
    and body checksum ``result_sha256`` — the platform's stored facts of version M, so the delta
    costs O(changes) and never needs list M itself."""
    if len(result_sha256) != 32:
        raise ExceptionFileError(f"list SHA-256 must be 32 bytes, got {len(result_sha256)}")
    if not 0 <= result_count <= EXCEPTION_FILE_ENTRIES_MAX:
        raise ExceptionFileError(f"list entry count {result_count:,} is out of range")
    add_keys = _sorted_keys(added, "added")
    remove_keys = _sorted_keys(removed, "removed")
    if len(add_keys) + len(remove_keys) > DELTA_ENTRIES_MAX:
        raise ExceptionFileError(
            f"delta of {len(add_keys) + len(remove_keys):,} entries exceeds {DELTA_ENTRIES_MAX:,}: "
            "send the full list"
        )
    if not 0 <= from_version < to_version:
        raise ExceptionFileError(
            f"delta from version {from_version} must go up to the result's version {to_version}"
        )
    body = b"".join(add_keys) + b"".join(remove_keys)
    head = DELTA_HEADER.pack(
        DELTA_MAGIC,
        DELTA_FORMAT_VERSION,
        KEY_BYTES,
        len(add_keys),
        len(remove_keys),
        from_version,
        to_version,
        result_count,
        result_sha256,
        hashlib.sha256(body).digest(),
        0,
        0,
    )
    crc = zlib.crc32(head[:_CRC_OFFSET]).to_bytes(4, "big")
    return head[:_CRC_OFFSET] + crc + body


def decode_delta(data: bytes | bytearray | memoryview) -> Delta:
    """Verify and decode a delta file; ExceptionFileError names the first thing wrong."""
    data = bytes(data)
    if len(data) < DELTA_HEADER_BYTES:
        raise ExceptionFileError(
            f"delta file too short: {len(data)} bytes, the header alone is {DELTA_HEADER_BYTES}"
        )
    (magic, fmt, key_bytes, n_added, n_removed, from_version, to_version, result_count, result_sha256,
     body_sha256, reserved, crc) = DELTA_HEADER.unpack_from(data)  # fmt: skip
    if magic != DELTA_MAGIC:
        raise ExceptionFileError(
            f"not a delta file: magic {magic.hex().upper()}, expected {DELTA_MAGIC.hex().upper()}"
        )
    computed_crc = zlib.crc32(data[:_CRC_OFFSET])
    if crc != computed_crc:
        raise ExceptionFileError(
            f"delta file header is corrupt: stored CRC-32 {crc:08X}, computed {computed_crc:08X}"
        )
    if fmt != DELTA_FORMAT_VERSION:
        raise ExceptionFileError(f"delta file format version {fmt} is not supported")
    if key_bytes != KEY_BYTES:
        raise ExceptionFileError(f"delta file key size is {key_bytes} bytes, expected {KEY_BYTES}")
    if reserved != 0:
        raise ExceptionFileError(f"delta file reserved header field is {reserved:08X}, expected 0")
    if n_added + n_removed > DELTA_ENTRIES_MAX or result_count > EXCEPTION_FILE_ENTRIES_MAX:
        raise ExceptionFileError(
            f"delta file counts (added {n_added:,}, removed {n_removed:,}, result {result_count:,}) "
            "exceed the limits"
        )
    if to_version <= from_version:
        raise ExceptionFileError(f"delta file goes from version {from_version} to {to_version}")
    body = memoryview(data)[DELTA_HEADER_BYTES:]
    expected_bytes = (n_added + n_removed) * KEY_BYTES
    if len(body) != expected_bytes:
        raise ExceptionFileError(
            f"delta file body is {len(body):,} bytes; the header says {n_added + n_removed:,} keys × "
            f"{KEY_BYTES} = {expected_bytes:,} bytes"
        )
    computed_sha256 = hashlib.sha256(body).digest()
    if computed_sha256 != body_sha256:
        raise ExceptionFileError(
            f"delta file body is corrupt: SHA-256 {computed_sha256.hex().upper()}, "
            f"the header says {body_sha256.hex().upper()}"
        )
    keys = [bytes(body[i : i + KEY_BYTES]) for i in range(0, len(body), KEY_BYTES)]
    for part, start, stop in (("added", 0, n_added), ("removed", n_added, n_added + n_removed)):
        for i in range(start + 1, stop):
            if keys[i] <= keys[i - 1]:
                raise ExceptionFileError(f"delta file {part} keys are not strictly ascending at {i - start}")
    try:
        cards = [decode_key(key) for key in keys]
    except ExceptionFileError as exc:
        raise ExceptionFileError(f"delta file: {exc}") from None
    return Delta(
        from_version=from_version,
        to_version=to_version,
        added=tuple(cards[:n_added]),
        removed=tuple(cards[n_added:]),
        result_count=result_count,
        result_sha256=result_sha256,
    )


def apply_delta(current: ExceptionFile, data: bytes | bytearray | memoryview) -> ExceptionFile:
    """The terminal's side: ``current`` (list N) + the delta file → list M, verified against the
    checksum the platform put in the delta. Raises ExceptionFileError (reload the full list) when
    the terminal does not hold version N or the result differs from the platform's list M."""
    delta = decode_delta(data)
    if current.version != delta.from_version:
        raise ExceptionFileError(
            f"delta goes from list version {delta.from_version}, the terminal holds {current.version}: "
            "reload the full list"
        )
    result = current.apply_delta(
        delta.added, delta.removed, delta.to_version, expected_body_sha256=delta.result_sha256
    )
    if len(result) != delta.result_count:  # implied by the SHA-256; kept as a cheap assertion
        raise ExceptionFileError(f"delta result has {len(result):,} entries, expected {delta.result_count:,}")
    return result


__all__ = [
    "DELTA_ENTRIES_MAX",
    "DELTA_FORMAT_VERSION",
    "DELTA_HEADER_BYTES",
    "DELTA_MAGIC",
    "Delta",
    "apply_delta",
    "decode_delta",
    "encode_delta",
    "encode_delta_to",
]
