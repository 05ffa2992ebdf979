"""Blacklist publish on loss without an operator: the event log is the outbox, the publisher drains
it into incremental versions (docs/platform-exchange.md "Automatic publishing").

SQLite and PostgreSQL (the ``engine`` fixture); real cards through the real lifecycle.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from tests.platform import test_cards_support as support
from tests.platform.test_cards_support import ACTOR, card_in_state

from citycard.db import read_transaction, write_transaction
from citycard.kernel.params import ExceptionFile
from citycard.platform import blacklist, blacklist_outbox, cards, events, exchange
from citycard.platform.blacklist_format import apply_delta, decode_delta
from citycard.platform.errors import InvalidInput
from citycard.platform.exchange_tables import blacklist_versions

hsm = support.hsm  # the module-scoped HSM fixture
T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def versions_of(conn) -> dict[str, int]:
    return {name: blacklist.latest_version(conn, name) for name in blacklist.TERMINAL_CLASSES}


def consistent(conn) -> None:
    """The incremental versions hold exactly what a full rebuild from every source would: a full
    publish finds nothing to add or remove (it would return a new version otherwise)."""
    before = versions_of(conn)
    assert blacklist.publish_all(conn, actor=ACTOR, at=T0) == before


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_a_loss_report_reaches_the_next_delta_without_an_operator(engine, hsm, tmp_path, suite) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path, suite=suite)
        card = cards.record(conn, card_id)
        key = (card.pan, f"{card.psn:02d}")
        blacklist.publish_all(conn, actor=ACTOR, at=T0)
        blacklist_outbox.drain(conn)  # the card's issue/activation: nothing to change
        held = blacklist.full_list(conn, terminal_class="bus")  # what a validator holds
        assert not held.contains(*key)
        before = versions_of(conn)
    with write_transaction(engine) as conn:
        cards.report_loss(conn, card_id, formal=False, actor="call-centre:3")
    with read_transaction(engine) as conn:
        assert blacklist_outbox.pending(conn) == 1
    with write_transaction(engine) as conn:
        drained = blacklist_outbox.drain(conn)
        assert drained.events == 1
        assert drained.versions == {name: v + 1 for name, v in before.items()}
        data = blacklist.delta(conn, terminal_class="bus", from_version=held.version)
        published = events.read(conn, kinds={"blacklist.published"})[-1]
    delta = decode_delta(data)
    assert delta.added == (key,) and delta.removed == () and len(data) == 123
    assert published.payload["incremental"] is True and published.payload["added"] == 1
    updated = apply_delta(held, data)  # the validator's side: checksum verified
    assert updated.contains(*key) and updated.version == held.version + 1
    with write_transaction(engine) as conn:
        assert blacklist_outbox.drain(conn).events == 0  # drained once
        consistent(conn)
        cards.unblock(conn, card_id, actor=ACTOR, reason="found")
    with write_transaction(engine) as conn:
        assert blacklist_outbox.drain(conn).events == 1
        removed = decode_delta(blacklist.delta(conn, terminal_class="bus", from_version=updated.version))
        assert removed.added == () and removed.removed == (key,)
        consistent(conn)
    blacklist.clear_cache()  # rebuilt from the stored intervals: the checksums are asserted
    with read_transaction(engine) as conn:
        latest = blacklist.full_list(conn, terminal_class="bus")
        assert not latest.contains(*key) and latest.version == updated.version + 1


def test_incremental_versions_equal_full_rebuilds_through_random_changes(engine) -> None:
    """Flags and clears on 60 PANs, some for one class only, drained after each step: every class's
    list equals a rebuild from all sources, and every delta chains to the next full list."""
    rng = random.Random(11)
    pans = [f"62354811{i:08d}" for i in range(60)]
    active: list[int] = []
    with write_transaction(engine) as conn:
        blacklist.publish_all(conn, actor=ACTOR, at=T0)
        start = versions_of(conn)
        held: dict[str, ExceptionFile] = {
            name: blacklist.full_list(conn, terminal_class=name, version=v) for name, v in start.items()
        }
    for step in range(12):
        with write_transaction(engine) as conn:
            for _ in range(rng.randint(1, 6)):
                if active and rng.random() < 0.4:
                    flag_id = active.pop(rng.randrange(len(active)))
                    blacklist.clear_flag(conn, flag_id, actor=ACTOR, at=T0)
                else:
                    active.append(
                        blacklist.flag(
                            conn, pan=rng.choice(pans), psn=rng.choice([None, "00", "01"]),
                            reason=rng.choice(["fraud", "counterfeit"]), detail=f"step {step}",
                            actor=ACTOR, at=T0, terminal_class=rng.choice([None, None, "bus", "pos"]),
                        )
                    )  # fmt: skip
        with write_transaction(engine) as conn:
            assert blacklist_outbox.drain(conn).events >= 1
            for name in ("bus", "pos", "metro"):
                latest = blacklist.latest_version(conn, name)
                if latest > held[name].version:
                    data = blacklist.delta(conn, terminal_class=name, from_version=held[name].version)
                    held[name] = apply_delta(held[name], data)
                assert held[name].to_bytes() == blacklist.full_list(conn, terminal_class=name).to_bytes()
            consistent(conn)
    with read_transaction(engine) as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(blacklist_versions)).scalar_one()
    assert rows > len(blacklist.TERMINAL_CLASSES) * 3  # real increments happened


def test_a_drain_that_dies_before_its_commit_leaves_everything_for_the_next(engine) -> None:
    with write_transaction(engine) as conn:
        blacklist.publish_all(conn, actor=ACTOR, at=T0)
        blacklist_outbox.drain(conn)
        before = versions_of(conn)
        blacklist.flag(conn, pan="6235482200000017", psn="01", reason="fraud", detail="", actor=ACTOR, at=T0)

    class CrashError(RuntimeError):
        pass

    with pytest.raises(CrashError), write_transaction(engine) as conn:
        assert blacklist_outbox.drain(conn).events == 1
        raise CrashError("the process dies before the commit")
    with write_transaction(engine) as conn:
        assert versions_of(conn) == before  # nothing of it remains
        assert blacklist_outbox.pending(conn) == 1
        drained = blacklist_outbox.drain(conn)
        assert drained.events == 1 and drained.versions == {name: v + 1 for name, v in before.items()}
        assert blacklist.full_list(conn, terminal_class="gate").contains("6235482200000017", "01")
        assert exchange.get(conn, blacklist_outbox.PUBLISHER)["cursor"] == drained.cursor
        consistent(conn)


def test_bad_incremental_requests_are_refused(engine) -> None:
    with write_transaction(engine) as conn:
        with pytest.raises(InvalidInput) as bad:
            blacklist.publish_changes(conn, pans=["12AB"], at=T0)
        assert bad.value.code == "blacklist.invalid_card"
        many = [f"62354800{i:08d}" for i in range(blacklist.CHANGED_PANS_MAX + 1)]
        with pytest.raises(InvalidInput) as too_many:
            blacklist.publish_changes(conn, pans=many, at=T0)
        assert too_many.value.code == "blacklist.too_many_changes"
        assert versions_of(conn) == dict.fromkeys(blacklist.TERMINAL_CLASSES, 0)  # nothing written
        with pytest.raises(ValueError, match="drain limit"):
            blacklist_outbox.drain(conn, limit=0)


def test_the_background_publisher_publishes_a_flag_on_its_own(engine) -> None:
    with write_transaction(engine) as conn:
        blacklist.publish_all(conn, actor=ACTOR, at=T0)
        before = blacklist.latest_version(conn, "taxi")

    async def scenario() -> int:
        async with blacklist_outbox.background_publisher(engine, enabled=True, poll_interval_s=0.05) as pub:
            assert pub is not None
            with write_transaction(engine) as conn:
                blacklist.flag(
                    conn,
                    pan="6235483300000015",
                    psn=None,
                    reason="counterfeit",
                    detail="",
                    actor=ACTOR,
                    at=T0,
                )
            # Wait on the publisher's own count, not on the version: the drain commits in a worker
            # thread and the count is updated only when the publisher's coroutine resumes, so a
            # version seen first could still pair with a count of 0.
            deadline = time.monotonic() + 30.0
            while pub.stats.events == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert pub.stats.errors == []
            with read_transaction(engine) as conn:
                assert blacklist.latest_version(conn, "taxi") > before
            return pub.stats.events

    assert asyncio.run(scenario()) >= 1
    with read_transaction(engine) as conn:
        assert blacklist.full_list(conn, terminal_class="taxi").contains("6235483300000015", "07")


def test_auto_publish_can_be_turned_off() -> None:
    assert blacklist_outbox.auto_publish_enabled({}) is True
    assert blacklist_outbox.auto_publish_enabled({"CITYCARD_BLACKLIST_AUTO_PUBLISH": "0"}) is False

    async def scenario() -> object:
        async with blacklist_outbox.background_publisher(None, enabled=False) as pub:  # type: ignore[arg-type]
            return pub

    assert asyncio.run(scenario()) is None


def test_concurrent_drains_publish_a_change_once(engine) -> None:
    """Two publishers (two server workers) drain at once: one publishes the flag, the other waits on
    the publisher's row and then finds nothing; one new version per class."""
    import threading

    with write_transaction(engine) as conn:
        blacklist.publish_all(conn, actor=ACTOR, at=T0)
        blacklist_outbox.drain(conn)
        before = versions_of(conn)
        blacklist.flag(conn, pan="6235484400000013", psn="01", reason="fraud", detail="", actor=ACTOR, at=T0)
    barrier = threading.Barrier(2)
    drained: list[int] = []

    def publisher() -> None:
        barrier.wait()
        with write_transaction(engine) as conn:
            drained.append(blacklist_outbox.drain(conn).events)

    threads = [threading.Thread(target=publisher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(drained) == [0, 1]
    with write_transaction(engine) as conn:
        assert versions_of(conn) == {name: v + 1 for name, v in before.items()}
        consistent(conn)
