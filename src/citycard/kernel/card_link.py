"""The kernel's side of the APDU exchange: commands out, strictly parsed responses back.

The card is reached only through a :class:`citycard.reader.Transport` (DESIGN.md §2); T=0
61xx/6Cxx is the transport's business. Here every response is checked the way EMV Book 3 §10.2
and Book 1 §11 ask a terminal to: the status word, then the template — exactly one data object of
the expected tag filling the response, no trailing bytes, no malformed TLV inside. A status word
the caller did not ask for raises :class:`CardStatusError`; a response that breaks the format
raises :class:`CardFormatError`. The steps above decide what each means for the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

from citycard.emv.tlv import TLV, TLVError, decode_one
from citycard.reader.transport import Transport, TransportError

SW_OK = 0x9000
SW_BYTES = 2
LC_MAX = 255  # short APDUs only (Book 1 §9.4)
SELECT = bytes.fromhex("00A40400")
SELECT_NEXT = bytes.fromhex("00A40402")
GPO = bytes.fromhex("80A80000")
GET_DATA = bytes.fromhex("80CA")
GENERATE_AC = bytes.fromhex("80AE")
INTERNAL_AUTHENTICATE = bytes.fromhex("00880000")
EXTERNAL_AUTHENTICATE = bytes.fromhex("00820000")
GET_CHALLENGE = bytes.fromhex("0084000000")
VERIFY_PLAINTEXT = bytes.fromhex("00200080")


class CardLinkError(Exception):
    """The card's answer to ``step`` cannot be used."""

    def __init__(self, step: str, reason: str):
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class CardStatusError(CardLinkError):
    """The card answered a status word other than the ones the step accepts."""

    def __init__(self, step: str, sw: int):
        super().__init__(step, f"card answered {sw:04X}")
        self.sw = sw


class CardFormatError(CardLinkError):
    """The card's data breaks the format: wrong template, trailing bytes, malformed TLV."""


class CardGoneError(CardLinkError):
    """The transport failed: the card left the field, the reader went away."""


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    sw: int

    @property
    def ok(self) -> bool:
        return self.sw == SW_OK


def command(header: bytes, data: bytes = b"", le: bool = True) -> bytes:
    """A short C-APDU: header ‖ [Lc ‖ data] ‖ [Le 00].

    >>> command(GPO, bytes.fromhex("8300")).hex().upper()
    '80A8000002830000'
    """
    if len(header) != 4:
        raise ValueError(f"an APDU header is 4 bytes, got {len(header)}")
    if len(data) > LC_MAX:
        raise ValueError(f"command data is at most {LC_MAX} bytes, got {len(data)}")
    body = bytes([len(data)]) + data if data else b""
    return header + body + (b"\x00" if le else b"")


def parse_template(data: bytes, step: str, *tags: str) -> TLV:
    """``data`` as exactly one data object whose tag is one of ``tags`` (Book 3 §10.2).

    Trailing bytes, another template or malformed TLV raise :class:`CardFormatError`.

    >>> parse_template(bytes.fromhex("70035A0112"), "READ RECORD", "70").children[0].tag
    '5A'
    """
    try:
        template = decode_one(data)
    except TLVError as exc:
        raise CardFormatError(step, f"malformed response: {exc}") from None
    if template.tag not in tags:
        raise CardFormatError(step, f"expected template {' or '.join(tags)}, got {template.tag}")
    return template


class CardLink:
    """APDUs to one card over ``transport`` (already connected). ``exchanges`` counts the APDUs."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.exchanges = 0

    def exchange(self, apdu: bytes, step: str) -> Reply:
        """Send one C-APDU; the response split into data and SW. Transport failures → CardGoneError."""
        try:
            response = self.transport.transmit(apdu)
        except TransportError as exc:
            raise CardGoneError(step, str(exc)) from None
        self.exchanges += 1
        if len(response) < SW_BYTES:
            raise CardFormatError(step, f"response of {len(response)} bytes has no status word")
        return Reply(response[:-SW_BYTES], int.from_bytes(response[-SW_BYTES:], "big"))

    def expect_ok(self, apdu: bytes, step: str) -> bytes:
        reply = self.exchange(apdu, step)
        if not reply.ok:
            raise CardStatusError(step, reply.sw)
        return reply.data

    # --- commands --------------------------------------------------------------------------
    def select(self, name: bytes, *, next_occurrence: bool = False) -> Reply:
        """SELECT by DF name (Book 1 §11.3); the caller judges the status word."""
        step = f"SELECT {_name(name)}"
        return self.exchange(command(SELECT_NEXT if next_occurrence else SELECT, name), step)

    def get_processing_options(self, pdol_data: bytes) -> Reply:
        """GPO with command template 83 (Book 3 §6.5.8); the caller judges the status word."""
        if len(pdol_data) > LC_MAX - 2:
            raise ValueError(f"PDOL data is at most {LC_MAX - 2} bytes, got {len(pdol_data)}")
        return self.exchange(
            command(GPO, bytes([0x83, len(pdol_data)]) + pdol_data), "GET PROCESSING OPTIONS"
        )

    def read_record(self, sfi: int, record: int) -> Reply:
        """READ RECORD (Book 3 §6.5.11); the caller judges the status word."""
        if not 1 <= sfi <= 30 or not 1 <= record <= 254:
            raise ValueError(f"READ RECORD needs SFI 1..30 and record 1..254, got {sfi}/{record}")
        apdu = bytes([0x00, 0xB2, record, (sfi << 3) | 0x04, 0x00])
        return self.exchange(apdu, f"READ RECORD SFI {sfi} record {record}")

    def get_data(self, tag: str) -> Reply:
        """GET DATA for a 2-byte tag (pboc-notes §3), e.g. 9F79 the EC balance, 9F36 the ATC."""
        raw = bytes.fromhex(tag)
        if len(raw) != 2:
            raise ValueError(f"GET DATA takes a 2-byte tag, got {tag!r}")
        return self.exchange(GET_DATA + raw + b"\x00", f"GET DATA {tag.upper()}")

    def generate_ac(self, p1: int, cdol_data: bytes, *, second: bool = False) -> Reply:
        """GENERATE AC (Book 3 §6.5.5): P1 = 00 AAC, 40 TC, 80 ARQC, + 10 for CDA."""
        step = "GENERATE AC (second)" if second else "GENERATE AC"
        return self.exchange(command(GENERATE_AC + bytes([p1, 0x00]), cdol_data), step)

    def internal_authenticate(self, ddol_data: bytes) -> Reply:
        return self.exchange(command(INTERNAL_AUTHENTICATE, ddol_data), "INTERNAL AUTHENTICATE")

    def external_authenticate(self, tag_91: bytes) -> Reply:
        return self.exchange(command(EXTERNAL_AUTHENTICATE, tag_91, le=False), "EXTERNAL AUTHENTICATE")

    def get_challenge(self) -> Reply:
        return self.exchange(GET_CHALLENGE, "GET CHALLENGE")

    def verify_plaintext_pin(self, pin_block: bytes) -> Reply:
        """VERIFY with a plaintext offline PIN block, ISO 9564 format 2 (Book 3 §6.5.12)."""
        if len(pin_block) != 8:
            raise ValueError(f"a plaintext PIN block is 8 bytes, got {len(pin_block)}")
        return self.exchange(command(VERIFY_PLAINTEXT, pin_block, le=False), "VERIFY")

    def get_pin_try_counter(self) -> Reply:
        return self.get_data("9F17")


def _name(name: bytes) -> str:
    if name.isascii() and all(32 <= b < 127 for b in name):
        return name.decode()
    return name.hex().upper()
