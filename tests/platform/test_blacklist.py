"""Blacklists (issue 6 item 4): sources, versions, full lists and deltas, terminals and staleness.

Every test runs on SQLite and on PostgreSQL (the ``engine`` fixture of tests/conftest.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from citycard.db import write_transaction
from citycard.kernel.params import ExceptionFile, ExceptionFileError
from citycard.platform import blacklist, cardholders, events
from citycard.platform.blacklist_format import apply_delta, decode_delta
from citycard.platform.errors import Conflict, InvalidInput, NotFound
from citycard.platform.exchange_tables import blacklist_flags, blacklist_versions, terminals
from citycard.platform.identity import check_character
from citycard.platform.tables import cards as platform_cards

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
ACTOR = "op:test"


def id_number(serial: int) -> str:
    first17 = f"110105198001{serial % 28 + 1:02d}{serial % 1000:03d}"
    return first17 + check_character(first17)


def add_card(conn, *, pan: str, psn: int, state: str = "active", serial: int = 1) -> int:
    """A card row as P1's lifecycle leaves it (states are P1's; the blacklist only reads them)."""
    holder = cardholders.register(
        conn, name=f"Holder {serial}", id_number=id_number(serial), kind="resident", actor=ACTOR
    )
    return int(
        conn.execute(
            platform_cards.insert().returning(platform_cards.c.id),
            {
                "cardholder_id": holder["id"], "profile": "citizen-card-gm", "issuer": "city-bank",
                "state": state, "dormant": False, "pan": pan, "psn": psn, "deposit_fen": 2000,
                "ec_initial_fen": 0, "created_at": T0, "updated_at": T0,
            },
        ).scalar_one()
    )  # fmt: skip


def set_state(conn, card_id: int, state: str) -> None:
    conn.execute(platform_cards.update().where(platform_cards.c.id == card_id).values(state=state))


def keys(exception_file: ExceptionFile) -> set[tuple[str, str | None]]:
    return {(e.pan, e.psn) for e in exception_file.entries()}


def test_a_loss_report_lands_on_the_next_version_and_an_unblock_leaves_it(engine):
    with write_transaction(engine) as conn:
        card = add_card(conn, pan="6235480000000011", psn=1)
        add_card(conn, pan="6235480000000029", psn=1, state="cancelled", serial=2)
        v1 = blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0)
    with write_transaction(engine) as conn:
        set_state(conn, card, "lost_oral")
        v2 = blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0 + timedelta(minutes=1))
        set_state(conn, card, "active")  # unblocked after an oral report
        v3 = blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0 + timedelta(minutes=2))
    assert (v1, v2, v3) == (1, 2, 3)
    blacklist.clear_cache()
    with write_transaction(engine) as conn:
        full = [blacklist.full_list(conn, terminal_class="bus", version=v) for v in (0, 1, 2, 3)]
        assert [keys(f) for f in full] == [
            set(),
            {("6235480000000029", "01")},
            {("6235480000000029", "01"), ("6235480000000011", "01")},
            {("6235480000000029", "01")},
        ]
        assert [f.version for f in full] == [0, 1, 2, 3]
        d12 = decode_delta(blacklist.delta(conn, terminal_class="bus", from_version=1, to_version=2))
        assert (d12.added, d12.removed) == ((("6235480000000011", "01"),), ())
        d13 = decode_delta(blacklist.delta(conn, terminal_class="bus", from_version=1))
        assert (d13.added, d13.removed, d13.to_version) == ((), (), 3)  # added and removed within: nothing
        d23 = blacklist.delta(conn, terminal_class="bus", from_version=2)
        assert apply_delta(full[2], d23).to_bytes() == full[3].to_bytes()
        rows = conn.execute(sa.select(blacklist_versions).order_by(blacklist_versions.c.version)).all()
        assert [(r.entry_count, r.added_count, r.removed_count) for r in rows] == [
            (1, 1, 0),
            (2, 1, 0),
            (1, 0, 1),
        ]
        assert rows[1].body_sha256 == full[2].body_sha256.hex().upper()
        published = events.read(conn, kinds={"blacklist.published"})
        assert [(e.payload["version"], e.payload["entries"]) for e in published] == [(1, 1), (2, 2), (3, 1)]


def test_every_delta_chain_gives_the_full_list_of_its_version(engine):
    """Thirty publishes of random changes: for every N < M, full(N) + delta(N→M) == full(M)."""
    import random

    rng = random.Random(6)
    with write_transaction(engine) as conn:
        cards = [add_card(conn, pan=f"62354800{i:08d}", psn=i % 3, serial=i) for i in range(40)]
        for step in range(30):
            for card in rng.sample(cards, 5):
                set_state(conn, card, rng.choice(["active", "lost", "lost_oral", "replaced", "cancelled"]))
            if step % 4 == 0:
                blacklist.flag(
                    conn, pan=f"6235489{step:09d}", psn=None, reason="fraud", detail="", actor=ACTOR, at=T0
                )
            blacklist.publish(conn, terminal_class="taxi", actor=ACTOR, at=T0 + timedelta(minutes=step))
        latest = blacklist.latest_version(conn, "taxi")
        blacklist.clear_cache()  # rebuild every version from the stored intervals (checksums asserted)
        full = {v: blacklist.full_list(conn, terminal_class="taxi", version=v) for v in range(latest + 1)}
        for n in range(latest):
            for m in range(n + 1, latest + 1):
                data = blacklist.delta(conn, terminal_class="taxi", from_version=n, to_version=m)
                assert apply_delta(full[n], data).to_bytes() == full[m].to_bytes(), (n, m)
    assert latest >= 25


def test_publish_without_a_change_returns_the_same_version(engine):
    with write_transaction(engine) as conn:
        add_card(conn, pan="6235480000000011", psn=1, state="lost")
        first = blacklist.publish(conn, terminal_class="pos", actor=ACTOR, at=T0)
        again = blacklist.publish(conn, terminal_class="pos", actor=ACTOR, at=T0 + timedelta(hours=1))
        assert first == again == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(blacklist_versions)).scalar_one() == 1
        # An empty class still gets version 1 (the empty list), so its terminals have a version to hold.
        assert blacklist.publish(conn, terminal_class="hospital", actor=ACTOR, at=T0) == 1


def test_flags_by_class_and_their_clearing(engine):
    with write_transaction(engine) as conn:
        fraud = blacklist.flag(
            conn, pan="6235480000000037", psn=None, reason="fraud", detail="cloned at stop 12",
            actor=ACTOR, at=T0, terminal_class="bus",
        )  # fmt: skip
        blacklist.flag(
            conn, pan="6235480000000045", psn="02", reason="negative_balance", detail="clearing",
            actor=ACTOR, at=T0, amount_fen=-350,
        )  # fmt: skip
        bus = blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0)
        pos = blacklist.publish(conn, terminal_class="pos", actor=ACTOR, at=T0)
        bus_list = blacklist.full_list(conn, terminal_class="bus", version=bus)
        assert bus_list.contains("6235480000000037", "05") and bus_list.contains("6235480000000045", "02")
        pos_list = blacklist.full_list(conn, terminal_class="pos", version=pos)
        assert not pos_list.contains("6235480000000037", "05") and pos_list.contains("6235480000000045", "02")
        assert [f["pan"] for f in blacklist.flags(conn)] == ["623548******0045", "623548******0037"]
        blacklist.clear_flag(conn, fraud, actor=ACTOR, at=T0 + timedelta(hours=1))
        with pytest.raises(Conflict) as twice:
            blacklist.clear_flag(conn, fraud, actor=ACTOR, at=T0 + timedelta(hours=2))
        assert twice.value.code == "blacklist.flag_cleared"
        after = blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0 + timedelta(hours=1))
        assert after == bus + 1
        assert not blacklist.full_list(conn, terminal_class="bus").contains("6235480000000037", "05")
        history = blacklist.entries(conn, terminal_class="bus", pan="6235480000000037")
        assert history == [
            {
                "psn": None,
                "reason": "fraud",
                "added_version": 1,
                "removed_version": 2,
                "pan": "623548******0037",
            }
        ]


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"pan": "62354800000000", "psn": "1", "reason": "theft"}, "blacklist.invalid_reason"),
        ({"pan": "6235-48", "psn": None, "reason": "fraud"}, "blacklist.invalid_card"),
        ({"pan": "6235480000000011", "psn": "123", "reason": "fraud"}, "blacklist.invalid_card"),
        ({"pan": "6235480000000011", "psn": None, "reason": "negative_balance"}, "blacklist.invalid_amount"),
        ({"pan": "6235480000000011", "psn": None, "reason": "negative_balance", "amount_fen": 5}, "blacklist.invalid_amount"),
        ({"pan": "6235480000000011", "psn": None, "reason": "fraud", "amount_fen": -5}, "blacklist.invalid_amount"),
        ({"pan": "6235480000000011", "psn": None, "reason": "fraud", "terminal_class": "ferry"}, "blacklist.unknown_terminal_class"),
    ],
)  # fmt: skip
def test_a_bad_flag_is_refused_and_nothing_is_written(engine, arguments, code):
    with write_transaction(engine) as conn:
        with pytest.raises(InvalidInput) as refused:
            blacklist.flag(conn, detail="", actor=ACTOR, at=T0, **arguments)
        assert refused.value.code == code
        assert conn.execute(sa.select(sa.func.count()).select_from(blacklist_flags)).scalar_one() == 0


def test_cards_blocked_at_the_issuer_are_listed(engine):
    from citycard.host.issuer.tables import cards as issuer_cards

    with write_transaction(engine) as conn:
        conn.execute(
            issuer_cards.insert(),
            [
                {"issuer": "city-bank", "pan": f"623548000000{i:04d}", "psn": 0, "expiry": T0.date(), "suite": "GM",
                 "status": status, "pin_tries": 0, "atc_max": 0, "ec_balance_fen": 0, "account": f"a{i}",
                 "ec_account": f"e{i}", "day_total_fen": 0, "scripts_pending": 0, "created_at": T0}
                for i, status in enumerate(["active", "blocked", "stolen"])
            ],
        )  # fmt: skip
        blacklist.publish(conn, terminal_class="metro", actor=ACTOR, at=T0)
        assert blacklist.wanted_entries(conn, "metro") == {
            ("6235480000000001", "00"): "issuer_blocked",
            ("6235480000000002", "00"): "issuer_stolen",
        }
        assert len(blacklist.full_list(conn, terminal_class="metro")) == 2


def test_terminals_report_versions_and_stale_ones_are_listed(engine):
    with write_transaction(engine) as conn:
        card = add_card(conn, pan="6235480000000011", psn=1, state="lost")
        blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0)
        report = blacklist.report_version(conn, "BUS-0001", "bus", 1, T0)
        assert (report["version"], report["latest"], report["behind"]) == (1, 1, 0)
        blacklist.report_version(conn, "BUS-0002", "bus", 1, T0 - timedelta(hours=30))
        blacklist.report_version(conn, "BUS-0003", "bus", 0, T0)
        set_state(conn, card, "cancelled")
        add_card(conn, pan="6235480000000029", psn=1, state="lost", serial=2)
        assert blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0) == 2
        blacklist.report_version(conn, "BUS-0001", "bus", 2, T0 + timedelta(minutes=5))
        # A late report of an older state does not hide the newer one.
        blacklist.report_version(conn, "BUS-0001", "bus", 1, T0 + timedelta(minutes=1))
        stale = blacklist.stale(conn, now=T0 + timedelta(hours=1))
        assert [(t["terminal_id"], t["reasons"], t["versions_behind"]) for t in stale] == [
            ("BUS-0003", ["behind"], 2),
            ("BUS-0002", ["behind", "silent"], 1),
        ]
        assert stale[1]["silent_s"] == 31 * 3600
        assert (
            conn.execute(
                sa.select(terminals.c.version).where(terminals.c.terminal_id == "BUS-0001")
            ).scalar_one()
            == 2
        )


@pytest.mark.parametrize(
    ("arguments", "error", "code"),
    [
        (("BUS 1", "bus", 0), InvalidInput, "blacklist.invalid_terminal_id"),
        (("BUS-1", "ferry", 0), InvalidInput, "blacklist.unknown_terminal_class"),
        (("BUS-1", "bus", 7), InvalidInput, "blacklist.invalid_version"),
        (("BUS-1", "bus", -1), InvalidInput, "blacklist.invalid_version"),
        (("TAXI-1", "bus", 0), Conflict, "blacklist.terminal_class_mismatch"),
    ],
)
def test_a_bad_report_is_refused_and_changes_nothing(engine, arguments, error, code):
    with write_transaction(engine) as conn:
        blacklist.report_version(conn, "TAXI-1", "taxi", 0, T0)
        with pytest.raises(error) as refused:
            blacklist.report_version(conn, *arguments, T0 + timedelta(minutes=1))
        assert refused.value.code == code
        rows = conn.execute(sa.select(terminals.c.terminal_id, terminals.c.reported_at)).all()
        assert [(r.terminal_id, r.reported_at) for r in rows] == [("TAXI-1", T0)]


def test_bad_delta_and_version_requests(engine):
    with write_transaction(engine) as conn:
        add_card(conn, pan="6235480000000011", psn=1, state="lost")
        blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0)
        with pytest.raises(Conflict) as same:
            blacklist.delta(conn, terminal_class="bus", from_version=1)
        assert same.value.code == "blacklist.up_to_date"
        with pytest.raises(InvalidInput) as ahead:
            blacklist.delta(conn, terminal_class="bus", from_version=2)
        assert ahead.value.code == "blacklist.invalid_version"
        with pytest.raises(NotFound) as missing:
            blacklist.full_list(conn, terminal_class="bus", version=9)
        assert missing.value.code == "blacklist.version_not_found"
        with pytest.raises(InvalidInput):
            blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=datetime(2026, 1, 1))  # naive
        assert [v["version"] for v in blacklist.versions(conn, terminal_class="bus")] == [1]


def test_a_terminal_out_of_step_or_a_corrupt_delta_is_told_to_reload(engine):
    with write_transaction(engine) as conn:
        card = add_card(conn, pan="6235480000000011", psn=1, state="lost")
        blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0)
        set_state(conn, card, "active")
        add_card(conn, pan="6235480000000029", psn=1, state="lost", serial=2)
        blacklist.publish(conn, terminal_class="bus", actor=ACTOR, at=T0)
        v1 = blacklist.full_list(conn, terminal_class="bus", version=1)
        data = blacklist.delta(conn, terminal_class="bus", from_version=1)
    with pytest.raises(ExceptionFileError, match="the terminal holds 0: reload the full list"):
        apply_delta(ExceptionFile.build([], version=0), data)
    corrupt = bytearray(data)
    corrupt[-1] ^= 0x01
    with pytest.raises(ExceptionFileError, match="delta file body is corrupt"):
        apply_delta(v1, bytes(corrupt))
    corrupt = bytearray(data)
    corrupt[13] ^= 0x01  # the added count
    with pytest.raises(ExceptionFileError, match="header is corrupt"):
        apply_delta(v1, bytes(corrupt))
    # A terminal whose list differs from the platform's (an extra local entry) fails the checksum.
    drifted = ExceptionFile.build([*v1.entries(), ("6235480000000099", "01")], version=1)
    with pytest.raises(ExceptionFileError, match="reload the full list"):
        apply_delta(drifted, data)


def test_negative_ec_balances_reported_by_clearing_flag_and_unflag_the_card(engine):
    with write_transaction(engine) as conn:
        first = blacklist.record_ec_balance(
            conn, pan="6235480000000052", psn="01", balance_fen=-120, actor="clearing", at=T0
        )
        again = blacklist.record_ec_balance(
            conn, pan="6235480000000052", psn="01", balance_fen=-300, actor="clearing", at=T0
        )
        assert first == again and first is not None
        assert [(f["reason"], f["amount_fen"]) for f in blacklist.flags(conn)] == [("negative_balance", -300)]
        blacklist.publish(conn, terminal_class="bus", at=T0)
        assert blacklist.full_list(conn, terminal_class="bus").contains("6235480000000052", "01")
        assert (
            blacklist.record_ec_balance(
                conn, pan="6235480000000052", psn="01", balance_fen=0, actor="clearing", at=T0
            )
            is None
        )
        assert blacklist.flags(conn) == []
        assert blacklist.publish(conn, terminal_class="bus", at=T0) == 2
        assert len(blacklist.full_list(conn, terminal_class="bus")) == 0
        with pytest.raises(InvalidInput):
            blacklist.record_ec_balance(
                conn, pan="6235480000000052", psn="01", balance_fen=1.5, actor="c", at=T0
            )


def test_concurrent_publishers_of_one_class_write_one_version(engine):
    """Two publishers at once are serialised (BEGIN IMMEDIATE on SQLite, an advisory lock on
    PostgreSQL): the second finds nothing new and answers the same version."""
    import threading

    with write_transaction(engine) as conn:
        add_card(conn, pan="6235480000000011", psn=1, state="lost")
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def publisher() -> None:
        barrier.wait()
        try:
            with write_transaction(engine) as conn:
                outcomes.append(blacklist.publish(conn, terminal_class="gate", actor=ACTOR, at=T0))
        except Conflict as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=publisher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [1, 1]
    with write_transaction(engine) as conn:
        rows = conn.execute(sa.select(blacklist_versions.c.version)).scalars().all()
        assert rows == [1]
        blacklist.clear_cache()
        assert len(blacklist.full_list(conn, terminal_class="gate")) == 1
