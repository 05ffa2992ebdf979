"""Cardholders: registration with a validated resident ID number, search, consents (issue 6 item 1).

Functions take a ``Connection`` inside the caller's transaction. The public view (:func:`view`)
shows the ID number masked (first 6, last 4); search by the full number still finds the holder.
Consents record which sector may read what (``scope``) about a cardholder; a revocation keeps the
row (who granted, who revoked, when), so the history stays auditable.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from citycard.db import utc_now
from citycard.platform import events, tables
from citycard.platform.errors import Conflict, InvalidInput, NotFound
from citycard.platform.identity import check_kind, kinds, parse_resident_id

FIND_LIMIT_MAX = 200
QUERY_CHARS_MAX = 64
PHONE_PATTERN = re.compile(r"^\+?[0-9][0-9 -]{4,18}$")
WORD_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]*$")  # sector and scope names

_H = tables.cardholders.c
_C = tables.consents.c


def view(row: Any) -> dict[str, Any]:
    """The public view of a cardholder row (the ID number masked)."""
    kind = kinds().get(row.kind)
    return {
        "id": int(row.id),
        "name": row.name,
        "id_number_masked": row.id_number[:6] + "*" * 8 + row.id_number[-4:],
        "region_code": row.region_code,
        "birth_date": row.birth_date.isoformat(),
        "sex": row.sex,
        "kind": row.kind,
        "concessions": list(kind.concessions) if kind else [],
        "phone": row.phone,
        "address": row.address,
        "photo_ref": row.photo_ref,
        "created_at": row.created_at.isoformat(),
    }


def register(
    conn: Connection,
    *,
    name: str,
    id_number: str,
    kind: str,
    phone: str | None = None,
    address: str | None = None,
    photo_ref: str | None = None,
    actor: str,
) -> dict[str, Any]:
    """Register a cardholder; birth date and sex come from the ID number. Emits ``cardholder.registered``.

    A second registration with the same ID number is a :class:`Conflict` (``cardholder.exists``).
    """
    name = _text("name", name, tables.NAME_CHARS)
    actor = _text("actor", actor, tables.ACTOR_CHARS)
    resident = parse_resident_id(id_number)
    check_kind(kind, resident)
    if phone is not None and (not isinstance(phone, str) or not PHONE_PATTERN.match(phone)):
        raise InvalidInput("cardholder.phone", "phone must be 5..19 digits (+, spaces, - allowed)",
                           fields={"phone": "bad format"})  # fmt: skip
    address = None if address is None else _text("address", address, tables.ADDRESS_CHARS)
    photo_ref = None if photo_ref is None else _text("photo_ref", photo_ref, tables.PHOTO_REF_CHARS)
    existing = conn.execute(select(_H.id).where(_H.id_number == resident.number)).first()
    if existing is not None:
        raise Conflict(
            "cardholder.exists", f"a cardholder with ID number {resident.masked} exists: {existing.id}"
        )
    now = utc_now()
    new_id = conn.execute(
        insert(tables.cardholders)
        .values(
            name=name, id_number=resident.number, region_code=resident.region_code,
            birth_date=resident.birth_date, sex=resident.sex, kind=kind, phone=phone, address=address,
            photo_ref=photo_ref, created_by=actor, created_at=now,
        )
        .returning(_H.id)
    ).scalar_one()  # fmt: skip
    events.emit(
        conn,
        "cardholder.registered",
        cardholder_id=int(new_id),
        payload={"kind": kind, "actor": actor},
        at=now,
    )
    return get(conn, int(new_id))


def get(conn: Connection, cardholder_id: int) -> dict[str, Any]:
    """The public view of one cardholder, or :class:`NotFound`."""
    return view(_row(conn, cardholder_id))


def find(
    conn: Connection, *, query: str | None = None, limit: int = 50, after: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Cardholders by name prefix, full ID number or phone, in id order; ``(items, next_cursor)``.

    ``after`` is the cursor a previous page returned (opaque: the last id as text); ``next_cursor``
    is ``None`` on the last page.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= FIND_LIMIT_MAX:
        raise InvalidInput(
            "page.limit", f"limit must be 1..{FIND_LIMIT_MAX}", fields={"limit": "out of range"}
        )
    start = 0
    if after is not None:
        if not isinstance(after, str) or not after.isascii() or not after.isdigit() or len(after) > 19:
            raise InvalidInput(
                "page.cursor", "the cursor is not one this API returned", fields={"after": "bad"}
            )
        start = int(after)
    statement = select(tables.cardholders).where(_H.id > start).order_by(_H.id).limit(limit + 1)
    if query is not None:
        text = _text("query", query, QUERY_CHARS_MAX)
        conditions = [_H.name.startswith(text, autoescape=True), _H.phone == text]
        if len(text) == 18:
            conditions.append(_H.id_number == text.upper())
        statement = statement.where(or_(*conditions))
    rows = conn.execute(statement).all()
    items = [view(row) for row in rows[:limit]]
    next_cursor = str(items[-1]["id"]) if len(rows) > limit else None
    return items, next_cursor


def grant_consent(
    conn: Connection, cardholder_id: int, *, sector: str, scope: str, actor: str
) -> dict[str, Any]:
    """Let ``sector`` read ``scope`` about the cardholder. Granting an active consent again is a no-op."""
    _row(conn, cardholder_id)
    sector, scope = _word("sector", sector, tables.SECTOR_CHARS), _word("scope", scope, tables.SCOPE_CHARS)
    actor = _text("actor", actor, tables.ACTOR_CHARS)
    active = _active(conn, cardholder_id, sector, scope)
    if active is not None:
        return _consent_view(active)
    conn.execute(
        insert(tables.consents).values(
            cardholder_id=cardholder_id, sector=sector, scope=scope, granted_by=actor, granted_at=utc_now()
        )
    )
    found = _active(conn, cardholder_id, sector, scope)
    assert found is not None
    return _consent_view(found)


def revoke_consent(
    conn: Connection, cardholder_id: int, *, sector: str, scope: str, actor: str
) -> dict[str, Any]:
    """Withdraw an active consent (the row stays, marked revoked); :class:`NotFound` if none is active."""
    _row(conn, cardholder_id)
    sector, scope = _word("sector", sector, tables.SECTOR_CHARS), _word("scope", scope, tables.SCOPE_CHARS)
    actor = _text("actor", actor, tables.ACTOR_CHARS)
    active = _active(conn, cardholder_id, sector, scope)
    if active is None:
        raise NotFound(
            "consent.not_found", f"cardholder {cardholder_id} has no active consent {sector}/{scope}"
        )
    conn.execute(
        update(tables.consents).where(_C.id == active.id).values(revoked_by=actor, revoked_at=utc_now())
    )
    row = conn.execute(select(tables.consents).where(_C.id == active.id)).one()
    return _consent_view(row)


def consents(conn: Connection, cardholder_id: int, *, include_revoked: bool = False) -> list[dict[str, Any]]:
    """The cardholder's consents (active only unless ``include_revoked``), oldest first."""
    _row(conn, cardholder_id)
    statement = select(tables.consents).where(_C.cardholder_id == cardholder_id).order_by(_C.id)
    if not include_revoked:
        statement = statement.where(_C.revoked_at.is_(None))
    return [_consent_view(row) for row in conn.execute(statement)]


