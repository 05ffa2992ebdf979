"""Command and response APDUs (ISO/IEC 7816-3 §12.1, 7816-4 §5.1): short APDUs, cases 1–4.

Parsing is strict — a malformed APDU gets a precise :class:`~citycard.card.sw.CardError` (6700), never
an exception out of the card.
"""

from __future__ import annotations

from dataclasses import dataclass

from citycard.card import sw
from citycard.card.sw import CardError

APDU_BYTES_MAX = 261  # header 4 + Lc 1 + 255 data + Le 1


@dataclass(frozen=True, slots=True)
class Command:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # None: no Le field; 0 in the APDU means 256

    @property
    def header(self) -> bytes:
        return bytes([self.cla, self.ins, self.p1, self.p2])

    @property
    def secure_messaging(self) -> bool:
        """CLA b3 set (0x04/0x84): the command carries a MAC (EMV Book 3 §6.3.2)."""
        return bool(self.cla & 0x04)

    @property
    def proprietary(self) -> bool:
        """CLA b8 set (0x80/0x84): a proprietary (payment system) class."""
        return bool(self.cla & 0x80)

    def to_bytes(self) -> bytes:
        out = self.header
        if self.data:
            out += bytes([len(self.data)]) + self.data
        if self.le is not None:
            out += bytes([self.le & 0xFF])
        return out

    @classmethod
    def parse(cls, apdu: bytes) -> Command:
        """Parse a short C-APDU; lengths that do not add up raise CardError(6700) with the reason."""
        if len(apdu) < 4:
            raise CardError(sw.WRONG_LENGTH, f"APDU of {len(apdu)} bytes: the header alone is 4")
        if len(apdu) > APDU_BYTES_MAX:
            raise CardError(
                sw.WRONG_LENGTH, f"APDU of {len(apdu)} bytes: a short APDU is at most {APDU_BYTES_MAX}"
            )
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if not body:  # case 1
            return cls(cla, ins, p1, p2)
        if len(body) == 1:  # case 2: Le only
            return cls(cla, ins, p1, p2, le=body[0] or 256)
        lc = body[0]
        if lc == 0:
            raise CardError(sw.WRONG_LENGTH, "Lc 00 with data following (extended APDUs are not supported)")
        if len(body) == 1 + lc:  # case 3
            return cls(cla, ins, p1, p2, data=body[1:])
        if len(body) == 2 + lc:  # case 4
            return cls(cla, ins, p1, p2, data=body[1 : 1 + lc], le=body[-1] or 256)
        raise CardError(sw.WRONG_LENGTH, f"Lc {lc:02X} does not match the {len(body) - 1} bytes after it")


@dataclass(frozen=True, slots=True)
class Response:
    data: bytes = b""
    sw: int = sw.OK

    def to_bytes(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    @classmethod
    def parse(cls, rapdu: bytes) -> Response:
        if len(rapdu) < 2:
            raise ValueError(f"R-APDU must be at least 2 bytes (SW1 SW2), got {len(rapdu)}")
        return cls(rapdu[:-2], int.from_bytes(rapdu[-2:], "big"))
