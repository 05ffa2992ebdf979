"""The platform's append-only event log (issue 6 item 5): the outbox the sector exchange reads.

:func:`emit` inserts an event in the caller's transaction, so a state change, its audit row and
its events commit together or not at all. Sequence numbers grow in commit order: on PostgreSQL
an emitting transaction first takes a transaction-scoped advisory lock (released at its commit),
so a reader that has seen ``seq`` N never later finds a committed event below N appear — the
classic outbox gap of concurrent sequences. On SQLite writers are serialised (``BEGIN IMMEDIATE``)
anyway. The price: event-emitting transactions on PostgreSQL commit one at a time.

Kinds are dotted lower-case names (:data:`EVENT_KINDS` lists the platform's own); the payload is a
JSON object of at most :data:`PAYLOAD_BYTES_MAX` bytes, stored compact with sorted keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, text

from citycard.db import utc_now
from citycard.platform import tables
from citycard.platform.errors import InvalidInput

EVENT_KINDS = frozenset(
    {
        "cardholder.registered",
        "card.applied",
        "card.approved",
        "card.prepared",
        "card.personalised",
        "card.issued",
        "card.activated",
        "card.lost",
        "card.unblocked",
        "card.replaced",
        "card.cancelled",
        "card.dormant_warning",
        "application.loaded",
        "application.unloaded",
        "blacklist.published",
        "blacklist.flagged",
        "blacklist.flag_cleared",
        "payment",
        "visit",
    }
)
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
PAYLOAD_BYTES_MAX = 8_192
READ_LIMIT_MAX = 1_000
KINDS_FILTER_MAX = 64
# pg_advisory_xact_lock key that orders event sequence numbers by commit ("CCEV" in ASCII).
EVENT_LOCK_ID = 0x43434556


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event."""

    seq: int
    kind: str
    at: datetime
    card_id: int | None
    cardholder_id: int | None
    sector: str | None
    payload: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "at": self.at.isoformat(),
            "card_id": self.card_id,
            "cardholder_id": self.cardholder_id,
            "sector": self.sector,
            "payload": self.payload,
        }


def emit(
    conn: Connection,
    kind: str,
    *,
    card_id: int | None = None,
    cardholder_id: int | None = None,
    sector: str | None = None,
    payload: dict[str, Any],
    at: datetime | None = None,
) -> int:
    """Append an event in the caller's transaction; returns its sequence number."""
    if not isinstance(kind, str) or len(kind) > tables.EVENT_KIND_CHARS or not KIND_PATTERN.match(kind):
        raise InvalidInput("event.kind", f"event kind must be dotted lower-case words, got {kind!r}")
    if sector is not None and (not isinstance(sector, str) or not 0 < len(sector) <= tables.SECTOR_CHARS):
        raise InvalidInput("event.sector", f"sector must be 1..{tables.SECTOR_CHARS} characters")
    for name, value in (("card_id", card_id), ("cardholder_id", cardholder_id)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidInput("event.reference", f"{name} must be a positive integer, got {value!r}")
    if not isinstance(payload, dict):
        raise InvalidInput("event.payload", "the payload must be a JSON object")
    try:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("event.payload", f"the payload is not JSON: {exc}") from None
    if len(body.encode()) > PAYLOAD_BYTES_MAX:
        raise InvalidInput("event.payload", f"the payload is above {PAYLOAD_BYTES_MAX} bytes")
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENT_LOCK_ID})
    result = conn.execute(
        insert(tables.events)
        .values(
            kind=kind,
            card_id=card_id,
            cardholder_id=cardholder_id,
            sector=sector,
            payload=body,
            at=at or utc_now(),
        )
        .returning(tables.events.c.seq)
    )
    return int(result.scalar_one())


def read(
    conn: Connection,
    *,
    after: int = 0,
    limit: int = 100,
    kinds: set[str] | frozenset[str] | None = None,
    card_id: int | None = None,
    cardholder_id: int | None = None,
) -> list[Event]:
    """Events with ``seq > after`` in sequence order, at most ``limit`` (≤ :data:`READ_LIMIT_MAX`)."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidInput(
            "event.after", f"after must be an integer ≥ 0, got {after!r}", fields={"after": "bad"}
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= READ_LIMIT_MAX:
        raise InvalidInput(
            "event.limit", f"limit must be 1..{READ_LIMIT_MAX}, got {limit!r}", fields={"limit": "bad"}
        )
    e = tables.events.c
    query = select(tables.events).where(e.seq > after).order_by(e.seq).limit(limit)
    if kinds is not None:
        if len(kinds) > KINDS_FILTER_MAX:
            raise InvalidInput("event.kinds", f"at most {KINDS_FILTER_MAX} kinds in a filter")
        if not kinds:
            return []
        query = query.where(e.kind.in_(sorted(kinds)))
    if card_id is not None:
        query = query.where(e.card_id == card_id)
    if cardholder_id is not None:
        query = query.where(e.cardholder_id == cardholder_id)
    return [_event(row) for row in conn.execute(query)]


def last_seq(conn: Connection) -> int:
    """The highest sequence number stored (0 when the log is empty)."""
    from sqlalchemy import func

    return int(conn.execute(select(func.coalesce(func.max(tables.events.c.seq), 0))).scalar_one())


def _event(row: Any) -> Event:
    return Event(
        seq=int(row.seq),
        kind=row.kind,
        at=row.at,
        card_id=row.card_id,
        cardholder_id=row.cardholder_id,
        sector=row.sector,
        payload=json.loads(row.payload),
    )
