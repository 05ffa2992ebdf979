"""The demo's bank side on its own: a 圈存 top-up at the kiosk through the city switch to citybank
over real TCP (sign-on with the TMK, ZMK-keyed link, ARQC/ARPC, the 04DA9F79 script), for a card of
each suite issued through the platform. The chip's 9F79, the issuer's shadow and the EC ledger
account agree; a load past the EC limit is declined by the issuer and changes nothing.
SQLite and PostgreSQL (the city's database; the switch keeps its own SQLite file)."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from citycard.card import load_card
from citycard.demo import people
from citycard.demo.banks import BankNetwork, chip_ec_balance_fen, ec_load
from citycard.host.issuer import tables as issuer_tables
from citycard.hsm import SoftHSM
from citycard.ledger import balance_fen, check_invariants

CARDS = {
    "GM": people.CAST[0],
    "INTL": people.Citizen("Mark Chen", "resident", people.CAST[5].birth, "pboc-debit-intl"),
}
LOAD_FEN = 5_000
EC_LIMIT_FEN = 100_000  # 9F77 of both profiles


@pytest.fixture
def network(engine, tmp_path):  # type: ignore[no-untyped-def]
    hsm = SoftHSM.open(tmp_path / "hsm-keys.json", master_key_file=tmp_path / "hsm-master.key")
    with BankNetwork(engine, hsm, tmp_path) as running:
        yield running


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_an_online_top_up_through_the_switch_reaches_chip_issuer_and_ledger(suite, engine, network, tmp_path):
    holder = people.issue(engine, network.hsm, tmp_path, CARDS[suite], 1, random.Random(1))
    assert holder.suite == suite
    card = load_card(holder.image_path, hsm=network.hsm)
    loaded = ec_load(network, card, amount_fen=LOAD_FEN)
    assert loaded.approved and loaded.response_code == "00", loaded.reasons
    ec, bank = f"citybank:ec:{holder.pan}:{holder.psn}", f"citybank:card:{holder.pan}:{holder.psn}"

    def state() -> tuple[int, int, int, int]:
        with engine.connect() as conn:
            shadow = conn.execute(
                sa.select(issuer_tables.cards.c.ec_balance_fen).where(issuer_tables.cards.c.pan == holder.pan)
            ).scalar_one()
            return (
                chip_ec_balance_fen(card, loaded.aid),
                int(shadow),
                balance_fen(conn, ec),
                balance_fen(conn, bank),
            )

    assert state() == (LOAD_FEN, LOAD_FEN, LOAD_FEN, people.BANK_DEPOSIT_FEN - LOAD_FEN)
    refused = ec_load(network, card, amount_fen=EC_LIMIT_FEN)  # 50 + 1,000 yuan > the 1,000 limit
    assert not refused.approved and refused.response_code == "61", refused
    assert state() == (LOAD_FEN, LOAD_FEN, LOAD_FEN, people.BANK_DEPOSIT_FEN - LOAD_FEN)
    with engine.connect() as conn:
        assert check_invariants(conn) == []
