"""The issuer's service desk reader: the APDUs that load and unload a sector application on a card.

Performed on the card itself — a :class:`citycard.card.Card` (the virtual card, which saves its
image after each state-changing command, before it answers) through the in-process transport, so
the same steps work over PC/SC against a real card. On the contact interface (a desk reader):

1. SELECT the UnionPay debit/credit application by its RID ``A000000333`` (partial selection,
   ISO/IEC 7816-4; the citizen card's PBOC application holds the Part 14 files);
2. GET PROCESSING OPTIONS with the contact PDOL from the FCI (amount 0, DF69 = 01 for the GM suite,
   00 for INTL: the card then uses that suite's keys) — Part 14 writes need an ATC (pboc-notes §7);
3. GET DATA 9F36: the ATC that the MACs are bound to (IV zeros ‖ ATC);
4. the write: APPEND RECORD ``04 E2`` (opens the record) or UPDATE CAPP DATA CACHE ``84 DE`` under the
   file's opening key (the issuer update of citycard.card.pboc.capp) — commands built in the HSM
   (:meth:`citycard.hsm.SoftHSM.capp_append_command` / ``capp_update_command``), no clear key here;
5. READ CAPP DATA ``80 B4`` to read the record back when the file is freely readable.

The desk never sends GENERATE AC: no cryptogram, no money; the ATC the GPO used is spent (an ATC
gap the issuer host tolerates, as after any aborted transaction).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from citycard.emv.dol import build_dol
from citycard.emv.tlv import TLVError, decode, find
from citycard.reader import InProcessTransport

UNIONPAY_RID = bytes.fromhex("A000000333")
SW_OK = 0x9000
SW_ALREADY_OPENED = 0x6A80  # APPEND RECORD of an ID the file already holds
SW_NOT_READABLE = 0x6982
CURRENCY_CNY = bytes.fromhex("0156")
GM_DF69 = b"\x01"
SW_MEANING = {
    0x6700: "wrong length",
    0x6981: "command incompatible with the file",
    0x6982: "security status not satisfied",
    0x6985: "conditions of use not satisfied",
    0x6988: "the MAC does not verify",
    0x6A80: "wrong data (record already opened)",
    0x6A81: "card blocked",
    0x6A82: "no such file on the card",
    0x6A83: "record not found",
    0x6A84: "file full",
}


class DeskError(Exception):
    """The card refused a step: ``step`` names it, ``sw`` is the card's status word."""

    def __init__(self, step: str, sw: int):
        meaning = SW_MEANING.get(sw, "")
        super().__init__(f"{step}: the card answered {sw:04X}" + (f" ({meaning})" if meaning else ""))
        self.step = step
        self.sw = sw


@dataclass
class Reply:
    data: bytes
    sw: int


class DeskSession:
    """One desk transaction on a card after SELECT and GPO: ``atc`` is the GPO's (module note)."""

    def __init__(self, transport: Any, atc: bytes):
        self.transport = transport
        self.atc = atc

    def send(self, apdu: bytes) -> Reply:
        answer = self.transport.transmit(apdu)
        return Reply(answer[:-2], int.from_bytes(answer[-2:], "big"))

    def expect(self, step: str, apdu: bytes) -> bytes:
        reply = self.send(apdu)
        if reply.sw != SW_OK:
            raise DeskError(step, reply.sw)
        return reply.data

    def read_capp(self, sfi: int, record_id: bytes) -> Reply:
        """READ CAPP DATA ``80 B4 00 (SFI<<3) 02 ID``."""
        return self.send(bytes([0x80, 0xB4, 0x00, sfi << 3, len(record_id)]) + record_id)


def _select(transport: Any) -> bytes:
    answer = transport.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(UNIONPAY_RID)]) + UNIONPAY_RID + b"\x00")
    sw = int.from_bytes(answer[-2:], "big")
    if sw != SW_OK:
        raise DeskError("SELECT A000000333", sw)
    return answer[:-2]


def _pdol(fci: bytes) -> bytes:
    try:
        pdol = find(decode(fci), "9F38")
    except TLVError as exc:
        raise DeskError("SELECT A000000333 (FCI does not decode: " + str(exc) + ")", SW_OK) from None
    return pdol.value if pdol is not None else b""


@contextmanager
def desk_session(card: Any, *, suite_name: str) -> Iterator[DeskSession]:
    """SELECT, GPO and GET DATA 9F36 on ``card`` over the contact interface (module note)."""
    before = card.interface
    card.interface = "contact"
    try:
        with InProcessTransport(card) as transport:
            pdol = _pdol(_select(transport))
            values = {
                "9F7A": b"\x00",  # not an electronic-cash transaction
                "5F2A": CURRENCY_CNY,
                "DF69": GM_DF69 if suite_name == "GM" else b"\x00",
            }
            data = build_dol(pdol, values)
            session = DeskSession(transport, b"")
            session.expect(
                "GET PROCESSING OPTIONS",
                bytes([0x80, 0xA8, 0x00, 0x00, len(data) + 2, 0x83, len(data)]) + data + b"\x00",
            )
            atc = session.expect("GET DATA 9F36", bytes.fromhex("80CA9F3600"))
            if atc[:3] != b"\x9f\x36\x02" or len(atc) != 5:
                raise DeskError(f"GET DATA 9F36 gave {atc.hex().upper()}, not 9F36 02 ATC", SW_OK)
            session.atc = atc[3:]
            yield session
    finally:
        card.interface = before


def read_record(card: Any, sfi: int, record_id: bytes) -> bytes:
    """SELECT and READ CAPP DATA only: a record as the card holds it (no GPO, no ATC spent)."""
    before = card.interface
    card.interface = "contact"
    try:
        with InProcessTransport(card) as transport:
            _select(transport)
            session = DeskSession(transport, b"")
            return session.expect(
                f"READ CAPP DATA SFI {sfi:02X} record {record_id.hex().upper()}",
                bytes([0x80, 0xB4, 0x00, sfi << 3, len(record_id)]) + record_id,
            )
    finally:
        card.interface = before
