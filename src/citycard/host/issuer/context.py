"""The per-message context the participants read and write, and the per-batch state they share.

A :class:`Message` carries one request through the pipeline (jPOS-participant style): each
participant reads what earlier ones found and either records a finding or stops the message with a
response code (``rc``). The :class:`Batch` holds what one database transaction loaded for all its
messages — cards (locked), account balances, queued scripts — and what it will write back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from citycard.crypto.iad import PbocIad
from citycard.crypto.suite import Suite
from citycard.iso8583.builders import Kind

# Field 55 tags an online request must carry, with their exact lengths (pboc-notes §4.2, §10);
# 9F10 is variable (8 bytes + an optional IDD), checked by parse_iad.
IC_REQUIRED = {
    "9F26": 8, "9F27": 1, "9F37": 4, "9F36": 2, "95": 5, "9A": 3, "9C": 1,
    "9F02": 6, "5F2A": 2, "82": 2, "9F1A": 2, "9F03": 6,
}  # fmt: skip
IC_REQUIRED_VARIABLE = ("9F10",)
CID_ARQC = 0x80  # 9F27 bits 8–7 = 10: ARQC (EMV Book 3 §6.5.5.4)
CID_TYPE_MASK = 0xC0


@dataclass
class CardState:
    """A card row loaded (and locked) for the batch; participants update it in memory."""

    id: int
    pan: str
    psn: int
    expiry: dt.date
    suite: Suite
    status: str
    pvv: str | None
    pin_tries: int
    atc_max: int
    ec_balance_fen: int
    account: str
    ec_account: str
    day: dt.date | None
    day_total_fen: int
    scripts_pending: int = 0
    dirty: bool = False

    @property
    def tag_5f34(self) -> str:
        return f"{self.psn:02d}"

    def touch(self) -> None:
        self.dirty = True


@dataclass
class Message:
    """One request on its way through the pipeline."""

    index: int
    request: dict[str, Any]
    kind: Kind | None = None
    key: str | None = None  # idempotency key: F32:F41:F11:F7:MTI
    triple: tuple[str, str, str] | None = None  # a financial request's (F41, F42, F11), what reversals match
    rc: str | None = None  # set = the decision; later checks are skipped
    reason: str = ""  # why (for logs and tests; never a PIN or key)
    pan: str | None = None
    psn: int | None = None
    card: CardState | None = None
    amount_fen: int = 0
    ic: dict[str, bytes] | None = None  # F55 primitive tags
    iad: PbocIad | None = None
    arqc_ok: bool | None = None  # None = not checked
    arpc_00: bytes | None = None  # the ARPC for ARC "00", computed with the ARQC check
    atc_fresh: bool = False  # ATC above every ATC seen before: scripts may be delivered
    new_ec_balance_fen: int | None = None
    ledger_key: str | None = None
    posting: Any = None  # ledger.PostingRequest
    reverse_key: str | None = None  # 0400: the original's ledger key to reverse
    tag_91: bytes | None = None  # ARPC ‖ ARC for the response's field 55
    scripts_71: list[bytes] = field(default_factory=list)  # whole 71 templates
    scripts_72: list[bytes] = field(default_factory=list)
    delivered_script_ids: list[int] = field(default_factory=list)
    script_results: list[tuple[str, int]] = field(default_factory=list)  # DF31: (9F18 hex, result)
    advice_kind: str | None = None  # "tc_upload", "script_result" or "standin"
    response: dict[str, Any] | None = None
    response_bytes: bytes | None = None
    duplicate: bool = False  # answered from the message log (or an earlier copy in this batch)
    duplicate_of: Message | None = None  # the earlier copy in this batch whose answer this one gets
    pending_settlement: bool = False  # a 0500 to total once the batch's own messages ran
    extra: dict[str, Any] = field(default_factory=dict)  # more response fields, e.g. {"f63": …}
    pending_standin: bool = False  # a stand-in advice to book once the batch's originals are known
    pending_reversal: tuple[str, str, str, str | None] | None = None  # (F41, F42, STAN, batch) to look up
    store: bool = True  # False: not kept in the message log (format errors, network messages)

    def decline(self, rc: str, reason: str) -> None:
        if self.rc is None:
            self.rc, self.reason = rc, reason

    @property
    def stopped(self) -> bool:
        return self.rc is not None


@dataclass
class Batch:
    """What one database transaction loaded for its messages and will write back."""

    now: dt.datetime
    cards: dict[tuple[str, int], CardState] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)  # ledger account → available fen
    queued: dict[tuple[str, int], list[tuple[int, str]]] = field(default_factory=dict)  # (id, kind)
    new_accounts: dict[str, Any] = field(default_factory=dict)  # code → AccountKind, opened on first use
    originals: dict[tuple[str, str, str], Message] = field(default_factory=dict)  # (F41, F42, F11)
    reversed_keys: set[str] = field(default_factory=set)  # ledger keys reversed in this batch
    early_reversals: set[tuple[str, str, str]] = field(default_factory=set)  # reversals before an original

    @property
    def today(self) -> dt.date:
        return self.now.date()
