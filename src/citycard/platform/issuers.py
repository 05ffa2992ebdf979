"""The port between the platform and the banks that issue its cards (issue 6; platform-contract).

The platform needs four things from an issuer: enrol a card (open its accounts at the bank),
change a card's status (a loss report blocks it), queue a script for the card's next online
transaction, and read/adjust the electronic-cash shadow it keeps (a replacement moves the
balance). :class:`IssuerPort` names them; :class:`InProcessIssuer` is the embedded default: the
issuer host (:mod:`citycard.host.issuer`) runs on the SAME database as the platform, so its
administration calls run on the caller's ``Connection`` inside a SAVEPOINT — the card's state
change, the issuer's status row, the ledger postings and the events commit together, and an
issuer refusal undoes only the issuer's part. A remote issuer (an API or ISO 8583 0302 file
update) would implement the same protocol; UNCERTAIN how CUPS carries platform card-status
changes to a bank (file update messages are our guess), so the port stays small.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Engine, select, update

from citycard.crypto.suite import Suite
from citycard.host.issuer import IssuerConfig, IssuerError, IssuerHost, load_issuer_configs
from citycard.host.issuer import tables as issuer_tables
from citycard.host.issuer.participants import account_codes
from citycard.hsm import SoftHSM
from citycard.platform.errors import Conflict, InvalidInput, NotFound

# Platform card state → the issuer's card status (issuer_cards.status: active, blocked, lost, stolen).
ISSUER_STATUS = {
    "issued": "blocked",  # enrolled but not activated: the bank declines until activation
    "active": "active",
    "lost_oral": "lost",  # an oral report already blocks (no liability after the report minute)
    "lost": "lost",
    "replaced": "blocked",
    "cancelled": "blocked",
}


class IssuerPort(Protocol):
    """What the platform asks of a card's issuer."""

    name: str

    def owns(self, pan: str) -> bool: ...
    def enrol_card(self, *, pan: str, psn: int, expiry: dt.date, suite: Suite, status: str) -> None: ...
    def set_card_status(self, *, pan: str, psn: int, status: str) -> None: ...
    def card_status(self, *, pan: str, psn: int) -> str | None: ...
    def queue_script(self, *, pan: str, psn: int, kind: str) -> None: ...
    def ec_account(self, *, pan: str, psn: int) -> str: ...
    def set_ec_shadow(self, *, pan: str, psn: int, ec_balance_fen: int) -> None: ...


@cache
def issuer_configs() -> dict[str, IssuerConfig]:
    """The shipped issuers (``data/hosts/issuers.toml``), read once."""
    return load_issuer_configs()


def config_of(name: str) -> IssuerConfig:
    configs = issuer_configs()
    if name not in configs:
        raise InvalidInput(
            "card.issuer",
            f"unknown issuer {name!r}; one of {', '.join(sorted(configs))}",
            fields={"issuer": "unknown"},
        )
    return configs[name]


class _BoundEngine:
    """Looks like an ``Engine`` to :func:`citycard.db.write_transaction`: ``begin()`` opens a
    SAVEPOINT on the caller's connection instead of a new transaction (which, on SQLite, would
    wait forever for the write lock the caller holds)."""

    def __init__(self, conn: Connection):
        self._conn = conn

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self._conn.begin_nested():
            yield self._conn


class InProcessIssuer:
    """An :class:`IssuerPort` over the embedded issuer host, on the caller's connection."""

    def __init__(self, conn: Connection, config: IssuerConfig, hsm: SoftHSM | None):
        self.name = config.name
        self.config = config
        self._conn = conn
        # The admin calls used here need the HSM only to turn a PIN into a PVV (none is given).
        self._host = IssuerHost(config, engine=cast(Engine, _BoundEngine(conn)), hsm=cast(SoftHSM, hsm))

    def owns(self, pan: str) -> bool:
        return self.config.owns(pan)

    def enrol_card(self, *, pan: str, psn: int, expiry: dt.date, suite: Suite, status: str) -> None:
        """Enrol with a zero EC balance: money only ever reaches the EC account by a ledger posting."""
        self._call(
            self._host.enrol_card, pan=pan, psn=psn, expiry=expiry, suite=suite, pin=None, status=status
        )

    def set_card_status(self, *, pan: str, psn: int, status: str) -> None:
        self._call(self._host.set_card_status, pan=pan, psn=psn, status=status)

    def queue_script(self, *, pan: str, psn: int, kind: str) -> None:
        self._call(self._host.queue_script, pan=pan, psn=psn, kind=kind)

    def card_status(self, *, pan: str, psn: int) -> str | None:
        c = issuer_tables.cards.c
        return self._conn.execute(select(c.status).where(c.pan == pan, c.psn == psn)).scalar_one_or_none()

    def ec_account(self, *, pan: str, psn: int) -> str:
        return account_codes(self.name, pan, psn)[1]

    def set_ec_shadow(self, *, pan: str, psn: int, ec_balance_fen: int) -> None:
        """The issuer's copy of the chip's EC balance, kept equal to the EC ledger account."""
        c = issuer_tables.cards.c
        done = self._conn.execute(
            update(issuer_tables.cards)
            .where(c.pan == pan, c.psn == psn)
            .values(ec_balance_fen=ec_balance_fen)
        )
        if done.rowcount != 1:
            raise NotFound(
                "issuer.card_not_found", f"issuer {self.name} has no card {pan[:6]}…{pan[-4:]}/{psn:02d}"
            )

    def _call(self, function: Any, **arguments: Any) -> None:
        try:
            function(**arguments)
        except IssuerError as exc:
            raise Conflict("issuer.refused", f"issuer {self.name}: {exc}") from None


def issuer_port(conn: Connection, name: str, hsm: SoftHSM | None = None) -> IssuerPort:
    """The port to issuer ``name`` for this transaction (the embedded issuer host)."""
    return InProcessIssuer(conn, config_of(name), hsm)
