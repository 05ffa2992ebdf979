"""The transaction context every kernel step reads and writes (emv-utils' shape, STYLE.md).

- :class:`TerminalProfile`: what the device is (its identifiers, and the values a device type
  imposes over the AID rows: TTQ, terminal type, suite; Part 14 support) — one per device program.
- :class:`Terminal`: the profile with the terminal parameters of :mod:`citycard.kernel.params`
  (AID table, CA public keys with the revocation list, exception file). The AID row chosen at
  final selection supplies country, currency, capabilities, TTQ and the rest
  (:meth:`Transaction.apply_aid`).
- :class:`Transaction`: terminal data objects (a TLV store by tag), card data objects (with the
  place each came from, to detect duplicates), TVR/TSI as :mod:`citycard.emv.bits` values, CVM
  results (9F34), the amount in fen, the suite, and the step log.

Times: the context keeps an aware datetime; the terminal's date and time (9A, 9F21) are its local
clock in Asia/Shanghai (DESIGN.md §3: local time only at the edges).
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from citycard.crypto.suite import GM, INTL, Suite
from citycard.emv.bits import TSI, TTQ, TVR, Bits
from citycard.emv.dol import fit, parse_dol
from citycard.emv.tags import tag_info
from citycard.emv.tlv import is_constructed
from citycard.kernel.outcome import StepRecord
from citycard.kernel.params import AidParameters, AidTable, CapkTable, ExceptionFile

CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")  # no DST since 1991
AMOUNT_FEN_MAX = 999_999_999_999  # n12
UN_BYTES = 4
STEPS_MAX = 256  # a transaction logs a few dozen steps; more is a loop
CVM_RESULTS_NONE = bytes.fromhex("3F0000")  # 9F34: no CVM performed (Book 4 Annex A4)
DOL_PLANS_MAX = 64  # distinct DOLs remembered (a terminal meets a handful)

Interface = Literal["contact", "contactless"]


# --- the terminal -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TerminalProfile:
    """What this device is, beyond its AID table: identifiers, and the few values a device type
    imposes over the AID rows (``None``: the AID row's value — TTQ 9F66, terminal type 9F35,
    DF69 suite). ``capp``: Part 14 extended-application transactions (DF60 = 01), off by default.
    """

    interface_device_serial: bytes = b"CC000001"  # 9F1E, an8
    terminal_id: bytes = b"00000001"  # 9F1C, an8
    merchant_id: bytes = b"898510141110001"  # 9F16, ans15
    merchant_name: bytes = b"CITYCARD TERMINAL".ljust(20)  # 9F4E, ans20
    acquirer_id: bytes = bytes.fromhex("000000000001")  # 9F01
    suite: Suite | None = None  # DF69: GM → 01, INTL → 00; None → the AID row's sm_supported
    ttq: bytes | None = None  # 9F66 over the AID row's
    terminal_type: int | None = None  # 9F35 over the AID row's
    capp: bool = False  # DF60 = 01 with a card that offers Part 14 (DF61)

    def __post_init__(self) -> None:
        if self.ttq is not None:
            TTQ.check(self.ttq)
        for name, value, size in (
            ("interface_device_serial", self.interface_device_serial, 8),
            ("terminal_id", self.terminal_id, 8),
            ("merchant_id", self.merchant_id, 15),
            ("merchant_name", self.merchant_name, 20),
            ("acquirer_id", self.acquirer_id, 6),
        ):
            if len(value) != size:
                raise ValueError(f"terminal {name} must be {size} bytes, got {len(value)}")
        if self.suite not in (None, GM, INTL):
            raise ValueError(f"terminal suite must be GM or INTL, got {self.suite!r}")

    @classmethod
    def bus_validator(cls, **changes: object) -> TerminalProfile:
        """An offline-only qPBOC electronic-cash reader on a bus: TTQ 28000080 (qPBOC, offline
        only, fDDA 01), unattended offline-only terminal type 26."""
        values: dict[str, object] = {
            "ttq": bytes.fromhex("28000080"),
            "terminal_type": 0x26,
            "merchant_name": b"CITYCARD BUS".ljust(20),
        }
        values.update(changes)
        return cls(**values)  # type: ignore[arg-type]

    def ttq_for(self, row: AidParameters) -> bytes:
        return self.ttq if self.ttq is not None else row.ttq

    def online_capable(self, row: AidParameters) -> bool:
        return not TTQ.new(self.ttq_for(row)).is_set("offline_only_reader")

    def suite_for(self, row: AidParameters) -> Suite:
        if self.suite is not None:
            return self.suite
        return GM if row.sm_supported else INTL


@dataclass(frozen=True)
class Terminal:
    """A terminal as the kernel sees it: its profile and its parameter tables
    (:mod:`citycard.kernel.params`)."""

    profile: TerminalProfile
    aids: AidTable
    capks: CapkTable
    exceptions: ExceptionFile | None = None


# --- the transaction --------------------------------------------------------------------------


@functools.lru_cache(maxsize=DOL_PLANS_MAX)
def dol_plan(dol: bytes) -> tuple[tuple[str, int, str | None], ...]:
    """A DOL as (tag, length, format or None for a constructed tag): parsed once per distinct DOL,
    since a terminal meets the same few PDOLs and CDOLs again and again.

    >>> dol_plan(bytes.fromhex("9F02069F6604"))
    (('9F02', 6, 'n'), ('9F66', 4, 'b'))
    """
    return tuple(
        (tag, length, None if is_constructed(tag) else tag_info(tag).format) for tag, length in parse_dol(dol)
    )


def n12(amount_fen: int) -> bytes:
    """An amount in fen as EMV n12 (6 bytes BCD).

    >>> n12(1250).hex()
    '000000001250'
    """
    if not 0 <= amount_fen <= AMOUNT_FEN_MAX:
        raise ValueError(f"amount must be 0 to {AMOUNT_FEN_MAX} fen, got {amount_fen}")
    return bytes.fromhex(f"{amount_fen:012d}")


def fen(tag_n12: bytes) -> int:
    """An n12 amount (6 bytes BCD) in fen; ValueError when it is not BCD."""
    text = tag_n12.hex()
    if len(tag_n12) != 6 or not text.isdigit():
        raise ValueError(f"an n12 amount must be 6 BCD bytes, got {text.upper() or 'nothing'}")
    return int(text)


@dataclass
class Transaction:
    """One transaction's state. Steps read and write it; only the card-talking steps hold a link."""

    profile: TerminalProfile
    amount_fen: int
    interface: Interface
    when: dt.datetime
    terminal: dict[str, bytes] = field(default_factory=dict)  # terminal data objects by tag
    card: dict[str, bytes] = field(default_factory=dict)  # card data objects by tag
    card_sources: dict[str, str] = field(default_factory=dict)  # tag → "GPO", "SFI 2 record 1", …
    tvr: Bits = field(default_factory=TVR.new)
    tsi: Bits = field(default_factory=TSI.new)
    cvm_results: bytes = CVM_RESULTS_NONE
    suite: Suite | None = None
    aid: bytes = b""
    aid_params: AidParameters | None = None
    records: list[tuple[int, int, bytes, bool]] = field(default_factory=list)  # (SFI, rec, 70 tmpl, ODA)
    static_data: bytes = b""  # static data to be authenticated (Book 3 §10.3)
    oda_record_problem: str | None = None  # an ODA record that was not a 70 template
    pdol_data: bytes = b""
    cdol1_data: bytes = b""
    cdol2_data: bytes = b""
    capp_read: bytes | None = None  # Part 14 record read before GPO (READ CAPP DATA)
    capp_written: bytes | None = None  # Part 14 record the card committed with the fare
    capp_planned: bytes | None = None  # Part 14 record the caller's pricing chose (before GPO)
    reasons: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def new(
        cls,
        profile: TerminalProfile,
        *,
        amount_fen: int,
        interface: Interface,
        when: dt.datetime | None = None,
        transaction_type: int = 0x00,
        amount_other_fen: int = 0,
        unpredictable_number: bytes | None = None,
    ) -> Transaction:
        """A transaction with its terminal data objects filled in (9F02, 9A, 9F21, 9F37, …)."""
        if not 0 < amount_fen <= AMOUNT_FEN_MAX:
            raise ValueError(f"amount must be 1 to {AMOUNT_FEN_MAX} fen, got {amount_fen}")
        if when is not None and when.tzinfo is None:
            raise ValueError("the transaction time must be an aware datetime")
        if unpredictable_number is not None and len(unpredictable_number) != UN_BYTES:
            raise ValueError(
                f"unpredictable number (9F37) must be {UN_BYTES} bytes, got {len(unpredictable_number)}"
            )
        moment = (when or dt.datetime.now(dt.UTC)).astimezone(CHINA_TIME)
        tx = cls(profile=profile, amount_fen=amount_fen, interface=interface, when=moment)
        tx.terminal.update(
            {
                "9F02": n12(amount_fen),
                "9F03": n12(amount_other_fen),
                "9A": bytes.fromhex(moment.strftime("%y%m%d")),
                "9F21": bytes.fromhex(moment.strftime("%H%M%S")),
                "9C": bytes([transaction_type]),
                "9F37": unpredictable_number or secrets.token_bytes(UN_BYTES),
                "9F1E": profile.interface_device_serial,
                "9F1C": profile.terminal_id,
                "9F16": profile.merchant_id,
                "9F4E": profile.merchant_name,
                "9F01": profile.acquirer_id,
                "DF60": b"\x00",
            }
        )
        return tx

    def apply_aid(self, row: AidParameters) -> None:
        """The AID row's terminal data (with the profile's overrides) for the chosen application."""
        profile = self.profile
        self.aid_params = row
        self.terminal.update(
            {
                "9F06": row.aid,
                "9F09": row.version,
                "9F1A": row.country_code,
                "5F2A": row.currency_code,
                "5F36": bytes([row.currency_exponent]),
                "9F35": bytes(
                    [profile.terminal_type if profile.terminal_type is not None else row.terminal_type]
                ),
                "9F33": row.terminal_capabilities,
                "9F40": row.additional_capabilities,
                "9F15": row.merchant_category,
                "9F66": profile.ttq_for(row),
                "9F7A": b"\x01" if row.ec_supported else b"\x00",
                "DF69": bytes([profile.suite_for(row).tag_df69]),
                "9F1B": min(row.floor_limit_fen, 0xFFFFFFFF).to_bytes(4, "big"),
            }
        )

    # --- the step log ------------------------------------------------------------------------
    def log(self, name: str, detail: str = "") -> None:
        if len(self.steps) >= STEPS_MAX:
            raise AssertionError(f"more than {STEPS_MAX} kernel steps: a loop")
        self.steps.append(StepRecord(name, detail, (time.perf_counter() - self.started) * 1000))

    # --- derived values ------------------------------------------------------------------------
    @property
    def today(self) -> dt.date:
        """The terminal's date (local), for expiry checks."""
        return self.when.date()

    @property
    def ttq(self) -> Bits:
        return TTQ.new(self.terminal["9F66"])

    @property
    def online_capable(self) -> bool:
        """TTQ "offline-only reader" clear (for contact: terminal type 9F35 not offline-only)."""
        if self.interface == "contactless":
            return not self.ttq.is_set("offline_only_reader")
        return self.terminal.get("9F35", b"\x22")[0] & 0x0F not in (3, 6)

    @property
    def contact_supported(self) -> bool:
        return self.ttq.is_set("contact_pboc_supported")

    def dol_values(self) -> dict[str, bytes]:
        """Every value a DOL may ask for: card data, then terminal data over it, then 95/9B/9F34 now."""
        values = dict(self.card)
        values.update(self.terminal)
        values["95"] = bytes(self.tvr)
        values["9B"] = bytes(self.tsi)
        values["9F34"] = self.cvm_results
        return values

    def dol_data(self, dol: bytes) -> bytes:
        """Data for a card's DOL (PDOL, CDOL1/2, DDOL) from :meth:`dol_values`, by the rules of
        Book 3 §5.4 as :func:`citycard.emv.dol.build_dol` applies them; DOLError when malformed."""
        values = self.dol_values()
        return b"".join(
            bytes(length) if fmt is None or (value := values.get(tag)) is None else fit(value, length, fmt)
            for tag, length, fmt in dol_plan(dol)
        )

    @property
    def pan(self) -> str | None:
        """The PAN digits: 5A, or the digits before the separator of track 2 equivalent data (57)."""
        tag_5a = self.card.get("5A")
        if tag_5a is not None:
            digits = tag_5a.hex().upper().rstrip("F")
            return digits if digits.isdigit() else None
        track2 = self.card.get("57")
        if track2 is not None:
            digits = track2.hex().upper().split("D", 1)[0]
            return digits if digits.isdigit() and "D" in track2.hex().upper() else None
        return None

    @property
    def psn(self) -> str | None:
        value = self.card.get("5F34")
        return value.hex() if value is not None else None

    def values(self) -> Mapping[str, bytes]:
        """A read-only view of everything known: card data with terminal data over it."""
        return self.dol_values()
