"""Real parts for the switch tests: banks (IssuerHost behind HostServer), switches, terminals.

Everything runs in one asyncio loop in the test process over real TCP sockets on 127.0.0.1. Each
party has its OWN SoftHSM: a bank and a switch share only a zone master key, imported into both
from one clear test key (a key ceremony in miniature) — the bank holds it as ``zmk:<switch code>``
(what its HostServer looks for when the switch signs on with F33), the switch as ``zmk:to/<bank>``.
Requests carry field 55 with a real ARQC computed from the card key derived in the bank's HSM.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from tests import dbtools

from citycard.crypto import cryptogram
from citycard.crypto.iad import build_iad
from citycard.crypto.keys import session_key
from citycard.crypto.suite import Suite
from citycard.db import read_transaction
from citycard.emv.tlv import TLV, decode, encode
from citycard.host.client import AsyncHostClient
from citycard.host.issuer import IssuerHost, load_issuer_configs
from citycard.host.server import HostServer, threaded
from citycard.host.switch.config import SwitchConfig, parse_switch_config
from citycard.host.switch.service import SwitchService
from citycard.hsm import SoftHSM
from citycard.iso8583 import builders
from citycard.ledger import UnknownAccount, balance_fen, check_invariants

EXPIRY = dt.date(2030, 12, 31)
CVR = bytes.fromhex("A00000")  # ARQC requested in the first GENERATE AC (pboc-notes §2.4)
START_BALANCE_FEN = 100_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Bank:
    """An issuer host on its own database and HSM, served on ``port`` (started on demand)."""

    name: str
    url: str
    hsm: SoftHSM
    issuer: IssuerHost
    port: int
    server: HostServer | None = None
    delay_first_s: float = 0.0  # hold the first request this long (a slow issuer; see SlowHandler)

    async def start(self) -> None:
        config = self.issuer.config
        handler: Any = threaded(self.issuer)
        if self.delay_first_s:
            handler = SlowHandler(handler, self.delay_first_s)
        self.server = HostServer(handler, hsm=self.hsm, port=self.port, institution_id=config.institution_id)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown(grace_s=5)
            self.server = None

    def balance(self, pan: str, psn: int = 1) -> int:
        with read_transaction(self.issuer.engine) as conn:
            return balance_fen(conn, f"{self.name}:card:{pan}:{psn:02d}")

    def merchant_balance(self, merchant_id: str) -> int:
        with read_transaction(self.issuer.engine) as conn:
            try:
                return balance_fen(conn, f"{self.name}:merchant:{merchant_id.strip()}")
            except UnknownAccount:  # a merchant account is opened on its first approval
                return 0

    def invariants(self) -> list[str]:
        with read_transaction(self.issuer.engine) as conn:
            return check_invariants(conn)

    def enrol(self, pan: str, suite: Suite, *, balance: int = START_BALANCE_FEN) -> None:
        self.issuer.enrol_card(
            pan=pan, psn=1, expiry=EXPIRY, suite=suite, pin=None, account_balance_fen=balance
        )

    def ic(
        self, pan: str, suite: Suite, *, amount_fen: int, atc: int, when: dt.datetime
    ) -> tuple[bytes, bytes]:
        """Field 55 of a card of this bank with a real ARQC; and the AC session key (to check the ARPC)."""
        label = self.issuer.config.labels(suite).imk_ac
        return make_ic(self.hsm, label, pan, suite, amount_fen=amount_fen, atc=atc, when=when)


def make_ic(
    hsm: SoftHSM, imk_ac_label: str, pan: str, suite: Suite, *, amount_fen: int, atc: int, when: dt.datetime
) -> tuple[bytes, bytes]:
    """Field 55 (PBOC CDOL1 tags, pboc-notes §10) with the ARQC of card ``pan``/01 under the issuer's
    IMK-AC (card key derived in ``hsm``, session key from the ATC); and that AC session key."""
    keys = hsm.export_card_keys_for_personalisation(
        {"AC": imk_ac_label}, tag_5a=pan, tag_5f34="01", suite=suite
    )
    tag_9f36 = atc.to_bytes(2, "big")
    sk = session_key(keys["AC"], tag_9f36=tag_9f36, suite=suite)
    local = when.astimezone(builders.CHINA_STANDARD_TIME)
    tags = {
        "9F02": bytes.fromhex(f"{amount_fen:012d}"), "9F03": bytes(6), "9F1A": bytes.fromhex("0156"),
        "95": bytes(5), "5F2A": bytes.fromhex("0156"), "9A": bytes.fromhex(local.strftime("%y%m%d")),
        "9C": b"\x00", "9F37": secrets.token_bytes(4), "82": bytes.fromhex("7C00"), "9F36": tag_9f36,
    }  # fmt: skip
    data = cryptogram.pboc_ac_data(
        **{f"tag_{tag.lower()}": value for tag, value in tags.items()}, cvr=b"\x03" + CVR
    )
    tags["9F26"] = cryptogram.generate_ac(sk, data, suite=suite)
    tags["9F27"] = b"\x80"
    tags["9F10"] = build_iad(dki=1, cvn=1, cvr=CVR, suite=suite)
    return encode([TLV(tag, value) for tag, value in tags.items()]), sk


class SlowHandler:
    """The real issuer handler, but its first batch is held ``delay_s`` (an issuer that answers late)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self._inner, self._delay_s = inner, delay_s
        self.held = 0

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        if self.held == 0:
            self.held = len(requests)
            await asyncio.sleep(self._delay_s)
        return await self._inner.handle_batch(requests)

    def close(self) -> None:
        self._inner.close()


