"""Many rows in ONE statement on PostgreSQL: ``INSERT … SELECT … FROM json_to_recordset(rows)``
(the hot path) or ``… FROM unnest(arrays)`` (callers that build columns).

Why: psycopg 3 runs ``executemany`` as one statement per row (pipelined, but each row is still
parsed, bound, executed and answered on its own: ≈ 15–25 µs of client CPU plus the server's work per
row). The hot path writes a few hundred rows per batch (ledger lines, balances, cards, the message
log), so one statement for all of them costs a fraction of that, and the server runs one plan. The
SQL text is fixed (it does not grow with the row count), so psycopg prepares it once per
connection. The rows travel as one JSON text (see "rows as one JSON parameter" below); the array
form sends one binary array per column (``%(name)b``). SQLite keeps ``executemany``: it runs
in-process, there is no round trip to save.

The rows are written in the order given (``json_to_recordset`` and ``unnest`` yield in order, and the
insert follows a plain function scan) — the ledger relies on that for its fixed lock order.

Values go to the driver as they are, without SQLAlchemy's type processing: callers pass plain
ints, strings, bytes, booleans, dates and *aware UTC* datetimes (what ``UTCDateTime`` would bind).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    any_,
    bindparam,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

ROWS_PER_STATEMENT_MAX = 10_000  # arrays this long are still one small message; keeps memory bounded

_PG = postgresql.dialect()


def is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _array_type(table: Table, column: str) -> str:
    """``TEXT[]``, ``BIGINT[]``, ``TIMESTAMP WITH TIME ZONE[]``… for one column.

    Strings go as ``TEXT[]``, not ``VARCHAR(n)[]``: an explicit cast to ``VARCHAR(n)`` would
    silently truncate a long value, while the insert's assignment to the column refuses it.
    """
    return f"{_column_type(table, column)}[]"


@cache
def insert_sql(table: Table, columns: tuple[str, ...], suffix: str = "", prefix: str = "") -> str:
    """``INSERT INTO t (a, b) SELECT * FROM unnest(%(a)b::T[], %(b)b::U[]) <suffix>``; the parameters
    are named ``prefix + column`` (two statements joined by :func:`together` need distinct names).

    >>> from citycard.ledger.tables import ledger_lines
    >>> insert_sql(ledger_lines, ("posting_id", "seq"))
    'INSERT INTO ledger_lines (posting_id, seq) SELECT * FROM unnest(%(posting_id)b::BIGINT[], %(seq)b::SMALLINT[])'
    """
    arrays = ", ".join(f"%({prefix}{name})b::{_array_type(table, name)}" for name in columns)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
    return f"{sql} {suffix}" if suffix else sql


@cache
def update_sql(
    table: Table, key: str, columns: tuple[str, ...], prefix: str = "", more_sets: str = ""
) -> str:
    """``UPDATE t SET a = v.a … FROM unnest(%(key)b::K[], %(a)b::A[] …) AS v(key, a …) WHERE t.key = v.key``.

    Each key may appear once (PostgreSQL updates a row at most once per statement). ``more_sets``:
    further ``col = expression`` assignments (of ``t``'s old values and ``v``'s), after the others.
    """
    names = (key, *columns)
    arrays = ", ".join(f"%({prefix}{name})b::{_array_type(table, name)}" for name in names)
    sets = ", ".join([*(f"{name} = v.{name}" for name in columns), *([more_sets] if more_sets else [])])
    return (
        f"UPDATE {table.name} SET {sets} FROM unnest({arrays}) AS v({', '.join(names)}) "
        f"WHERE {table.name}.{key} = v.{key}"
    )


@cache
def together(first: str, then: str) -> str:
    """Two writes in ONE statement (one round trip): ``first`` as a data-modifying ``WITH`` part.

    PostgreSQL runs a data-modifying ``WITH`` part exactly once and to completion whether or not the
    main statement reads it; both see the same snapshot, so they must not touch the same rows.

    >>> together("UPDATE a SET x = 1", "INSERT INTO b VALUES (1)")
    'WITH first_write AS (UPDATE a SET x = 1 RETURNING 1) INSERT INTO b VALUES (1)'
    """
    return f"WITH first_write AS ({first} RETURNING 1) {then}"


# --- rows as one JSON parameter ---------------------------------------------------------------------
# The hot path's writes (ledger lines, balances, postings, the issuer's cards and message log) send
# their rows as ONE JSON text read by ``json_to_recordset``: ``json.dumps`` runs in C, while
# psycopg dumps a binary array element by element in Python (≈ 40 µs a message on the issuer's
# path, its largest single cost). Each value is typed by the column definition list, from the
# table: strings as TEXT (so an over-long value is refused by the column, not truncated), bytes as
# ``\\x…`` hex (bytea input), datetimes and dates as ISO 8601 (aware UTC stays aware).


def _column_type(table: Table, column: str) -> str:
    """``TEXT``, ``BIGINT``, ``TIMESTAMP WITH TIME ZONE``… for one column (strings: see :func:`_array_type`)."""
    kind = table.c[column].type
    return "TEXT" if isinstance(kind, String) else kind.compile(dialect=_PG)


def _json_value(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: times are aware UTC")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} cannot go in a JSON row")


def _recordset(table: Table, columns: tuple[str, ...], name: str) -> str:
    types = ", ".join(f"{column} {_column_type(table, column)}" for column in columns)
    return f"json_to_recordset(%({name})s::json) AS v({types})"


@cache
def insert_json_sql(table: Table, columns: tuple[str, ...], suffix: str = "", prefix: str = "") -> str:
    """``INSERT INTO t (a, b) SELECT a, b FROM json_to_recordset(%(rows)s::json) AS v(a T, b U) <suffix>``;
    the parameter is ``prefix + "rows"`` (:func:`json_rows`). Rows go in the order given.

    >>> from citycard.ledger.tables import ledger_lines
    >>> insert_json_sql(ledger_lines, ("posting_id", "seq"))
    'INSERT INTO ledger_lines (posting_id, seq) SELECT posting_id, seq FROM json_to_recordset(%(rows)s::json) AS v(posting_id BIGINT, seq SMALLINT)'
    """
    names = ", ".join(columns)
    sql = f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {_recordset(table, columns, prefix + 'rows')}"
    return f"{sql} {suffix}" if suffix else sql


@cache
def update_json_sql(table: Table, key: str, columns: tuple[str, ...], prefix: str = "") -> str:
    """:func:`update_sql` with the rows as one JSON parameter ``prefix + "rows"`` (:func:`json_rows`)."""
    sets = ", ".join(f"{name} = v.{name}" for name in columns)
    return (
        f"UPDATE {table.name} SET {sets} FROM {_recordset(table, (key, *columns), prefix + 'rows')} "
        f"WHERE {table.name}.{key} = v.{key}"
    )


def json_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], prefix: str = "") -> dict[str, str]:
    """Rows (dicts holding at least ``columns``) → ``{prefix + "rows": JSON}`` for the statements above.

    >>> json_rows([{"a": 1, "b": b"\\x01"}, {"a": 2, "b": None}], ("a", "b"))
    {'rows': '[{"a":1,"b":"\\\\\\\\x01"},{"a":2,"b":null}]'}
    """
    if len(rows) > ROWS_PER_STATEMENT_MAX:
        raise ValueError(f"{len(rows)} rows in one statement; limit {ROWS_PER_STATEMENT_MAX}")
    wanted = tuple(columns)
    if rows and tuple(rows[0]) != wanted:  # extra or reordered keys: send exactly the columns
        rows = [{name: row[name] for name in wanted} for row in rows]
    return {prefix + "rows": json.dumps(rows, separators=(",", ":"), default=_json_value)}


def columns_of(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], prefix: str = ""
) -> dict[str, list[Any]]:
    """Rows (dicts) → one list per column, the parameters of the statements above.

    >>> columns_of([{"a": 1, "b": "x"}, {"a": 2, "b": None}], ("a", "b"))
    {'a': [1, 2], 'b': ['x', None]}
    """
    if len(rows) > ROWS_PER_STATEMENT_MAX:
        raise ValueError(f"{len(rows)} rows in one statement; limit {ROWS_PER_STATEMENT_MAX}")
    return {prefix + name: [row[name] for row in rows] for name in columns}


def insert_rows(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, suffix: str = ""
) -> Any:
    """Insert ``rows`` (dicts with the same keys): one ``unnest`` statement on PostgreSQL (``suffix``,
    e.g. ``ON CONFLICT … RETURNING …``, appended; the cursor result returned), else ``executemany``."""
    if not rows:
        return None
    if not is_postgresql(conn):
        if suffix:
            raise ValueError("a suffix is for the PostgreSQL statement only")
        columns = tuple(rows[0])
        plain = _plain_insert_sql(table, columns, conn.dialect)
        if plain is not None:  # tuples straight to the driver: no per-value SQLAlchemy processing
            return conn.exec_driver_sql(plain, [tuple(row[c] for c in columns) for row in rows])
        return conn.execute(table.insert(), list(rows))
    columns = tuple(rows[0])
    return driver_execute(conn, insert_json_sql(table, columns, suffix), json_rows(rows, columns))


@cache
def _plain_insert_sql(table: Table, columns: tuple[str, ...], dialect: Any) -> str | None:
    """``INSERT … VALUES (?, …)`` for ``columns`` when SQLAlchemy would add nothing to the values:
    no column given needs a bind processor and no column left out has a Python-side default (the
    autoincrement key aside); else ``None`` (the Core insert then processes every value)."""
    given = set(columns)
    for column in table.columns:
        if column.name in given:
            if column.type.bind_processor(dialect) is not None:
                return None
        elif column.default is not None or (column.primary_key and column is not table.autoincrement_column):
            return None
    if not given <= {c.name for c in table.columns}:
        return None
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {quote(table.name)} ({names}) VALUES ({marks})"


def driver_execute(conn: Connection, sql: str, params: Mapping[str, Any]) -> Any:
    """``conn.exec_driver_sql`` without SQLAlchemy's execution context and result object (≈ 10 % of
    the issuer's CPU in a batch of 16): the statement goes to psycopg's cursor on the same
    connection, in its transaction; the cursor comes back (iterate it for ``RETURNING`` rows).
    PostgreSQL only. A driver error is raised as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`
    subclass (IntegrityError…), and a lost connection is invalidated, as ``exec_driver_sql`` would."""
    import psycopg

    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
    except psycopg.Error as exc:
        dead = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
        if dead:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, psycopg.Error, hide_parameters=True, connection_invalidated=dead,
            dialect=conn.dialect,
        ) from exc  # fmt: skip
    return cursor


# --- "column is one of these values" with a fixed SQL text ------------------------------------------
# ``IN (:a_1, :a_2, …)`` (SQLAlchemy's expanding parameter) is rendered again for every call and its
# text changes with the list's length, so psycopg can neither cache nor prepare it; on PostgreSQL
# ``= ANY(:a)`` with one array parameter has one text for every length. SQLite has no arrays: it
# reads the values of one JSON array parameter. Hot statements are built once per backend with
# :func:`per_backend`.

Member = Callable[[Any, str], Any]


def _any_of(column: Any, name: str) -> Any:
    # Strings as TEXT[]: a cast to VARCHAR(n)[] would truncate a long value into a false match.
    item = Text() if isinstance(column.type, String) else column.type
    return column == any_(bindparam(name, type_=postgresql.ARRAY(item)))


class _JsonArray(TypeDecorator[Any]):
    """A list bound as one JSON text (strings and integers, or lists of them: the lookups' keys,
    ids and pairs)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        values = list(value)
        flat = [v for item in values for v in (item if type(item) is list else (item,))]
        if any(type(v) is str and "\x00" in v for v in flat):
            # SQLite's JSON reader ends a string at NUL: such a value would silently match nothing
            raise ValueError("a lookup value contains NUL (no stored code, key or PAN can)")
        return json.dumps(values)


def _in_json_list(column: Any, name: str) -> Any:
    # SQLite: ``IN (SELECT value FROM json_each(:a))`` — one parameter and one SQL text for every
    # length, like ``= ANY`` on PostgreSQL; SQLite still searches the column's index per value
    # (EXPLAIN: SEARCH … USING INDEX, LIST SUBQUERY). An expanding ``IN (:a_1, …)`` is rendered
    # again per call: ≈ 1 µs of SQLAlchemy per value, more than SQLite's own search.
    values = func.json_each(bindparam(name, type_=_JsonArray())).table_valued("value")
    return column.in_(select(values.c.value))


def per_backend(build: Callable[[Member], Any]) -> dict[bool, Any]:
    """``build(member)`` for PostgreSQL (``= ANY(array)``) and for SQLite (``IN`` a JSON array's
    values); pick the right one with :func:`for_conn`."""
    return {True: build(_any_of), False: build(_in_json_list)}


# A lookup by pairs: (the FROM items it adds, its condition) for two columns and a parameter name.
PairMember = Callable[[Any, Any, str], tuple[list[Any], Any]]


def _pairs_any_of(first: Any, second: Any, name: str) -> tuple[list[Any], Any]:
    # (a, b) IN the rows of two arrays unnested side by side (one length: PostgreSQL zips them)
    arrays = [
        func.unnest(
            bindparam(f"{name}_{i}", type_=postgresql.ARRAY(Text() if isinstance(c.type, String) else c.type))
        )
        for i, c in enumerate((first, second))
    ]
    return [], tuple_(first, second).in_(select(*arrays))


def _pairs_in_json_list(first: Any, second: Any, name: str) -> tuple[list[Any], Any]:
    # SQLite: the pairs as one JSON array of [a, b], joined to the table by both columns, so each
    # pair is one search of the two-column index (EXPLAIN: SCAN the pairs, SEARCH … (a=? AND b=?));
    # a row value IN (SELECT …) would search by the first column only and filter on the second.
    pairs = func.json_each(bindparam(name, type_=_JsonArray())).table_valued("value").alias(f"{name}_rows")
    a, b = (func.json_extract(pairs.c.value, literal_column(f"'$[{i}]'")) for i in (0, 1))
    return [pairs], and_(first == a, second == b)


def pairs_per_backend(build: Callable[[PairMember], Any]) -> dict[bool, Any]:
    """:func:`per_backend` for a lookup by pairs of two columns, for a two-column index: ``build``
    gets ``member(a, b, name)`` → (FROM items to add, condition); the pairs are bound as
    :func:`pairs_params` makes them (two arrays on PostgreSQL, one JSON array of pairs on SQLite).
    The pairs must be distinct (on SQLite the lookup is a join: a pair twice gives its row twice)."""
    return {True: build(_pairs_any_of), False: build(_pairs_in_json_list)}


def pairs_params(conn: Connection, name: str, pairs: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """The parameters of a :func:`pairs_per_backend` lookup named ``name``, for ``conn``'s backend."""
    if is_postgresql(conn):
        return {f"{name}_0": [a for a, _ in pairs], f"{name}_1": [b for _, b in pairs]}
    return {name: [[a, b] for a, b in pairs]}


def for_conn(statements: dict[bool, Any], conn: Connection) -> Any:
    return statements[is_postgresql(conn)]


# --- lookups planned for their actual arrays ----------------------------------------------------------
# psycopg prepares a statement on its 5th run, and PostgreSQL then soon settles on a *generic* plan,
# made without seeing the array. For ``col = ANY(%(a)s)`` that plan guesses ten elements and, on a
# table of a few thousand rows (a city's pilot, a bench), reads the whole table: 0.6–1.7 ms a batch
# against 0.1–0.3 ms planned for the real array (measured on the issuer's cards and balances reads).
# Forcing custom plans for the whole connection would instead re-plan every write of the hot path
# (≈ 40 µs a message): so only these lookups go unprepared, each planned for its own parameters.


@cache
def _compiled(statement: Any, dialect: Any) -> Any:
    return statement.compile(dialect=dialect)


def custom_plan_rows(conn: Connection, statement: Any, params: Mapping[str, Any]) -> list[Any]:
    """Run a Core ``SELECT`` on PostgreSQL unprepared (planned for these parameters) through the
    connection's own driver cursor, in its transaction; rows as named tuples. Values come back as the
    driver gives them (no SQLAlchemy result processing): use it for plain columns only."""
    from psycopg.rows import namedtuple_row

    compiled = _compiled(statement, conn.dialect)
    cursor = conn.connection.driver_connection.cursor(row_factory=namedtuple_row)  # type: ignore[union-attr]
    return cursor.execute(compiled.string, compiled.construct_params(params), prepare=False).fetchall()
