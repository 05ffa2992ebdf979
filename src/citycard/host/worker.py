"""Run a handler's synchronous ``process_batch`` in a child process, beside the server's event loop.

Why: in one process the event loop (framing, decoding, MACs, encoding) and the issuer's batch
(ARQCs, SQL) share one GIL, so their CPU time adds up on one core. In a child process the issuer
gets its own interpreter; on a 2-core machine the two halves overlap.

The child is *spawned* (no fork of a running event loop), builds its handler with
``factory(*args)`` (a ``"module:function"`` name, so it can be imported there), then serves
batches over a pipe one at a time, in order — the same contract as
:func:`citycard.host.server.threaded`: ONE batch at a time, one database transaction per batch.
On Linux the child asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``), so a
``kill -9`` of the server never leaves an orphan committing a batch whose answers are lost while
a restarted server is already taking reversals. It also exits at the end of its pipe.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkerError(RuntimeError):
    """The child could not start, or failed on a batch (the message says why)."""


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return  # UNCERTAIN elsewhere: the child still exits when the pipe closes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_main(conn: Any, factory: str, args: tuple[Any, ...], parent_pid: int) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s worker %(levelname)s: %(message)s"
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop (graceful shutdown)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    module_name, _, function_name = factory.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), function_name)(*args)
    except Exception as exc:  # noqa: BLE001 — any failure is reported to the parent, which refuses to start
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            requests = conn.recv()
        except (EOFError, OSError):
            return
        if requests is None:
            conn.send(("stopped", None))
            return
        try:
            answers = target.process_batch(requests)
        except Exception as exc:
            log.exception("batch of %d failed", len(requests))
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", answers))


class ProcessHandler:
    """:class:`citycard.host.server.Handler` whose ``process_batch`` runs in a spawned child process.

    Create it from the thread that lives as long as the server (the main thread): Linux delivers
    the parent-death signal when the *creating thread* exits.
    """

    def __init__(self, factory: str, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(child_conn, factory, args, os.getpid()), name="host-worker", daemon=True
        )
        self._process.start()
        child_conn.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self._process.kill()
            raise WorkerError(f"worker {factory} did not start within {START_TIMEOUT_S:.0f} s")
        status, payload = self._conn.recv()
        if status != "ready":
            self._process.join(STOP_TIMEOUT_S)
            raise WorkerError(f"worker {factory} failed to start: {payload}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-worker-pipe")

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _call(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        self._conn.send(requests)
        status, payload = self._conn.recv()
        if status != "ok":
            raise WorkerError(f"worker failed on a batch of {len(requests)}: {payload}")
        return payload  # type: ignore[no-any-return]

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, requests)

    def close(self) -> None:
        """Let the current batch finish, then stop the child."""
        self._executor.shutdown(wait=True)
        try:
            self._conn.send(None)
            if self._conn.poll(STOP_TIMEOUT_S):
                self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            pass
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            log.warning("worker did not stop; killing it")
            self._process.kill()
            self._process.join()
        self._conn.close()
