"""Idempotency keys on every write (DESIGN §3 Idempotency; issue 6 item 6).

Every POST and DELETE carries ``Idempotency-Key`` (8…128 characters of ``[A-Za-z0-9._:-]``). The
write and the record of its answer commit in ONE transaction: (principal, key, route, SHA-256 of
the canonical request, status, body). A replay by the same principal with the same key and the
same request returns the stored answer byte for byte (``Idempotent-Replayed: true``) and changes
nothing; the same key with a different request is refused with 422 ``idempotency.mismatch``.

Two requests with one key arriving together: on SQLite the write lock orders them, the second sees
the first's record; on PostgreSQL the second's insert hits the unique (principal, key) index, its
whole transaction — the platform change included — rolls back, and it returns the first's answer.

Only successful answers (2xx) are stored. An error changed nothing (its transaction rolled back),
so a retry is simply evaluated again — it may then succeed, e.g. after a conflicting state cleared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Header, Request, Response
from fastapi.encoders import jsonable_encoder
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from citycard.api.auth import Principal
from citycard.api.problems import Unprocessable
from citycard.api.security import body_hash
from citycard.api.tables import idempotency
from citycard.db import read_transaction, utc_now, write_transaction

KEY_PATTERN = r"^[A-Za-z0-9._:-]{8,128}$"
REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str,
    Header(alias="Idempotency-Key", pattern=KEY_PATTERN,
           description="unique per intended write (e.g. a UUID); a replay returns the first answer"),
]  # fmt: skip


def canonical_request(route: str, payload: dict[str, Any]) -> bytes:
    """The bytes hashed to recognise "the same request": route name + sorted JSON of params and body.

    >>> canonical_request("cards.report_loss", {"card_id": 7, "formal": False})
    b'cards.report_loss\\n{"card_id":7,"formal":false}'
    """
    encoded = json.dumps(jsonable_encoder(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{route}\n{encoded}".encode()


def _stored(conn: Connection, principal: Principal, key: str) -> Any:
    return conn.execute(
        sa.select(idempotency).where(idempotency.c.principal == principal.ref, idempotency.c.key == key)
    ).first()


def _replay(row: Any, request_digest: str, key: str) -> Response:
    if row.request_hash != request_digest:
        raise Unprocessable(
            "idempotency.mismatch",
            f"Idempotency-Key {key!r} was used for a different request ({row.route}); use a new key",
        )
    return Response(content=row.body, status_code=row.status_code, media_type="application/json",
                    headers={REPLAYED_HEADER: "true"})  # fmt: skip


def _lock_key(conn: Connection, principal: Principal, key: str) -> None:
    """Serialise requests carrying the same key. SQLite's write transaction already does (BEGIN
    IMMEDIATE); on PostgreSQL two of them would both run the action, and the loser could fail with
    the action's own conflict (e.g. 409 "already registered") instead of replaying the winner's
    answer. A transaction-scoped advisory lock on the key makes the second wait, then replay."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                     {"k": f"idempotency:{principal.ref}:{key}"})  # fmt: skip


def idempotent_write(
    request: Request,
    principal: Principal,
    key: str,
    payload: dict[str, Any],
    action: Callable[[Connection], Any],
    *,
    status_code: int = 200,
    stored_view: Callable[[Any], Any] | None = None,
) -> Response:
    """Run ``action(conn)`` once per (principal, key) and answer with its JSON result.

    ``stored_view`` maps the result to what is kept for replays when the first answer holds a secret
    shown only once (a new API key): the replay then carries the view, never the secret.
    """
    route = getattr(request.scope.get("route"), "name", request.url.path)
    digest = body_hash(canonical_request(route, payload))
    engine = request.app.state.engine
    with read_transaction(engine) as conn:  # fast path for replays: no write lock taken
        row = _stored(conn, principal, key)
    if row is not None:
        return _replay(row, digest, key)
    try:
        with write_transaction(engine) as conn:
            _lock_key(conn, principal, key)
            row = _stored(conn, principal, key)  # again, under the write lock
            if row is not None:
                return _replay(row, digest, key)
            result = action(conn)
            body = json.dumps(jsonable_encoder(result), separators=(",", ":"), ensure_ascii=False)
            kept = (
                body
                if stored_view is None
                else json.dumps(
                    jsonable_encoder(stored_view(result)), separators=(",", ":"), ensure_ascii=False
                )
            )
            conn.execute(idempotency.insert().values(principal=principal.ref, key=key, route=route,
                         request_hash=digest, status_code=status_code, body=kept, created_at=utc_now()))  # fmt: skip
    except IntegrityError:
        # A concurrent request with this key committed first (PostgreSQL): ours rolled back entirely.
        with read_transaction(engine) as conn:
            row = _stored(conn, principal, key)
        if row is None:
            raise
        return _replay(row, digest, key)
    return Response(content=body, status_code=status_code, media_type="application/json")
