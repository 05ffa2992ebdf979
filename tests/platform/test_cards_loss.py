"""Loss reports (issue 6 acceptance: "one loss report must stop everything"), SQLite and PostgreSQL:
the card is blocked at the issuer in the same transaction as the state change and the events — an
authorisation through the real issuer host (IssuerHost.process_batch) is then declined — and the
report minute is recorded."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from tests.platform import test_cards_support as support
from tests.platform.test_cards_support import (
    ACTOR,
    card_in_state,
    fund_account,
    issuer_host,
    purchase_request,
)

from citycard.db import read_transaction, write_transaction
from citycard.host.issuer import tables as issuer_tables
from citycard.platform import cards, events
from citycard.platform.errors import Conflict

hsm = support.hsm  # the module-scoped HSM fixture
APPROVED, LOST_CARD, RESTRICTED = "00", "41", "62"


def issuer_status(conn, card) -> str:
    c = issuer_tables.cards.c
    return conn.execute(select(c.status).where(c.pan == card.pan, c.psn == card.psn)).scalar_one()


def rc(host, card, atc: int) -> str:
    [response] = host.process_batch([purchase_request(host, card, amount_fen=1_500, atc=atc)])
    return response["39"]


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_a_loss_report_blocks_the_card_at_the_issuer(engine, hsm, tmp_path, suite) -> None:
    host = issuer_host(engine, hsm)
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "issued", hsm=hsm, image_dir=tmp_path, suite=suite)
        fund_account(conn, card_id, 100_000)
        card = cards.record(conn, card_id)
    assert rc(host, card, atc=1) == RESTRICTED  # issued, not activated: the bank declines
    with write_transaction(engine) as conn:
        cards.activate(conn, card_id, actor=ACTOR)
    assert rc(host, card, atc=2) == APPROVED
    with write_transaction(engine) as conn:
        seq = events.last_seq(conn)
        cards.report_loss(conn, card_id, formal=False, actor="call-centre:3")
        assert issuer_status(conn, card) == "lost"
        emitted = events.read(conn, after=seq)
        assert [e.kind for e in emitted] == ["card.lost"]
        assert emitted[0].payload["formal"] is False and emitted[0].card_id == card_id
    assert rc(host, card, atc=3) == LOST_CARD
    with write_transaction(engine) as conn:
        cards.unblock(conn, card_id, actor=ACTOR, reason="found")
        assert issuer_status(conn, card) == "active"
    assert rc(host, card, atc=4) == APPROVED


def test_the_report_minute_is_the_first_report_and_formal_follows_oral(engine, hsm, tmp_path) -> None:
    oral_at = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(second=42)
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        cards.report_loss(conn, card_id, formal=False, actor=ACTOR, at=oral_at)
        formal = cards.report_loss(conn, card_id, formal=True, actor=ACTOR)
        assert formal["state"] == "lost"
        minute = oral_at.replace(second=0, microsecond=0)
        assert formal["lost_at"] == minute.isoformat()  # the oral report's minute stands
        with pytest.raises(Conflict) as again:
            cards.report_loss(conn, card_id, formal=True, actor=ACTOR)
        assert again.value.code == "card.invalid_transition"
        lost_events = [e for e in cards.timeline(conn, card_id) if e["kind"] == "card.lost"]
        assert [e["payload"]["formal"] for e in lost_events] == [False, True]


def test_a_loss_report_that_rolls_back_leaves_the_issuer_and_the_log_untouched(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        card = cards.record(conn, card_id)
        seq = events.last_seq(conn)

    class CrashError(Exception):
        pass

    with pytest.raises(CrashError), write_transaction(engine) as conn:
        cards.report_loss(conn, card_id, formal=True, actor=ACTOR)
        raise CrashError  # the caller fails after the call: the whole transaction goes
    with read_transaction(engine) as conn:
        assert cards.get(conn, card_id)["state"] == "active"
        assert issuer_status(conn, card) == "active"
        assert events.last_seq(conn) == seq


def test_an_issuer_refusal_is_a_conflict_and_the_transaction_goes_on(engine, hsm, tmp_path) -> None:
    from citycard.platform.issuers import issuer_port

    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        card = cards.record(conn, card_id)
        port = issuer_port(conn, "citybank")
        with pytest.raises(Conflict) as unknown:
            port.set_card_status(pan="6235489999999999", psn=1, status="lost")
        assert unknown.value.code == "issuer.refused" and "no card" in unknown.value.detail
        with pytest.raises(Conflict) as foreign:
            port.set_card_status(pan="6217001234567890", psn=1, status="lost")
        assert "not in the BINs" in foreign.value.detail
        with pytest.raises(Conflict) as twice:
            port.enrol_card(
                pan=card.pan, psn=card.psn, expiry=card.expiry, suite=cards.SUITES["GM"], status="active"
            )
        assert "already enrolled" in twice.value.detail
        # the SAVEPOINT took only the issuer's part back: the caller's transaction still works
        cards.report_loss(conn, card_id, formal=True, actor=ACTOR)
        assert issuer_status(conn, card) == "lost"
    with read_transaction(engine) as conn:
        assert cards.get(conn, card_id)["state"] == "lost"