def has_consent(conn: Connection, cardholder_id: int, *, sector: str, scope: str) -> bool:
    """True when ``sector`` holds an active consent for ``scope`` (for sector read checks)."""
    return _active(conn, cardholder_id, sector, scope) is not None


# --- helpers -------------------------------------------------------------------------------------


def _row(conn: Connection, cardholder_id: int) -> Any:
    if isinstance(cardholder_id, bool) or not isinstance(cardholder_id, int):
        raise InvalidInput("cardholder.id", f"cardholder id must be an integer, got {cardholder_id!r}")
    row = conn.execute(select(tables.cardholders).where(_H.id == cardholder_id)).first()
    if row is None:
        raise NotFound("cardholder.not_found", f"no cardholder {cardholder_id}")
    return row


def _active(conn: Connection, cardholder_id: int, sector: str, scope: str) -> Any:
    return conn.execute(
        select(tables.consents).where(
            _C.cardholder_id == cardholder_id, _C.sector == sector, _C.scope == scope, _C.revoked_at.is_(None)
        )
    ).first()


def _consent_view(row: Any) -> dict[str, Any]:
    return {
        "id": int(row.id),
        "cardholder_id": int(row.cardholder_id),
        "sector": row.sector,
        "scope": row.scope,
        "granted_by": row.granted_by,
        "granted_at": row.granted_at.isoformat(),
        "revoked_by": row.revoked_by,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def _text(field: str, value: Any, length_max: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(
            f"cardholder.{field}", f"{field} must be a non-empty string", fields={field: "empty"}
        )
    value = value.strip()
    if len(value) > length_max or not value.isprintable():
        raise InvalidInput(
            f"cardholder.{field}", f"{field} must be printable, at most {length_max} characters",
            fields={field: "too long or not printable"},
        )  # fmt: skip
    return value


def _word(field: str, value: Any, length_max: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= length_max or not WORD_PATTERN.match(value):
        raise InvalidInput(
            f"consent.{field}", f"{field} must be a lower-case word (a-z 0-9 _ . -), at most {length_max} characters",
            fields={field: "bad format"},
        )  # fmt: skip
    return value
