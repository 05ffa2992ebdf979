"""No liability after the loss-report minute (issue 6 acceptance): a card made through the platform
pays offline on a validator that has not yet got the new blacklist; the holder reports the loss at
a minute between the taps; clearing refunds exactly the taps made from that minute on.

Real parts: the platform's lifecycle (which registers the card with clearing when it is issued and
hands clearing the report minute in the loss report's own transaction), a personalised virtual card,
the kernel's qPBOC taps with real TCs, clearing with TC and IAD-MAC verification in the HSM, the
ledger. SQLite and PostgreSQL, both suites.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from tests.platform.test_blacklist_kernel import EC_BALANCE_FEN, PROFILES, issue_card

from citycard.card import load_card
from citycard.clearing import store as clearing
from citycard.clearing.batch import ec_account, operator_account
from citycard.clearing.record import upload_dict
from citycard.clearing.tables import Tap
from citycard.clearing.verify import HsmVerifier, SuiteLabels
from citycard.db import write_transaction
from citycard.host.issuer import load_issuer_configs
from citycard.hsm import SoftHSM
from citycard.kernel.context import Terminal, TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.params import AidTable, CapkTable
from citycard.kernel.qpboc import run_qpboc
from citycard.ledger import Layer, Line, PostingRequest, balance_fen, check_invariants, post
from citycard.platform import cards
from citycard.platform.tables import cards as card_rows
from citycard.reader import InProcessTransport

FARES_FEN = (200, 300, 400)
TAP_GAP = dt.timedelta(minutes=7)
OPERATOR = "bus-1"


@pytest.fixture(scope="module")
def hsm():
    return SoftHSM.ephemeral()


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_taps_after_the_report_minute_are_refunded_by_clearing(suite, engine, hsm, tmp_path):
    card_id = issue_card(engine, hsm, tmp_path, PROFILES[suite])
    with engine.connect() as conn:
        row = conn.execute(sa.select(card_rows).where(card_rows.c.id == card_id)).one()
    pan, psn = row.pan, f"{row.psn:02d}"
    account = ec_account("citybank", pan, psn)
    with write_transaction(
        engine
    ) as conn:  # the chip's EC balance came from a 圈存 load: the ledger has it too
        post(conn, PostingRequest(f"load:{pan}:{psn}", (Line("citybank:funding", debit_fen=EC_BALANCE_FEN),
                                                          Line(account, credit_fen=EC_BALANCE_FEN)), Layer.CLEARED))  # fmt: skip

    # taps on a validator whose list predates the report (no exception file): all approved offline
    validator = Terminal(
        profile=TerminalProfile(), aids=AidTable.load(), capks=CapkTable.load().with_hsm(hsm)
    )
    card = load_card(row.image_path, hsm=hsm)
    card.interface = "contactless"
    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=30)
    uploads = []
    for index, fare in enumerate(FARES_FEN):
        when = start + index * TAP_GAP
        with InProcessTransport(card) as transport:
            result = run_qpboc(transport, validator, amount_fen=fare, when=when)
        assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
        uploads.append(upload_dict(result.batch_record, terminal_id="T0001", operator=OPERATOR, route="R1",
                                   vehicle="V1", tap_at=when))  # fmt: skip

    with write_transaction(engine) as conn:  # the holder phones in 40 s into the second tap's minute
        cards.report_loss(
            conn, card_id, formal=False, actor="hotline", at=start + TAP_GAP + dt.timedelta(seconds=40)
        )

    issuer = load_issuer_configs()["citybank"].keys
    labels = {name: SuiteLabels(keys.imk_ac, keys.imk_mac) for name, keys in issuer.items()}
    result = clearing.intake(engine, "bus-1:batch-1", uploads, keys=HsmVerifier(hsm, labels))
    assert (result.accepted, result.exceptions) == (3, 0)
    with engine.connect() as conn:
        refunded = (
            conn.execute(sa.select(Tap.atc).where(Tap.refunded.is_(True)).order_by(Tap.atc)).scalars().all()
        )
        assert refunded == [2, 3]  # the report's minute counts: the second tap was made in it
        assert balance_fen(conn, account) == EC_BALANCE_FEN - FARES_FEN[0]
        assert balance_fen(conn, operator_account(OPERATOR)) == FARES_FEN[0]
        assert check_invariants(conn) == []
    # the same batch uploaded again changes nothing
    again = clearing.intake(engine, "bus-1:batch-1", uploads, keys=HsmVerifier(hsm, labels))
    assert again.accepted == 3
    with engine.connect() as conn:
        assert balance_fen(conn, account) == EC_BALANCE_FEN - FARES_FEN[0]
