"""The terminal exception file (blacklist): blocked cards by PAN and PAN sequence number (EMV 4.3
Book 3 §10.6.1 "exception file checking"; pboc-notes §2.2, scale-anchors §2.3 and Part 3).

The list must stay fast at 1,000,000 entries on a terminal, so it is one immutable byte string —
read into memory whole, never parsed entry by entry — and a lookup is a binary search over it.

Binary format, version 1 (all integers big-endian)::

    offset size  field
         0    8  magic  43 43 58 46 0D 0A 1A 0A  ("CCXF\\r\\n\\x1a\\n": catches text-mode mangling)
         8    2  format version = 1
        10    2  key size in bytes = 11
        12    4  entry count n (at most EXCEPTION_FILE_ENTRIES_MAX)
        16    8  list version: the platform's sequence number of this list (deltas go N-1 → N)
        24   32  SHA-256 of the body: the checksum of the canonical sorted list, independent of
                 the list version, so a terminal that applied a delta can compare it with the
                 platform's
        56    4  reserved = 0
        60    4  CRC-32 (zlib) of bytes 0..59: a corrupt header field is named, not guessed
        64 11×n  body: n keys, strictly ascending as unsigned bytes, no duplicates

Key (11 bytes): PAN as BCD (EMV format cn, tag 5A), 12 to 19 digits, right-padded with F to 20
nibbles (10 bytes) ‖ PSN (5F34) as one BCD byte 00–99, or FF = "every PSN of this PAN". The key
holds the whole PAN, so membership is exact: no hash, no false "blocked" for another card. F is
not a digit, so a PAN that is a prefix of another (16 vs 17 digits) encodes differently. All keys
of one PAN are adjacent (PAN first) and the wildcard FF sorts last among them, so one binary
search finds every entry for a PAN.

Lookup :meth:`ExceptionFile.contains` ``(pan, psn)``: blocked when the list holds (PAN, PSN) or
(PAN, FF). With ``psn=None`` (the card has no 5F34) the card is blocked when the list holds any
entry for the PAN: a terminal cannot tell such a card apart from a listed one.

>>> f = ExceptionFile.build([("6212345678901234", "01"), ("6212345678901299", None)], version=7)
>>> f.contains("6212345678901234", "01"), f.contains("6212345678901234", "02")
(True, False)
>>> f.contains("6212345678901299", "05"), f.contains("62123456789012345", "01"), len(f), f.version
(True, False, 2, 7)
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import tempfile
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

MAGIC = b"CCXF\r\n\x1a\n"
FORMAT_VERSION = 1
HEADER = struct.Struct(">8sHHIQ32sII")
HEADER_BYTES = HEADER.size  # 64
HEADER_CRC_OFFSET = HEADER_BYTES - 4
PAN_BCD_BYTES = 10
KEY_BYTES = PAN_BCD_BYTES + 1  # 11
PAN_DIGITS_MIN = 12
PAN_DIGITS_MAX = 19  # EMV 5A: cn up to 19 digits
PSN_ANY = 0xFF
EXCEPTION_FILE_ENTRIES_MAX = 5_000_000  # 55 MB; a city's list is ~1 M, a terminal holds it whole
LIST_VERSION_MAX = 2**64 - 1
PROGRESS_EVERY_ENTRIES = 65_536
SPARSE_INDEX_STRIDE = 16  # one in-memory index key per 16 entries (see ExceptionFile.__init__)
_STRIDE_BYTES = SPARSE_INDEX_STRIDE * KEY_BYTES
_PAN_PAD = ["F" * (2 * PAN_BCD_BYTES - n) for n in range(2 * PAN_BCD_BYTES + 1)]

assert HEADER_BYTES == 64


class ExceptionFileError(ValueError):
    """A malformed exception file, entry or delta; the message says what and where."""


class BlockedCard(NamedTuple):
    """One entry: PAN digits and the 2-digit PSN, or ``None`` for every PSN of the PAN."""

    pan: str
    psn: str | None = None


def masked_pan(pan: str) -> str:
    """A PAN as it may appear in messages and logs: first 6 and last 4 digits (PCI DSS 3.4).

    >>> masked_pan("6212345678901234")
    '621234******1234'
    """
    if len(pan) < PAN_DIGITS_MIN:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def encode_key(pan: str, psn: str | None) -> bytes:
    """The 11-byte key of (PAN, PSN): BCD PAN F-padded to 10 bytes ‖ PSN byte (FF = any PSN).

    >>> encode_key("6212345678901234", "01").hex().upper()
    '6212345678901234FFFF01'
    >>> encode_key("6212345678901234567", None).hex().upper()
    '6212345678901234567FFF'
    """
    return bytes.fromhex(_key_text(pan, psn))


def _key_text(pan: str, psn: str | None) -> str:
    """The key as 22 upper-case hex digits. Sorting these strings sorts the keys (0–9 < F in
    ASCII as in nibbles), and CPython sorts one-byte-per-character strings faster than bytes
    (a specialised compare: 1.3 s against 1.5–2.6 s for a million keys on the project VM)."""
    if not isinstance(pan, str) or not PAN_DIGITS_MIN <= len(pan) <= PAN_DIGITS_MAX:
        shown = len(pan) if isinstance(pan, str) else type(pan).__name__
        raise ExceptionFileError(f"PAN must be {PAN_DIGITS_MIN} to {PAN_DIGITS_MAX} digits, got {shown}")
    if not (pan.isascii() and pan.isdigit()):
        raise ExceptionFileError(f"PAN must be digits only, got {masked_pan(pan)!r}")
    return pan + _PAN_PAD[len(pan)] + _psn_hex(psn)


def _psn_hex(psn: str | None) -> str:
    if psn is None:
        return "FF"
    if not isinstance(psn, str) or not 1 <= len(psn) <= 2 or not (psn.isascii() and psn.isdigit()):
        raise ExceptionFileError(f"PSN (5F34) must be 1 or 2 digits (00 to 99), got {psn!r}")
    return psn.zfill(2)


def decode_key(key: bytes) -> BlockedCard:
    """(PAN, PSN) back from an 11-byte key; ExceptionFileError when it is not a valid key.

    >>> decode_key(bytes.fromhex("6212345678901234FFFF01"))
    BlockedCard(pan='6212345678901234', psn='01')
    """
    if len(key) != KEY_BYTES:
        raise ExceptionFileError(f"exception file key must be {KEY_BYTES} bytes, got {len(key)}")
    text = key.hex().upper()
    pan = text[: 2 * PAN_BCD_BYTES].rstrip("F")
    psn = text[2 * PAN_BCD_BYTES :]
    if (
        not PAN_DIGITS_MIN <= len(pan) <= PAN_DIGITS_MAX
        or not pan.isdigit()
        or not (psn == "FF" or psn.isdigit())
    ):
        raise ExceptionFileError(f"exception file key {text} is not a BCD PAN padded with F and a BCD PSN")
    return BlockedCard(pan, None if psn == "FF" else psn)


def _check_list_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= LIST_VERSION_MAX:
        raise ExceptionFileError(f"list version must be an integer from 0 to 2^64-1, got {version!r}")


def _header(count: int, version: int, body_sha256: bytes) -> bytes:
    head = HEADER.pack(MAGIC, FORMAT_VERSION, KEY_BYTES, count, version, body_sha256, 0, 0)
    crc = zlib.crc32(head[:HEADER_CRC_OFFSET])
    return head[:HEADER_CRC_OFFSET] + crc.to_bytes(4, "big")


def _check_count(count: int) -> None:
    if count > EXCEPTION_FILE_ENTRIES_MAX:
        raise ExceptionFileError(
            f"exception file of {count:,} entries exceeds the limit of {EXCEPTION_FILE_ENTRIES_MAX:,}"
        )


class ExceptionFile:
    """An immutable, verified exception file. Build it with :meth:`build`, read it with
    :meth:`from_bytes` or :meth:`load`; ask :meth:`contains`. No Python object per entry: the
    whole file is one ``bytes``, plus a sparse index of one key in SPARSE_INDEX_STRIDE; a lookup
    is O(log n).
    """

    __slots__ = ("_count", "_data", "_sparse", "_version")

    def __init__(self, data: bytes, *, _verified: bool = False) -> None:
        if not _verified:
            raise TypeError("use ExceptionFile.build, ExceptionFile.from_bytes or ExceptionFile.load")
        self._data = data
        _, _, _, self._count, self._version, _, _, _ = HEADER.unpack_from(data)
        end = HEADER_BYTES + self._count * KEY_BYTES
        # Sparse index: every SPARSE_INDEX_STRIDE-th key (62,500 small objects per million entries,
        # ~4 ms to build); bisect finds the block in C, then ~4 Python steps finish inside it.
        self._sparse = [data[start : start + KEY_BYTES] for start in range(HEADER_BYTES, end, _STRIDE_BYTES)]

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        entries: Iterable[tuple[str, str | None]],
        *,
        version: int,
        progress: Callable[[int], None] | None = None,
    ) -> ExceptionFile:
        """A new list from (PAN, PSN-or-None) pairs; duplicates collapse into one entry.

        ``progress(n)`` is called with the number of entries encoded so far, every
        PROGRESS_EVERY_ENTRIES entries and at the end (for a progress bar).
        """
        _check_list_version(version)
        keys: list[str] = []
        append = keys.append
        for number, (pan, psn) in enumerate(entries, 1):
            try:
                append(_key_text(pan, psn))
            except ExceptionFileError as exc:
                raise ExceptionFileError(f"entry {number}: {exc}") from None
            if number % PROGRESS_EVERY_ENTRIES == 0:
                _check_count(number)  # stop early on a runaway input, not after sorting it
                if progress is not None:
                    progress(number)
        if progress is not None:
            progress(len(keys))
        unique = sorted(set(keys))
        _check_count(len(unique))
        return cls._from_body(bytes.fromhex("".join(unique)), len(unique), version)

    @classmethod
    def _from_body(cls, body: bytes, count: int, version: int) -> ExceptionFile:
        assert len(body) == count * KEY_BYTES
        head = _header(count, version, hashlib.sha256(body).digest())
        return cls(head + body, _verified=True)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, full_check: bool = False) -> ExceptionFile:
        """Verify and wrap a serialised list: header fields, header CRC-32, body size, body SHA-256.

        That is O(size) hashing and no per-entry work. ``full_check`` also decodes every key and
        checks the strict ascending order (~1 s per million entries): for files that did not come
        from :meth:`build`, e.g. in tests of a producer.
        """
        data = bytes(data)
        if len(data) < HEADER_BYTES:
            raise ExceptionFileError(
                f"exception file too short: {len(data)} bytes, the header alone is {HEADER_BYTES}"
            )
        magic, fmt, key_bytes, count, _, body_sha256, reserved, crc = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ExceptionFileError(
                f"not an exception file: magic {magic.hex().upper()}, expected {MAGIC.hex().upper()}"
            )
        computed_crc = zlib.crc32(data[:HEADER_CRC_OFFSET])
        if crc != computed_crc:
            raise ExceptionFileError(
                f"exception file header is corrupt: stored CRC-32 {crc:08X}, computed {computed_crc:08X}"
            )
        if fmt != FORMAT_VERSION:
            raise ExceptionFileError(
                f"exception file format version {fmt} is not supported (this reader knows {FORMAT_VERSION})"
            )
        if key_bytes != KEY_BYTES:
            raise ExceptionFileError(f"exception file key size is {key_bytes} bytes, expected {KEY_BYTES}")
        if reserved != 0:
            raise ExceptionFileError(f"exception file reserved header field is {reserved:08X}, expected 0")
        _check_count(count)
        body_bytes = len(data) - HEADER_BYTES
        if body_bytes != count * KEY_BYTES:
            raise ExceptionFileError(
                f"exception file body is {body_bytes:,} bytes; the header says {count:,} entries × "
                f"{KEY_BYTES} = {count * KEY_BYTES:,} bytes"
            )
        computed_sha256 = hashlib.sha256(memoryview(data)[HEADER_BYTES:]).digest()
        if computed_sha256 != body_sha256:
            raise ExceptionFileError(
                f"exception file body is corrupt: SHA-256 {computed_sha256.hex().upper()}, "
                f"the header says {body_sha256.hex().upper()}"
            )
        result = cls(data, _verified=True)
        if full_check:
            result._check_entries()
        return result

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, full_check: bool = False) -> ExceptionFile:
        """Read and verify the file at ``path`` (see :meth:`from_bytes`); errors name the file."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ExceptionFileError(f"{path}: cannot read the exception file: {exc.strerror}") from None
        try:
            return cls.from_bytes(data, full_check=full_check)
        except ExceptionFileError as exc:
            raise ExceptionFileError(f"{path}: {exc}") from None

    def _check_entries(self) -> None:
        previous = b""
        for number, key in enumerate(self._keys(), 1):
            try:
                decode_key(key)
            except ExceptionFileError as exc:
                raise ExceptionFileError(f"exception file entry {number}: {exc}") from None
            if key <= previous:
                raise ExceptionFileError(
                    f"exception file entry {number} ({key.hex().upper()}) is not above entry "
                    f"{number - 1} ({previous.hex().upper()}): the body must be sorted without duplicates"
                )
            previous = key

    # --- queries ----------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The list version (sequence number) the platform gave this list."""
        return self._version

    @property
    def body_sha256(self) -> bytes:
        """SHA-256 of the sorted body: the list's identity, whatever its version."""
        return self._data[24:56]

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"ExceptionFile(version={self._version}, entries={self._count:,})"

    def to_bytes(self) -> bytes:
        return self._data

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically (temporary file in the same folder, then rename)."""
        target = Path(path)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _key_at(self, position: int) -> bytes:
        start = HEADER_BYTES + position * KEY_BYTES
        return self._data[start : start + KEY_BYTES]

    def _lower_bound(self, key: bytes) -> int:
        """Position of the first key ≥ ``key`` (``len(self)`` when none): binary search, first over
        the sparse index (in C), then inside one block of SPARSE_INDEX_STRIDE keys."""
        block = bisect_left(self._sparse, key)  # sparse[block - 1] < key <= sparse[block]
        if block == 0:
            return 0
        lo = (block - 1) * SPARSE_INDEX_STRIDE + 1
        hi = min(block * SPARSE_INDEX_STRIDE, self._count)
        data = self._data
        while lo < hi:
            mid = (lo + hi) >> 1
            start = HEADER_BYTES + mid * KEY_BYTES
            if data[start : start + KEY_BYTES] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def contains(self, pan: str, psn: str | None) -> bool:
        """Is the card (PAN, PSN) blocked? See the module note for ``psn=None`` and wildcards."""
        key = encode_key(pan, psn)
        pan_bcd = key[:PAN_BCD_BYTES]
        position = self._lower_bound(pan_bcd)  # first entry of this PAN, if any
        # At most 101 entries share a PAN (PSN 00–99 and FF); usually one.
        while position < self._count:
            entry = self._key_at(position)
            if entry[:PAN_BCD_BYTES] != pan_bcd:
                return False
            if psn is None or entry[PAN_BCD_BYTES] == PSN_ANY or entry == key:
                return True
            position += 1
        return False

    def _keys(self) -> Iterator[bytes]:
        data = self._data
        for start in range(HEADER_BYTES, len(data), KEY_BYTES):
            yield data[start : start + KEY_BYTES]

    def entries(self) -> Iterator[BlockedCard]:
        """The entries in key order, decoded (one object each: for tools, not for lookups)."""
        for key in self._keys():
            yield decode_key(key)

    # --- deltas -----------------------------------------------------------------------------

    def apply_delta(
        self,
        added: Iterable[tuple[str, str | None]],
        removed: Iterable[tuple[str, str | None]],
        new_version: int,
        *,
        expected_body_sha256: bytes | None = None,
    ) -> ExceptionFile:
        """A new list = this one + ``added`` − ``removed``, as version ``new_version``.

        Strict, so that a terminal out of step with the platform finds out: the new version must
        be above this one, an added entry must be absent, a removed entry present, and
        ``expected_body_sha256`` (the platform's checksum of the resulting list) must match; any
        failure means "reload the full list". Cost: O((a + r)·log n) searches and one copy.
        """
        _check_list_version(new_version)
        if new_version <= self._version:
            raise ExceptionFileError(
                f"delta to list version {new_version} does not follow this list's version {self._version}"
            )
        add_keys = self._delta_keys(added, "added")
        remove_keys = self._delta_keys(removed, "removed")
        both = add_keys & remove_keys
        if both:
            raise ExceptionFileError(f"delta adds and removes the same entry {_describe(min(both))}")
        events: list[tuple[int, int, bytes]] = []  # (position, 0 = insert before / 1 = drop, key)
        for key in add_keys:
            position = self._lower_bound(key)
            if position < self._count and self._key_at(position) == key:
                raise ExceptionFileError(f"delta adds {_describe(key)}, which the list already holds")
            events.append((position, 0, key))
        for key in remove_keys:
            position = self._lower_bound(key)
            if position >= self._count or self._key_at(position) != key:
                raise ExceptionFileError(f"delta removes {_describe(key)}, which the list does not hold")
            events.append((position, 1, key))
        events.sort()
        count = self._count + len(add_keys) - len(remove_keys)
        _check_count(count)
        body = memoryview(self._data)[HEADER_BYTES:]
        chunks: list[bytes | memoryview] = []
        kept_from = 0
        for position, kind, key in events:
            chunks.append(body[kept_from * KEY_BYTES : position * KEY_BYTES])
            if kind == 0:
                chunks.append(key)
                kept_from = position
            else:
                kept_from = position + 1
        chunks.append(body[kept_from * KEY_BYTES :])
        result = self._from_body(b"".join(chunks), count, new_version)
        if expected_body_sha256 is not None and result.body_sha256 != expected_body_sha256:
            raise ExceptionFileError(
                f"list version {new_version} after the delta has SHA-256 {result.body_sha256.hex().upper()}, "
                f"the platform says {expected_body_sha256.hex().upper()}: reload the full list"
            )
        return result

    @staticmethod
    def _delta_keys(entries: Iterable[tuple[str, str | None]], what: str) -> set[bytes]:
        keys: set[bytes] = set()
        for number, (pan, psn) in enumerate(entries, 1):
            try:
                keys.add(encode_key(pan, psn))
            except ExceptionFileError as exc:
                raise ExceptionFileError(f"delta {what} entry {number}: {exc}") from None
        return keys


def _describe(key: bytes) -> str:
    card = decode_key(key)
    return f"{masked_pan(card.pan)}/{card.psn or 'any PSN'}"


def random_test_entries(count: int, *, seed: int | None = None) -> Iterator[tuple[str, str | None]]:
    """``count`` distinct random test entries (UnionPay-like 62… PANs of 16 or 19 digits; PSN 00 or
    01, about one in eight a wildcard) for benchmarks and demos. Same seed, same list.
    """
    if not 0 <= count <= EXCEPTION_FILE_ENTRIES_MAX:
        raise ExceptionFileError(f"count must be 0 to {EXCEPTION_FILE_ENTRIES_MAX:,}, got {count:,}")
    getrandbits = random.Random(seed).getrandbits
    seen: set[int] = set()
    psns = ("00", "01", "00", "01", "00", "01", "00", None)
    while len(seen) < count:
        bits = getrandbits(64)
        long_pan, psn = bits & 3 == 0, psns[(bits >> 2) & 7]
        number = (bits >> 5) % (10**17 if long_pan else 10**14)
        key = (number << 3) | (long_pan << 2) | (2 if psn is None else int(psn))  # one per entry
        if key in seen:
            continue
        seen.add(key)
        yield (f"62{number:017d}" if long_pan else f"62{number:014d}"), psn


__all__ = [
    "EXCEPTION_FILE_ENTRIES_MAX",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "KEY_BYTES",
    "MAGIC",
    "PSN_ANY",
    "BlockedCard",
    "ExceptionFile",
    "ExceptionFileError",
    "decode_key",
    "encode_key",
    "masked_pan",
    "random_test_entries",
]
