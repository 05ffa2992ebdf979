"""``--workers N``: the stateless half of clearing (:func:`~citycard.clearing.batch.check_records`:
parse, field-55 checks, TC and IAD-MAC verification) in N processes, by card partition.

Records are partitioned by card (CRC32 of PAN:PSN), so all of a card's taps come back together and
the parent can decide (duplicates, chain, refunds: :func:`~citycard.clearing.batch.decide`) and
write each partition as soon as it arrives, while the workers go on. Each worker opens the HSM once
(:class:`~citycard.clearing.verify.VerifierSpec`) and keeps it for all its partitions, so the
unwrapped IMKs are cached per worker. Plain rows (:func:`~citycard.clearing.batch.checked_wire`)
travel back (pickling is the cost that counts); or, with ``then`` (the intake's
:class:`~citycard.clearing.store.PartitionPlanner` on a SQLite file), what the worker makes of its
partition — then it reads the database too, on a read-only connection of its own, never writes.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from citycard.clearing.batch import (
    BatchResult,
    Checked,
    DigestOfParts,
    Known,
    batch_postings,
    checked_taps,
    checked_wire,
    decide,
    digest_of,
    digest_part,
    from_wire,
)
from citycard.clearing.record import native_partition
from citycard.clearing.verify import HsmVerifier, Verifier, VerifierSpec
from citycard.crypto import libcrypto

PARTITIONS_PER_WORKER = 4  # at least: enough to balance the load between workers
# At most about: the parent starts writing after the first partition (tapered: a quarter of this).
# 8,000 rather than 2,000 since the workers decide (PartitionPlanner): each partition costs them a
# read transaction and a few queries, the parent a few statements — 1,000,000 records: 1.05–1.09×.
RECORDS_PER_PARTITION = 8_000
WORKERS_MAX = 64
# The workers yield the CPU to the parent: it writes every partition in turn (the batch's critical
# path), while the workers run ahead of it; on a busy machine they take what the parent leaves.
WORKER_NICENESS = 5

# The cyclic collector is off while a batch clears, in the parent and in the workers. A batch makes
# millions of short-lived tuples that reference counting frees, and no cycles (measured: a 50,000-
# record intake left 0 unreachable objects for gc.collect()); but the partitions the workers send
# ahead wait in the parent as rows, young objects that every collection walked: at CPython's 700 new
# objects it ran ~300 times a batch of 50,000 (~1.5 µs of the parent's CPU a record), at 20,000
# three times, still 13–27 ms in all. A batch is bounded (RECORDS_PER_BATCH_MAX), so is what waits.
_verifier: HsmVerifier | None = None
# The uploads, set in the parent just before the pool forks: the workers read them from their
# copy-on-write memory, so only partition positions travel to them (pickling uploads would cost the
# single-threaded parent more than the workers save).
_uploads: Sequence[Mapping[str, Any]] = ()
# What a worker does with a partition's Checked after the checks (checked_parts' ``then``), set
# like _uploads before the fork: its result travels back instead of the rows.
_then: Callable[[list[Checked]], Any] | None = None


def _start(spec: VerifierSpec) -> None:
    global _verifier
    os.nice(WORKER_NICENESS)
    gc.disable()  # a worker lives for one batch (see above)
    _verifier = spec.build()


_collector_lock = threading.Lock()
_collector_users = 0  # batches clearing in this process now (threads of a server)
_collector_was_enabled = True  # what the first of them found


@contextmanager
def batch_collector() -> Iterator[None]:
    """The collector while this process clears a batch: the objects there are now (the uploads
    above all) go to its permanent generation — forked workers then do not touch their
    copy-on-write pages when they collect — and automatic collection is off (see above). Both are
    undone when the last batch clearing in the process ends (batches in several threads at once
    share one setting; the collector then runs as before, at its own threshold)."""
    global _collector_users, _collector_was_enabled
    with _collector_lock:
        if _collector_users == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_users += 1
        gc.freeze()
    try:
        yield
    finally:
        with _collector_lock:
            _collector_users -= 1
            if _collector_users == 0:
                if _collector_was_enabled:
                    gc.enable()
                gc.unfreeze()


def _run(task: tuple[list[int], int, int]) -> tuple[Any, bytes]:
    """One partition in a worker (:func:`~citycard.clearing.batch.checked_wire`'s plain rows,
    positions within the partition; or, with ``then``, what it makes of the partition's
    :class:`Checked`), and the digest part (batch.digest_part) of the uploads ``start:stop`` — the
    batch digest's encoding shared by the workers, one slice per task, so it is no serial tail for
    one worker at the end."""
    assert _verifier is not None, "worker started without its verifier"
    part, start, stop = task
    records = [_uploads[i] for i in part]
    digest = digest_part(_uploads[start:stop])
    if _then is not None:
        return _then(checked_taps(records, keys=_verifier, positions=part)), digest
    return checked_wire(records, keys=_verifier), digest


def partition(
    uploads: Sequence[Mapping[str, Any]], parts: int, groups: Sequence[int] | None = None
) -> list[list[int]]:
    """Positions split by card into ``parts`` buckets (CRC-32 of ``PAN:PSN``, ascending positions in
    each); a record without a usable PAN/PSN goes by what it has (malformed anyway). ``groups``:
    the list each bucket goes to (default: its own) — several buckets may share one."""
    groups = range(parts) if groups is None else groups
    native = native_partition()
    if native is not None:  # the usual batch in C: the serial head before any worker (~0.2 µs a record)
        lists = native(uploads, parts, groups)
        if lists is not None:
            return lists
    crc32 = zlib.crc32
    try:  # the usual batch, dicts with both fields, in one comprehension (this runs before any worker)
        buckets = [
            crc32(f"{u['pan']}:{u['psn']}".encode()) % parts if type(u) is dict else -1 for u in uploads
        ]
    except KeyError:
        buckets = [-1] * len(uploads)
    if -1 in buckets:
        buckets = [b if b >= 0 else _bucket(uploads[i], parts) for i, b in enumerate(buckets)]
    out: list[list[int]] = [[] for _ in range(max(groups) + 1)]
    appends = [out[group].append for group in groups]
    for position, bucket in enumerate(buckets):
        appends[bucket](position)
    return out


def _bucket(upload: Any, parts: int) -> int:
    """The partition of any record: by ``PAN:PSN`` as text (``None`` for a missing one), or of the
    empty text for a record that is not a mapping."""
    card = f"{upload.get('pan')}:{upload.get('psn')}" if isinstance(upload, Mapping) else ""
    return zlib.crc32(card.encode()) % parts


TAPER_SPLIT = 4  # the first and the last partition of a parallel run come in this many pieces


def tapered(uploads: Sequence[Mapping[str, Any]], parts: int) -> list[list[int]]:
    """:func:`partition` into ``parts``, but the first and the last partition each split in
    :data:`TAPER_SPLIT` smaller ones (still whole cards): the parent, which writes the partitions in
    turn, waits less for the first one and has less left to write after the workers finish."""
    if parts < 3:
        return partition(uploads, parts)
    # crc % (parts·4): four fine buckets per partition; the middle ones merged four by four
    return partition(uploads, parts * TAPER_SPLIT, _tapered_groups(parts))


def _tapered_groups(parts: int) -> list[int]:
    """The list of each of :func:`tapered`'s ``parts × TAPER_SPLIT`` fine buckets: the first and the
    last :data:`TAPER_SPLIT` each their own, the others four to a list."""
    fine = parts * TAPER_SPLIT
    middle = [TAPER_SPLIT + (b - TAPER_SPLIT) // TAPER_SPLIT for b in range(TAPER_SPLIT, fine - TAPER_SPLIT)]
    last = [middle[-1] + 1 + i for i in range(TAPER_SPLIT)]
    return [*range(TAPER_SPLIT), *middle, *last]


def partitions(count: int, workers: int) -> int:
    """How many card partitions for ``count`` records and ``workers`` processes."""
    return max(workers * PARTITIONS_PER_WORKER, count // RECORDS_PER_PARTITION, 1)


def checked_parts(
    uploads: Sequence[Mapping[str, Any]],
    *,
    keys: Verifier | VerifierSpec,
    workers: int,
    on_digest: Callable[[str], None] | None = None,
    on_wait: Callable[[Sequence[Sequence[int]]], bool] | None = None,
    then: Callable[[list[Checked]], Any] | None = None,
) -> Iterator[Any]:
    """Per card partition, as soon as it is ready, its records checked (:class:`Checked`, positions
    refer to ``uploads``): in ``workers`` forked processes, or in this one when ``workers`` is 1.
    ``on_digest``, if given, gets ``batch.digest_of(uploads)`` after the last partition (its
    encoding done by the workers, a slice with each partition; the parent only hashes the parts).
    ``on_wait``, if given, is called with the partitions (positions, in the order they come) while
    the next partition is not ready yet, again and again until it returns ``False`` (work the
    parent does instead of waiting for the workers; with ``workers`` 1 it is never called).
    ``then``, if given, runs on each partition's :class:`Checked` list where the checks ran (in
    the worker, which inherits it from the fork: it need not pickle) and its result is yielded
    instead of the list."""
    if not 1 <= workers <= WORKERS_MAX:
        raise ValueError(f"workers must be 1…{WORKERS_MAX}, got {workers}")
    wanted = partitions(len(uploads), workers)
    parts = [p for p in (partition(uploads, wanted) if workers == 1 else tapered(uploads, wanted)) if p]
    if workers == 1:
        verifier = keys.build() if isinstance(keys, VerifierSpec) else keys
        for part in parts:
            checked = from_wire(checked_wire([uploads[i] for i in part], keys=verifier), part)
            yield checked if then is None else then(checked)
        if on_digest is not None:
            on_digest(digest_of(uploads))
        return
    if not isinstance(keys, VerifierSpec):
        raise ValueError("workers > 1 need a VerifierSpec (each worker opens the HSM itself)")
    global _uploads, _then
    # Opened here, the forked workers find libcrypto loaded and checked; each would otherwise open
    # and check it again before its first partition.
    libcrypto.load()
    context = multiprocessing.get_context("fork")  # the parent's imports and tables come for free
    _uploads, _then = uploads, then
    try:
        # each task's digest slice as long as its partition: the small first ones come back sooner
        bounds = list(itertools.accumulate((len(part) for part in parts), initial=0))
        assert bounds[-1] == len(uploads), "the partitions hold every record once"
        tasks = [(part, bounds[i], bounds[i + 1]) for i, part in enumerate(parts)]
        digest = DigestOfParts()  # hashed as the slices come: no serial tail after the last one
        with context.Pool(workers, initializer=_start, initargs=(keys,)) as pool:
            results = pool.imap(_run, tasks)  # in task order: the digest slices in order
            for part, _, _ in tasks:
                while on_wait is not None:
                    try:
                        rows, digest_text = results.next(timeout=0)
                        break
                    except multiprocessing.TimeoutError:
                        if not on_wait(parts):
                            on_wait = None
                else:
                    rows, digest_text = next(results)
                digest.add(digest_text)
                yield rows if then is not None else from_wire(rows, part)
        if on_digest is not None:
            on_digest(digest.hexdigest())
    finally:
        _uploads, _then = (), None


def clear_parallel(
    uploads: Sequence[Mapping[str, Any]], *, spec: VerifierSpec, known: Known, workers: int, batch_id: str
) -> BatchResult:
    """:func:`~citycard.clearing.batch.clear_batch` with its checks in ``workers`` processes, merged
    into one :class:`BatchResult`: the same exceptions and the same movements per account for any
    number of workers (the fares are grouped per card partition, as
    :func:`~citycard.clearing.store.intake` writes them, so their grouping follows the partitions)."""
    merged = BatchResult()
    fares = 0
    for checked in checked_parts(uploads, keys=spec, workers=workers):
        accepted, exceptions = decide(checked, uploads, known=known)
        postings = batch_postings(accepted, known.cards, batch_id=batch_id, first=fares)
        fares += sum(p.key.startswith("fares:") for p in postings)
        merged.postings.extend(postings)
        merged.exceptions.extend(exceptions)
    return merged
