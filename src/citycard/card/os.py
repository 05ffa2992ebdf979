"""The card OS: ATR, application selection, T=0 GET RESPONSE, STORE DATA routing, status words.

:class:`Card` is the chip as the terminal sees it: ``process(apdu) -> bytes`` never raises. It owns
what is common to every application (docs/card.md §1):

- the ATR (ISO/IEC 7816-3 §8) and power-on/reset, which drop the selection and transient state;
- SELECT by name (ISO/IEC 7816-4 §11.1.1; EMV Book 1 §11.3): the PSE ``1PAY.SYS.DDF01`` on the
  contact interface with its directory in SFI 1 (EMV Book 1 §12.2.3), the PPSE ``2PAY.SYS.DDF01`` on
  the contactless one (EMV Contactless Book B §3.3), an AID by its full name or a partial name of at
  least 5 bytes, first (P2 = 00) or next (P2 = 02) occurrence in the card's order;
- T=0 transport (EMV Book 1 §9.3.1): a case-4 answer with data becomes ``61xx`` and waits for
  GET RESPONSE; a case-2 command with the wrong Le gets ``6Cxx``;
- STORE DATA (EMV CPS v1.1 §4.3.6, docs/card.md §3) to the selected application while it is not
  personalised, deciphering encrypted DGIs with the personalisation transport key;
- the CLA check (6E00), unknown instructions (6D00), commands without a selected application (6985).

Everything else goes to the selected :class:`~citycard.card.application.Application`. A
:class:`~citycard.card.sw.CardError` becomes its status word; any other exception is logged (the
header only, never the data or a key) and answered ``6F00``; a failed image write answers ``6581``.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import Application, Interface, PersoDecryptor, Sealer
from citycard.card.sw import CardError
from citycard.emv import encode_one

log = logging.getLogger(__name__)

TransmissionProtocol = Literal["T=0", "T=1"]
PROTOCOLS: tuple[TransmissionProtocol, ...] = ("T=0", "T=1")
INTERFACES: tuple[Interface, ...] = ("contact", "contactless")

PSE_NAME = b"1PAY.SYS.DDF01"
PPSE_NAME = b"2PAY.SYS.DDF01"
PSE_DIRECTORY_SFI = 1
LANGUAGE_PREFERENCE = b"zhen"  # 5F2D: Chinese, then English
NAME_BYTES_MIN = 5  # a partial name must hold at least the RID (ISO/IEC 7816-5)
NAME_BYTES_MAX = 16
LABEL_BYTES_MAX = 16  # 50, application label, ans 1–16
APPLICATIONS_MAX = 16
SERIAL_BYTES = 8
RESPONSE_DATA_BYTES_MAX = 256  # a short R-APDU
RANDOM_BYTES_MAX = 256
STORE_DATA_BLOCKS_MAX = 256  # P2 is the block number, one byte
HISTORICAL_BYTES = b"citycard PBOC3"  # 14 bytes, proprietary (category indicator not 00/10/80)
ATR_BYTES_MAX = 33

SW_MEMORY_FAILURE = 0x6581  # the image could not be written; the answer is withheld

INS_SELECT = 0xA4
INS_GET_RESPONSE = 0xC0
INS_READ_RECORD = 0xB2
INS_STORE_DATA = 0xE2
CLA_ISO = 0x00
CLA_PROPRIETARY = 0x80
# ISO inter-industry (00, with SM 04/0C) and payment-system proprietary (80, with SM 84) classes;
# logical channels are not supported.
CLASSES = frozenset({0x00, 0x04, 0x0C, 0x80, 0x84})
# Instructions of the PBOC/EMV applications (pboc-notes §3): without a selected application they
# answer 6985 (conditions of use not satisfied), any other instruction 6D00.
APPLICATION_INS = frozenset(
    {0x16, 0x18, 0x1E, 0x20, 0x24, 0x82, 0x84, 0x88, 0xA8, 0xAE, 0xB2, 0xB4, 0xCA, 0xDA, 0xDC, 0xDE, 0xE2}
)
_DATA_SW1 = frozenset({0x90, 0x61, 0x62, 0x63})  # status words that may come with data


def build_atr(protocol: TransmissionProtocol = "T=1", historical: bytes = HISTORICAL_BYTES) -> bytes:
    """A direct-convention ATR (ISO/IEC 7816-3 §8.2) for ``protocol`` with ``historical`` bytes.

    T=0: ``3B 6K 00 00 hist`` (TB1 = 00 no VPP, TC1 = 00 no extra guard time, T=0 implicit, no TCK).
    T=1: ``3B 8K 80 01 hist TCK`` (TD1, TD2 = T=1); TCK makes the XOR of T0..TCK zero.

    >>> build_atr("T=0", b"PBOC").hex().upper()
    '3B64000050424F43'
    >>> build_atr("T=1", b"PBOC").hex().upper()
    '3B84800150424F431B'
    """
    if len(historical) > 15:
        raise ValueError(f"an ATR holds at most 15 historical bytes, got {len(historical)}")
    if protocol == "T=0":
        return bytes([0x3B, 0x60 | len(historical), 0x00, 0x00]) + historical
    if protocol == "T=1":
        body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
        tck = 0
        for byte in body:
            tck ^= byte
        return b"\x3b" + body + bytes([tck])
    raise ValueError(f"protocol must be T=0 or T=1, got {protocol!r}")


def check_atr(atr: bytes) -> bytes:
    """A plausible ATR: TS 3B (direct) or 3F (inverse) and 2 to 33 bytes."""
    if not isinstance(atr, bytes) or not 2 <= len(atr) <= ATR_BYTES_MAX or atr[0] not in (0x3B, 0x3F):
        raise ValueError(f"an ATR is 2 to {ATR_BYTES_MAX} bytes starting with 3B or 3F")
    return atr


def directory_entry(app: Application) -> bytes:
    """One 61 application template of a PSE record or the PPSE FCI: 4F AID, 50 label, 87 priority."""
    label = app.label.encode("ascii", "replace")[:LABEL_BYTES_MAX]
    body = encode_one("4F", app.aid) + encode_one("50", label)
    if app.priority is not None:
        body += encode_one("87", bytes([app.priority]))
    return encode_one("61", body)


def pse_fci() -> bytes:
    """FCI of the PSE (EMV Book 1 §11.3.4): 6F(84 name, A5(88 SFI of the directory, 5F2D))."""
    proprietary = encode_one("88", bytes([PSE_DIRECTORY_SFI])) + encode_one("5F2D", LANGUAGE_PREFERENCE)
    return encode_one("6F", encode_one("84", PSE_NAME) + encode_one("A5", proprietary))


def ppse_fci(entries: Sequence[bytes]) -> bytes:
    """FCI of the PPSE (EMV Contactless Book B §3.3): 6F(84 name, A5(BF0C(61 ...)))."""
    return encode_one(
        "6F", encode_one("84", PPSE_NAME) + encode_one("A5", encode_one("BF0C", b"".join(entries)))
    )


class _Context:
    """The :class:`~citycard.card.application.CardContext` the card gives its applications."""

    __slots__ = ("_card", "interface")

    def __init__(self, card: Card, interface: Interface):
        self._card = card
        self.interface: Interface = interface

    def random_bytes(self, count: int) -> bytes:
        if not 0 <= count <= RANDOM_BYTES_MAX:
            raise ValueError(f"random_bytes: 0 to {RANDOM_BYTES_MAX} bytes, got {count}")
        return secrets.token_bytes(count)

    def now(self) -> dt.datetime:
        return self._card.now()

    def save(self) -> None:
        self._card.save()

    def block_card(self) -> None:
        """CARD BLOCK (pboc-notes §3): from now on every SELECT answers 6A81; saved at once."""
        self._card.block()


def _reports_card_block(app: Application) -> bool:
    return getattr(app, "blocks_card", False) is True or getattr(app, "card_blocked", False) is True


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Card:
    """A virtual PBOC 3.0 card: applications behind an OS that never raises out of :meth:`process`.

    One terminal at a time (not thread-safe), as a real card. The context an application gets also
    offers ``block_card()`` (CARD BLOCK); an application with a true ``blocks_card`` attribute blocks
    the card too. With ``image_path`` (and a ``sealer``) the card saves itself when an application
    calls ``ctx.save()``, after the last STORE DATA block and on CARD BLOCK.

    >>> card = Card([])
    >>> card.process(bytes.fromhex("00A404000E315041592E5359532E444446303100")).hex().upper()
    '6F1C840E315041592E5359532E4444463031A50A8801015F2D047A68656E9000'
    >>> card.interface = "contactless"
    >>> card.process(bytes.fromhex("00A404000E315041592E5359532E444446303100")).hex().upper()
    '6A82'
    """

    def __init__(
        self,
        applications: Sequence[Application] = (),
        *,
        atr: bytes | None = None,
        protocol: TransmissionProtocol = "T=1",
        interface: Interface = "contact",
        serial: bytes | None = None,
        image_path: str | Path | None = None,
        sealer: Sealer | None = None,
        perso_decryptor: PersoDecryptor | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        card_blocked: bool = False,
        durable: bool = True,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be T=0 or T=1, got {protocol!r}")
        applications = list(applications)
        if len(applications) > APPLICATIONS_MAX:
            raise ValueError(f"a card holds at most {APPLICATIONS_MAX} applications, got {len(applications)}")
        aids = [app.aid for app in applications]
        for aid in aids:
            if not isinstance(aid, bytes) or not NAME_BYTES_MIN <= len(aid) <= NAME_BYTES_MAX:
                raise ValueError(f"an AID is {NAME_BYTES_MIN} to {NAME_BYTES_MAX} bytes, got {aid!r}")
        if len(set(aids)) != len(aids):
            raise ValueError("two applications share an AID")
        if serial is None:
            serial = secrets.token_bytes(SERIAL_BYTES)
        if len(serial) != SERIAL_BYTES:
            raise ValueError(f"the card serial must be {SERIAL_BYTES} bytes, got {len(serial)}")
        if image_path is not None and sealer is None:
            raise ValueError("a card with an image file needs a sealer for its secret items")
        self._applications = tuple(applications)
        self._protocol: TransmissionProtocol = protocol
        self._atr = check_atr(atr) if atr is not None else build_atr(protocol)
        self._serial = bytes(serial)
        self.image_path = Path(image_path) if image_path is not None else None
        self.sealer = sealer
        self.perso_decryptor = perso_decryptor
        self.durable = durable
        self.image_generation = 0  # the image generation last written or read (card/image.py)
        self._clock = clock or _utc_now
        self._card_blocked = bool(card_blocked)
        self._context = _Context(self, "contact")
        self.interface = interface
        self._selected: Application | None = None
        self._directory: bytes | None = None  # PSE_NAME or PPSE_NAME while one is selected
        self._pending: tuple[bytes, int] | None = None  # T=0: data waiting for GET RESPONSE, final SW
        self._store_data_next = 0
        self._partial_dgi: PartialDgi | None = None  # a DGI continuing in the next STORE DATA block

    def install(self, app: Application) -> Application:
        """Add a blank application to an issued card, as a card bureau's secured load does (a
        GlobalPlatform INSTALL [for install] in a real chip); STORE DATA then personalises it and the
        image saved next holds it. Refused (ValueError, nothing changed): an AID already on the card
        or one partial-selection prefix of another, a full card."""
        aids = [existing.aid for existing in self._applications]
        if not isinstance(app.aid, bytes) or not NAME_BYTES_MIN <= len(app.aid) <= NAME_BYTES_MAX:
            raise ValueError(f"an AID is {NAME_BYTES_MIN} to {NAME_BYTES_MAX} bytes, got {app.aid!r}")
        if any(aid.startswith(app.aid) or app.aid.startswith(aid) for aid in aids):
            raise ValueError(
                f"the card already holds an application named {app.aid.hex().upper()} or a prefix of it"
            )
        if len(aids) >= APPLICATIONS_MAX:
            raise ValueError(f"the card holds its maximum of {APPLICATIONS_MAX} applications")
        self._applications = (*self._applications, app)
        return app

    def __repr__(self) -> str:
        aids = ", ".join(app.aid.hex().upper() for app in self._applications)
        return f"Card(serial={self._serial.hex().upper()}, {self._protocol}, {self.interface}, [{aids}])"

    # --- what the reader sees ---------------------------------------------------------------
    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def protocol(self) -> TransmissionProtocol:
        return self._protocol

    @property
    def interface(self) -> Interface:
        return self._context.interface

    @interface.setter
    def interface(self, value: Interface) -> None:
        if value not in INTERFACES:
            raise ValueError(f"interface must be contact or contactless, got {value!r}")
        self._context.interface = value

    @property
    def serial(self) -> bytes:
        return self._serial

    @property
    def applications(self) -> tuple[Application, ...]:
        return self._applications

    @property
    def card_blocked(self) -> bool:
        """CARD BLOCK was done: through ``ctx.block_card()``, or an application reports it (a true
        ``blocks_card`` or ``card_blocked`` attribute of any application blocks the whole card)."""
        return self._card_blocked or any(_reports_card_block(app) for app in self._applications)

    @property
    def selected(self) -> Application | None:
        """The selected application, or None (nothing, or the PSE/PPSE, is selected)."""
        return self._selected

    def power_on(self) -> bytes:
        """Cold reset: nothing selected, no transient state; the ATR."""
        return self.reset()

    def reset(self) -> bytes:
        """Warm reset: as :meth:`power_on`."""
        self._drop_selection()
        return self._atr

    def power_off(self) -> None:
        self._drop_selection()

    def now(self) -> dt.datetime:
        """The card's clock (aware UTC; a test may inject its own)."""
        moment = self._clock()
        if moment.tzinfo is None:
            raise ValueError("the card clock must give aware datetimes")
        return moment.astimezone(dt.UTC)

    def save(self) -> None:
        """Write the image now (the A/B journal, docs/card.md §2) if the card has an image file."""
        if self.image_path is None:
            return
        from citycard.card.image import ImageTooLargeError, autosave  # image.py imports this module

        try:
            autosave(self)
        except ImageTooLargeError as exc:
            raise CardError(sw.NOT_ENOUGH_MEMORY, str(exc)) from None

    def block(self) -> None:
        self._card_blocked = True
        self.save()

    # --- APDUs ----------------------------------------------------------------------------
    def process(self, apdu: bytes) -> bytes:
        """Answer one C-APDU with an R-APDU (data ‖ SW1 SW2). Never raises."""
        try:
            return self._process(apdu)
        except CardError as exc:
            if isinstance(exc.sw, int) and (0x6000 <= exc.sw <= 0x6FFF or 0x9000 <= exc.sw <= 0x9FFF):
                return exc.sw.to_bytes(2, "big")
            log.error("card %s: CardError with status word %r", self._serial.hex().upper(), exc.sw)
        except OSError as exc:
            log.error(
                "card %s: image not written (%s): answered 6581", self._serial.hex().upper(), exc.strerror
            )
            return SW_MEMORY_FAILURE.to_bytes(2, "big")
        except Exception as exc:  # noqa: BLE001 - the card answers 6F00, it never raises
            log.error(
                "card %s: %s on %s: answered 6F00; at %s",
                self._serial.hex().upper(),
                type(exc).__name__,
                _header_text(apdu),
                _where(exc),
            )
        return sw.NO_PRECISE_DIAGNOSIS.to_bytes(2, "big")

    def _process(self, apdu: bytes) -> bytes:
        if not isinstance(apdu, bytes | bytearray | memoryview):
            raise TypeError(f"an APDU is bytes, not {type(apdu).__name__}")
        pending, self._pending = self._pending, None  # any command but GET RESPONSE discards it
        command = Command.parse(bytes(apdu))
        if command.ins == INS_GET_RESPONSE and command.cla == CLA_ISO:
            return self._get_response(command, pending)
        if command.cla not in CLASSES:
            raise CardError(sw.CLA_NOT_SUPPORTED, f"CLA {command.cla:02X}")
        response = self._dispatch(command)
        if not isinstance(response, Response) or not 0x6000 <= response.sw <= 0x9FFF:
            raise TypeError(f"application answered {response!r}, not a Response with a status word")
        if len(response.data) > RESPONSE_DATA_BYTES_MAX:
            raise ValueError(
                f"response of {len(response.data)} bytes: a short R-APDU holds {RESPONSE_DATA_BYTES_MAX}"
            )
        if not response.data or response.sw >> 8 not in _DATA_SW1:
            return response.sw.to_bytes(2, "big")
        if self._protocol == "T=0":
            return self._t0_answer(command, response)
        return response.to_bytes()

    def _dispatch(self, command: Command) -> Response:
        ins, cla = command.ins, command.cla
        if ins in (INS_SELECT, INS_GET_RESPONSE) and cla != CLA_ISO:
            raise CardError(sw.CLA_NOT_SUPPORTED, f"{ins:02X} is an ISO command (CLA 00)")
        if ins == INS_SELECT:
            return self._select(command)
        if ins == INS_STORE_DATA and cla == CLA_PROPRIETARY:
            return self._store_data(command)
        if self._selected is not None:
            return self._selected.process(command, self._context)
        if self._directory == PSE_NAME and ins == INS_READ_RECORD and cla == CLA_ISO:
            return self._read_directory(command)
        if ins in APPLICATION_INS:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "no application selected")
        raise CardError(sw.INS_NOT_SUPPORTED, f"INS {ins:02X}")

    # --- T=0 -----------------------------------------------------------------------------
    def _t0_answer(self, command: Command, response: Response) -> bytes:
        """EMV Book 1 §9.3.1: case 2 answers at once if Le is exact (else 6Cxx); other cases 61xx."""
        data = response.data
        if command.le is not None and not command.data:  # case 2
            if command.le != len(data):
                return sw.wrong_le(len(data)).to_bytes(2, "big")
            return response.to_bytes()
        self._pending = (data, response.sw)
        return sw.bytes_available(len(data)).to_bytes(2, "big")

    def _get_response(self, command: Command, pending: tuple[bytes, int] | None) -> bytes:
        """GET RESPONSE ``00 C0 00 00 Le`` (ISO/IEC 7816-4 §11.7.1): the data a 61xx announced.

        Le equal to what waits: the data and the command's own status word; a smaller Le: that much
        and 61xx for the rest; a larger Le: 6Cxx with the exact length. Data stays waiting until it
        is all delivered or another command arrives.
        """
        if pending is None:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "no response data waiting")
        self._pending = pending
        if command.p1 or command.p2:
            raise CardError(sw.INCORRECT_P1_P2, "GET RESPONSE takes P1 P2 = 00 00")
        if command.data:
            raise CardError(sw.WRONG_LENGTH, "GET RESPONSE carries no data")
        data, final_sw = pending
        le = command.le or RESPONSE_DATA_BYTES_MAX
        if le > len(data):
            return sw.wrong_le(len(data)).to_bytes(2, "big")
        if le < len(data):
            self._pending = (data[le:], final_sw)
            return data[:le] + sw.bytes_available(len(data) - le).to_bytes(2, "big")
        self._pending = None
        return data + final_sw.to_bytes(2, "big")

    # --- selection -----------------------------------------------------------------------
    def _drop_selection(self) -> None:
        if self._selected is not None:
            selected, self._selected = self._selected, None
            selected.deselect()
        self._directory = None
        self._pending = None
        self._store_data_next = 0
        self._partial_dgi = None

    def _select(self, command: Command) -> Response:
        if self.card_blocked:
            raise CardError(sw.FUNCTION_NOT_SUPPORTED, "card blocked")
        if command.p1 != 0x04 or command.p2 not in (0x00, 0x02):
            raise CardError(sw.INCORRECT_P1_P2, "SELECT by name takes P1 P2 = 04 00 or 04 02")
        name = command.data
        if not NAME_BYTES_MIN <= len(name) <= NAME_BYTES_MAX:
            raise CardError(
                sw.WRONG_LENGTH, f"a name is {NAME_BYTES_MIN} to {NAME_BYTES_MAX} bytes, got {len(name)}"
            )
        next_occurrence = command.p2 == 0x02
        if name in (PSE_NAME, PPSE_NAME):
            return self._select_directory(name, next_occurrence)
        return self._select_application(name, next_occurrence)

    def _select_directory(self, name: bytes, next_occurrence: bool) -> Response:
        wanted: Interface = "contact" if name == PSE_NAME else "contactless"
        if next_occurrence or self.interface != wanted:
            raise CardError(sw.FILE_NOT_FOUND, f"{name.decode()} is not on the {self.interface} interface")
        self._drop_selection()
        self._directory = name
        if name == PSE_NAME:
            return Response(pse_fci())
        return Response(ppse_fci([directory_entry(app) for app in self._listed()]))

    def _select_application(self, name: bytes, next_occurrence: bool) -> Response:
        start = 0
        if next_occurrence and self._selected is not None and self._selected.aid.startswith(name):
            start = next(i for i, app in enumerate(self._applications) if app is self._selected) + 1
        target = next((app for app in self._applications[start:] if app.aid.startswith(name)), None)
        if target is None:
            raise CardError(
                sw.FILE_NOT_FOUND, f"no {'further ' if next_occurrence else ''}application {name.hex()}"
            )
        self._drop_selection()
        status = target.select(self._context)
        if status not in (sw.OK, sw.WARNING_SELECTED_FILE_INVALIDATED):
            if isinstance(status, int) and 0x6400 <= status <= 0x6FFF:  # an error: nothing selected
                raise CardError(status, f"{target.aid.hex().upper()} refused selection")
            raise ValueError(f"select() returned {status!r}: 9000, 6283 or an error status word expected")
        fci = target.fci(self._context)
        self._selected = target
        return Response(fci, status)

    def _listed(self) -> list[Application]:
        """The applications a directory lists: the personalised payment ones, in the card's order."""
        return [app for app in self._applications if app.personalised and app.in_payment_directory]

    def _read_directory(self, command: Command) -> Response:
        """READ RECORD of the PSE directory (SFI 1): record n = 70(61(...)) of the n-th application."""
        record, reference = command.p1, command.p2
        if reference & 0x07 != 0x04 or record == 0:
            raise CardError(sw.INCORRECT_P1_P2, "READ RECORD takes P1 = record, P2 = SFI << 3 | 4")
        if reference >> 3 != PSE_DIRECTORY_SFI:
            raise CardError(sw.FILE_NOT_FOUND, f"SFI {reference >> 3} is not the PSE directory")
        listed = self._listed()
        if record > len(listed):
            raise CardError(sw.RECORD_NOT_FOUND, f"the directory holds {len(listed)} records")
        return Response(encode_one("70", directory_entry(listed[record - 1])))

    # --- personalisation -------------------------------------------------------------------
    def _store_data(self, command: Command) -> Response:
        """STORE DATA ``80 E2 P1 P2 Lc (DGI L value)...`` (EMV CPS v1.1 §4.3.6; docs/card.md §3).

        P1 b8 = last block, b6–b5 = 11 when the block's DGIs are enciphered; P2 = block number from
        00. A DGI longer than its block continues at the start of the next block(s) (CPS); it is
        deciphered and handed to the application once whole. Nothing of a refused block is kept.
        """
        app = self._selected
        if app is None or app.personalised:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "STORE DATA needs a selected blank application")
        enciphered = (command.p1 >> 4) & 0x03
        if enciphered not in (0b00, 0b11):
            raise CardError(sw.INCORRECT_P1_P2, f"P1 b6-b5 = {enciphered:02b}: 00 (clear) or 11 (enciphered)")
        if command.p2 != self._store_data_next:
            raise CardError(
                sw.INCORRECT_P1_P2, f"block {command.p2:02X}, expected {self._store_data_next:02X}"
            )
        if not command.data:
            raise CardError(sw.WRONG_LENGTH, "STORE DATA without data")
        last = bool(command.p1 & 0x80)
        data, complete = command.data, []
        partial = self._partial_dgi
        if partial is not None:
            dgi, length, received = partial
            take = length - len(received)
            received, data = received + data[:take], data[take:]
            partial = (dgi, length, received) if len(received) < length else None
            if partial is None:
                complete.append((dgi, received))
        if data:
            dgis, partial = parse_dgis(data)
            complete.extend(dgis)
        if last and partial is not None:
            raise CardError(sw.WRONG_DATA, f"last block ends inside DGI {partial[0]:04X}")
        if enciphered and complete:
            complete = self._decipher(complete)
        for dgi, value in complete:
            app.store_data(dgi, value, self._context)
        self._partial_dgi = partial
        self._store_data_next += 1
        if last:
            app.finish_personalisation(self._context)
            self._store_data_next = 0
            self.save()
        return Response()

    def _decipher(self, dgis: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if self.perso_decryptor is None:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "no personalisation transport key")
        try:
            return [(dgi, self.perso_decryptor.decipher(dgi, value)) for dgi, value in dgis]
        except ValueError as exc:
            raise CardError(sw.WRONG_DATA, f"enciphered DGI: {exc}") from None


