"""The append-only event log (issue 6 item 5), SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from citycard.db import read_transaction, write_transaction
from citycard.platform import events
from citycard.platform.errors import InvalidInput


def test_emit_and_read_in_sequence_with_filters(engine) -> None:
    with write_transaction(engine) as conn:
        first = events.emit(
            conn, "card.lost", card_id=7, cardholder_id=3, payload={"formal": True, "名": "张"}
        )
        second = events.emit(conn, "payment", card_id=8, sector="transit", payload={"amount_fen": 200})
        third = events.emit(conn, "visit", card_id=7, sector="health", payload={})
    assert first < second < third
    with read_transaction(engine) as conn:
        every = events.read(conn)
        assert [e.seq for e in every] == [first, second, third]
        assert (
            every[0].payload == {"formal": True, "名": "张"} and every[0].at.utcoffset().total_seconds() == 0
        )
        assert [e.seq for e in events.read(conn, after=first)] == [second, third]
        assert [e.seq for e in events.read(conn, limit=1)] == [first]
        assert [e.kind for e in events.read(conn, kinds={"payment", "visit"})] == ["payment", "visit"]
        assert [e.seq for e in events.read(conn, card_id=7)] == [first, third]
        assert events.read(conn, kinds=set()) == []
        assert events.last_seq(conn) == third
        assert every[1].as_dict()["sector"] == "transit"


def test_bad_events_are_refused_and_nothing_is_stored(engine) -> None:
    with write_transaction(engine) as conn:
        bad_calls = [
            ({"kind": "Card Lost", "payload": {}}, "event.kind"),
            ({"kind": "x" * 49, "payload": {}}, "event.kind"),
            ({"kind": "payment", "payload": [1, 2]}, "event.payload"),
            ({"kind": "payment", "payload": {"when": object()}}, "event.payload"),
            ({"kind": "payment", "payload": {"blob": "x" * events.PAYLOAD_BYTES_MAX}}, "event.payload"),
            ({"kind": "payment", "payload": {}, "card_id": 0}, "event.reference"),
            ({"kind": "payment", "payload": {}, "sector": ""}, "event.sector"),
        ]
        for arguments, code in bad_calls:
            kind = arguments.pop("kind")
            with pytest.raises(InvalidInput) as refused:
                events.emit(conn, kind, **arguments)
            assert refused.value.code == code
        for bad in ({"after": -1}, {"limit": 0}, {"limit": events.READ_LIMIT_MAX + 1}):
            with pytest.raises(InvalidInput):
                events.read(conn, **bad)
        assert events.last_seq(conn) == 0


def test_an_event_commits_or_vanishes_with_its_transaction(engine) -> None:
    with pytest.raises(RuntimeError), write_transaction(engine) as conn:
        events.emit(conn, "card.lost", card_id=1, payload={})
        raise RuntimeError("the state change failed after the event")
    with read_transaction(engine) as conn:
        assert events.read(conn) == []


def test_sequence_numbers_follow_commit_order(engine) -> None:
    """A second emitter waits for the first to commit, so a reader that has seen seq N never later
    finds a smaller one appear (the outbox gap)."""
    emitted = threading.Event()
    times: dict[str, float] = {}

    def slow() -> None:
        with write_transaction(engine) as conn:
            times["slow_seq"] = events.emit(conn, "payment", payload={"who": "slow"})
            emitted.set()
            time.sleep(0.3)
            times["slow_commit"] = time.monotonic()

    worker = threading.Thread(target=slow)
    worker.start()
    assert emitted.wait(10)
    with write_transaction(engine) as conn:
        fast_seq = events.emit(conn, "payment", payload={"who": "fast"})
        times["fast_emitted"] = time.monotonic()
    worker.join(10)
    assert times["fast_emitted"] >= times["slow_commit"]
    assert fast_seq > times["slow_seq"]
    with read_transaction(engine) as conn:
        assert [e.payload["who"] for e in events.read(conn)] == ["slow", "fast"]
