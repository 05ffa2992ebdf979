"""clearing_cards.max_atc: kept by every write of a tap (chain, late, desk), filled by migration
0013, and what lets an intake skip the duplicate lookup of keys above it — exactly: a tap the desk
accepted above the chain's end is still a duplicate when it comes again (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import command

from citycard.clearing.batch import CardState
from citycard.clearing.store import _may_be_cleared, handle_exception, intake
from citycard.clearing.tables import Card, ExceptionItem
from citycard.db import make_engine, write_transaction
from citycard.db.migrate import alembic_config

from .conftest import BALANCE_FEN, START, enrol

NOW = START + dt.timedelta(days=1)


def _card_row(engine, card) -> tuple:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(Card.last_atc, Card.max_atc).where(Card.card == f"{card.pan}:{card.psn}")
        ).one()
    return tuple(row)


def _open_items(engine) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(
            sa.select(ExceptionItem).where(ExceptionItem.status == "open").order_by(ExceptionItem.id)
        ).all()


def test_a_desk_accepted_tap_above_the_chain_end_is_a_duplicate_when_uploaded_again(
    engine, tapper, verifier
) -> None:  # type: ignore[no-untyped-def]
    card = tapper("GM")
    uploads = card.taps([100, 200, 300])
    enrol(engine, card)
    assert _card_row(engine, card) == (None, None)
    intake(engine, "b1", [uploads[0]], keys=verifier, now=NOW)
    assert _card_row(engine, card) == (1, 1)
    with write_transaction(engine) as conn:  # clearing's belief after ATC 1 no longer fits ATC 2
        conn.execute(sa.update(Card).values(last_balance_fen=BALANCE_FEN - 100 + 1))
    held = intake(engine, "b2", [uploads[1]], keys=verifier, now=NOW)
    assert (held.accepted, held.exceptions) == (0, 1)
    (item,) = _open_items(engine)
    assert item.reason == "balance_chain"
    assert handle_exception(engine, item.id, action="accept", operator="bob") == "accepted"
    assert _card_row(engine, card) == (1, 2)  # the chain stays at ATC 1; ATC 2 is cleared
    again = intake(engine, "b3", [uploads[1]], keys=verifier, now=NOW)
    assert (again.accepted, again.exceptions) == (0, 1)
    (item,) = _open_items(engine)
    assert (item.reason, item.key) == ("duplicate", f"{card.pan}:{card.psn}:0002")
    later = intake(engine, "b4", [uploads[2]], keys=verifier, now=NOW)  # ATC 3: the chain goes on
    assert (later.accepted, later.exceptions) == (1, 0)
    assert _card_row(engine, card) == (3, 3)


def test_the_chain_keeps_max_atc_above_a_late_tap(engine, tapper, verifier, spec) -> None:  # type: ignore[no-untyped-def]
    card = tapper("INTL")
    uploads = card.taps([100, 200, 300, 400])
    enrol(engine, card)
    intake(engine, "b1", [uploads[1], uploads[3]], keys=spec, now=NOW, workers=2)
    assert _card_row(engine, card) == (4, 4)
    late = intake(engine, "b2", [uploads[0], uploads[2]], keys=verifier, now=NOW)  # ATC 1 and 3, late
    assert late.accepted + late.exceptions == 2
    assert _card_row(engine, card) == (4, 4)
    copy = intake(engine, "b3", uploads, keys=verifier, now=NOW)  # every key at or below max_atc
    assert (copy.accepted, copy.exceptions) == (0, 4)


def test_which_keys_need_a_lookup() -> None:
    states = {
        "6230000000000001:01": CardState("bank"),  # no tap cleared yet
        "6230000000000002:01": CardState("bank", last_atc=5, max_atc=9),
    }
    assert _may_be_cleared("6230000000000009:01:0001", states)  # a card clearing does not know
    assert not _may_be_cleared("6230000000000001:01:0001", states)
    assert _may_be_cleared("6230000000000002:01:0009", states)
    assert _may_be_cleared("6230000000000002:01:0006", states)  # between the chain and max_atc
    assert not _may_be_cleared("6230000000000002:01:000A", states)
    assert _may_be_cleared("6230000000000002:01:?", states)
    # a chain end without max_atc (a row written before migration 0013's fill): still looked up
    states["6230000000000003:01"] = CardState("bank", last_atc=5)
    assert _may_be_cleared("6230000000000003:01:0003", states)
    assert not _may_be_cleared("6230000000000003:01:0006", states)


def test_migration_0013_fills_max_atc_from_the_cleared_taps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0012_blacklist_pan")
            conn.exec_driver_sql(
                "INSERT INTO clearing_cards (card, issuer, last_atc) VALUES ('a:01', 'bank', 3), ('b:01', 'bank', NULL)"
            )
            for key, atc in (("a:01:0003", 3), ("a:01:0007", 7), ("a:01:0001", 1)):
                conn.exec_driver_sql(
                    "INSERT INTO clearing_taps (key, card, atc, batch_id, operator, route, vehicle, terminal_id,"
                    " tap_at, day, amount_fen, balance_after_fen, refunded) VALUES"
                    " (?, 'a:01', ?, 'b', 'bus-1', 'R', 'V', 'T', '2026-11-27 00:00:00.000000', '2026-11-27',"
                    " 100, 0, 0)",
                    (key, atc),
                )
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            rows = conn.exec_driver_sql("SELECT card, max_atc FROM clearing_cards ORDER BY card").all()
        assert [tuple(r) for r in rows] == [("a:01", 7), ("b:01", None)]
    finally:
        engine.dispose()
