"""Part 14 in a transit tap: read the trip record before GPO, write it with the fare (pboc-notes §7).

The Xi'an metro reader's flow (pboc-notes C7b), as the qPBOC runner (:mod:`.qpboc`) calls it:

1. After the final SELECT, when the card offers Part 14 (DF61 in the FCI) and the terminal gives a
   file (:class:`CappWrite`: SFI, record ID): **READ CAPP DATA** ``80 B4 00 (SFI<<3) 02 ID`` — the
   record as the card holds it (an entry tap's record, on exit). 6A83 (the record was never opened
   for this operator) ends the application: the card is not set up for this transit system.
2. GPO with DF60 = 01: the card approves offline (TC) but keeps the purchase **pending**.
3. After the records, processing restrictions, fDDA and the exception file have all passed —
   nothing may decline the tap once the card has committed — **UPDATE CAPP DATA CACHE**
   ``84 DE 00 (SFI<<3) Lc`` ‖ record ‖ MAC. The MAC is the operator's (its PSAM; here the HSM,
   :meth:`citycard.hsm.SoftHSM.capp_update_command`) over the command with IV zeros ‖ the GPO's
   ATC, so the record is bound to this transaction. On 9000 the card commits the fare debit, its
   log record and the trip record together. Any other answer (6988: the MAC does not verify)
   commits nothing: the tap is DECLINED with the status word in the reason, no batch record is
   kept, and the record on the card is unchanged.

The record to write is the caller's: bytes, or a function of the record read in step 1 (an exit
tap computes its record, and its fare, from the entry record). It must keep the record ID.

**Pricing after the read** (``CappWrite(sfi, record_id, price=f)``): the fare of a transit tap
depends on the record READ CAPP DATA returns (an exit prices from its entry, the anti-double-tap
rule and the daily cap read the last tap), while the amount 9F02 goes to the card in GPO. ``f(read)``
runs between the two and returns ``(amount_fen, record)``: the kernel then uses that amount (0 is
allowed: a free ride, a segmented exit that debits nothing — the card approves it with a TC and
commits the record) and writes that record. ``f`` raises :class:`PricingRefused` to decline the tap
(e.g. a double tap): the transaction ends DECLINED with the reason before GPO, nothing on the card
changed. A ``ValueError`` from ``f`` (a tap the fare table cannot price) declines it the same way.
The ``amount_fen`` given to ``run_qpboc`` is then only the pre-processing amount (the most the tap
may cost); the AID row's limits are checked again with the priced amount.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from citycard.kernel.card_link import CardLink, command
from citycard.kernel.context import Transaction
from citycard.kernel.outcome import Outcome, Stop

READ_CAPP_DATA = bytes.fromhex("80B400")
RECORD_ID_BYTES = 2
RECORD_BYTES_MAX = 250
SW_OK = 0x9000
SW_RECORD_NOT_FOUND = 0x6A83

RecordSource = bytes | Callable[[bytes], bytes]
Pricing = Callable[[bytes], tuple[int, bytes]]  # record read → (amount in fen, record to write)
AMOUNT_FEN_MAX = 999_999_999_999  # n12 (9F02)


class PricingRefused(Exception):  # noqa: N818 — the caller's refusal, not a kernel error
    """Raised by a :data:`Pricing` function to decline the tap before GPO (module note)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CappWrite:
    """The Part 14 file and record this terminal reads and writes (terminal parameters), and the
    record to write (the caller's) — or ``price``, which gives the amount and the record from the
    record read (module note). Exactly one of ``record`` and ``price``."""

    sfi: int
    record_id: bytes
    record: RecordSource | None = None
    price: Pricing | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.sfi <= 30:
            raise ValueError(f"Part 14 SFI must be 1 to 30, got {self.sfi}")
        if len(self.record_id) != RECORD_ID_BYTES:
            raise ValueError(f"Part 14 record ID must be {RECORD_ID_BYTES} bytes, got {len(self.record_id)}")
        if (self.record is None) == (self.price is None):
            raise ValueError("a Part 14 write gives exactly one of record and price")

    def priced(self, read: bytes) -> tuple[int, bytes]:
        """``price(read)`` checked: an amount 0…n12 max in fen and a well-formed record."""
        if self.price is None:
            raise AssertionError("priced() on a CappWrite without a price function")
        amount_fen, record = self.price(read)
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
            raise ValueError(f"the priced amount must be an integer number of fen, got {amount_fen!r}")
        if not 0 <= amount_fen <= AMOUNT_FEN_MAX:
            raise ValueError(f"the priced amount must be 0 to {AMOUNT_FEN_MAX} fen, got {amount_fen}")
        return amount_fen, self._checked(record)

    def record_after(self, read: bytes) -> bytes:
        if self.record is None:
            raise AssertionError("record_after() on a priced CappWrite (use priced())")
        return self._checked(self.record(read) if callable(self.record) else self.record)

    def _checked(self, record: bytes) -> bytes:
        if not isinstance(record, bytes):
            raise ValueError(f"Part 14 record must be bytes, got {type(record).__name__}")
        if not RECORD_ID_BYTES <= len(record) <= RECORD_BYTES_MAX:
            raise ValueError(f"Part 14 record must be 2 to {RECORD_BYTES_MAX} bytes, got {len(record)}")
        if record[:RECORD_ID_BYTES] != self.record_id:
            raise ValueError(
                f"Part 14 record starts {record[:2].hex().upper()}, not its ID {self.record_id.hex().upper()}"
            )
        return record


