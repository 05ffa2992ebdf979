"""A terminal's small durable state: its STAN counter and the reversals it still owes the host.

One JSON file per terminal in the terminal's data directory (``terminal-<F41>.json``)::

    {"format": "citycard-terminal-store/1", "terminal_id": "00000001", "stan": 42,
     "pending_reversals": [{"stan": "000041", "reason": "98", "message": "0400…hex", "added_at": "…"}]}

Why durable: a reversal (0400) is owed when an authorisation got no answer (the host may have
approved it) or when the card declined after the issuer approved (pboc-notes §10; DESIGN.md §4
flow 2, "reversal on timeout"). If the terminal stops before the host acknowledges the reversal,
the next run must send it again — so it is written (temp file, fsync, rename, directory fsync)
before the terminal moves on, and removed only when a 0410 arrives. The STAN is likewise stored
before it is used, so a restart never reuses one (the host matches reversals on F11 + F41).

A message is kept as the hex of its ISO 8583 encoding without the MAC (the MAC is added again
when it is sent, under whatever MAK the current sign-on gave). No key and no PIN block is stored:
a reversal carries neither (``iso8583.builders.reversal`` drops F52, F26, F35 and F64).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citycard.iso8583.builders import STAN_MAX
from citycard.iso8583.message import Iso8583Error, decode, encode

STORE_FORMAT = "citycard-terminal-store/1"
PENDING_REVERSALS_MAX = 100  # a terminal that owes more than this must not take more payments
STORE_BYTES_MAX = 1024 * 1024
TERMINAL_ID = re.compile(r"^[0-9A-Za-z]{8}$")  # F41 ans8 (we use letters and digits only)


class TerminalStoreError(ValueError):
    """The store file cannot be read or trusted, or a limit was reached; the message says why."""


@dataclass(frozen=True, slots=True)
class PendingReversal:
    stan: str  # F11 of the reversal (= the original's)
    reason: str  # F39: 98 no answer, 06 card declined after approval
    message: bytes  # the encoded 0400 without F64
    added_at: str

    def fields(self) -> dict[str, Any]:
        fields, _ = decode(self.message)
        return fields


class TerminalStore:
    """The STAN counter and pending reversals of one terminal (see the module note)."""

    def __init__(self, directory: str | Path, terminal_id: str):
        if not TERMINAL_ID.fullmatch(terminal_id):
            raise TerminalStoreError(f"terminal id must be 8 letters or digits, got {terminal_id!r}")
        self.path = Path(directory) / f"terminal-{terminal_id}.json"
        self.terminal_id = terminal_id
        self._stan = 0
        self._pending: list[PendingReversal] = []
        if self.path.exists():
            self._load()

    # --- reading and writing ------------------------------------------------------------------
    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
            if len(raw) > STORE_BYTES_MAX:
                raise TerminalStoreError(f"{self.path}: {len(raw)} bytes, more than {STORE_BYTES_MAX}")
            document = json.loads(raw)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TerminalStoreError(f"{self.path}: cannot be read ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != STORE_FORMAT:
            raise TerminalStoreError(f"{self.path}: not a terminal store (format {STORE_FORMAT!r})")
        if document.get("terminal_id") != self.terminal_id:
            raise TerminalStoreError(
                f"{self.path}: belongs to terminal {document.get('terminal_id')!r}, not {self.terminal_id!r}"
            )
        stan = document.get("stan")
        if not isinstance(stan, int) or not 0 <= stan <= STAN_MAX:
            raise TerminalStoreError(f"{self.path}: stan must be 0..{STAN_MAX}")
        pending = document.get("pending_reversals")
        if not isinstance(pending, list) or len(pending) > PENDING_REVERSALS_MAX:
            raise TerminalStoreError(
                f"{self.path}: pending_reversals must be a list of at most {PENDING_REVERSALS_MAX}"
            )
        self._stan = stan
        try:
            self._pending = [
                PendingReversal(
                    item["stan"], item["reason"], bytes.fromhex(item["message"]), item["added_at"]
                )
                for item in pending
            ]
            for item in self._pending:
                item.fields()  # each must still decode
        except (KeyError, TypeError, ValueError) as exc:
            raise TerminalStoreError(f"{self.path}: a pending reversal is malformed ({exc})") from None

    def _save(self) -> None:
        document = {
            "format": STORE_FORMAT,
            "terminal_id": self.terminal_id,
            "stan": self._stan,
            "pending_reversals": [
                {
                    "stan": p.stan,
                    "reason": p.reason,
                    "message": p.message.hex().upper(),
                    "added_at": p.added_at,
                }
                for p in self._pending
            ],
        }
        data = json.dumps(document, indent=1).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    # --- the STAN -----------------------------------------------------------------------------
    def next_stan(self) -> int:
        """The next STAN (F11, 1..999999, wrapping), stored before it is returned."""
        self._stan = self._stan % STAN_MAX + 1
        self._save()
        return self._stan

    # --- reversals ----------------------------------------------------------------------------
    @property
    def pending(self) -> tuple[PendingReversal, ...]:
        return tuple(self._pending)

    def add_reversal(self, fields: dict[str, Any], *, now: dt.datetime | None = None) -> PendingReversal:
        """Keep a 0400 until the host acknowledges it; refuses past :data:`PENDING_REVERSALS_MAX`."""
        if fields.get("t") != "0400":
            raise TerminalStoreError(f"only 0400 reversals are kept, got {fields.get('t')!r}")
        if len(self._pending) >= PENDING_REVERSALS_MAX:
            raise TerminalStoreError(
                f"{PENDING_REVERSALS_MAX} reversals already pending: send them before taking payments"
            )
        try:
            message = encode({k: v for k, v in fields.items() if k != "64"})
        except Iso8583Error as exc:
            raise TerminalStoreError(f"reversal cannot be encoded: {exc}") from None
        moment = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        item = PendingReversal(fields["11"], fields.get("39", "98"), message, moment)
        self._pending.append(item)
        self._save()
        return item

    def remove_reversal(self, stan: str) -> None:
        """The host acknowledged the reversal with this STAN: forget it."""
        kept = [p for p in self._pending if p.stan != stan]
        if len(kept) != len(self._pending):
            self._pending = kept
            self._save()
