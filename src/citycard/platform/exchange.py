"""The sector data exchange: subscribers pulling the platform's event log (issue 6 item 5;
docs/platform-exchange.md).

A subscriber is a sector system (a hospital's HIS, the transit operator's clearing, the campus...)
with a name, a sector, a filter on event kinds and a cursor: the sequence number of the last event
it acknowledged. :func:`read_for` returns the events after the cursor that pass the filter;
:func:`ack` moves the cursor forward once the subscriber has processed them — never backwards, so a
repeated or late acknowledgement is harmless (at-least-once delivery: a subscriber that crashes
before acking reads the same events again and must deduplicate on ``seq``).

The events themselves are P1's append-only log (:mod:`citycard.platform.events`), whose sequence
numbers grow in commit order, so a cursor never skips an event that commits later.

>>> parse_kinds("card.lost, card.replaced")
('card.lost', 'card.replaced')
>>> parse_kinds("")
()
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from citycard.db import utc_now
from citycard.platform import events
from citycard.platform import tables as platform_tables
from citycard.platform.errors import Conflict, InvalidInput, NotFound
from citycard.platform.exchange_tables import KINDS_CHARS_MAX, SECTOR_CHARS_MAX, subscribers

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SECTOR_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
KINDS_MAX = events.KINDS_FILTER_MAX  # kinds in one filter
READ_LIMIT_DEFAULT = 100
SUBSCRIBERS_LIST_MAX = 1_000
IN_LIST_MAX = 500  # ids per IN (...) list
REDACTED_PAYLOAD = {"redacted": "consent.missing"}

assert SECTOR_CHARS_MAX == 32


def parse_kinds(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """A kinds filter as a sorted tuple of distinct kinds; empty = every kind.

    Accepts a comma-separated string or an iterable; each kind must be a dotted lower-case name
    (events.KIND_PATTERN), e.g. ``card.lost``; sector kinds beyond events.EVENT_KINDS are allowed.
    """
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    kinds: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(
                "exchange.invalid_kinds", f"event kind must be text, got {item!r}", fields={"kinds": "type"}
            )
        kind = item.strip()
        if not kind:
            continue
        if not events.KIND_PATTERN.match(kind) or len(kind) > 48:
            raise InvalidInput(
                "exchange.invalid_kinds",
                f"event kind {kind!r} is not a dotted lower-case name",
                fields={"kinds": "pattern"},
            )
        kinds.add(kind)
    if len(kinds) > KINDS_MAX:
        raise InvalidInput(
            "exchange.invalid_kinds",
            f"at most {KINDS_MAX} kinds in a filter, got {len(kinds)}",
            fields={"kinds": "count"},
        )
    result = tuple(sorted(kinds))
    if len(",".join(result)) > KINDS_CHARS_MAX:
        raise InvalidInput(
            "exchange.invalid_kinds",
            f"the filter is above {KINDS_CHARS_MAX} characters",
            fields={"kinds": "length"},
        )
    return result


def _public(row: Any) -> dict[str, Any]:
    kinds = tuple(k for k in row.kinds.split(",") if k)
    return {
        "name": row.name,
        "sector": row.sector,
        "kinds": list(kinds),
        "cursor": int(row.cursor),
        "created_at": row.created_at,
        "acked_at": row.acked_at,
    }


def _row(conn: Connection, name: str, *, for_update: bool = False) -> Any:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            "exchange.invalid_name",
            "subscriber name must be 1 to 64 characters of a-z 0-9 . _ - (starting with a letter or digit)",
            fields={"name": "pattern"},
        )
    query = sa.select(subscribers).where(subscribers.c.name == name)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()  # serialise concurrent acks of one subscriber
    row = conn.execute(query).first()
    if row is None:
        raise NotFound("exchange.subscriber_not_found", f"no subscriber {name!r}")
    return row


def subscribe(
    conn: Connection,
    *,
    name: str,
    sector: str,
    kinds: str | Iterable[str] | None = None,
    from_now: bool = False,
    at: datetime,
) -> dict[str, Any]:
    """Register a subscriber. Its cursor starts at 0 (the whole history) or, with ``from_now``, at
    the newest event (only what happens from now on). A taken name is a Conflict."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        _row(conn, name)  # raises the precise InvalidInput
    if not isinstance(sector, str) or not SECTOR_PATTERN.fullmatch(sector):
        raise InvalidInput(
            "exchange.invalid_sector",
            "sector must be 1 to 32 characters of a-z 0-9 _ starting with a letter",
            fields={"sector": "pattern"},
        )
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise InvalidInput("exchange.invalid_time", "at must be an aware datetime", fields={"at": "naive"})
    wanted = parse_kinds(kinds)
    exists = conn.execute(sa.select(subscribers.c.id).where(subscribers.c.name == name)).first()
    if exists is not None:
        raise Conflict("exchange.subscriber_exists", f"subscriber {name!r} already exists")
    cursor = events.last_seq(conn) if from_now else 0
    try:
        conn.execute(
            subscribers.insert(),
            {"name": name, "sector": sector, "kinds": ",".join(wanted), "cursor": cursor, "created_at": at},
        )
    except IntegrityError:  # a concurrent subscribe with the same name committed first
        raise Conflict("exchange.subscriber_exists", f"subscriber {name!r} already exists") from None
    return get(conn, name)


