"""A bus validator and a taxi terminal program (issue 7 item 2; docs/validators.md).

One tap = the kernel's qPBOC flow with Part 14 (:func:`citycard.kernel.qpboc.run_qpboc`) whose
amount is priced by the fare rules from the trip record the card holds
(:func:`citycard.sectors.transit.price_tap`, called between READ CAPP DATA and GPO through
``CappWrite(price=…)``), the exception file (blacklist) checked by the kernel, then the journal:

1. READ CAPP DATA → the card's trip record → ``price_tap`` → (amount, new record) or a refusal
   (double tap, exit without entry under ``refuse``): a refusal declines before GPO, nothing on
   the card changes;
2. GPO with the priced amount (0 fen allowed: a free rider, a segmented exit) → TC, records, fDDA,
   exception file → UPDATE CAPP DATA CACHE: the card commits the fare and the record together;
3. the upload (:func:`citycard.clearing.record.upload_dict` + the ``"transit"`` object) is
   appended to the :class:`~citycard.terminals.journal.TapJournal` (committed and fsync'd) — only
   then is the tap **approved** (green light) and ``journal_seq`` set.

Declined taps are not journaled (there is no TC to clear); the journal counts them.

Parameters (:meth:`Validator.apply_fares`, :meth:`apply_blacklist`, :meth:`apply_capks`) replace
the validator's tables between taps; :attr:`Validator.versions` is what it reports to the platform.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from citycard.clearing.record import upload_dict
from citycard.kernel.capp import CappSigner, CappWrite, PricingRefused
from citycard.kernel.context import Terminal
from citycard.kernel.outcome import Outcome, Result
from citycard.kernel.params import CapkTable, ExceptionFile
from citycard.kernel.qpboc import run_qpboc
from citycard.reader.transport import Transport
from citycard.sectors.transit import CardState, Decision, FareTable, Tap, TapError, price_tap
from citycard.terminals.journal import JournalError, TapJournal

TRANSIT_SFI = 0x15  # the transit file (data/applications/transit.toml)
TEXT_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")  # clearing's terminal id / operator / route / vehicle
VEHICLE_CHARS_MAX = 8  # the trip record's vehicle field
TAP_KINDS_BY_DEVICE = {"bus": ("entry", "exit", "flat"), "taxi": ("taxi",)}

DeviceKind = Literal["bus", "taxi"]


class ValidatorError(ValueError):
    """A validator set up or asked wrongly (bad configuration, a tap kind its line cannot take):
    the message says what; nothing was sent to the card."""


@dataclass(frozen=True)
class ValidatorConfig:
    """What this device is: its terminal id (the platform's, also the journal's batch prefix), the
    operator it clears for, bus or taxi, the line it serves and the vehicle it is fitted in."""

    terminal_id: str
    operator: str
    kind: DeviceKind
    line: str
    vehicle: str

    def __post_init__(self) -> None:
        for name in ("terminal_id", "operator", "line", "vehicle"):
            value = getattr(self, name)
            if not isinstance(value, str) or not TEXT_RE.fullmatch(value):
                raise ValidatorError(f"{name}: {value!r} must be 1–32 of A-Z a-z 0-9 _ . -")
        if len(self.vehicle) > VEHICLE_CHARS_MAX:
            raise ValidatorError(f"vehicle: at most {VEHICLE_CHARS_MAX} characters (the trip record's field)")
        if self.kind not in TAP_KINDS_BY_DEVICE:
            raise ValidatorError(f"kind must be bus or taxi, got {self.kind!r}")

    @property
    def terminal_class(self) -> str:
        """The blacklist class this device downloads (``platform.blacklist.TERMINAL_CLASSES``)."""
        return self.kind


@dataclass(frozen=True)
class TapOutcome:
    """What one tap ended with. ``approved`` only when the card gave a TC, committed the record and
    the journal holds the upload (``journal_seq``); ``reason`` says why in every case."""

    approved: bool
    amount_fen: int
    decision: Decision | None
    reason: str
    result: Result | None
    journal_seq: int | None = None
    upload: dict[str, Any] | None = None


def transit_object(decision: Decision, *, line: str, stop: str | None, holder_kind: str) -> dict[str, Any]:
    """The ``"transit"`` object of an upload (:mod:`citycard.clearing.transit`)."""
    return {
        "kind": decision.kind,
        "line": line,
        "stop": stop or None,
        "fare_fen": decision.fare_fen,
        "refund_fen": decision.refund_fen,
        "reasons": list(decision.reasons),
        "holder_kind": holder_kind,
    }


class Validator:
    """A bus validator or taxi terminal (module note). Not re-entrant: one tap at a time (a lock)."""

    def __init__(
        self,
        config: ValidatorConfig,
        *,
        fares: FareTable,
        terminal: Terminal,
        capp_signer: CappSigner,
        journal: TapJournal,
        capks_version: int = 0,
        fares_name: str = "panzhihua",
    ):
        if not terminal.profile.capp:
            raise ValidatorError("the validator's terminal profile must support Part 14 (capp=True)")
        self.config = config
        self.terminal = terminal
        self.capp_signer = capp_signer
        self.journal = journal
        self._lock = threading.Lock()
        self._capks_version = capks_version
        self.fares_name = fares_name  # the platform's name of the table (reported with its version)
        self.fares = self._checked_fares(fares)

    # --- parameters -----------------------------------------------------------------------------
    def _checked_fares(self, table: FareTable) -> FareTable:
        line = table.lines.get(self.config.line)
        if line is None:
            raise ValidatorError(f"fare table version {table.version} has no line {self.config.line!r}")
        if (line.fare == "metered") != (self.config.kind == "taxi"):
            raise ValidatorError(f"line {line.id} is {line.fare}: not for a {self.config.kind} device")
        if line.operator != self.config.operator and self.config.operator not in table.operators:
            raise ValidatorError(f"operator {self.config.operator!r} is not in the fare table")
        return table

    def apply_fares(self, table: FareTable) -> None:
        """Use ``table`` from the next tap (a table without this device's line is refused)."""
        checked = self._checked_fares(table)
        with self._lock:
            self.fares = checked

    def apply_blacklist(self, data: bytes | ExceptionFile, *, delta: bool = False) -> int:
        """Load a full exception file (bytes or object) or apply a delta (``delta=True``, the
        platform's CCXD format, checked against the list held); returns the version now held."""
        if isinstance(data, ExceptionFile):
            listing = data
        elif delta:
            current = self.terminal.exceptions
            if current is None:
                raise ValidatorError("a blacklist delta needs a list to apply it to (download the full list)")
            from citycard.platform.blacklist_format import apply_delta

            listing = apply_delta(current, data)
        else:
            listing = ExceptionFile.from_bytes(data)
        with self._lock:
            self.terminal = dataclasses.replace(self.terminal, exceptions=listing)
        return listing.version

    def apply_capks(self, capks: CapkTable, *, version: int) -> None:
        """Use the CAPK table ``capks`` (set version ``version``) from the next tap."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValidatorError(f"CAPK set version must be an integer ≥ 0, got {version!r}")
        with self._lock:
            self.terminal = dataclasses.replace(self.terminal, capks=capks)
            self._capks_version = version

    @property
    def versions(self) -> dict[str, int]:
        """``{"fares", "blacklist", "capks"}``: the parameter versions held (0 = none)."""
        exceptions = self.terminal.exceptions
        return {
            "fares": self.fares.version,
            "blacklist": exceptions.version if exceptions is not None else 0,
            "capks": self._capks_version,
        }

    # --- a tap ----------------------------------------------------------------------------------
    def _tap_for(self, tap_kind: str, stop: str | None, metered_fen: int | None, now: dt.datetime) -> Tap:
        if tap_kind not in TAP_KINDS_BY_DEVICE[self.config.kind]:
            raise ValidatorError(
                f"a {self.config.kind} device takes {', '.join(TAP_KINDS_BY_DEVICE[self.config.kind])} taps, not {tap_kind!r}"
            )
        if not isinstance(now, dt.datetime) or now.tzinfo is None or now.utcoffset() is None:
            raise ValidatorError(f"now must be an aware datetime, got {now!r}")
        try:
            return Tap(
                tap_kind,
                self.config.line,
                self.config.vehicle,
                now,
                stop=stop or "",
                metered_fen=metered_fen or 0,
            )
        except TapError as exc:
            raise ValidatorError(str(exc)) from None

    def _most_fen(self, tap: Tap) -> int:
        """The pre-processing amount: the most this tap can cost (the kernel re-checks the priced one)."""
        line = self.fares.lines[tap.line]
        if line.fare == "metered":
            return tap.metered_fen + line.surcharge_fen
        return max(1, line.max_fare_fen)

    def tap(
        self,
        transport: Transport,
        *,
        tap_kind: str,
        stop: str | None = None,
        metered_fen: int | None = None,
        now: dt.datetime,
    ) -> TapOutcome:
        """One tap of the card behind ``transport`` (module note). A wrong call (a tap kind this
        device does not take, a naive time) raises :class:`ValidatorError` before the card is touched."""
        with self._lock:
            return self._tap(transport, tap_kind, stop, metered_fen, now)

    def _tap(
        self, transport: Transport, tap_kind: str, stop: str | None, metered_fen: int | None, now: dt.datetime
    ) -> TapOutcome:
        tap = self._tap_for(tap_kind, stop, metered_fen, now)
        if not self.journal.has_room():  # red before the card pays, not after
            self.journal.note_decline()
            return TapOutcome(
                False, 0, None, f"journal full ({self.journal.pending_max} taps await upload)", None
            )
        fares = self.fares
        priced: dict[str, Any] = {}

        def price(read: bytes) -> tuple[int, bytes]:
            state = CardState.of(read, fares)
            holder_kind = fares.holder_kind_of_code(state.trip.concession) if state.trip else "resident"
            decision = price_tap(fares, card_state=state, tap=tap, holder_kind=holder_kind)
            priced.update(decision=decision, holder_kind=holder_kind)
            if decision.kind == "refused" or decision.record_bytes is None:
                raise PricingRefused(",".join(decision.reasons) or "refused")
            return decision.amount_fen, decision.record_bytes

        result = run_qpboc(
            transport,
            self.terminal,
            amount_fen=self._most_fen(tap),
            when=now,
            capp=CappWrite(TRANSIT_SFI, fares.record_id, price=price),
            capp_signer=self.capp_signer,
        )
        decision: Decision | None = priced.get("decision")
        if result.kind is not Outcome.APPROVED_OFFLINE or result.batch_record is None:
            self.journal.note_decline()
            return TapOutcome(
                False, 0, decision, result.reasons[-1] if result.reasons else result.kind.value, result
            )
        if decision is None or result.capp_record_written is None:
            raise AssertionError("an approved transit tap without its fare decision and record")
        upload = upload_dict(
            result.batch_record,
            terminal_id=self.config.terminal_id,
            operator=self.config.operator,
            route=self.config.line,
            vehicle=self.config.vehicle,
            tap_at=now,
        )
        upload["transit"] = transit_object(
            decision, line=tap.line, stop=tap.stop, holder_kind=priced["holder_kind"]
        )
        try:
            seq = self.journal.append(upload)
        except JournalError as exc:
            # The card has committed the fare: it is in the card's log, but this device cannot keep
            # it. Red light, and say so loudly (docs/validators.md, known limits).
            return TapOutcome(
                False, result.amount_fen, decision, f"journal refused the tap: {exc}", result, None, upload
            )
        return TapOutcome(True, result.amount_fen, decision, ", ".join(decision.reasons), result, seq, upload)


def versions_of(validators: Iterable[Validator]) -> dict[str, dict[str, int]]:
    """Each validator's held versions by terminal id (for a depot's status page)."""
    return {v.config.terminal_id: v.versions for v in validators}
