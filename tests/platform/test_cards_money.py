"""Cancellation with refund and dormancy (issue 6 item 2), SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from tests.platform import test_cards_support as support
from tests.platform.test_cards_support import ACTOR, card_in_state, fund_ec

from citycard.db import read_transaction, write_transaction
from citycard.host.issuer import tables as issuer_tables
from citycard.ledger import balance_fen, check_invariants, find_posting
from citycard.platform import cards, events
from citycard.platform.card_money import CASHDESK_ACCOUNT, DEPOSITS_ACCOUNT
from citycard.platform.card_rules import rules

hsm = support.hsm  # the module-scoped HSM fixture
EC_FEN = 4_321


def issuer_row(conn, card):
    c = issuer_tables.cards.c
    return conn.execute(select(c.status, c.ec_balance_fen).where(c.pan == card.pan, c.psn == card.psn)).one()


def test_issue_collects_the_deposit(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "issued", hsm=hsm, image_dir=tmp_path)
        assert cards.get(conn, card_id)["deposit_fen"] == rules().deposit_fen
        assert balance_fen(conn, DEPOSITS_ACCOUNT) == rules().deposit_fen
        assert balance_fen(conn, CASHDESK_ACCOUNT) == -rules().deposit_fen
        assert find_posting(conn, f"deposit:{card_id}") is not None


def test_cancel_refunds_the_ec_balance_and_the_deposit(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        ec_account = fund_ec(conn, card_id, EC_FEN)
        desk_before = balance_fen(conn, CASHDESK_ACCOUNT)
        seq = events.last_seq(conn)
        refund_fen = cards.cancel(conn, card_id, actor=ACTOR, reason="moving away")
    assert refund_fen == EC_FEN + rules().deposit_fen
    with read_transaction(engine) as conn:
        card = cards.record(conn, card_id)
        assert (card.state, card.deposit_fen) == ("cancelled", 0)
        assert balance_fen(conn, ec_account) == 0 and balance_fen(conn, DEPOSITS_ACCOUNT) == 0
        assert balance_fen(conn, CASHDESK_ACCOUNT) == desk_before + refund_fen
        posting = find_posting(conn, f"refund:{card_id}")
        assert posting is not None
        assert sorted((p.account, p.debit_fen, p.credit_fen) for p in posting.lines) == sorted(
            [
                (ec_account, EC_FEN, 0),
                (DEPOSITS_ACCOUNT, rules().deposit_fen, 0),
                (CASHDESK_ACCOUNT, 0, refund_fen),
            ]
        )
        assert tuple(issuer_row(conn, card)) == ("blocked", 0)
        [cancelled] = events.read(conn, after=seq)
        assert cancelled.kind == "card.cancelled" and cancelled.payload["refund_fen"] == refund_fen
        assert check_invariants(conn) == []


def test_cancel_before_issue_refunds_nothing_and_touches_no_issuer(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "personalised", hsm=hsm, image_dir=tmp_path)
        assert cards.cancel(conn, card_id, actor=ACTOR) == 0
        assert cards.get(conn, card_id)["state"] == "cancelled"
        assert conn.execute(select(issuer_tables.cards.c.id)).first() is None
        assert find_posting(conn, f"refund:{card_id}") is None


def test_dormancy_warns_once_and_never_locks(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        sleeper = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        busy = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        assert cards.check_dormancy(conn, now=dt.datetime.now(dt.UTC)) == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=rules().dormancy_days + 1)
    with write_transaction(engine) as conn:
        events.emit(conn, "payment", card_id=busy, sector="transit", payload={"amount_fen": 200}, at=later)
        seq = events.last_seq(conn)
        warnings = cards.check_dormancy(conn, now=later)
        assert [w["card_id"] for w in warnings] == [sleeper]
        assert cards.check_dormancy(conn, now=later) == []  # warned once
    with read_transaction(engine) as conn:
        view = cards.get(conn, sleeper)
        assert (view["state"], view["dormant"]) == ("active", True)
        card = cards.record(conn, sleeper)
        assert issuer_row(conn, card).status == "active"  # the bank still authorises it
        [warning] = events.read(conn, after=seq)
        assert (warning.kind, warning.card_id) == ("card.dormant_warning", sleeper)
        assert cards.audit_trail(conn, sleeper)[-1]["action"] == "dormant_warning"
    with write_transaction(engine) as conn:  # used again: the flag goes
        events.emit(conn, "visit", card_id=sleeper, sector="health", payload={}, at=later)
        assert cards.check_dormancy(conn, now=later) == []
        assert cards.get(conn, sleeper)["dormant"] is False
