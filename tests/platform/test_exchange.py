"""The sector data exchange (issue 6 item 5): subscribers with a kinds filter and a cursor over the
platform's event log; read, acknowledge, never backwards. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from citycard.db import read_transaction, write_transaction
from citycard.platform import events, exchange
from citycard.platform.errors import Conflict, InvalidInput, NotFound
from citycard.platform.exchange_tables import subscribers

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def emit_all(engine, kinds: list[str], card_id: int = 7) -> list[int]:
    with write_transaction(engine) as conn:
        return [events.emit(conn, kind, card_id=card_id, payload={"n": i}) for i, kind in enumerate(kinds)]


def test_each_sector_reads_its_kinds_after_its_cursor_and_acks(engine):
    with write_transaction(engine) as conn:
        health = exchange.subscribe(
            conn, name="his-city-hospital", sector="health", kinds="card.lost,card.replaced", at=T0
        )
        transit = exchange.subscribe(
            conn, name="transit-clearing", sector="transit", kinds=["card.lost"], at=T0
        )
        everything = exchange.subscribe(conn, name="regulator", sector="regulator", at=T0)
    assert health["kinds"] == ["card.lost", "card.replaced"] and health["cursor"] == 0
    assert everything["kinds"] == []
    seqs = emit_all(engine, ["card.issued", "card.lost", "payment", "card.replaced", "card.lost"])
    with write_transaction(engine) as conn:
        got = exchange.read_for(conn, "his-city-hospital", limit=2)
        assert [(e.seq, e.kind) for e in got] == [(seqs[1], "card.lost"), (seqs[3], "card.replaced")]
        assert exchange.read_for(conn, "his-city-hospital", limit=2) == got  # reading does not move it
        assert exchange.ack(conn, "his-city-hospital", got[-1].seq, at=T0) == seqs[3]
        rest = exchange.read_for(conn, "his-city-hospital")
        assert [e.seq for e in rest] == [seqs[4]]
        assert [e.payload for e in exchange.read_for(conn, "transit-clearing")] == [{"n": 1}, {"n": 4}]
        assert len(exchange.read_for(conn, "regulator", limit=100)) == 5
        lags = {s["name"]: s["lag"] for s in exchange.list_subscribers(conn)}
        assert lags == {"his-city-hospital": 1, "regulator": 5, "transit-clearing": 2}
        assert transit["sector"] == "transit"


def test_ack_never_moves_backwards_and_refuses_the_future(engine):
    seqs = emit_all(engine, ["card.lost"] * 4)
    with write_transaction(engine) as conn:
        exchange.subscribe(conn, name="campus", sector="campus", at=T0)
        assert exchange.ack(conn, "campus", seqs[2]) == seqs[2]
        assert exchange.ack(conn, "campus", seqs[0]) == seqs[2]  # a late, repeated ack: no change
        with pytest.raises(InvalidInput) as ahead:
            exchange.ack(conn, "campus", seqs[3] + 1)
        assert ahead.value.code == "exchange.seq_ahead"
        with pytest.raises(InvalidInput):
            exchange.ack(conn, "campus", -1)
        assert exchange.get(conn, "campus")["cursor"] == seqs[2]
        assert [e.seq for e in exchange.read_for(conn, "campus")] == [seqs[3]]


def test_from_now_skips_the_history(engine):
    emit_all(engine, ["card.issued", "card.issued"])
    with write_transaction(engine) as conn:
        late = exchange.subscribe(conn, name="tourism", sector="tourism", from_now=True, at=T0)
    new = emit_all(engine, ["card.lost"])
    with read_transaction(engine) as conn:
        assert late["cursor"] == new[0] - 1
        assert [e.seq for e in exchange.read_for(conn, "tourism")] == new


@pytest.mark.parametrize(
    ("arguments", "error", "code"),
    [
        ({"name": "Bad Name", "sector": "health"}, InvalidInput, "exchange.invalid_name"),
        ({"name": "his", "sector": "Health!"}, InvalidInput, "exchange.invalid_sector"),
        ({"name": "his", "sector": "health", "kinds": "card.lost,Card Lost"}, InvalidInput, "exchange.invalid_kinds"),
        ({"name": "his", "sector": "health", "kinds": [f"k{i}.x" for i in range(65)]}, InvalidInput, "exchange.invalid_kinds"),
        ({"name": "taken", "sector": "health"}, Conflict, "exchange.subscriber_exists"),
    ],
)  # fmt: skip
def test_bad_subscriptions_are_refused_and_change_nothing(engine, arguments, error, code):
    with write_transaction(engine) as conn:
        exchange.subscribe(conn, name="taken", sector="social", at=T0)
        with pytest.raises(error) as refused:
            exchange.subscribe(conn, at=T0, **arguments)
        assert refused.value.code == code
        rows = conn.execute(sa.select(subscribers.c.name, subscribers.c.sector)).all()
        assert [tuple(r) for r in rows] == [("taken", "social")]


def test_filter_change_unsubscribe_and_unknown_subscribers(engine):
    seqs = emit_all(engine, ["card.lost", "visit"])
    with write_transaction(engine) as conn:
        exchange.subscribe(conn, name="his", sector="health", kinds="card.lost", at=T0)
        assert exchange.set_kinds(conn, "his", "visit , card.lost")["kinds"] == ["card.lost", "visit"]
        assert [e.seq for e in exchange.read_for(conn, "his")] == seqs
        exchange.unsubscribe(conn, "his")
        for call in (
            lambda: exchange.read_for(conn, "his"),
            lambda: exchange.ack(conn, "his", 1),
            lambda: exchange.get(conn, "his"),
        ):
            with pytest.raises(NotFound) as missing:
                call()
            assert missing.value.code == "exchange.subscriber_not_found"
        with pytest.raises(InvalidInput):
            exchange.read_for(conn, "BAD NAME")


def test_read_limit_is_checked(engine):
    with write_transaction(engine) as conn:
        exchange.subscribe(conn, name="his", sector="health", at=T0)
        with pytest.raises(InvalidInput) as too_many:
            exchange.read_for(conn, "his", limit=events.READ_LIMIT_MAX + 1)
        assert too_many.value.code == "event.limit"


def test_concurrent_acks_leave_the_highest_cursor(engine):
    """Several workers of one subscriber acking different seqs at once: the cursor ends at the top."""
    seqs = emit_all(engine, ["payment"] * 20)
    with write_transaction(engine) as conn:
        exchange.subscribe(conn, name="bills", sector="bills", at=T0)
    errors: list[BaseException] = []

    def worker(chunk: list[int]) -> None:
        try:
            for seq in chunk:
                with write_transaction(engine) as conn:
                    exchange.ack(conn, "bills", seq)
        except BaseException as exc:  # noqa: BLE001 — reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seqs[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with read_transaction(engine) as conn:
        assert exchange.get(conn, "bills")["cursor"] == seqs[-1]
