"""Store-and-forward queue and stand-in log (Core SQL on a Connection already in a transaction).

Every function takes a SQLAlchemy ``Connection`` inside a write transaction: the caller stores the
advice or reversal in the same transaction as its decision (DESIGN §3 outbox rule), so nothing
the switch promised an endpoint is lost on a crash, and nothing is queued for a decision that
rolled back. Items are keyed by the identity of the original message, so queueing twice is a
no-op; delivered items are marked, never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from citycard.host.switch.tables import (
    ENDPOINT_CHARS_MAX,
    ERROR_CHARS_MAX,
    KEY_CHARS_MAX,
    STATUS_DELIVERED,
    STATUS_PENDING,
    saf_items,
    standins,
)
from citycard.iso8583 import decode, encode

BACKOFF_S_FIRST = 0.2  # first retry after a failed delivery
BACKOFF_S_MAX = 30.0  # retries never wait longer than this
DUE_ITEMS_MAX = 500  # items fetched per forwarder round


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes for DateTime(timezone=True): they were stored as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _check_now(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("time must be timezone-aware UTC")
    return now.astimezone(UTC)


def backoff_s(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed delivery: doubling, capped.

    >>> [backoff_s(n) for n in (1, 2, 3)], backoff_s(50)
    ([0.2, 0.4, 0.8], 30.0)
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    return min(BACKOFF_S_MAX, BACKOFF_S_FIRST * 2 ** min(attempts - 1, 30))


def message_key(kind: str, endpoint: str, fields: dict[str, Any]) -> str:
    """Identity of a queued message: its kind, endpoint and the original's F32/F41/F11/F7.

    >>> message_key("advice", "bank-a", {"41": "T0000001", "11": "000123", "7": "1127030405"})
    'advice:bank-a:-:T0000001:000123:1127030405'
    """
    parts = (
        kind,
        endpoint,
        fields.get("32", "-"),
        fields.get("41", "-"),
        fields.get("11", "-"),
        fields.get("7", "-"),
    )
    key = ":".join(str(part) for part in parts)
    if len(key) > KEY_CHARS_MAX:
        raise ValueError(f"message key of {len(key)} characters exceeds {KEY_CHARS_MAX}")
    return key


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits (PCI DSS display rule).

    >>> mask_pan("6228480000000001")
    '622848******0001'
    """
    return pan[:6] + "*" * max(len(pan) - 10, 0) + pan[-4:]


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    key: str
    endpoint: str
    mti: str
    fields: dict[str, Any]
    attempts: int
    status: str
    next_attempt_at: datetime
    response_code: str | None


def enqueue(conn: Connection, *, key: str, endpoint: str, fields: dict[str, Any], now: datetime) -> int:
    """Queue ``fields`` (a 0220 or 0400, no F64) for ``endpoint``; idempotent on ``key``; returns the id."""
    now = _check_now(now)
    if fields.get("t") not in ("0220", "0400"):
        raise ValueError(f"only 0220 advices and 0400 reversals are stored, got {fields.get('t')!r}")
    if not 1 <= len(endpoint) <= ENDPOINT_CHARS_MAX:
        raise ValueError(f"endpoint name must be 1..{ENDPOINT_CHARS_MAX} characters")
    existing = conn.execute(sa.select(saf_items.c.id).where(saf_items.c.key == key)).scalar_one_or_none()
    if existing is not None:
        return int(existing)
    raw = encode({k: v for k, v in fields.items() if k != "64"})
    result = conn.execute(
        saf_items.insert().values(
            key=key,
            endpoint=endpoint,
            mti=fields["t"],
            message=raw,
            status=STATUS_PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return int(result.inserted_primary_key[0])


def record_standin(
    conn: Connection,
    *,
    key: str,
    endpoint: str,
    pan: str,
    amount_fen: int,
    auth_code: str,
    outage: str,
    saf_item_id: int,
    now: datetime,
) -> None:
    """Log a stand-in approval (idempotent on ``key``)."""
    now = _check_now(now)
    exists = conn.execute(sa.select(standins.c.id).where(standins.c.key == key)).first()
    if exists is None:
        conn.execute(
            standins.insert().values(
                key=key,
                endpoint=endpoint,
                pan_masked=mask_pan(pan),
                amount_fen=amount_fen,
                auth_code=auth_code,
                outage=outage,
                saf_item_id=saf_item_id,
                created_at=now,
            )
        )


def _row(row: Any) -> QueuedMessage:
    fields, _ = decode(row.message)
    return QueuedMessage(
        id=int(row.id), key=row.key, endpoint=row.endpoint, mti=row.mti, fields=fields,
        attempts=int(row.attempts), status=row.status, next_attempt_at=_utc(row.next_attempt_at),
        response_code=row.response_code,
    )  # fmt: skip


def due(conn: Connection, *, now: datetime, limit: int = DUE_ITEMS_MAX) -> list[QueuedMessage]:
    """Pending items whose next attempt is due, oldest first (per endpoint order = id order)."""
    now = _check_now(now)
    if not 1 <= limit <= DUE_ITEMS_MAX:
        raise ValueError(f"limit must be 1..{DUE_ITEMS_MAX}, got {limit}")
    rows = conn.execute(
        sa.select(saf_items)
        .where(saf_items.c.status == STATUS_PENDING, saf_items.c.next_attempt_at <= now)
        .order_by(saf_items.c.id)
        .limit(limit)
    )
    return [_row(row) for row in rows]


def items(conn: Connection, *, endpoint: str | None = None) -> list[QueuedMessage]:
    """Every stored item (pending and delivered), oldest first — for tests, the CLI and audits."""
    query = sa.select(saf_items).order_by(saf_items.c.id)
    if endpoint is not None:
        query = query.where(saf_items.c.endpoint == endpoint)
    return [_row(row) for row in conn.execute(query)]


def pending_count(conn: Connection) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(saf_items).where(saf_items.c.status == STATUS_PENDING)
        ).scalar_one()
    )


def next_due_at(conn: Connection) -> datetime | None:
    """When the earliest pending item becomes due (None when nothing is pending)."""
    value = conn.execute(
        sa.select(sa.func.min(saf_items.c.next_attempt_at)).where(saf_items.c.status == STATUS_PENDING)
    ).scalar_one_or_none()
    return None if value is None else _utc(value)


def mark_delivered(conn: Connection, item_id: int, *, response_code: str, now: datetime) -> None:
    """The endpoint acknowledged the item (0230/0410 with ``response_code``): it is done."""
    now = _check_now(now)
    conn.execute(
        saf_items.update()
        .where(saf_items.c.id == item_id, saf_items.c.status == STATUS_PENDING)
        .values(status=STATUS_DELIVERED, delivered_at=now, response_code=response_code,
                attempts=saf_items.c.attempts + 1)
    )  # fmt: skip


def mark_failed(conn: Connection, item_id: int, *, error: str, now: datetime) -> datetime:
    """A delivery attempt failed: count it and schedule the next one with backoff; returns when."""
    now = _check_now(now)
    attempts = conn.execute(sa.select(saf_items.c.attempts).where(saf_items.c.id == item_id)).scalar_one()
    next_at = now + timedelta(seconds=backoff_s(int(attempts) + 1))
    conn.execute(
        saf_items.update()
        .where(saf_items.c.id == item_id)
        .values(attempts=int(attempts) + 1, next_attempt_at=next_at, last_error=error[:ERROR_CHARS_MAX])
    )
    return next_at