def get(conn: Connection, name: str) -> dict[str, Any]:
    """The subscriber's public view: name, sector, kinds, cursor, created_at, acked_at."""
    return _public(_row(conn, name))


def set_kinds(conn: Connection, name: str, kinds: str | Iterable[str] | None) -> dict[str, Any]:
    """Change a subscriber's filter; the cursor stays where it is."""
    _row(conn, name)
    conn.execute(
        subscribers.update().where(subscribers.c.name == name).values(kinds=",".join(parse_kinds(kinds)))
    )
    return get(conn, name)


def unsubscribe(conn: Connection, name: str) -> None:
    """Remove a subscriber (its cursor is forgotten; the events stay)."""
    _row(conn, name)
    conn.execute(subscribers.delete().where(subscribers.c.name == name))


def list_subscribers(conn: Connection, *, sector: str | None = None) -> list[dict[str, Any]]:
    """Subscribers by name, with their ``lag``: events after the cursor that pass their filter."""
    query = sa.select(subscribers).order_by(subscribers.c.name).limit(SUBSCRIBERS_LIST_MAX)
    if sector is not None:
        query = query.where(subscribers.c.sector == sector)
    result = []
    for row in conn.execute(query):
        view = _public(row)
        view["lag"] = lag(conn, row.name)
        result.append(view)
    return result


def _filter(row: Any) -> frozenset[str] | None:
    kinds = frozenset(k for k in row.kinds.split(",") if k)
    return kinds or None


def lock_cursor(conn: Connection, subscriber: str) -> int:
    """The subscriber's cursor, its row locked to the end of the transaction on PostgreSQL (SQLite
    writers are serialised already): for a consumer that reads and acks in one transaction."""
    return int(_row(conn, subscriber, for_update=True).cursor)


def read_for(conn: Connection, subscriber: str, limit: int = READ_LIMIT_DEFAULT) -> list[events.Event]:
    """The next events for ``subscriber``: after its cursor, passing its filter, at most ``limit``
    (1 to events.READ_LIMIT_MAX), in sequence order, each as its sector may see it
    (:func:`consent_view`). Reading does not move the cursor."""
    row = _row(conn, subscriber)
    found = events.read(conn, after=int(row.cursor), limit=limit, kinds=_filter(row))
    return consent_view(conn, row.sector, found)


def read_after(
    conn: Connection, subscriber: str, after: int, limit: int = READ_LIMIT_DEFAULT
) -> list[events.Event]:
    """Re-read ``subscriber``'s feed from ``after`` (its filter and consents applied; cursor unchanged)."""
    row = _row(conn, subscriber)
    return consent_view(conn, row.sector, events.read(conn, after=after, limit=limit, kinds=_filter(row)))


