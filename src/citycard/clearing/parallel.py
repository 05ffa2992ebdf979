"""``--workers N``: the stateless half of clearing (:func:`~citycard.clearing.batch.check_records`:
parse, field-55 checks, TC and IAD-MAC verification) in N processes, by card partition.

Records are partitioned by card (CRC32 of PAN:PSN), so all of a card's taps come back together and
the parent can decide (duplicates, chain, refunds: :func:`~citycard.clearing.batch.decide`) and
write each partition as soon as it arrives, while the workers go on. Each worker opens the HSM once
(:class:`~citycard.clearing.verify.VerifierSpec`) and keeps it for all its partitions, so the
unwrapped IMKs are cached per worker. The workers never touch the database; only compact
:class:`~citycard.clearing.batch.Cleared` rows travel back (pickling is the cost that counts).
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from citycard.clearing.batch import (
    BatchResult,
    Checked,
    Cleared,
    Known,
    check_records,
    decide,
    digest_of,
    postings_for,
)
from citycard.clearing.verify import HsmVerifier, Verifier, VerifierSpec

PARTITIONS_PER_WORKER = 4  # at least: enough to balance the load between workers
RECORDS_PER_PARTITION = 2_000  # at most about: the parent starts writing after the first partition
WORKERS_MAX = 64
# The workers yield the CPU to the parent: it writes every partition in turn (the batch's critical
# path), while the workers run ahead of it; on a busy machine they take what the parent leaves.
WORKER_NICENESS = 5

_verifier: HsmVerifier | None = None
# The uploads, set in the parent just before the pool forks: the workers read them from their
# copy-on-write memory, so only partition positions travel to them (pickling uploads would cost the
# single-threaded parent more than the workers save).
_uploads: Sequence[Mapping[str, Any]] = ()


def _start(spec: VerifierSpec) -> None:
    global _verifier
    os.nice(WORKER_NICENESS)
    _verifier = spec.build()


def _run(part: list[int]) -> list[tuple[Any, ...]]:
    """One partition in a worker. Plain tuples travel back: a named tuple is rebuilt on unpickling
    by a Python-level ``__new__`` per object, several times the cost of a plain one."""
    assert _verifier is not None, "worker started without its verifier"
    checked = check_records([_uploads[i] for i in part], keys=_verifier, compact=True)
    return [
        (part[position], key, None if tap is None else tuple(tap), problem)
        for position, key, tap, problem in checked
    ]


_new_tuple = tuple.__new__


def _rebuild(rows: list[tuple[Any, ...]]) -> list[Checked]:
    """:func:`_run`'s plain rows back as :class:`Checked` with :class:`Cleared` taps."""
    return [
        _new_tuple(Checked, (position, key, None if tap is None else _new_tuple(Cleared, tap), problem))
        for position, key, tap, problem in rows
    ]


def partition(uploads: Sequence[Mapping[str, Any]], parts: int) -> list[list[int]]:
    """Positions split by card; a record without a usable PAN/PSN goes by what it has (malformed anyway)."""
    out: list[list[int]] = [[] for _ in range(parts)]
    for position, upload in enumerate(uploads):
        card = f"{upload.get('pan')}:{upload.get('psn')}" if isinstance(upload, Mapping) else ""
        out[zlib.crc32(card.encode()) % parts].append(position)
    return out


def partitions(count: int, workers: int) -> int:
    """How many card partitions for ``count`` records and ``workers`` processes."""
    return max(workers * PARTITIONS_PER_WORKER, count // RECORDS_PER_PARTITION, 1)


def _digest() -> str:
    """The batch digest (batch.digest_of) of the uploads, in a worker while the parent writes."""
    return digest_of(_uploads)


def checked_parts(
    uploads: Sequence[Mapping[str, Any]],
    *,
    keys: Verifier | VerifierSpec,
    workers: int,
    on_digest: Callable[[str], None] | None = None,
) -> Iterator[list[Checked]]:
    """Per card partition, as soon as it is ready, its records checked (:class:`Checked`, positions
    refer to ``uploads``): in ``workers`` forked processes, or in this one when ``workers`` is 1.
    ``on_digest``, if given, gets ``batch.digest_of(uploads)`` after the last partition (computed
    by a worker after the partitions, so the single-threaded parent does not spend its time on it)."""
    if not 1 <= workers <= WORKERS_MAX:
        raise ValueError(f"workers must be 1…{WORKERS_MAX}, got {workers}")
    parts = [p for p in partition(uploads, partitions(len(uploads), workers)) if p]
    if workers == 1:
        verifier = keys.build() if isinstance(keys, VerifierSpec) else keys
        for part in parts:
            checked = check_records([uploads[i] for i in part], keys=verifier, compact=True)
            yield [c._replace(position=part[c.position]) for c in checked]
        if on_digest is not None:
            on_digest(digest_of(uploads))
        return
    if not isinstance(keys, VerifierSpec):
        raise ValueError("workers > 1 need a VerifierSpec (each worker opens the HSM itself)")
    global _uploads
    context = multiprocessing.get_context("fork")  # the parent's imports and tables come for free
    _uploads = uploads
    try:
        with context.Pool(workers, initializer=_start, initargs=(keys,)) as pool:
            results = pool.imap(_run, parts)
            digest = None if on_digest is None else pool.apply_async(_digest)
            for rows in results:
                yield _rebuild(rows)
            if digest is not None and on_digest is not None:
                on_digest(digest.get())
    finally:
        _uploads = ()


def clear_parallel(
    uploads: Sequence[Mapping[str, Any]], *, spec: VerifierSpec, known: Known, workers: int
) -> BatchResult:
    """:func:`~citycard.clearing.batch.clear_batch` with its checks in ``workers`` processes, merged
    into one :class:`BatchResult` (equal to a single-process run up to order)."""
    merged = BatchResult()
    for checked in checked_parts(uploads, keys=spec, workers=workers):
        accepted, exceptions = decide(checked, uploads, known=known)
        for tap, refunded in accepted:
            merged.postings.extend(postings_for(tap, known.cards[tap.card].issuer, refunded=refunded))
        merged.exceptions.extend(exceptions)
    return merged
