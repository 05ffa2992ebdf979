"""The transaction log (9F4D/9F4F) and the electronic-cash load log (DF4D/DF4F), both cyclic.

Entry points (BF0C of the FCI, pboc-notes §2.1): 9F4D / DF4D = SFI ‖ number of records. A log record
has no 70 template; it is the terminal and card data named by the format DOL (9F4F / DF4F), each
value fitted to its length by the DOL rules (Book 3 §5.4). Record 1 is the newest (cyclic file).

Load-log record (UNCERTAIN, pboc-notes §14 "DF4F load-log record layout"): PUT DATA P1P2 (2) ‖ EC
balance before (n12) ‖ EC balance after (n12) ‖ the DF4F DOL data — the layout seen on issued
UnionPay EC cards; the DF4F part alone is what the format names.

When the card writes (a choice, documented): one transaction-log record per approved transaction
(a TC from GPO, the first or the second GENERATE AC), none for declines or ARQCs left without a
second GENERATE AC; one load-log record per successful PUT DATA 9F79.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from citycard.card.pboc.data import CardData, n12
from citycard.emv.dol import DOLError, build_dol, dol_length

LOG_RECORDS_MAX = 50  # records per log file; 9F4D/DF4D asking more is refused at personalisation
LOG_RECORD_BYTES_MAX = 252


@dataclass
class CyclicLog:
    sfi: int
    capacity: int
    entries: list[bytes] = field(default_factory=list)  # newest first

    def append(self, entry: bytes) -> None:
        if len(entry) > LOG_RECORD_BYTES_MAX:
            raise AssertionError(f"log record of {len(entry)} bytes: the format DOL was checked at perso")
        self.entries.insert(0, entry)
        del self.entries[self.capacity :]

    def record(self, number: int) -> bytes | None:
        return self.entries[number - 1] if 1 <= number <= len(self.entries) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "sfi": self.sfi,
            "capacity": self.capacity,
            "entries": [e.hex().upper() for e in self.entries],
        }

    @classmethod
    def from_json(cls, image: dict[str, Any]) -> CyclicLog:
        return cls(image["sfi"], image["capacity"], [bytes.fromhex(e) for e in image["entries"]])


@dataclass
class Logs:
    transaction: CyclicLog | None = None
    load: CyclicLog | None = None

    def configure(self, data: CardData) -> list[str]:
        """Create the log files the FCI announces; return what is wrong with them."""
        problems = []
        for kind, entry_tag, format_tag in (("transaction", "9F4D", "9F4F"), ("load", "DF4D", "DF4F")):
            entry = data.fci_tag("contact", entry_tag) or data.fci_tag("contactless", entry_tag)
            if entry is None:
                continue
            fmt = data.tag(format_tag)
            if len(entry) != 2 or not 11 <= entry[0] <= 30 or not 1 <= entry[1] <= LOG_RECORDS_MAX:
                problems.append(f"{entry_tag} must be SFI 11–30 ‖ 1–{LOG_RECORDS_MAX} records")
                continue
            try:
                length = dol_length(fmt) if fmt is not None else None
            except DOLError as exc:
                problems.append(f"{format_tag}: {exc}")
                continue
            if length is None or length + 14 > LOG_RECORD_BYTES_MAX:
                problems.append(f"{entry_tag} without a usable {format_tag} log format")
                continue
            if getattr(self, kind) is None:
                setattr(self, kind, CyclicLog(entry[0], entry[1]))
        return problems

    def file(self, sfi: int) -> CyclicLog | None:
        return next(
            (log for log in (self.transaction, self.load) if log is not None and log.sfi == sfi), None
        )

    def to_json(self) -> dict[str, Any]:
        return {
            name: log.to_json()
            for name, log in (("transaction", self.transaction), ("load", self.load))
            if log is not None
        }

    @classmethod
    def from_json(cls, image: dict[str, Any]) -> Logs:
        return cls(**{name: CyclicLog.from_json(value) for name, value in image.items()})


def transaction_entry(tag_9f4f: bytes, values: dict[str, bytes]) -> bytes:
    """One 9F4D record: the values named by 9F4F (missing ones zero-filled, Book 3 §5.4)."""
    return build_dol(tag_9f4f, values)


def load_entry(
    tag_df4f: bytes, *, p1p2: bytes, balance_fen_before: int, balance_fen_after: int, values: dict[str, bytes]
) -> bytes:
    """One DF4D record: P1P2 ‖ balance before ‖ balance after ‖ DF4F data (layout UNCERTAIN, above)."""
    if len(p1p2) != 2:
        raise ValueError(f"PUT DATA P1P2 must be 2 bytes, got {len(p1p2)}")
    return p1p2 + n12(balance_fen_before) + n12(balance_fen_after) + build_dol(tag_df4f, values)
