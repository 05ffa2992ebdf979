"""What a kernel run ends with: the outcome kind, the bits, the reasons and the data to keep.

EMV Book A §6 names the outcomes a contactless kernel hands back (approved, declined, online
request, try another interface, end application); the contact flow ends the same way (Book 3
§10.11). A :class:`Result` carries everything a terminal program needs afterwards:

- for an online message (ISO 8583 field 55) the IC data TLV, :attr:`Result.field55`, in the tag
  order Chinese acquirers use (pboc-notes §10);
- for an offline approval (TC) the store-and-forward :class:`BatchRecord`, identified by
  PAN + PSN + ATC (DESIGN.md §3, idempotency), which clearing later checks in the issuer's HSM.

Steps stop a transaction by raising :class:`Stop`; the runner catches it and builds the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from citycard.emv.tlv import encode_length, normalize_tag


class Outcome(StrEnum):
    APPROVED_OFFLINE = "approved_offline"
    APPROVED_ONLINE = "approved_online"
    DECLINED = "declined"
    ONLINE_REQUEST = "online_request"
    TRY_ANOTHER_INTERFACE = "try_another_interface"
    END_APPLICATION = "end_application"


class Stop(Exception):  # noqa: N818 — a control-flow signal, not an error
    """Raised by a step that has decided the outcome; the runner turns it into a :class:`Result`."""

    def __init__(self, kind: Outcome, reason: str):
        super().__init__(f"{kind.value}: {reason}")
        self.kind = kind
        self.reason = reason


# Field 55 of an authorisation request or a TC upload, in the order POS code uses (pboc-notes §10);
# DF31 (script results) is added when scripts ran. Absent tags are left out.
FIELD55_TAGS = (
    "9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A", "82", "9F1A",
    "9F03", "9F33", "9F34", "9F35", "9F1E", "84", "9F09", "9F41", "9F63", "9F5D", "DF31",
)  # fmt: skip
FIELD55_BYTES_MAX = 255  # LLLVAR b..255 in the CUPS layout
assert all(normalize_tag(tag) == tag for tag in FIELD55_TAGS)

# The offline batch record (a TC for store-and-forward upload): (field name, tag).
BATCH_TAGS = (
    ("atc", "9F36"),
    ("ac", "9F26"),
    ("iad", "9F10"),
    ("unpredictable_number", "9F37"),
    ("amount", "9F02"),
    ("currency", "5F2A"),
    ("date", "9A"),
    ("type", "9C"),
    ("country", "9F1A"),
    ("tvr", "95"),
    ("aip", "82"),
    ("available_offline_amount", "9F5D"),
)


_FIELD55_HEADERS = tuple((tag, bytes.fromhex(tag)) for tag in FIELD55_TAGS)  # primitive tags, checked once


def field55(values: dict[str, bytes]) -> bytes:
    """The IC data TLV of field 55 from ``values`` (tag → value), in :data:`FIELD55_TAGS` order.

    >>> field55({"9F02": bytes.fromhex("000000000150"), "9F26": bytes(8)}).hex().upper()
    '9F260800000000000000009F0206000000000150'
    """
    out = b"".join(
        header + encode_length(len(value)) + value
        for tag, header in _FIELD55_HEADERS
        if (value := values.get(tag)) is not None
    )
    if len(out) > FIELD55_BYTES_MAX:
        raise ValueError(f"field 55 would be {len(out)} bytes, at most {FIELD55_BYTES_MAX}")
    return out


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One offline-approved transaction (TC) as the terminal stores and later uploads it.

    Hex strings for the EMV values (upper case), integers for money. ``key`` is the identity the
    platform deduplicates on: PAN + PSN + ATC.
    """

    pan: str
    psn: str
    atc: str
    ac: str
    iad: str
    unpredictable_number: str
    amount: str
    currency: str
    date: str
    type: str
    country: str
    tvr: str
    aip: str
    available_offline_amount: str
    amount_fen: int
    balance_fen_after: int | None
    field55: str

    @property
    def key(self) -> str:
        return f"{self.pan}:{self.psn}:{self.atc}"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {"key": self.key}


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One kernel step as it happened: its name, what it found, when (ms since the start)."""

    name: str
    detail: str
    at_ms: float


@dataclass(frozen=True)
class Result:
    """The end of one kernel run (see the module note). Bytes are the raw EMV values."""

    kind: Outcome
    reasons: tuple[str, ...]
    tvr: bytes
    tsi: bytes
    cvm_results: bytes
    steps: tuple[StepRecord, ...]
    interface: str  # "contactless" or "contact"
    suite: str | None = None  # "INTL" or "GM" once GPO chose it
    aid: bytes = b""
    pan: str | None = None
    psn: str | None = None
    amount_fen: int = 0
    cid: int | None = None  # 0x40 TC, 0x80 ARQC, 0x00 AAC
    field55: bytes = b""
    batch_record: BatchRecord | None = None
    balance_fen_after: int | None = None  # 9F5D on an offline EC approval
    authorisation_response_code: bytes | None = None  # 8A from the issuer (online)
    script_results: bytes = b""  # DF31
    capp_record_read: bytes | None = None  # Part 14: the record before this tap (READ CAPP DATA)
    capp_record_written: bytes | None = None  # Part 14: the record committed with the fare
    data: dict[str, bytes] = field(default_factory=dict)  # every terminal and card value at the end

    @property
    def approved(self) -> bool:
        return self.kind in (Outcome.APPROVED_OFFLINE, Outcome.APPROVED_ONLINE)

    @property
    def pan_masked(self) -> str | None:
        if self.pan is None:
            return None
        return self.pan[:6] + "*" * max(len(self.pan) - 10, 0) + self.pan[-4:]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no keys, masked PAN; the batch record keeps the full PAN for upload)."""
        from citycard.emv.bits import TSI, TVR

        return {
            "outcome": self.kind.value,
            "reasons": list(self.reasons),
            "interface": self.interface,
            "suite": self.suite,
            "aid": self.aid.hex().upper(),
            "pan": self.pan_masked,
            "psn": self.psn,
            "amount_fen": self.amount_fen,
            "cid": f"{self.cid:02X}" if self.cid is not None else None,
            "tvr": self.tvr.hex().upper(),
            "tvr_bits": TVR.decode(self.tvr),
            "tsi": self.tsi.hex().upper(),
            "tsi_bits": TSI.decode(self.tsi),
            "cvm_results": self.cvm_results.hex().upper(),
            "balance_fen_after": self.balance_fen_after,
            "authorisation_response_code": (
                self.authorisation_response_code.decode("ascii", "replace")
                if self.authorisation_response_code is not None
                else None
            ),
            "script_results": self.script_results.hex().upper(),
            "capp_record_read": self.capp_record_read.hex().upper() if self.capp_record_read else None,
            "capp_record_written": (
                self.capp_record_written.hex().upper() if self.capp_record_written else None
            ),
            "field55": self.field55.hex().upper(),
            "batch_record": self.batch_record.as_dict() if self.batch_record else None,
            "steps": [{"step": s.name, "detail": s.detail, "at_ms": round(s.at_ms, 3)} for s in self.steps],
        }
