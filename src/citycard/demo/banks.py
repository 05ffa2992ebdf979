"""The city's bank side for the demo: the issuer host and the switch, served over real TCP.

One asyncio loop on a background thread runs citybank's :class:`~citycard.host.issuer.IssuerHost`
behind a :class:`~citycard.host.server.HostServer` (on the city's database and HSM: the platform's
embedded issuer is the same bank) and the city switch (:class:`~citycard.host.switch.service.
SwitchService`, its own HSM and database file) that routes citybank's BIN to it. The switch and the
bank share a zone master key (imported into both HSMs from one random key: a key ceremony in
miniature, as docs/switch.md describes); the top-up kiosk signs on to the switch with its TMK.

:func:`ec_load` is one 圈存 at the kiosk: the kernel's contact flow with an
:class:`~citycard.terminals.acquirer_link.Iso8583AcquirerLink` of kind ``ec_load`` → switch →
issuer (ARQC verified, the account debited, the EC account credited) → ARPC + the ``04DA9F79``
script → the card's new balance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citycard.crypto.suite import GM
from citycard.db import make_engine, upgrade
from citycard.host.issuer import IssuerHost, load_issuer_configs
from citycard.host.server import HostServer, threaded
from citycard.host.switch.config import parse_switch_config
from citycard.host.switch.service import SwitchService
from citycard.hsm import SoftHSM

ISSUER = "citybank"
SWITCH_CODE = "04510000"  # the city switch's F33 (data/hosts/switch-city-a.toml)
KIOSK_ID = "KIOSK001"  # the top-up kiosk's F41
KIOSK_MERCHANT = "CITYCARDKIOSK01"  # F42, 15 characters
TRANSACTION_TYPE_EC_LOAD = 0x60  # 9C of a load from the designated account (cli/terminal.py, UNCERTAIN)
START_TIMEOUT_S = 20.0
LINK_TIMEOUT_S = 10.0


@dataclass
class BankNetwork:
    """citybank + the city switch on one event loop thread (see the module note)."""

    engine: Any
    hsm: SoftHSM
    data_dir: Path
    switch_port: int = 0
    bank_port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _bank: HostServer | None = None
    _switch: SwitchService | None = None
    switch_hsm: SoftHSM = field(default_factory=SoftHSM.ephemeral)
    issuer: IssuerHost | None = None

    def start(self) -> BankNetwork:
        self.issuer = IssuerHost(load_issuer_configs()[ISSUER], engine=self.engine, hsm=self.hsm)
        self.issuer.provision_keys()
        zmk = secrets.token_bytes(GM.key_bytes)  # the ceremony: one key, two HSMs, then forgotten
        self.hsm.import_key(f"zmk:{SWITCH_CODE}", "ZMK", GM, zmk, replace=True)
        self.switch_hsm.import_key(f"zmk:to/{ISSUER}", "ZMK", GM, zmk, replace=True)
        tmk = secrets.token_bytes(GM.key_bytes)  # the kiosk's TMK, loaded into kiosk and switch
        self.hsm.import_key(f"tmk:{KIOSK_ID}", "TMK", GM, tmk, replace=True)
        self.switch_hsm.import_key(f"tmk:{KIOSK_ID}", "TMK", GM, tmk, replace=True)
        del zmk, tmk
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start_servers())
            except (OSError, RuntimeError, ValueError) as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="demo-banks", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the bank network did not start")
        if failure:
            raise RuntimeError(f"the bank network did not start: {failure[0]}") from failure[0]
        return self

    async def _start_servers(self) -> None:
        assert self.issuer is not None
        config = self.issuer.config
        self._bank = HostServer(threaded(self.issuer), hsm=self.hsm, institution_id=config.institution_id)
        self.bank_port = await self._bank.start()
        switch_config = parse_switch_config(
            {
                "switch": {"name": "city-a", "institution_id": SWITCH_CODE, "port": 0},
                "endpoints": [
                    {
                        "name": ISSUER, "kind": "issuer", "port": self.bank_port, "zmk": f"zmk:to/{ISSUER}",
                        "terminal_id": "SWCITYA1", "merchant_id": "SWITCHCITYA0001", "timeout_ms": 5000,
                    }
                ],
                "routes": [{"prefix": bin_, "endpoint": ISSUER} for bin_ in config.bins],
                "standin": {},
            }
        )  # fmt: skip
        switch_engine = make_engine(f"sqlite:///{self.data_dir / 'switch.db'}")
        upgrade(switch_engine)
        self._switch = SwitchService(switch_config, engine=switch_engine, hsm=self.switch_hsm, port=0)
        self.switch_port = await self._switch.start()

    async def _stop_servers(self) -> None:
        if self._switch is not None:
            await self._switch.shutdown()
            self._switch.engine.dispose()
        if self._bank is not None:
            await self._bank.shutdown(grace_s=5)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._stop_servers(), self._loop)
        try:
            future.result(START_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT_S)
            self._loop.close()
            self._loop = None

    def __enter__(self) -> BankNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class LoadResult:
    approved: bool
    response_code: str | None  # F39 / 8A from the issuer (None: no answer)
    reasons: tuple[str, ...]
    aid: bytes = b""


def ec_load(
    network: BankNetwork, card: Any, *, amount_fen: int, when: dt.datetime | None = None
) -> LoadResult:
    """One 圈存 of ``amount_fen`` onto ``card`` (a virtual card, contact) at the kiosk, online
    through the switch to the issuer (module note). The card object is changed in place."""
    from citycard.host.client import HostClient
    from citycard.iso8583 import builders
    from citycard.kernel.contact import run_contact
    from citycard.kernel.context import Terminal, TerminalProfile
    from citycard.kernel.params import AidTable, CapkTable
    from citycard.reader import InProcessTransport
    from citycard.terminals.acquirer_link import Iso8583AcquirerLink
    from citycard.terminals.store import TerminalStore

    terminal = Terminal(
        TerminalProfile(terminal_id=KIOSK_ID.encode(), merchant_id=KIOSK_MERCHANT.encode()),
        AidTable.load(),
        CapkTable.load().with_hsm(network.hsm),
        None,
    )
    client = HostClient(
        "127.0.0.1",
        network.switch_port,
        timeout_s=LINK_TIMEOUT_S,
        hsm=network.hsm,
        tmk_label=f"tmk:{KIOSK_ID}",
    )
    try:
        client.sign_on(terminal_id=KIOSK_ID, merchant_id=KIOSK_MERCHANT)
        link = Iso8583AcquirerLink(
            client,
            TerminalStore(network.data_dir, KIOSK_ID),
            builders.Terminal(terminal_id=KIOSK_ID, merchant_id=KIOSK_MERCHANT),
            kind="ec_load",
        )
        link.send_pending_reversals()
        card.interface = "contact"
        with InProcessTransport(card) as transport:
            result = run_contact(
                transport,
                terminal,
                amount_fen=amount_fen,
                when=when,
                acquirer=link,
                transaction_type=TRANSACTION_TYPE_EC_LOAD,
            )
        link.complete(result)
    finally:
        client.close()
    arc = result.authorisation_response_code
    code = arc.decode("ascii", "replace") if arc is not None else None
    return LoadResult(result.approved, code, tuple(result.reasons), result.aid)


def chip_ec_balance_fen(card: Any, aid: bytes) -> int:
    """The card's electronic-cash balance (GET DATA 9F79 after SELECT), as a terminal reads it."""
    from citycard.reader import InProcessTransport

    with InProcessTransport(card) as transport:
        selected = transport.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00")
        answer = transport.transmit(bytes.fromhex("80CA9F7900"))
    if selected[-2:] != b"\x90\x00" or answer[-2:] != b"\x90\x00" or answer[:3] != b"\x9f\x79\x06":
        raise ValueError(f"GET DATA 9F79 failed: SELECT {selected[-2:].hex()}, answer {answer.hex()}")
    return int(answer[3:-2].hex())