class CappSigner(Protocol):
    """The operator's PSAM: the whole ``84 DE`` command with its MAC for this card and ATC."""

    def update_command(
        self, *, pan: str, psn: str, tag_9f36: bytes, sfi: int, record: bytes, suite_name: str
    ) -> bytes: ...


class HsmCappSigner:
    """:class:`CappSigner` over the HSM: the operator's master key per suite (``{"GM": label, …}``),
    each card's record key derived from it inside the HSM (``SoftHSM.capp_update_command``)."""

    def __init__(self, hsm: Any, operator_labels: dict[str, str]):
        self.hsm = hsm
        self.operator_labels = dict(operator_labels)

    def update_command(
        self, *, pan: str, psn: str, tag_9f36: bytes, sfi: int, record: bytes, suite_name: str
    ) -> bytes:
        label = self.operator_labels.get(suite_name)
        if label is None:
            raise ValueError(f"no Part 14 operator key for suite {suite_name}")
        return self.hsm.capp_update_command(
            label, tag_5a=pan, tag_5f34=psn, tag_9f36=tag_9f36, sfi=sfi, record=record
        )


def offered(tx: Transaction) -> bool:
    """A Part 14 transaction: the terminal supports it and the card offers it (DF61 in the FCI)."""
    return tx.profile.capp and bool(tx.card.get("DF61"))


def read_capp_data(link: CardLink, tx: Transaction, write: CappWrite) -> None:
    """Step 1 (module note): the record as the card holds it, into ``tx.capp_read``."""
    apdu = command(READ_CAPP_DATA + bytes([write.sfi << 3]), write.record_id)
    reply = link.exchange(apdu, "READ CAPP DATA")
    name = f"SFI {write.sfi:02X} record {write.record_id.hex().upper()}"
    if reply.sw == SW_RECORD_NOT_FOUND:
        raise Stop(Outcome.END_APPLICATION, f"Part 14 {name} is not opened on this card (6A83)")
    if reply.sw != SW_OK:
        raise Stop(Outcome.END_APPLICATION, f"READ CAPP DATA {name}: card answered {reply.sw:04X}")
    if reply.data[:RECORD_ID_BYTES] != write.record_id:
        raise Stop(Outcome.END_APPLICATION, f"READ CAPP DATA {name}: the card returned another record")
    tx.capp_read = reply.data
    tx.log("READ CAPP DATA", f"{name}: {len(reply.data)} bytes")


def price(tx: Transaction, write: CappWrite) -> int | None:
    """Between READ CAPP DATA and GPO: the caller's price for the record read (module note).

    Returns the priced amount (the caller sets 9F02 from it) and keeps the record to write in
    ``tx.capp_planned``; None when ``write`` has no price function. A refusal or a tap that cannot
    be priced ends the transaction DECLINED before GPO: the card has changed nothing.
    """
    if write.price is None:
        return None
    try:
        amount_fen, record = write.priced(tx.capp_read or b"")
    except PricingRefused as exc:
        tx.log("pricing", f"refused: {exc.reason}")
        raise Stop(Outcome.DECLINED, f"tap refused by the fare rules: {exc.reason}") from None
    except ValueError as exc:
        tx.log("pricing", f"cannot price: {exc}")
        raise Stop(Outcome.DECLINED, f"tap not priced: {exc}") from None
    tx.capp_planned = record
    tx.log("pricing", f"{amount_fen} fen")
    return amount_fen


def update_capp_data_cache(link: CardLink, tx: Transaction, write: CappWrite, signer: CappSigner) -> None:
    """Step 3 (module note): write the record with the operator's MAC; the card commits the tap."""
    pan, psn, suite = tx.pan, tx.psn or "00", tx.suite
    if pan is None or suite is None or "9F36" not in tx.card:
        raise AssertionError("the Part 14 update runs after GPO and the records")
    try:
        record = tx.capp_planned if tx.capp_planned is not None else write.record_after(tx.capp_read or b"")
        apdu = signer.update_command(
            pan=pan, psn=psn, tag_9f36=tx.card["9F36"], sfi=write.sfi, record=record, suite_name=suite.name
        )
    except ValueError as exc:
        raise Stop(Outcome.DECLINED, f"Part 14 record not written: {exc}") from None
    reply = link.exchange(apdu, "UPDATE CAPP DATA CACHE")
    name = f"SFI {write.sfi:02X} record {write.record_id.hex().upper()}"
    if reply.sw != SW_OK:
        tx.log("UPDATE CAPP DATA CACHE", f"{name}: card answered {reply.sw:04X}")
        raise Stop(
            Outcome.DECLINED,
            f"Part 14 cache update refused ({reply.sw:04X}"
            f"{': the MAC does not verify' if reply.sw == 0x6988 else ''}): "
            "the card committed neither the fare nor the record",
        )
    tx.capp_written = record
    tx.log("UPDATE CAPP DATA CACHE", f"{name}: written, fare and record committed together")
