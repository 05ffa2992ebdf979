"""The kernel's view of the acquirer: one call that sends field 55 online and brings the answer back.

The terminal program implements :class:`AcquirerLink` over its ISO 8583 connection (issue 5);
tests implement it with an issuer stand-in that uses the real HSM. The kernel does not know
about messages, only about the IC data going out and the issuer's data coming back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from citycard.emv.tlv import TLVError, decode, encode

ARC_BYTES = 2
APPROVED_ARCS = (b"00", b"10", b"11")  # CUPS field 39 codes that approve (pboc-notes §10)
SCRIPT_BYTES_MAX = 128  # Book 3 §10.10: at most 128 bytes of scripts per transaction


class OnlineError(Exception):
    """No answer from the acquirer (timeout, connection refused): the terminal is unable to go online."""


@dataclass(frozen=True, slots=True)
class IssuerResponse:
    """The issuer's answer: the authorisation response code (8A, 2 ASCII bytes) and the IC data
    it returned — 91 (ARPC ‖ ARC or ARPC ‖ CSU), 71/72 scripts."""

    arc: bytes
    tag_91: bytes | None = None
    scripts_71: tuple[bytes, ...] = ()  # each the whole 71 template
    scripts_72: tuple[bytes, ...] = ()

    @property
    def approved(self) -> bool:
        return self.arc in APPROVED_ARCS


class AcquirerLink(Protocol):
    def authorise(
        self,
        field55: bytes,
        *,
        pan: str,
        psn: str | None,
        amount_fen: int,
        pin_block: bytes | None = None,
        tag_5f24: bytes | None = None,
        tag_57: bytes | None = None,
    ) -> tuple[bytes, bytes]:
        """Send the request (``pin_block``: the enciphered online PIN, field 52; ``tag_5f24`` the
        expiry date for F14, ``tag_57`` track 2 equivalent data for F35, when the card gave them);
        return (ARC 8A, 2 bytes; the response IC data TLV: 91, 71, 72).

        Raises :class:`OnlineError` when the acquirer cannot be reached.
        """
        ...


def parse_issuer_response(arc: bytes, ic_data: bytes) -> IssuerResponse:
    """Check the ARC and split the response IC data into 91 and the 71/72 script templates."""
    if len(arc) != ARC_BYTES:
        raise ValueError(f"authorisation response code (8A) must be {ARC_BYTES} bytes, got {len(arc)}")
    try:
        objects = decode(ic_data)
    except TLVError as exc:
        raise ValueError(f"issuer IC data: {exc}") from None
    tag_91: bytes | None = None
    scripts: dict[str, list[bytes]] = {"71": [], "72": []}
    total = 0
    for obj in objects:
        if obj.tag == "91":
            if tag_91 is not None:
                raise ValueError("issuer IC data holds 91 twice")
            tag_91 = obj.value
        elif obj.tag in scripts:
            whole = encode([obj])
            total += len(whole)
            scripts[obj.tag].append(whole)
    if total > SCRIPT_BYTES_MAX:
        raise ValueError(f"issuer scripts total {total} bytes, at most {SCRIPT_BYTES_MAX}")
    return IssuerResponse(arc, tag_91, tuple(scripts["71"]), tuple(scripts["72"]))
