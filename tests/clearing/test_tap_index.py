"""clearing_taps' one unique index on (card, atc) (migration 0014, in place of the unique key text
and the index on card): the migration keeps every tap and the guard, both ways, on SQLite and
PostgreSQL; the lookups by (card, ATC) find exactly the pairs asked, by both columns of the index."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command

from citycard.clearing.store import _TAPS_AT, _card_and_atc, _taps_at
from citycard.db.migrate import alembic_config
from citycard.ledger import bulk

_INSERT = (
    "INSERT INTO clearing_taps (key, card, atc, batch_id, operator, route, vehicle, terminal_id,"
    " tap_at, day, amount_fen, balance_after_fen, refunded) VALUES"
    " (:key, :card, :atc, 'b', 'bus-1', 'R', 'V', 'T', '2026-11-27 00:00:00', '2026-11-27', :amount, :after, false)"
)
TAPS = [
    {"key": f"{card}:{atc:04X}", "card": card, "atc": atc, "amount": 100 + atc, "after": 1_000 - atc}
    for card in ("6230000000000001:01", "6230000000000001:02", "6230000000000002:01")
    for atc in (1, 2, 3, 255)
]


def _indexes(conn: sa.Connection) -> dict[str, tuple[tuple[str, ...], bool]]:
    """The tap table's unique constraints and indexes: name → (columns, unique)."""
    inspector = sa.inspect(conn)
    out = {
        u["name"]: (tuple(u["column_names"]), True) for u in inspector.get_unique_constraints("clearing_taps")
    }
    for index in inspector.get_indexes("clearing_taps"):
        out.setdefault(index["name"], (tuple(index["column_names"]), bool(index["unique"])))
    return out


def _stored(conn: sa.Connection) -> list[tuple]:
    return [
        tuple(r) for r in conn.exec_driver_sql("SELECT key, card, atc FROM clearing_taps ORDER BY key").all()
    ]


def test_migration_0014_keeps_the_taps_and_the_guard_both_ways(engine) -> None:  # type: ignore[no-untyped-def]
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0013_clearing_max_atc")
        assert _indexes(conn) == {
            "uq_clearing_taps_key": (("key",), True),
            "ix_clearing_taps_card": (("card",), False),
            "ix_clearing_taps_settlement_key": (("settlement_key",), False),
        }
        conn.execute(sa.text(_INSERT), TAPS)
        command.upgrade(cfg, "head")
        assert _indexes(conn) == {
            "uq_clearing_taps_card_atc": (("card", "atc"), True),
            "ix_clearing_taps_settlement_key": (("settlement_key",), False),
        }
        assert _stored(conn) == sorted((t["key"], t["card"], t["atc"]) for t in TAPS)
    # the same card and ATC under another key text is refused, and nothing is written
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text(_INSERT), [{**TAPS[0], "key": TAPS[0]["key"].lower() + "x"}])
    with engine.begin() as conn:
        assert len(_stored(conn)) == len(TAPS)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0013_clearing_max_atc")
        assert "uq_clearing_taps_key" in _indexes(conn)
        assert _stored(conn) == sorted((t["key"], t["card"], t["atc"]) for t in TAPS)
        command.upgrade(cfg, "head")


def test_taps_are_found_by_card_and_atc_exactly(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(sa.text(_INSERT), TAPS)
        asked = [("6230000000000001:01", 2), ("6230000000000001:02", 255), ("6230000000000002:01", 4)]
        asked += [("6230000000000003:01", 1), ("6230000000000001:01", -1), ("6230000000000001", 1)]
        found = sorted(_taps_at(conn, asked))
        assert found == [("6230000000000001:01:0002", 102, 998), ("6230000000000001:02:00FF", 355, 745)]
        assert _taps_at(conn, []) == []
        # many pairs: chunked, each found once
        every = sorted((t["card"], t["atc"]) for t in TAPS) + [(f"6239{i:012d}:01", 1) for i in range(3_000)]
        assert sorted(key for key, _, _ in _taps_at(conn, every)) == sorted(t["key"] for t in TAPS)


def test_sqlite_searches_the_index_by_both_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests import dbtools

    engine = dbtools.migrated_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    try:
        with engine.connect() as conn:
            sql = str(bulk.for_conn(_TAPS_AT, conn).compile(dialect=engine.dialect))
            plan = " | ".join(
                row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ('[["a:01", 1]]',))
            )
    finally:
        engine.dispose()
    assert "USING INDEX sqlite_autoindex_clearing_taps_1 (card=? AND atc=?)" in plan, plan


def test_a_key_gives_its_card_and_atc() -> None:
    assert _card_and_atc("6230000000000001:01:00FF") == ("6230000000000001:01", 255)
    assert _card_and_atc("6230000000000001:01:?") is None
    assert _card_and_atc("None:None:?") is None


def test_sqlite_refuses_a_nul_in_a_pair(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite's JSON reader would end the text at NUL and match another card: refused instead."""
    from tests import dbtools

    engine = dbtools.migrated_engine(f"sqlite:///{tmp_path / 'nul.db'}")
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.StatementError, match="contains NUL"):
            _taps_at(conn, [("6230000000000001:01\x00", 1)])
    finally:
        engine.dispose()
