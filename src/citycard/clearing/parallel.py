"""``--workers N``: the pure :func:`~citycard.clearing.batch.clear_batch` over partitions, in processes.

Records are partitioned by card (CRC32 of PAN:PSN), so a card's duplicates and balance chain stay in
one partition and the merged result equals a single-process run up to order. Each worker opens the
HSM once (:class:`~citycard.clearing.verify.VerifierSpec`) and keeps it for all its partitions, so
the unwrapped IMKs and cipher objects are cached per worker. The parent only reads and writes the
database; the workers never touch it.
"""

from __future__ import annotations

import multiprocessing
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from citycard.clearing.batch import BatchResult, Cleared, ClearingException, Known, clear_batch, postings_for
from citycard.clearing.verify import HsmVerifier, VerifierSpec

PARTITIONS_PER_WORKER = 4  # at least: enough to balance the load between workers
RECORDS_PER_PARTITION = 2_000  # at most about: the parent starts writing after the first partition
WORKERS_MAX = 64

_verifier: HsmVerifier | None = None


def _start(spec: VerifierSpec) -> None:
    global _verifier
    _verifier = spec.build()


def _run(job: tuple[list[Mapping[str, Any]], Known]) -> tuple[list[tuple[Cleared, bool]], list[Any]]:
    """One partition in a worker; only the compact :class:`Cleared` rows travel back (the parent
    rebuilds the postings with the same :func:`postings_for`), pickling being the cost that counts."""
    uploads, known = job
    assert _verifier is not None, "worker started without its verifier"
    result = clear_batch(uploads, keys=_verifier, known=known)
    return [(Cleared.of(a.record), a.refunded) for a in result.accepted], result.exceptions


def partition(uploads: Sequence[Mapping[str, Any]], parts: int) -> list[list[int]]:
    """Positions split by card; a record without a usable PAN/PSN goes by what it has (malformed anyway)."""
    out: list[list[int]] = [[] for _ in range(parts)]
    for position, upload in enumerate(uploads):
        card = f"{upload.get('pan')}:{upload.get('psn')}" if isinstance(upload, Mapping) else ""
        out[zlib.crc32(card.encode()) % parts].append(position)
    return out


def _subset(known: Known, uploads: Sequence[Mapping[str, Any]]) -> Known:
    cards = {f"{u.get('pan')}:{u.get('psn')}" for u in uploads if isinstance(u, Mapping)}
    seen = (
        {key for key in known.seen if key.rsplit(":", 1)[0] in cards}
        if isinstance(known.seen, set)
        else known.seen
    )
    return Known({c: s for c, s in known.cards.items() if c in cards}, seen, known.now)


def clear_parallel_parts(
    uploads: Sequence[Mapping[str, Any]], *, spec: VerifierSpec, known: Known, workers: int
) -> Iterator[tuple[list[tuple[Cleared, bool]], list[ClearingException]]]:
    """:func:`clear_batch` in ``workers`` processes: per card partition, as soon as it is ready,
    the accepted taps as (:class:`Cleared`, refunded) and the exceptions (positions refer to
    ``uploads``), so the caller writes while the workers go on."""
    if not 1 <= workers <= WORKERS_MAX:
        raise ValueError(f"workers must be 1…{WORKERS_MAX}, got {workers}")
    count = max(workers * PARTITIONS_PER_WORKER, len(uploads) // RECORDS_PER_PARTITION)
    parts = [p for p in partition(uploads, count) if p]
    jobs = []
    for part in parts:
        chunk = [uploads[i] for i in part]
        jobs.append((chunk, _subset(known, chunk)))
    context = multiprocessing.get_context("fork")  # the parent's imports and tables come for free
    with context.Pool(workers, initializer=_start, initargs=(spec,)) as pool:
        for part, (cleared, exceptions) in zip(parts, pool.imap(_run, jobs), strict=True):
            yield cleared, [replace(e, position=part[e.position]) for e in exceptions]


def clear_parallel(
    uploads: Sequence[Mapping[str, Any]], *, spec: VerifierSpec, known: Known, workers: int
) -> BatchResult:
    """:func:`clear_batch` in ``workers`` processes, merged into one :class:`BatchResult` whose
    postings are rebuilt from the compact rows (equal to a single-process run up to order)."""
    merged = BatchResult()
    for cleared, exceptions in clear_parallel_parts(uploads, spec=spec, known=known, workers=workers):
        for tap, refunded in cleared:
            merged.postings.extend(postings_for(tap, known.cards[tap.card].issuer, refunded=refunded))
        merged.exceptions.extend(exceptions)
    return merged
