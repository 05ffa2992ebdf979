"""A small test-only application, so the card OS is tested without the PBOC application.

``EchoApplication`` keeps records (READ RECORD), a counter it saves before answering (``80 AE``, a
case-4 command), GET CHALLENGE, a card-block command (``84 16``), a deliberate crash (``80 EE``),
STORE DATA that records each DGI (``SSRR`` DGIs become records, ``8000`` is a secret key), a blocked
flag (SELECT answers 6283 with its FCI) and its image with the key sealed.
"""

from __future__ import annotations

from typing import Any

import pytest

from citycard.card import Application, CardError, Command, Response, register_application_class, sw
from citycard.card.image import APPLICATION_CLASSES
from citycard.emv import encode_one

h = bytes.fromhex
DEBIT = h("A000000333010101")
CREDIT = h("A000000333010102")
OTHER = h("A000000004101001")
CARD_KEY = h("0123456789ABCDEFFEDCBA9876543210")


class EchoApplication(Application):
    def __init__(
        self,
        aid: bytes,
        label: str,
        *,
        priority: int | None = None,
        records: dict[tuple[int, int], bytes] | None = None,
        blocked: bool = False,
        personalised: bool = True,
        key: bytes | None = None,
        counter: int = 0,
    ):
        self.aid = aid
        self.label = label
        self.priority = priority
        self.records = dict(records or {})
        self.blocked = blocked
        self._personalised = personalised
        self.key = key
        self.counter = counter
        self.dgis: list[tuple[int, bytes]] = []
        self.selections = 0
        self.deselections = 0

    # --- the contract ------------------------------------------------------------------------
    def fci(self, ctx) -> bytes:
        proprietary = encode_one("50", self.label.encode())
        if self.priority is not None:
            proprietary += encode_one("87", bytes([self.priority]))
        return encode_one("6F", encode_one("84", self.aid) + encode_one("A5", proprietary))

    def select(self, ctx) -> int:
        self.selections += 1
        return sw.WARNING_SELECTED_FILE_INVALIDATED if self.blocked else sw.OK

    def deselect(self) -> None:
        self.deselections += 1

    def process(self, command: Command, ctx) -> Response:
        key = (command.cla, command.ins)
        if key == (0x00, 0xB2):
            record = self.records.get((command.p2 >> 3, command.p1))
            if record is None:
                raise CardError(sw.RECORD_NOT_FOUND)
            return Response(record)
        if key == (0x00, 0x84):
            return Response(ctx.random_bytes(8))
        if key == (0x80, 0xAE):
            self.counter += 1
            ctx.save()
            atc = encode_one("9F36", self.counter.to_bytes(2, "big"))
            return Response(encode_one("77", atc + encode_one("DF01", command.data)))
        if key == (0x84, 0x16):
            ctx.block_card()
            return Response()
        if key == (0x80, 0xCA) and (command.p1, command.p2) == (0x9F, 0x36):
            return Response(encode_one("9F36", self.counter.to_bytes(2, "big")))
        if key == (0x80, 0xEE):
            raise RuntimeError("deliberate failure " + CARD_KEY.hex())  # a key must never reach the log
        raise CardError(sw.INS_NOT_SUPPORTED)

    @property
    def personalised(self) -> bool:
        return self._personalised

    def store_data(self, dgi: int, data: bytes, ctx) -> None:
        self.dgis.append((dgi, data))
        sfi, record = dgi >> 8, dgi & 0xFF
        if 1 <= sfi <= 30 and record:
            self.records[(sfi, record)] = data
        elif dgi == 0x8000:
            self.key = data
        elif dgi == 0xDEAD:
            raise CardError(sw.WRONG_DATA, "refused DGI")

    def finish_personalisation(self, ctx) -> None:
        if self.key is None:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "no key DGI 8000")
        self._personalised = True

    def to_image(self, sealer) -> dict[str, Any]:
        return {
            "aid": self.aid.hex(),
            "label": self.label,
            "priority": self.priority,
            "records": [[sfi, rec, value.hex()] for (sfi, rec), value in sorted(self.records.items())],
            "blocked": self.blocked,
            "personalised": self._personalised,
            "counter": self.counter,
            "balance_fen": 12345,
            "key": sealer.seal("keys/INTL/AC", self.key) if self.key is not None else None,
        }

    @classmethod
    def from_image(cls, image: dict[str, Any], sealer) -> EchoApplication:
        return cls(
            bytes.fromhex(image["aid"]),
            image["label"],
            priority=image["priority"],
            records={(sfi, rec): bytes.fromhex(value) for sfi, rec, value in image["records"]},
            blocked=image["blocked"],
            personalised=image["personalised"],
            key=sealer.open("keys/INTL/AC", image["key"]) if image["key"] is not None else None,
            counter=image["counter"],
        )


def echo_apps(**debit_options) -> list[EchoApplication]:
    """Debit (priority 1, SFI 1 records 1–2), credit (priority 2), another scheme's app."""
    records = {
        (1, 1): encode_one("70", encode_one("5A", h("6217000012345678"))),
        (1, 2): encode_one("70", b""),
    }
    return [
        EchoApplication(DEBIT, "PBOC DEBIT", priority=1, records=records, key=CARD_KEY, **debit_options),
        EchoApplication(CREDIT, "PBOC CREDIT", priority=2, key=CARD_KEY),
        EchoApplication(OTHER, "OTHER", key=CARD_KEY),
    ]


@pytest.fixture
def echo():
    """The test application module's names: ``echo.EchoApplication``, ``echo.apps()``, AIDs."""

    class Names:
        EchoApplication = EchoApplication
        apps = staticmethod(echo_apps)
        DEBIT, CREDIT, OTHER, CARD_KEY = globals()["DEBIT"], globals()["CREDIT"], globals()["OTHER"], CARD_KEY

    return Names


@pytest.fixture
def registered(monkeypatch):
    """EchoApplication trusted by ``load_card`` for this test only."""
    monkeypatch.setattr("citycard.card.image.APPLICATION_CLASSES", dict(APPLICATION_CLASSES))
    return register_application_class(EchoApplication)
