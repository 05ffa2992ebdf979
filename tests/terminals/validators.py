"""Helpers for the validator tests: citizen cards of both suites with the transit record opened
(as the platform's application loading does: APPEND RECORD under the file's opening key), and
validators on the shipped fare table with the operator's Part 14 keys in the HSM."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from tests.kernel.conftest import make_terminal

from citycard.crypto.suite import GM, INTL
from citycard.db import utc_now
from citycard.kernel.capp import HsmCappSigner
from citycard.kernel.context import TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.qpboc import run_qpboc
from citycard.reader import InProcessTransport
from citycard.sectors.transit import load_table
from citycard.terminals.journal import TapJournal
from citycard.terminals.validator import TRANSIT_SFI, Validator, ValidatorConfig

SUITES = {"CITIZEN": GM, "CITIZEN-INTL": INTL}
KINDS = list(SUITES)
RECORD_ID = bytes.fromhex("0570")
CHINA = dt.timezone(dt.timedelta(hours=8))
# Today 08:00 in Shanghai: the cards' effective date (5F25) is their personalisation day.
MORNING = dt.datetime.now(CHINA).replace(hour=8, minute=0, second=0, microsecond=0).astimezone(dt.UTC)
CONCESSIONS = {"resident": 0, "student": 1, "elderly": 2}
BALANCE_AFTER_OPENING = 10_000 - 1  # the kernel fixtures' balance, less the opening tap's 1 fen


def fresh_record(concession: int = 0) -> bytes:
    """The record as the platform opens it: ID, valid 01, city 5104, the concession code, no trip."""
    return RECORD_ID + b"\x01" + bytes.fromhex("5104") + bytes.fromhex(f"{concession:02d}") + bytes(58)


def operator_labels(hsm: Any) -> dict[str, str]:
    names = {info.label for info in hsm.list_keys()}
    labels = {}
    for suite in (GM, INTL):
        label = f"transit-operator-{suite.name.lower()}"
        if label not in names:
            hsm.generate_key(label, "IMK-ENC", suite)
        labels[suite.name] = label
    return labels


def open_transit(card: Any, hsm: Any, capks: Any, kind: str, *, concession: int = 0) -> None:
    """Open the trip record on ``card`` (a 1-fen plain tap gives the ATC the APPEND RECORD MAC needs)."""
    labels = operator_labels(hsm)
    suite = SUITES[kind]
    plain = make_terminal(capks, profile=TerminalProfile.bus_validator())
    with InProcessTransport(card) as transport:
        result = run_qpboc(transport, plain, amount_fen=1, when=MORNING - dt.timedelta(hours=1))
        assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
        apdu = hsm.capp_append_command(
            f"imk-capp-{suite.name.lower()}-{TRANSIT_SFI:02x}",
            labels[suite.name],
            tag_5a=result.pan,
            tag_5f34=result.psn,
            tag_9f36=result.data["9F36"],
            sfi=TRANSIT_SFI,
            record=fresh_record(concession),
        )
        assert transport.transmit(apdu) == b"\x90\x00"


def make_validator(
    hsm: Any,
    capks: Any,
    journal_path: Path,
    *,
    terminal_id: str = "BUS-K1-001",
    kind: str = "bus",
    line: str = "K1",
    vehicle: str = "D10001",
    operator: str | None = None,
    exceptions: Any = None,
) -> Validator:
    config = ValidatorConfig(
        terminal_id=terminal_id,
        operator=operator or ("pzh-taxi" if kind == "taxi" else "pzh-bus"),
        kind=kind,  # type: ignore[arg-type]
        line=line,
        vehicle=vehicle,
    )
    terminal = make_terminal(capks, profile=TerminalProfile.bus_validator(capp=True), exceptions=exceptions)
    return Validator(
        config,
        fares=load_table("panzhihua"),
        terminal=terminal,
        capp_signer=HsmCappSigner(hsm, operator_labels(hsm)),
        journal=TapJournal(journal_path),
    )


def tap(validator: Validator, card: Any, **kwargs: Any) -> Any:
    with InProcessTransport(card) as transport:
        return validator.tap(transport, **kwargs)


# --- the platform side: a real API server with clearing ---------------------------------------


class Platform:
    """A real uvicorn server (``start``/``stop`` to simulate outages) over one migrated database,
    with a terminal API key per terminal id and the cards registered with clearing."""

    def __init__(self, engine: Any, hsm: Any):
        from citycard.api import ApiSettings, create_app

        self.engine = engine
        self.hsm = hsm
        self.app = create_app(engine=engine, hsm=hsm, settings=ApiSettings())
        self.server: Any = None
        self.thread: Any = None
        self.base_url = ""
        self.keys: dict[str, str] = {}
        # The taps happen from MORNING on (today 08:00 in Shanghai: the cards' effective day), which
        # is still ahead of the real clock between 16:00 and 24:00 UTC; clearing refuses taps from the
        # future, so until a test sets its own clock the platform's runs no earlier than MORNING + 3 h.
        self.app.state.clock = lambda: max(utc_now(), MORNING + dt.timedelta(hours=3))

    def start(self) -> str:
        from tests.httpserver import start_server

        self.server, self.thread, self.base_url = start_server(self.app)
        return self.base_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
            self.server = None

    def set_clock(self, now: dt.datetime) -> None:
        self.app.state.clock = lambda: now

    def key_for(self, terminal_id: str, role: str = "terminal") -> str:
        from citycard.api import auth as api_auth
        from citycard.api.roles import Role
        from citycard.db import write_transaction

        if (terminal_id, role) not in self.keys:
            with write_transaction(self.engine) as conn:
                made = api_auth.create_api_key(
                    conn, name=f"{role}-{terminal_id}".lower(), role=Role(role), subject=terminal_id
                )
            self.keys[(terminal_id, role)] = made["key"]  # type: ignore[index]
        return self.keys[(terminal_id, role)]  # type: ignore[index]

    def enrol(self, pan: str, psn: str, balance_fen: int) -> None:
        """The card known to clearing and its EC ledger account funded like the chip."""
        from citycard.clearing.batch import ec_account
        from citycard.clearing.store import register_card
        from citycard.db import write_transaction
        from citycard.ledger import AccountKind, Layer, Line, PostingRequest, open_account, post

        account = ec_account("citybank", pan, psn)
        with write_transaction(self.engine) as conn:
            register_card(conn, pan=pan, psn=psn, issuer="citybank")
            open_account(conn, "citybank:funding", AccountKind.FUNDING, allow_negative=True)
            open_account(conn, account, AccountKind.EC)
            post(
                conn,
                PostingRequest(
                    f"load:{pan}:{psn}",
                    (Line("citybank:funding", debit_fen=balance_fen), Line(account, credit_fen=balance_fen)),
                    Layer.CLEARED,
                ),
            )

    def cleared(self) -> list[Any]:
        """Every row of clearing_taps (key, amount, terminal)."""
        import sqlalchemy as sa

        from citycard.db import read_transaction

        with read_transaction(self.engine) as conn:
            return list(
                conn.execute(
                    sa.text("SELECT key, amount_fen, terminal_id, batch_id FROM clearing_taps ORDER BY id")
                )
            )

    def exceptions(self) -> list[Any]:
        import sqlalchemy as sa

        from citycard.db import read_transaction

        with read_transaction(self.engine) as conn:
            return list(conn.execute(sa.text("SELECT reason, detail FROM clearing_exceptions")))