PartialDgi = tuple[int, int, bytes]  # DGI, its whole length, the value bytes received so far


def parse_dgis(data: bytes) -> tuple[list[tuple[int, bytes]], PartialDgi | None]:
    """The DGIs of one STORE DATA block, and the last one if the block ends inside it (CPS split).

    DGI (2) ‖ L ‖ value, L one byte (00–FE) or FF xx xx (CPS). Read in this order, the first that
    fits: CPS lengths filling the block exactly; BER ``81 xx`` lengths (xx ≥ 80, from a preparation
    tool that writes BER) filling it exactly; CPS lengths with the last DGI continuing in the next
    block. Anything else answers 6A80.

    >>> parse_dgis(bytes.fromhex("0101027001" "9102FF0001AA"))
    ([(257, b'p\\x01'), (37122, b'\\xaa')], None)
    >>> parse_dgis(bytes.fromhex("0101" "FF0100" "7081FC"))
    ([], (257, 256, b'p\\x81\\xfc'))
    """
    for ber_81, split in ((False, False), (True, False), (False, True)):
        parsed = _parse_dgis(data, ber_81=ber_81, split=split)
        if parsed is not None:
            return parsed
    raise CardError(sw.WRONG_DATA, "STORE DATA block is not a sequence of DGI ‖ L ‖ value")


