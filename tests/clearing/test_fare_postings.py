"""batch.fare_postings: the fares of accepted taps as grouped, balanced ledger postings."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.clearing.batch import (
    FARE_CARDS_PER_POSTING_MAX,
    CardState,
    Cleared,
    batch_postings,
    ec_account,
    fare_postings,
    operator_account,
)
from citycard.ledger.model import LINES_PER_POSTING_MAX, check_request

AT = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)


def tap(card: int, atc: int, amount_fen: int, operator: str = "bus-1", exit_refund_fen: int = 0) -> Cleared:
    pan = f"62354800{card:08d}"
    return Cleared(
        f"{pan}:01:{atc:04X}", f"{pan}:01", atc, amount_fen, 10_000, operator, "R1", "V1", "T1",
        exit_refund_fen, "", "", None, pan, "01", AT,
    )  # fmt: skip


def cards_of(taps: list[Cleared]) -> dict[str, CardState]:
    return {t.card: CardState("bank") for t in taps}


def moved(postings: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for posting in postings:
        for line in posting.lines:
            out[line.account] = out.get(line.account, 0) + line.credit_fen - line.debit_fen
    return out


def test_one_posting_per_operator_debits_each_card_once() -> None:
    taps = [tap(1, 1, 200), tap(1, 2, 150), tap(2, 1, 300), tap(2, 2, 0), tap(3, 1, 500, operator="taxi-1")]
    postings = fare_postings([(t, False) for t in taps], cards_of(taps), batch_id="B7", first=4)
    assert [p.key for p in postings] == ["fares:B7:4", "fares:B7:5"]  # bus-1, then taxi-1 (sorted)
    bus, taxi = postings
    assert [(line.account, line.debit_fen, line.credit_fen) for line in bus.lines] == [
        (ec_account("bank", "6235480000000001", "01"), 350, 0),
        (ec_account("bank", "6235480000000002", "01"), 300, 0),  # its zero-fare tap adds nothing
        (operator_account("bus-1"), 0, 650),
    ]
    assert [(line.account, line.credit_fen) for line in taxi.lines if line.credit_fen] == [
        ("operator:taxi-1", 500)
    ]
    for posting in postings:
        check_request(posting)  # balanced, within the ledger's limits
        assert posting.memo.startswith(posting.lines[-1].account.removeprefix("operator:"))


@pytest.mark.parametrize("cards", [1, FARE_CARDS_PER_POSTING_MAX, FARE_CARDS_PER_POSTING_MAX + 1, 100])
def test_cards_are_split_into_postings_within_the_line_limit(cards: int) -> None:
    taps = [tap(card, 1, 100 + card) for card in range(cards)]
    postings = fare_postings([(t, False) for t in taps], cards_of(taps), batch_id="B", first=0)
    assert len(postings) == -(-cards // FARE_CARDS_PER_POSTING_MAX)
    assert all(len(p.lines) <= LINES_PER_POSTING_MAX for p in postings)
    for posting in postings:
        check_request(posting)
    assert moved(postings) == {
        **{ec_account("bank", t.pan, t.psn): -t.amount_fen for t in taps},
        "operator:bus-1": sum(t.amount_fen for t in taps),
    }


def test_free_rides_post_nothing_and_refunds_stay_per_tap() -> None:
    free = [tap(1, 1, 0), tap(2, 1, 0)]
    assert fare_postings([(t, False) for t in free], cards_of(free), batch_id="B", first=0) == []
    taps = [tap(1, 1, 200), tap(2, 1, 0, exit_refund_fen=300)]
    accepted = [(taps[0], True), (taps[1], False)]  # the first after its card's loss report
    postings = batch_postings(accepted, cards_of(taps), batch_id="B")
    assert [p.key for p in postings] == [
        "fares:B:0",
        f"refund:{taps[0].key}",
        f"exitrefund:{taps[1].key}",
    ]
    assert moved(postings) == {
        ec_account("bank", taps[0].pan, "01"): 0,  # fare and its refund
        ec_account("bank", taps[1].pan, "01"): 300,
        "operator:bus-1": -300,
    }


def test_a_cleared_tap_is_stored_alike_by_its_numbered_insert_and_by_the_general_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """store._write_result on SQLite: a worker's Cleared (its texts made) goes in by numbered
    parameters; the same tap without its texts by the general insert: the same stored row."""
    import sqlalchemy as sa

    from citycard.clearing.batch import Known, ec_account, operator_account
    from citycard.clearing.store import _write_result
    from citycard.db import make_engine, upgrade, write_transaction
    from citycard.ledger import AccountKind, Layer, Line, PostingRequest, open_account, post

    engine = make_engine(f"sqlite:///{tmp_path / 'taps.db'}")
    upgrade(engine)
    plain = tap(1, 1, 200, exit_refund_fen=0)
    refund = tap(2, 3, 300, operator="taxi-1", exit_refund_fen=120)._replace(transit='{"kind":"exit"}')
    texts = [t._replace(tap_at_text="2026-11-27 08:00:00.000000", day="2026-11-27") for t in (plain, refund)]
    columns = (
        "key, card, atc, operator, route, vehicle, terminal_id, tap_at, day, amount_fen, balance_after_fen, "
        "refunded, exit_refund_fen, transit"
    )
    try:
        with write_transaction(engine) as conn:
            open_account(conn, "bank:funding", AccountKind.FUNDING, allow_negative=True)
            for t in (plain, refund):
                for account, kind in ((ec_account("bank", t.pan, t.psn), AccountKind.EC),
                                      (operator_account(t.operator), AccountKind.OPERATOR)):  # fmt: skip
                    open_account(conn, account, kind)
                    lines = (Line("bank:funding", debit_fen=10_000), Line(account, credit_fen=10_000))
                    post(conn, PostingRequest(f"fund:{account}", lines, Layer.CLEARED))
                conn.exec_driver_sql(
                    "INSERT INTO clearing_cards (card, issuer) VALUES (?, 'bank')", (t.card,)
                )
        known = Known({t.card: CardState("bank") for t in (plain, refund)}, (), AT)
        rows = {}
        for name, taps in (("numbered", texts), ("general", [plain, refund])):
            with write_transaction(engine) as conn:
                conn.exec_driver_sql("DELETE FROM clearing_taps")
                _write_result(conn, f"B-{name}", [(taps[0], False), (taps[1], True)], (), known)
                rows[name] = conn.execute(sa.text(f"SELECT {columns} FROM clearing_taps ORDER BY key")).all()
                batches = conn.execute(sa.text("SELECT DISTINCT batch_id FROM clearing_taps")).scalars().all()
                assert batches == [f"B-{name}"]
        assert rows["numbered"] == rows["general"]
        assert [(r.refunded, r.exit_refund_fen, r.transit) for r in rows["general"]] == [
            (False, None, None),
            (True, 120, '{"kind":"exit"}'),
        ]
    finally:
        engine.dispose()
