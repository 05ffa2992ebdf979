"""The issuer's administration: its keys in the HSM, card enrolment (the PIN becomes a PVV at once),
card status, the online PIN try counter and the platform's script queue.

A mixin of :class:`citycard.host.issuer.IssuerHost`: it uses the host's ``config``, ``engine`` and
``hsm``. Each call is its own write transaction; every refusal is an :class:`IssuerError` naming
what and why, with nothing changed.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, insert, select, update

from citycard.crypto.suite import Suite
from citycard.db import write_transaction
from citycard.host.issuer import tables
from citycard.host.issuer.config import SUITES_BY_NAME, IssuerConfig
from citycard.host.issuer.participants import SCRIPT_KINDS, account_codes, funding_account
from citycard.hsm import SoftHSM
from citycard.hsm.keytypes import HSMError
from citycard.iso8583 import builders
from citycard.ledger import AccountKind, Layer, Line, PostingRequest, open_account, post

KEY_TYPES_OF_LABELS = {
    "imk_ac": "IMK-AC",
    "imk_mac": "IMK-MAC",
    "imk_enc": "IMK-ENC",
    "pvk": "PVK",
    "pin_key": "PIN",
}
PSN_MAX = 99  # 5F34 is one BCD byte


class IssuerError(ValueError):
    """A refused administrative request (enrolment, script queue); the message says which and why."""


class IssuerAdmin:
    """Administration half of :class:`~citycard.host.issuer.IssuerHost` (a mixin)."""

    config: IssuerConfig
    engine: Engine
    hsm: SoftHSM

    def provision_keys(self) -> None:
        """Create the issuer's IMKs, PVK and PIN key in the HSM where absent (test and demo banks).

        A key that exists with another type or suite is an error, never replaced.
        """
        for suite_name, labels in self.config.keys.items():
            suite = SUITES_BY_NAME[suite_name]
            for attribute, key_type_name in KEY_TYPES_OF_LABELS.items():
                label = getattr(labels, attribute)
                try:
                    info = self.hsm.key_info(label)
                except HSMError:
                    self.hsm.generate_key(label, key_type_name, suite)
                    continue
                if info.key_type != key_type_name or info.suite != suite:
                    raise HSMError(
                        f"issuer {self.config.name}: key {label!r} is {info.key_type}/{info.suite.name}, "
                        f"needs {key_type_name}/{suite.name}"
                    )

    def enrol_card(
        self,
        *,
        pan: str,
        psn: int | str,
        expiry: dt.date,
        suite: Suite,
        pin: str | None,
        ec_balance_fen: int = 0,
        account_balance_fen: int = 0,
        status: str = "active",
    ) -> None:
        """Store a card, open its bank and EC accounts and fund them (from the issuer's funding account).

        The PIN becomes a PVV in the HSM at once and is never stored. Enrolling a card twice is refused.
        """
        psn_value = self._check_card_id(pan, psn)
        if status not in tables.CARD_STATUSES:
            raise IssuerError(f"status must be one of {', '.join(tables.CARD_STATUSES)}, got {status!r}")
        if suite.name not in self.config.keys:
            raise IssuerError(f"issuer {self.config.name} has no keys for suite {suite.name}")
        for name, value in (("ec_balance_fen", ec_balance_fen), ("account_balance_fen", account_balance_fen)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= builders.AMOUNT_FEN_MAX
            ):
                raise IssuerError(f"{name} must be integer fen 0..{builders.AMOUNT_FEN_MAX}, got {value!r}")
        if ec_balance_fen > self.config.ec_balance_max_fen:
            raise IssuerError(f"EC balance {ec_balance_fen} above the limit {self.config.ec_balance_max_fen}")
        if not isinstance(expiry, dt.date):
            raise IssuerError("expiry must be a date")
        labels = self.config.labels(suite)
        pvv = None if pin is None else self.hsm.pin_verification_value(labels.pvk, pan=pan, pin=pin)
        account, ec_account = account_codes(self.config.name, pan, psn_value)
        funding = funding_account(self.config.name)
        with write_transaction(self.engine) as conn:
            found = conn.execute(
                select(tables.cards.c.id).where(tables.cards.c.pan == pan, tables.cards.c.psn == psn_value)
            ).first()
            if found is not None:
                raise IssuerError(f"card {pan[:6]}…{pan[-4:]}/{psn_value:02d} is already enrolled")
            open_account(
                conn, funding, AccountKind.FUNDING, allow_negative=True, name=f"{self.config.name} funding"
            )
            open_account(conn, account, AccountKind.CARDHOLDER, name="cardholder bank account")
            open_account(conn, ec_account, AccountKind.EC, name="electronic cash")
            for target, amount in ((account, account_balance_fen), (ec_account, ec_balance_fen)):
                if amount:
                    post(
                        conn,
                        PostingRequest(
                            key=f"fund:{target}",
                            lines=(Line(funding, debit_fen=amount), Line(target, credit_fen=amount)),
                            layer=Layer.SETTLED,
                            memo="opening balance",
                        ),
                    )
            conn.execute(
                insert(tables.cards).values(
                    issuer=self.config.name, pan=pan, psn=psn_value, expiry=expiry, suite=suite.name,
                    status=status, pvv=pvv, pin_tries=0, atc_max=0, ec_balance_fen=ec_balance_fen,
                    account=account, ec_account=ec_account, day=None, day_total_fen=0, scripts_pending=0,
                    created_at=dt.datetime.now(dt.UTC),
                )
            )  # fmt: skip

    def set_card_status(self, *, pan: str, psn: int | str, status: str) -> None:
        """Change a card's status (the platform's lost/stolen/blocked report)."""
        psn_value = self._check_card_id(pan, psn)
        if status not in tables.CARD_STATUSES:
            raise IssuerError(f"status must be one of {', '.join(tables.CARD_STATUSES)}, got {status!r}")
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(tables.cards)
                .where(tables.cards.c.pan == pan, tables.cards.c.psn == psn_value)
                .values(status=status)
            )
            if done.rowcount != 1:
                raise IssuerError(f"no card {pan[:6]}…{pan[-4:]}/{psn_value:02d}")

    def reset_pin_tries(self, *, pan: str, psn: int | str) -> None:
        """Clear the online PIN try counter (after the cardholder proved who they are at a branch)."""
        psn_value = self._check_card_id(pan, psn)
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(tables.cards)
                .where(tables.cards.c.pan == pan, tables.cards.c.psn == psn_value)
                .values(pin_tries=0)
            )
            if done.rowcount != 1:
                raise IssuerError(f"no card {pan[:6]}…{pan[-4:]}/{psn_value:02d}")

    def queue_script(self, *, pan: str, psn: int | str, kind: str) -> None:
        """Queue a platform script (``block``, ``unblock``, ``card_block``, ``pin_unblock``) for the
        card's next online transaction; delivered once."""
        psn_value = self._check_card_id(pan, psn)
        if kind not in SCRIPT_KINDS:
            raise IssuerError(f"script kind must be one of {', '.join(SCRIPT_KINDS)}, got {kind!r}")
        with write_transaction(self.engine) as conn:
            found = conn.execute(
                select(tables.cards.c.id).where(tables.cards.c.pan == pan, tables.cards.c.psn == psn_value)
            ).first()
            if found is None:
                raise IssuerError(f"no card {pan[:6]}…{pan[-4:]}/{psn_value:02d}")
            conn.execute(
                insert(tables.scripts).values(
                    issuer=self.config.name,
                    pan=pan,
                    psn=psn_value,
                    kind=kind,
                    queued_at=dt.datetime.now(dt.UTC),
                )
            )
            c = tables.cards.c
            conn.execute(
                update(tables.cards).where(c.id == found.id).values(scripts_pending=c.scripts_pending + 1)
            )

    def _check_card_id(self, pan: str, psn: int | str) -> int:
        if not isinstance(pan, str) or not pan.isascii() or not pan.isdigit() or not 13 <= len(pan) <= 19:
            raise IssuerError("PAN must be 13 to 19 digits")
        if not self.config.owns(pan):
            raise IssuerError(f"PAN {pan[:6]}… is not in the BINs of issuer {self.config.name}")
        try:
            value = int(psn)
        except (TypeError, ValueError):
            raise IssuerError(f"PSN must be a number 0..{PSN_MAX}, got {psn!r}") from None
        if not 0 <= value <= PSN_MAX:
            raise IssuerError(f"PSN must be 0..{PSN_MAX}, got {value}")
        return value