def consent_view(conn: Connection, sector: str, found: list[events.Event]) -> list[events.Event]:
    """``found`` as ``sector`` may see it: an event that carries a cardholder's data (its
    ``cardholder_id``, or a ``card_id`` of a platform card) goes as it is only when that cardholder
    holds an active consent for ``sector`` (platform_consents, any scope — the same rule as the
    API's sector reads); otherwise it is **redacted**, not skipped: ``seq``, ``kind``, ``at`` and
    ``sector`` stay, ``card_id`` and ``cardholder_id`` become null and the payload is
    ``{"redacted": "consent.missing"}``. So the subscriber's sequence has no unexplained holes, its
    acks work as before, and it can tell that something was withheld (and ask for consent) without
    learning whose card it was. Events about no known cardholder pass unchanged."""
    card_ids = sorted({e.card_id for e in found if e.cardholder_id is None and e.card_id is not None})
    holder_of_card: dict[int, int] = {}
    c = platform_tables.cards.c
    for start in range(0, len(card_ids), IN_LIST_MAX):
        rows = conn.execute(
            sa.select(c.id, c.cardholder_id).where(c.id.in_(card_ids[start : start + IN_LIST_MAX]))
        )
        holder_of_card.update({int(row.id): int(row.cardholder_id) for row in rows})
    holders = [
        e.cardholder_id if e.cardholder_id is not None else holder_of_card.get(e.card_id or 0) for e in found
    ]
    wanted = sorted({h for h in holders if h is not None})
    consenting: set[int] = set()
    k = platform_tables.consents.c
    for start in range(0, len(wanted), IN_LIST_MAX):
        rows = conn.execute(
            sa.select(k.cardholder_id).where(
                k.cardholder_id.in_(wanted[start : start + IN_LIST_MAX]), k.sector == sector,
                k.revoked_at.is_(None),
            )
        )  # fmt: skip
        consenting.update(int(row.cardholder_id) for row in rows)
    return [
        event if holder is None or holder in consenting else redact(event)
        for event, holder in zip(found, holders, strict=True)
    ]


def redact(event: events.Event) -> events.Event:
    """The event without whose it is (see :func:`consent_view`)."""
    return dataclasses.replace(event, card_id=None, cardholder_id=None, payload=dict(REDACTED_PAYLOAD))


def ack(conn: Connection, subscriber: str, seq: int, *, at: datetime | None = None) -> int:
    """Acknowledge every event up to ``seq``; returns the cursor. An ``seq`` at or below the cursor
    changes nothing (never backwards); one above the newest event is refused (InvalidInput)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise InvalidInput(
            "exchange.invalid_seq", f"seq must be an integer ≥ 0, got {seq!r}", fields={"seq": "invalid"}
        )
    row = _row(conn, subscriber, for_update=True)
    if seq <= row.cursor:
        return int(row.cursor)
    newest = events.last_seq(conn)
    if seq > newest:
        raise InvalidInput(
            "exchange.seq_ahead", f"seq {seq} is above the newest event {newest}", fields={"seq": "ahead"}
        )
    values = {"cursor": seq, "acked_at": at or utc_now()}
    # The WHERE repeats "cursor < seq": two acks racing on SQLite/PostgreSQL cannot move it back.
    conn.execute(
        subscribers.update()
        .where(subscribers.c.name == subscriber, subscribers.c.cursor < seq)
        .values(**values)
    )
    return int(
        conn.execute(sa.select(subscribers.c.cursor).where(subscribers.c.name == subscriber)).scalar_one()
    )


def lag(conn: Connection, name: str) -> int:
    """How many events after the subscriber's cursor pass its filter (what it has not acked yet)."""
    row = _row(conn, name)
    e = events.tables.events.c
    query = sa.select(sa.func.count()).select_from(events.tables.events).where(e.seq > row.cursor)
    kinds = _filter(row)
    if kinds is not None:
        query = query.where(e.kind.in_(sorted(kinds)))
    return int(conn.execute(query).scalar_one())
