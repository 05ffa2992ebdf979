"""The issuer's batched database path (one statement per kind of write; docs/issuer.md "Performance").

A full batch of many cards, each twice, on SQLite and PostgreSQL: every message approved, the card
rows (ATC high-water mark, day total) written back for all cards, the message log complete, the
ledger exact. And on PostgreSQL: a pooled connection that died (a database restart) costs no
answer, although ``host serve`` runs its engine without pool pre-ping.
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from citycard.db import make_engine
from citycard.host.issuer import IssuerHost, tables

from .conftest import ACCOUNT_FEN, EXPIRY, SUITES, SyntheticCard, balance, healthy, new_pan

CARDS = 24
AMOUNT_FEN = 7
MERCHANT = "citybank:merchant:M00000000000001"


def test_full_batch_writes_every_card_and_log_row(issuer, enrol):
    cards = [enrol(("INTL", "GM")[i % 2], pin=None) for i in range(CARDS)]
    requests = [card.request("purchase", AMOUNT_FEN) for card in cards]
    requests += [card.request("authorisation", AMOUNT_FEN) for card in cards]  # ATC 2 of each card
    answers = issuer.process_batch(requests)
    assert [a["39"] for a in answers] == ["00"] * len(requests)
    assert [a["11"] for a in answers] == [r["11"] for r in requests]
    with issuer.engine.connect() as conn:
        c = tables.cards.c
        rows = conn.execute(
            select(c.pan, c.atc_max, c.day_total_fen).where(c.pan.in_([x.pan for x in cards]))
        )
        assert {(pan, atc, total) for pan, atc, total in rows} == {(x.pan, 2, 2 * AMOUNT_FEN) for x in cards}
        logged = conn.execute(select(func.count()).select_from(tables.messages)).scalar_one()
        assert logged == len(requests)
    for card in cards:
        assert balance(issuer, card.account) == ACCOUNT_FEN - 2 * AMOUNT_FEN
    assert balance(issuer, MERCHANT) == 2 * CARDS * AMOUNT_FEN
    # the same batch again: every answer from the log, nothing moved twice
    assert issuer.process_batch(requests) == answers
    assert balance(issuer, MERCHANT) == 2 * CARDS * AMOUNT_FEN
    assert healthy(issuer)


def test_dead_pooled_connection_costs_no_answer(db_url, engine, hsm, config):
    if make_url(db_url).get_backend_name() != "postgresql":
        pytest.skip("a server-side connection kill needs PostgreSQL")
    del engine  # the fixture migrated the database; the host gets an engine like host serve's
    host = IssuerHost(config, engine=make_engine(db_url, pre_ping=False), hsm=hsm)
    try:
        host.provision_keys()
        pan = new_pan()
        host.enrol_card(pan=pan, psn=1, expiry=EXPIRY, suite=SUITES["GM"], pin=None,
                        account_balance_fen=ACCOUNT_FEN)  # fmt: skip
        card = SyntheticCard(host, pan, 1, SUITES["GM"])
        assert host.process_batch([card.request("purchase", AMOUNT_FEN)])[0]["39"] == "00"
        database = make_url(db_url).database
        admin = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(admin, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchone()[0]
        assert killed >= 1  # the host's idle pooled connection
        answers = host.process_batch(
            [card.request("purchase", AMOUNT_FEN), card.request("purchase", AMOUNT_FEN)]
        )
        assert [a["39"] for a in answers] == ["00", "00"]  # retried one by one on fresh connections
        assert balance(host, card.account) == ACCOUNT_FEN - 3 * AMOUNT_FEN
        assert healthy(host)
    finally:
        host.engine.dispose()