def make_bank(name: str, url: str, *, zmks: dict[str, bytes], suite: Suite) -> Bank:
    """A bank from the shipped issuers.toml on a migrated database, trusting each ``zmks`` switch code."""
    hsm = SoftHSM.ephemeral()
    issuer = IssuerHost(load_issuer_configs()[name], engine=dbtools.migrated_engine(url), hsm=hsm)
    issuer.provision_keys()
    for code, clear in zmks.items():
        hsm.import_key(f"zmk:{code}", "ZMK", suite, clear)
    return Bank(name, url, hsm, issuer, free_port())


@dataclass
class Terminal:
    """A terminal signed on to a switch: its own HSM with the TMK the switch also holds."""

    terminal: builders.Terminal
    client: AsyncHostClient
    stans: Any = field(default_factory=lambda: iter(range(1, 999_999)))

    @classmethod
    async def connect(cls, switch: SwitchService, *, suite: Suite, terminal_id: str = "T0000001") -> Terminal:
        clear = secrets.token_bytes(suite.key_bytes)
        switch.hsm.import_key(f"tmk:{terminal_id}", "TMK", suite, clear, replace=True)
        hsm = SoftHSM.ephemeral()
        hsm.import_key("tmk:mine", "TMK", suite, clear)
        client = AsyncHostClient("127.0.0.1", switch.server.port, timeout_s=10, hsm=hsm, tmk_label="tmk:mine")
        await client.connect()
        await client.sign_on(terminal_id=terminal_id, merchant_id="M00000000000001")
        terminal = builders.Terminal(terminal_id, "M00000000000001", acquirer_id="04519999")
        return cls(terminal, client)

    def purchase(
        self, bank: Bank, pan: str, suite: Suite, *, amount_fen: int, atc: int
    ) -> tuple[dict, bytes]:
        when = dt.datetime.now(dt.UTC)
        ic, sk = bank.ic(pan, suite, amount_fen=amount_fen, atc=atc, when=when)
        fields = builders.financial(
            "purchase", terminal=self.terminal, card=builders.Card(pan, psn=1, expiry_yymm="3012"),
            amount_fen=amount_fen, stan=next(self.stans), when=when, ic=ic,
        )  # fmt: skip
        return fields, sk

    async def close(self) -> None:
        await self.client.close()


def arpc_of(answer: dict[str, Any]) -> bytes:
    """The ARPC (first 8 bytes of tag 91) of an issuer answer's field 55."""
    tag_91 = next(obj.value for obj in decode(answer["55"]) if obj.tag == "91")
    return tag_91[:8]


def switch_config(
    *, name: str, code: str, endpoints: list[dict], routes: list[dict], default: str | None = None,
    standin: dict | None = None,
) -> SwitchConfig:  # fmt: skip
    section: dict[str, Any] = {"name": name, "institution_id": code, "port": 0}
    if default is not None:
        section["default_route"] = default
    return parse_switch_config(
        {"switch": section, "endpoints": endpoints, "routes": routes, "standin": standin or {}}
    )


def new_zmk(suite: Suite) -> bytes:
    return secrets.token_bytes(suite.key_bytes)
