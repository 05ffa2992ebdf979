"""One loss report stops the card at an offline validator (issue 6 acceptance): a card made through the
platform's whole lifecycle pays on a bus validator; the holder reports the loss; the next blacklist
delta, applied on the validator, makes the kernel's exception-file check decline the next tap.

Real parts throughout: the platform on SQLite and PostgreSQL, the SoftHSM, a personalised virtual
card image, the kernel's qPBOC flow. Both algorithm suites.
"""

from __future__ import annotations

import datetime as dt
import shutil

import pytest
import sqlalchemy as sa

from citycard.card import load_card
from citycard.db import read_transaction, write_transaction
from citycard.emv.bits import TVR
from citycard.hsm import SoftHSM
from citycard.kernel.context import Terminal, TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.params import AidTable, CapkTable, ExceptionFile
from citycard.kernel.qpboc import run_qpboc
from citycard.platform import blacklist, cardholders, cards, events, exchange
from citycard.platform.blacklist_format import apply_delta
from citycard.platform.identity import check_character
from citycard.platform.tables import cards as card_rows
from citycard.reader import InProcessTransport

PROFILES = {"GM": "pboc-ec-only-gm", "INTL": "pboc-debit-intl"}
EC_BALANCE_FEN = 10_000
FARE_FEN = 200
UN = bytes.fromhex("1A2B3C4D")
ACTOR = "desk-01"


@pytest.fixture(scope="module")
def hsm():
    return SoftHSM.ephemeral()


def issue_card(engine, hsm, tmp_path, profile: str) -> int:
    """A card through P1's lifecycle to ``active``, its chip holding EC_BALANCE_FEN (as after a load)."""
    first17 = "11010519900307123"
    with write_transaction(engine) as conn:
        holder = cardholders.register(
            conn, name="Li Lei", id_number=first17 + check_character(first17), kind="resident", actor=ACTOR
        )
        card_id = cards.apply(conn, holder["id"], profile=profile, issuer="citybank", actor=ACTOR)["id"]
        cards.approve(conn, card_id, actor=ACTOR)
        cards.prepare(conn, card_id, hsm=hsm, actor=ACTOR)
        # Test set-up: the chip is personalised with an EC balance (a 圈存 load is the host's business).
        conn.execute(
            card_rows.update().where(card_rows.c.id == card_id).values(ec_initial_fen=EC_BALANCE_FEN)
        )
        cards.personalise(conn, card_id, hsm=hsm, image_dir=tmp_path, actor=ACTOR)
        cards.issue(conn, card_id, hsm=hsm, actor=ACTOR)
        cards.activate(conn, card_id, actor=ACTOR)
    return card_id


def tap(image, hsm, terminal: Terminal, copy_path):
    shutil.copyfile(image, copy_path)  # each tap on a fresh copy: the test is about the list, not the balance
    card = load_card(copy_path, hsm=hsm)
    card.interface = "contactless"
    with InProcessTransport(card) as transport:
        return run_qpboc(transport, terminal, amount_fen=FARE_FEN, unpredictable_number=UN)


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_a_loss_report_reaches_the_validator_on_the_next_delta_and_the_tap_is_declined(
    suite, engine, hsm, tmp_path
):
    card_id = issue_card(engine, hsm, tmp_path, PROFILES[suite])
    with write_transaction(engine) as conn:
        exchange.subscribe(
            conn, name="transit-clearing", sector="transit", kinds="card.lost", at=dt.datetime.now(dt.UTC)
        )
        # the cardholder lets the transit sector see their card's events (without it: redacted)
        holder_id = conn.execute(
            sa.select(card_rows.c.cardholder_id).where(card_rows.c.id == card_id)
        ).scalar_one()
        cardholders.grant_consent(conn, holder_id, sector="transit", scope="cards", actor=ACTOR)
        v1 = blacklist.publish(conn, terminal_class="bus", at=dt.datetime.now(dt.UTC))
        row = conn.execute(sa.select(card_rows).where(card_rows.c.id == card_id)).one()._asdict()
        validator_list = blacklist.full_list(conn, terminal_class="bus", version=v1)
        blacklist.report_version(conn, "BUS-0815", "bus", v1, dt.datetime.now(dt.UTC))
    image = row["image_path"]
    capks = CapkTable.load().with_hsm(hsm)
    validator = Terminal(
        profile=TerminalProfile(), aids=AidTable.load(), capks=capks, exceptions=validator_list
    )
    before = tap(image, hsm, validator, tmp_path / "tap1.json")
    assert before.kind is Outcome.APPROVED_OFFLINE, before.reasons
    assert not TVR.new(before.tvr).is_set("card_on_exception_file")

    with write_transaction(engine) as conn:  # the cardholder phones in: one call
        cards.report_loss(conn, card_id, formal=False, actor="hotline")
    with write_transaction(engine) as conn:  # the nightly (here: immediate) publication
        v2 = blacklist.publish(conn, terminal_class="bus", at=dt.datetime.now(dt.UTC))
        stale = [t["terminal_id"] for t in blacklist.stale(conn, now=dt.datetime.now(dt.UTC))]
        data = blacklist.delta(conn, terminal_class="bus", from_version=v1)
        lost = exchange.read_for(conn, "transit-clearing")
    assert v2 == v1 + 1 and stale == ["BUS-0815"]
    assert [(e.kind, e.card_id) for e in lost] == [("card.lost", card_id)]

    updated: ExceptionFile = apply_delta(validator_list, data)  # on the validator
    assert updated.version == v2 and updated.contains(row["pan"], f"{row['psn']:02d}")
    validator = Terminal(profile=TerminalProfile(), aids=AidTable.load(), capks=capks, exceptions=updated)
    after = tap(image, hsm, validator, tmp_path / "tap2.json")
    assert after.kind is Outcome.DECLINED
    assert TVR.new(after.tvr).is_set("card_on_exception_file")
    assert after.batch_record is None  # nothing to clear: no fare taken
    with write_transaction(engine) as conn:
        blacklist.report_version(conn, "BUS-0815", "bus", v2, dt.datetime.now(dt.UTC))
        assert blacklist.stale(conn, now=dt.datetime.now(dt.UTC)) == []
    with read_transaction(engine) as conn:
        kinds = [e.kind for e in events.read(conn, card_id=card_id)]
    assert kinds[-1] == "card.lost"
