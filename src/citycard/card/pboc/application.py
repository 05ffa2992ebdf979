"""The PBOC 3.0 debit/credit application with electronic cash, qPBOC and Part 14 files.

One class for A000000333010101 (debit), …0102 (credit) and …0106 (pure electronic cash): the AID
is given by the OS when it creates the application, everything else comes from personalisation
(docs/card.md §3). Commands are dispatched by a table (INS → handler and the CLAs it takes);
unknown INS → 6D00, a known INS with another CLA → 6E00, anything before personalisation
completes → 6985.

Coordination with the card OS (docs/card.md §1):

* CARD BLOCK (issuer script ``84 16``) calls ``ctx.block_card()``, and
  :attr:`PbocApplication.blocks_card` turns True (persistent, in this application's image too).
  The OS then answers 6A81 to every SELECT; this application also answers 6A81 itself to any
  command it still receives.
* :meth:`select` answers 6283 while the application is blocked (APPLICATION BLOCK); the OS sends
  the FCI with it.
* Persistence: every command that changes persistent state calls ``ctx.save()`` before it
  returns (or raises its status word). STORE DATA is persisted by the OS after each DGI.

Suites: a card personalised with both suites' keys runs each transaction in the suite GET
PROCESSING OPTIONS chose from DF69 (:func:`citycard.card.pboc.gpo.choose_suite`): its session keys,
its ICC private key for DDA/fDDA/CDA, and its AIP‖AFL — 9104/9105 for INTL, 9106/9107 for GM
(:meth:`PbocApplication.gpo_data`; docs/card.md §3). A single-suite card uses 9104/9105.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import Application, CardContext, Sealer
from citycard.card.pboc import capp, commands, gpo, perso, scripts
from citycard.card.pboc.capp import CappFiles
from citycard.card.pboc.data import AIDS, CardData
from citycard.card.pboc.generate_ac import external_authenticate, generate_ac_command
from citycard.card.pboc.logs import Logs
from citycard.card.pboc.perso import Secrets
from citycard.card.pboc.state import Counters, Transaction
from citycard.card.sw import CardError
from citycard.crypto.suite import Suite
from citycard.emv.tlv import encode_one

IMAGE_FORMAT = 1

Handler = Callable[["PbocApplication", Command, CardContext], Response]
COMMANDS: dict[int, tuple[Handler, frozenset[int]]] = {  # INS → (handler, CLAs)
    0xA8: (gpo.get_processing_options, frozenset({0x80})),
    0xB2: (commands.read_record, frozenset({0x00})),
    0xCA: (commands.get_data, frozenset({0x80})),
    0x20: (commands.verify, frozenset({0x00})),
    0x84: (commands.get_challenge, frozenset({0x00})),
    0x88: (commands.internal_authenticate, frozenset({0x00})),
    0xAE: (generate_ac_command, frozenset({0x80})),
    0x82: (external_authenticate, frozenset({0x00})),
    **dict.fromkeys(
        (0xDA, 0x1E, 0x18, 0x16, 0x24), (scripts.script_command, frozenset({0x00, 0x04, 0x80, 0x84}))
    ),
    0xE2: (capp.append_record, frozenset({0x00, 0x04})),
    0xB4: (capp.read_capp_data, frozenset({0x80})),
    0xDE: (capp.update_capp_data_cache, frozenset({0x80, 0x84})),
}


class PbocApplication(Application):
    """A PBOC debit/credit/EC application; see the module note for the OS contract."""

    def __init__(self, aid: bytes) -> None:
        if aid not in AIDS:
            raise ValueError(
                f"not a PBOC AID: {aid.hex().upper()} (expected one of {[a.hex().upper() for a in AIDS]})"
            )
        self.aid = aid
        self.label = "PBOC"
        self.priority: int | None = None
        self.data = CardData()
        self.counters = Counters()
        self.secrets = Secrets()
        self.logs = Logs()
        self.capp = CappFiles()
        self.txn = Transaction()
        self._personalised = False

    # --- what the OS reads -------------------------------------------------------------------

    @property
    def blocks_card(self) -> bool:
        """True after CARD BLOCK: the OS answers 6A81 from then on."""
        return self.counters.card_blocked

    @property
    def personalised(self) -> bool:
        return self._personalised

    def fci(self, ctx: CardContext) -> bytes:
        """6F (84 AID, A5 (the 9102 or 9103 template of this interface))."""
        proprietary = self.data.fci.get(ctx.interface)
        if proprietary is None:
            proprietary = self.data.fci.get("contact", b"")
        return encode_one("6F", encode_one("84", self.aid) + encode_one("A5", proprietary))

    def select(self, ctx: CardContext) -> int:
        self.txn = Transaction()
        if self.counters.card_blocked:
            return sw.FUNCTION_NOT_SUPPORTED
        return sw.WARNING_SELECTED_FILE_INVALIDATED if self.counters.application_blocked else sw.OK

    def deselect(self) -> None:
        self.txn = Transaction()  # a pending Part 14 purchase is dropped with it

    def process(self, command: Command, ctx: CardContext) -> Response:
        if self.counters.card_blocked:
            raise CardError(sw.FUNCTION_NOT_SUPPORTED, "card blocked")
        entry = COMMANDS.get(command.ins)
        if entry is None:
            raise CardError(sw.INS_NOT_SUPPORTED, f"INS {command.ins:02X} is not a PBOC command")
        handler, classes = entry
        if command.cla not in classes:
            raise CardError(sw.CLA_NOT_SUPPORTED, f"CLA {command.cla:02X} with INS {command.ins:02X}")
        if not self._personalised:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "application not personalised")
        return handler(self, command, ctx)

    def gpo_data(self, interface: str, suite: Suite) -> bytes | None:
        """AIP ‖ AFL of ``interface`` for a transaction in ``suite``: 9106/9107 for GM on a card with
        both suites' keys, otherwise 9104/9105 (docs/card.md §3)."""
        return self.data.gpo_for(interface, suite.name, dual=len(self.secrets.suites()) > 1)

    # --- personalisation ---------------------------------------------------------------------

    def store_data(self, dgi: int, data: bytes, ctx: CardContext) -> None:
        if self._personalised:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "application already personalised")
        perso.store_dgi(self, dgi, data)

    def finish_personalisation(self, ctx: CardContext) -> None:
        perso.check_complete(self)
        problems = self.logs.configure(self.data)
        if problems:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "personalisation incomplete: " + "; ".join(problems))
        self._label_and_priority()
        self._personalised = True

    def _label_and_priority(self) -> None:
        label = self.data.fci_tag("contact", "50") or self.data.fci_tag("contactless", "50")
        if label:
            self.label = label.decode("ascii", "replace")
        priority = self.data.fci_tag("contact", "87") or self.data.fci_tag("contactless", "87")
        self.priority = priority[0] if priority else None

    # --- image -------------------------------------------------------------------------------

    def to_image(self, sealer: Sealer) -> dict[str, Any]:
        return {
            "application": "pboc",
            "format": IMAGE_FORMAT,
            "aid": self.aid.hex().upper(),
            "personalised": self._personalised,
            "data": self.data.to_json(),
            "state": self.counters.to_json(),
            "secrets": self.secrets.to_image(sealer),
            "logs": self.logs.to_json(),
            "capp": self.capp.to_json(sealer),
        }

    @classmethod
    def from_image(cls, image: dict[str, Any], sealer: Sealer) -> PbocApplication:
        if image.get("application") != "pboc" or image.get("format") != IMAGE_FORMAT:
            raise ValueError(f"not a PBOC application image of format {IMAGE_FORMAT}")
        app = cls(bytes.fromhex(image["aid"]))
        app.data = CardData.from_json(image["data"])
        app.counters = Counters.from_json(image["state"])
        app.secrets = Secrets.from_image(image["secrets"], sealer)
        app.logs = Logs.from_json(image["logs"])
        app.capp = CappFiles.from_json(image["capp"], sealer)
        app._personalised = image["personalised"]
        app._label_and_priority()
        return app
