"""citycard.ledger.bulk: one-statement writes on PostgreSQL (rows as one JSON parameter), executemany on SQLite.

The hot path (ledger post_many, the issuer's batch) writes through these helpers, so they are
tested on both backends with real rows: order kept, NULLs kept, a value too long for its column
refused rather than truncated, and a large post_many that leaves exact balances and no invariant
broken.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, StatementError

from citycard.db import write_transaction
from citycard.db.base import utc_now
from citycard.ledger import (
    AccountKind,
    InsufficientFunds,
    Layer,
    Line,
    PostingRequest,
    balances,
    bulk,
    check_invariants,
    open_account,
    post_many,
)
from citycard.ledger.tables import ACCOUNT_CODE_LENGTH_MAX, ledger_accounts, ledger_postings

FUNDING = "bank:funding"


def _account_rows(codes: list[str]) -> list[dict]:
    now = utc_now()
    return [
        {"code": code, "kind": "merchant", "allow_negative": False, "balance_slots": 1, "name": name,
         "created_at": now}
        for code, name in zip(codes, ["", "second", "third"], strict=False)
    ]  # fmt: skip


def test_insert_rows_keeps_values_and_order(engine):
    codes = ["bulk:a", "bulk:b", "bulk:c"]
    with write_transaction(engine) as conn:
        bulk.insert_rows(conn, ledger_accounts, _account_rows(codes))
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger_accounts.c.code, ledger_accounts.c.name, ledger_accounts.c.created_at).order_by(
                ledger_accounts.c.id
            )
        ).all()
    assert [row.code for row in rows] == codes  # ids follow the order given
    assert [row.name for row in rows] == ["", "second", "third"]
    assert all(row.created_at.utcoffset() is not None for row in rows)  # aware UTC back


def test_insert_returning_on_postgresql_and_nulls(engine):
    rows = [
        {
            "key": f"bulk:{i}",
            "kind": "post",
            "layer": 0,
            "origin_id": None,
            "memo": "",
            "created_at": utc_now(),
        }
        for i in range(3)
    ]
    with write_transaction(engine) as conn:
        if bulk.is_postgresql(conn):
            result = bulk.insert_rows(conn, ledger_postings, rows, suffix="RETURNING id, key")
            assert [key for _, key in result] == ["bulk:0", "bulk:1", "bulk:2"]
        else:
            with pytest.raises(ValueError, match="PostgreSQL"):
                bulk.insert_rows(conn, ledger_postings, rows, suffix="RETURNING id, key")
            bulk.insert_rows(conn, ledger_postings, rows)
    with engine.connect() as conn:
        stored = conn.execute(select(ledger_postings.c.key, ledger_postings.c.origin_id)).all()
    assert sorted(stored) == [("bulk:0", None), ("bulk:1", None), ("bulk:2", None)]


def test_too_long_value_is_refused_not_truncated(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce VARCHAR lengths")
    long_code = "x" * (ACCOUNT_CODE_LENGTH_MAX + 1)
    with pytest.raises(DBAPIError, match="too long"), write_transaction(engine) as conn:
        bulk.insert_rows(conn, ledger_accounts, _account_rows(["bulk:ok", long_code]))
    with engine.connect() as conn:
        assert conn.execute(select(ledger_accounts.c.code)).all() == []  # nothing written


def test_columns_of_refuses_too_many_rows():
    with pytest.raises(ValueError, match="limit"):
        bulk.columns_of([{"a": 1}] * (bulk.ROWS_PER_STATEMENT_MAX + 1), ("a",))
    with pytest.raises(ValueError, match="limit"):
        bulk.json_rows([{"a": 1}] * (bulk.ROWS_PER_STATEMENT_MAX + 1), ("a",))


def test_json_rows_refuse_naive_times_and_unknown_types():
    with pytest.raises(ValueError, match="aware UTC"):
        bulk.json_rows([{"t": dt.datetime(2026, 11, 27, 8, 0)}], ("t",))
    with pytest.raises(TypeError, match="set"):
        bulk.json_rows([{"t": {1}}], ("t",))


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    memos=st.lists(TEXT, min_size=1, max_size=8),
    origin=st.one_of(st.none(), st.integers(1, 2**62)),
    when=st.datetimes(
        min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 1, 1), timezones=st.just(dt.UTC)
    ),
)
def test_json_rows_round_trip_any_text_and_times(engine, memos, origin, when):
    """Any text (quotes, backslashes, non-ASCII, JSON-looking), big integers, NULLs and aware times
    come back exactly through the JSON rows on PostgreSQL (executemany on SQLite), in order."""
    prefix = f"rt:{len(memos)}:{hash((tuple(memos), origin, when)) & 0xFFFFFFF:x}:"
    rows = [
        {
            "key": f"{prefix}{i}",
            "kind": "post",
            "layer": 0,
            "origin_id": None,
            "memo": memo,
            "created_at": when,
        }
        for i, memo in enumerate(memos)
    ]
    with write_transaction(engine) as conn:
        seen = select(ledger_postings.c.key).where(ledger_postings.c.key == rows[0]["key"])
        if conn.execute(seen).first() is None:  # hypothesis may run an example twice
            on_pg = bulk.is_postgresql(conn)
            result = bulk.insert_rows(conn, ledger_postings, rows, suffix="RETURNING key" if on_pg else "")
            if on_pg:
                assert [key for (key,) in result] == [r["key"] for r in rows]
    with engine.connect() as conn:
        stored = conn.execute(
            select(ledger_postings.c.key, ledger_postings.c.memo, ledger_postings.c.created_at)
            .where(ledger_postings.c.key.like(f"{prefix}%"))
            .order_by(ledger_postings.c.id)
        ).all()
    assert [(r.key, r.memo) for r in stored] == [(r["key"], r["memo"]) for r in rows]
    assert all(r.created_at == when for r in stored)


@pytest.mark.parametrize("count", [1, 300])
def test_large_post_many_exact_balances(engine, count):
    cards = [f"bank:card:{i:04d}" for i in range(60)]
    merchants = [f"bank:merchant:{i}" for i in range(4)]
    with write_transaction(engine) as conn:
        open_account(conn, FUNDING, AccountKind.FUNDING, allow_negative=True)
        for code in cards:
            open_account(conn, code, AccountKind.CARDHOLDER)
        for code in merchants:
            open_account(conn, code, AccountKind.MERCHANT)
        post_many(
            conn,
            [PostingRequest(f"fund:{code}", (Line(FUNDING, debit_fen=1_000), Line(code, credit_fen=1_000)))
             for code in cards],
        )  # fmt: skip
    requests = [
        PostingRequest(
            f"buy:{i}",
            (Line(cards[i % 60], debit_fen=i % 7 + 1), Line(merchants[i % 4], credit_fen=i % 7 + 1)),
            layer=Layer.PENDING,
        )
        for i in range(count)
    ]
    with write_transaction(engine) as conn:
        results = post_many(conn, requests)
    assert [r.created for r in results] == [True] * count
    expected = {code: 1_000 for code in cards} | {code: 0 for code in merchants}
    for i in range(count):
        expected[cards[i % 60]] -= i % 7 + 1
        expected[merchants[i % 4]] += i % 7 + 1
    with write_transaction(engine) as conn:
        assert post_many(conn, requests[:5]) == [
            type(r)(r.key, r.posting_id, False) for r in results[:5]
        ]  # replays: same ids, nothing moved
    with engine.connect() as conn:
        assert balances(conn, [*cards, *merchants]) == expected
        assert check_invariants(conn) == []


def test_insufficient_funds_in_a_batch_writes_nothing(engine):
    with write_transaction(engine) as conn:
        open_account(conn, FUNDING, AccountKind.FUNDING, allow_negative=True)
        open_account(conn, "bank:card:poor", AccountKind.CARDHOLDER)
        open_account(conn, "bank:merchant:m", AccountKind.MERCHANT)
        post_many(
            conn, [PostingRequest("fund", (Line(FUNDING, debit_fen=5), Line("bank:card:poor", credit_fen=5)))]
        )
    spend = [
        PostingRequest(
            f"spend:{i}", (Line("bank:card:poor", debit_fen=3), Line("bank:merchant:m", credit_fen=3))
        )
        for i in range(2)
    ]
    with pytest.raises(InsufficientFunds), write_transaction(engine) as conn:
        post_many(conn, spend)
    with engine.connect() as conn:
        assert balances(conn, ["bank:card:poor", "bank:merchant:m"]) == {
            "bank:card:poor": 5,
            "bank:merchant:m": 0,
        }
        assert (
            conn.execute(select(ledger_postings.c.key).where(ledger_postings.c.key.like("spend:%"))).all()
            == []
        )
        assert check_invariants(conn) == []


def test_sqlite_inserts_go_straight_to_the_driver_only_when_sqlalchemy_adds_nothing() -> None:
    import sqlalchemy as sa

    from citycard.ledger.tables import ledger_lines

    dialect = sa.create_engine("sqlite://").dialect
    line_columns = ("posting_id", "seq", "account_id", "layer", "debit_fen", "credit_fen")
    assert bulk._plain_insert_sql(ledger_lines, line_columns, dialect) == (
        "INSERT INTO ledger_lines (posting_id, seq, account_id, layer, debit_fen, credit_fen) VALUES (?, ?, ?, ?, ?, ?)"
    )
    # a datetime column needs SQLAlchemy's bind processing: the Core insert stays
    account_columns = tuple(_account_rows(["x"])[0])
    assert bulk._plain_insert_sql(ledger_accounts, account_columns, dialect) is None
    # a column the table does not have is left to SQLAlchemy's own error
    assert bulk._plain_insert_sql(ledger_lines, (*line_columns, "nope"), dialect) is None
    # a reserved word is quoted
    table = sa.Table(
        "t_plain", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("key", sa.Integer)
    )
    assert bulk._plain_insert_sql(table, ("key",), dialect) == 'INSERT INTO t_plain ("key") VALUES (?)'


# sqlite3 cannot store a lone surrogate at all (UnicodeEncodeError on insert): not a lookup question
_NO_NUL = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12
)


@settings(max_examples=200, deadline=None)
@given(
    stored=st.lists(_NO_NUL, max_size=20, unique=True),
    asked=st.lists(_NO_NUL, max_size=20),
    pick=st.lists(st.integers(min_value=0, max_value=19), max_size=10),
)
def test_sqlite_json_array_lookups_find_exactly_the_values_asked(
    stored: list, asked: list, pick: list
) -> None:
    # quotes, backslashes, non-ASCII and control characters all travel inside the one JSON parameter
    import sqlalchemy as sa

    table = sa.Table(
        "t_lookup", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("code", sa.Text)
    )
    by_backend = bulk.per_backend(
        lambda member: sa.select(table.c.code, table.c.id).where(member(table.c.code, "v"))
    )
    ids_by_backend = bulk.per_backend(lambda member: sa.select(table.c.id).where(member(table.c.id, "v")))
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        table.create(conn)
        if stored:
            conn.execute(table.insert(), [{"id": i, "code": code} for i, code in enumerate(stored)])
        wanted = asked + [stored[i] for i in pick if i < len(stored)]
        found = dict(conn.execute(bulk.for_conn(by_backend, conn), {"v": wanted}).all())
        assert found == {code: i for i, code in enumerate(stored) if code in wanted}
        ids = [i for i in pick if i < len(stored)] + [10_000]
        assert set(conn.execute(bulk.for_conn(ids_by_backend, conn), {"v": ids}).scalars()) == set(ids) - {
            10_000
        }
        assert conn.execute(bulk.for_conn(by_backend, conn), {"v": []}).all() == []
        # SQLite's JSON reader would cut a NUL short: refused, not silently unmatched
        with pytest.raises(StatementError, match="contains NUL"):
            conn.execute(bulk.for_conn(by_backend, conn), {"v": ["a\x00b"]})