def _parse_dgis(
    data: bytes, *, ber_81: bool, split: bool
) -> tuple[list[tuple[int, bytes]], PartialDgi | None] | None:
    dgis: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        if offset + 3 > len(data):
            return None
        dgi, length, offset = int.from_bytes(data[offset : offset + 2], "big"), data[offset + 2], offset + 3
        if length == 0xFF:
            if offset + 2 > len(data):
                return None
            length, offset = int.from_bytes(data[offset : offset + 2], "big"), offset + 2
        elif length == 0x81 and ber_81:
            if offset + 1 > len(data) or data[offset] < 0x80:
                return None
            length, offset = data[offset], offset + 1
        if offset + length > len(data):
            return (dgis, (dgi, length, data[offset:])) if split else None
        dgis.append((dgi, data[offset : offset + length]))
        offset += length
    return dgis, None


def _where(exc: BaseException, frames_max: int = 4) -> str:
    """The innermost frames of an exception as ``file:line function``: its message is left out, as
    a message may quote data (a key, a PIN) and this goes to a log."""
    frames = traceback.extract_tb(exc.__traceback__)[-frames_max:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


def _header_text(apdu: object) -> str:
    """The header and length of an APDU for a log line: never its data (a PIN, a key)."""
    if isinstance(apdu, bytes | bytearray | memoryview):
        raw = bytes(apdu)
        return f"{raw[:4].hex().upper()} (+{max(len(raw) - 4, 0)} bytes)"
    return type(apdu).__name__
