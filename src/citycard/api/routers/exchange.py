"""``/v1/exchange``: the sector data exchange over HTTP (issue 6 item 5) — subscribers with their
own cursor and kind filter pull events (``GET /v1/exchange/events``) and acknowledge them.

A sector system's API key (role ``sector``, subject = its sector) reads and acknowledges only
subscribers of its own sector; operators manage subscribers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from citycard.api.auth import Caller, Principal, authorize
from citycard.api.deps import reading
from citycard.api.idempotency import IdempotencyKey, idempotent_write
from citycard.api.roles import Role
from citycard.db import utc_now
from citycard.platform import exchange
from citycard.platform.errors import Forbidden, InvalidInput

router = APIRouter(prefix="/v1/exchange", tags=["exchange"], dependencies=[Depends(authorize)])

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
READ_LIMIT_MAX = 200


class NewSubscriber(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    sector: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    kinds: list[str] | None = Field(default=None, max_length=32, description="event kinds; all if absent")
    from_now: bool = Field(default=False, description="start at the newest event instead of the beginning")


class Ack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscriber: str = Field(pattern=NAME_PATTERN)
    seq: int = Field(ge=0, le=2**63 - 1)


def _own(conn: Any, principal: Principal, subscriber: str) -> dict[str, Any]:
    sub = exchange.get(conn, subscriber)
    if principal.role is Role.sector and sub["sector"] != principal.subject:
        raise Forbidden(
            "exchange.other_sector", f"subscriber {subscriber!r} belongs to sector {sub['sector']!r}"
        )
    return sub


@router.post("/subscribers", name="exchange.subscribe", status_code=201, summary="Register a subscriber")
def subscribe(request: Request, body: NewSubscriber, principal: Caller, key: IdempotencyKey) -> Response:
    return idempotent_write(
        request, principal, key, body.model_dump(),
        lambda conn: exchange.subscribe(conn, name=body.name, sector=body.sector, kinds=body.kinds,
                                        from_now=body.from_now, at=utc_now()),
        status_code=201,
    )  # fmt: skip


@router.get("/events", name="exchange.events", summary="Events for a subscriber after its cursor (or after=)")
def read_events(
    request: Request,
    principal: Caller,
    subscriber: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="default: the key's sector")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="re-read from here; cursor unchanged")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=READ_LIMIT_MAX)] = 100,
) -> dict[str, Any]:
    name = subscriber or (principal.subject if principal.role is Role.sector else None)
    if name is None:
        raise InvalidInput(
            "exchange.subscriber_required", "name the subscriber", fields={"subscriber": "required"}
        )
    with reading(request) as conn:
        sub = _own(conn, principal, name)
        # Events about a cardholder who has not consented to the subscriber's sector are redacted
        # (exchange.consent_view).
        if after is None:
            found = exchange.read_for(conn, name, limit)
        else:
            found = exchange.read_after(conn, name, after, limit)
    items = [event.as_dict() for event in found]
    return {"subscriber": name, "cursor": sub["cursor"], "items": items,
            "next_after": items[-1]["seq"] if items else (after if after is not None else sub["cursor"])}  # fmt: skip


@router.post("/ack", name="exchange.ack", summary="Acknowledge every event up to seq (never backwards)")
def ack(request: Request, body: Ack, principal: Caller, key: IdempotencyKey) -> Response:
    def action(conn: Any) -> dict[str, Any]:
        _own(conn, principal, body.subscriber)
        return {"subscriber": body.subscriber, "cursor": exchange.ack(conn, body.subscriber, body.seq)}

    return idempotent_write(request, principal, key, body.model_dump(), action)
