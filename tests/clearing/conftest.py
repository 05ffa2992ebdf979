"""Real virtual cards, real qPBOC taps, a file-backed HSM and a funded ledger for clearing tests.

The cards come from the kernel tests' fixtures (personalised through STORE DATA); the HSM here is
a key-store file so that worker processes can open it too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
from tests.kernel import conftest as kernel

from citycard.clearing.batch import ec_account
from citycard.clearing.record import upload_dict
from citycard.clearing.store import register_card
from citycard.clearing.verify import HsmVerifier, SuiteLabels, VerifierSpec
from citycard.db import write_transaction
from citycard.kernel.outcome import Outcome
from citycard.kernel.qpboc import run_qpboc
from citycard.ledger import AccountKind, Layer, Line, PostingRequest, open_account, post
from citycard.reader import InProcessTransport

BALANCE_FEN = kernel.BALANCE_FEN
make_terminal = kernel.make_terminal
# the kernel tests' card fixtures (they use the file-backed ``hsm`` below)
issued_cards, new_card, capks, blacklist = (
    kernel.issued_cards,
    kernel.new_card,
    kernel.capks,
    kernel.blacklist,
)

ISSUER = "citybank"
OPERATOR = "bus-1"
CHINA = dt.timezone(dt.timedelta(hours=8))
# Today 08:30 in Shanghai: the cards' effective date (5F25) is their personalisation day.
START = dt.datetime.now(CHINA).replace(hour=8, minute=30, second=0, microsecond=0).astimezone(dt.UTC)
DAY1 = START.astimezone(CHINA).date().isoformat()
DAY2 = (START + dt.timedelta(days=1)).astimezone(CHINA).date().isoformat()
LABELS = {
    "INTL": SuiteLabels("imk-ac-intl", "imk-mac-intl"),
    "GM": SuiteLabels("imk-ac-gm", "imk-mac-gm"),
}


@pytest.fixture(scope="session")
def hsm_files(tmp_path_factory):  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("hsm")
    return directory / "hsm-keys.json", directory / "hsm-master.key"


@pytest.fixture(scope="session")
def hsm(hsm_files):  # type: ignore[no-untyped-def]
    from citycard.hsm import SoftHSM

    return SoftHSM.open(hsm_files[0], master_key_file=hsm_files[1])


@pytest.fixture
def verifier(hsm) -> HsmVerifier:  # type: ignore[no-untyped-def]
    return HsmVerifier(hsm, LABELS)


@pytest.fixture
def spec(hsm_files, issued_cards) -> VerifierSpec:  # type: ignore[no-untyped-def]
    issued_cards("GM"), issued_cards("INTL")  # the IMKs exist in the key store
    return VerifierSpec(hsm_files[0], hsm_files[1], LABELS)


@dataclass
class Tapper:
    """Taps one real card on a real kernel; ``uploads`` are what the validator would send."""

    card: Any
    terminal: Any
    pan: str = ""
    psn: str = ""
    balance_fen: int = BALANCE_FEN

    def tap(self, amount_fen: int, when: dt.datetime, *, route: str = "R1", vehicle: str = "V1") -> dict:
        with InProcessTransport(self.card) as transport:
            result = run_qpboc(transport, self.terminal, amount_fen=amount_fen, when=when)
        assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
        record = result.batch_record
        assert record is not None
        self.pan, self.psn = record.pan, record.psn
        self.balance_fen -= amount_fen
        assert record.balance_fen_after == self.balance_fen
        return upload_dict(
            record, terminal_id="T0001", operator=OPERATOR, route=route, vehicle=vehicle, tap_at=when
        )

    def taps(self, amounts: list[int], start: dt.datetime = START, **where: str) -> list[dict]:
        return [self.tap(a, start + dt.timedelta(minutes=7 * i), **where) for i, a in enumerate(amounts)]


@pytest.fixture
def tapper(new_card, capks, blacklist):  # type: ignore[no-untyped-def]
    def make(suite: str) -> Tapper:
        return Tapper(new_card(suite, copy=f"clearing-{suite}"), make_terminal(capks, exceptions=blacklist))

    return make


def enrol(engine: Any, tapper: Tapper) -> str:
    """The card known to clearing and its EC ledger account funded like the chip (a 圈存 load)."""
    account = ec_account(ISSUER, tapper.pan, tapper.psn)
    with write_transaction(engine) as conn:
        register_card(conn, pan=tapper.pan, psn=tapper.psn, issuer=ISSUER)
        open_account(conn, f"{ISSUER}:funding", AccountKind.FUNDING, allow_negative=True)
        open_account(conn, account, AccountKind.EC)
        post(
            conn,
            PostingRequest(
                f"load:{tapper.pan}:{tapper.psn}",
                (Line(f"{ISSUER}:funding", debit_fen=BALANCE_FEN), Line(account, credit_fen=BALANCE_FEN)),
                Layer.CLEARED,
            ),
        )
    return account
