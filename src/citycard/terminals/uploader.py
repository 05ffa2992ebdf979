"""The validator's uploader: journaled taps → the platform's clearing, in batches, exactly once.

:meth:`Uploader.upload_pending` sends the journal's unacknowledged taps, oldest first, as batches
of at most ``batch_size`` to ``POST /v1/clearing/uploads`` (docs/validators.md). A batch's id is
``<terminal_id>:<first seq>-<last seq>`` and is also its ``Idempotency-Key``; the platform clears
a batch id once and answers a replay with the first summary.

- **Nothing is lost**: a tap leaves the pending set only when the platform's 200 answer for its
  batch has been recorded in the journal (:meth:`TapJournal.acknowledge`); an unacknowledged tap
  is never deleted.
- **Nothing twice**: the batch being sent is remembered in the journal before the request
  (:meth:`TapJournal.set_open_batch`); after a lost answer (timeout, reset, the process killed) the
  next run sends exactly that batch again under the same id — the platform replays its answer.
- **Outages**: a connection error, a timeout or a 5xx stops the run with ``failed`` set and
  everything not acknowledged still pending; the next run resumes (after hours or days — the
  journal holds up to ``PENDING_MAX`` taps). A 4xx (a key revoked, a record the schema refuses)
  also stops it: that needs a person, and nothing is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from citycard.terminals.journal import PENDING_READ_MAX, TapJournal

BATCH_SIZE_MAX = 1_000  # the API's 1 MB body limit holds ~1,000 taps (about 900 bytes each)
BATCHES_PER_RUN_MAX = 10_000  # one run's upper bound (10 M taps): a loop guard
TIMEOUT_S = 30.0
UPLOADS_PATH = "/v1/clearing/uploads"


@dataclass(frozen=True)
class UploadReport:
    """One run: batches sent and answered, records in them, records newly acknowledged, and why the
    run stopped early (``None``: the journal has nothing pending)."""

    batches: int
    records: int
    acknowledged: int
    failed: str | None
    replayed: int = 0  # batches the platform had already cleared (an answer lost before)
    exceptions: int = 0  # records clearing did not accept (forged, duplicate…: its exception queue)


class Uploader:
    """Uploads one journal for one terminal (module note). ``client``: an ``httpx.Client`` to use
    instead of a new one (tests, or a shared connection pool)."""

    def __init__(
        self,
        journal: TapJournal,
        *,
        base_url: str,
        api_key: str,
        terminal_id: str,
        batch_size: int = 500,
        timeout_s: float = TIMEOUT_S,
        client: httpx.Client | None = None,
    ):
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or not 1 <= batch_size <= BATCH_SIZE_MAX
        ):
            raise ValueError(f"batch_size must be 1 to {BATCH_SIZE_MAX}, got {batch_size!r}")
        if not 0 < timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600], got {timeout_s}")
        self.journal = journal
        self.terminal_id = terminal_id
        self.batch_size = min(batch_size, PENDING_READ_MAX)
        self._client = client or httpx.Client(base_url=base_url, timeout=timeout_s)
        self._headers = {"X-API-Key": api_key}
        self._owns_client = client is None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_batch(self) -> list[Any]:
        open_batch = self.journal.open_batch()
        if open_batch is not None:
            entries = self.journal.pending_between(*open_batch)
            if entries and (entries[0].seq, entries[-1].seq) == open_batch:
                return entries
            self.journal.close_open_batch()  # acknowledged meanwhile (or never fully sent): cut anew
        entries = self.journal.pending(self.batch_size)
        if entries:
            self.journal.set_open_batch(entries[0].seq, entries[-1].seq)
        return entries

    def upload_pending(self, *, max_batches: int = BATCHES_PER_RUN_MAX) -> UploadReport:
        """Send every pending tap (module note); stops at the first failure."""
        batches = records = acknowledged = replayed = exceptions = 0
        failed: str | None = None
        for _ in range(min(max_batches, BATCHES_PER_RUN_MAX)):
            entries = self._next_batch()
            if not entries:
                break
            batch_id = f"{self.terminal_id}:{entries[0].seq}-{entries[-1].seq}"
            body = {
                "terminal_id": self.terminal_id,
                "batch_id": batch_id,
                "records": [e.upload for e in entries],
            }
            try:
                answer = self._client.post(
                    UPLOADS_PATH, json=body, headers={**self._headers, "Idempotency-Key": batch_id}
                )
            except httpx.HTTPError as exc:
                failed = f"platform not reachable ({type(exc).__name__}: {exc}); {batch_id} stays pending"
                break
            if answer.status_code != 200:
                failed = f"{batch_id}: HTTP {answer.status_code} {_problem(answer)}"
                break
            summary = answer.json()
            acknowledged += self.journal.acknowledge([e.seq for e in entries], batch_id)
            batches += 1
            records += len(entries)
            replayed += bool(summary.get("replayed"))
            exceptions += int(summary.get("exceptions", 0))
        return UploadReport(batches, records, acknowledged, failed, replayed, exceptions)


def _problem(answer: httpx.Response) -> str:
    try:
        data = answer.json()
    except ValueError:
        return answer.text[:200]
    if isinstance(data, dict) and "code" in data:
        return f"{data['code']}: {str(data.get('detail', ''))[:200]}"
    return str(data)[:200]
