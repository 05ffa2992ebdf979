"""``/v1/cardholders``: register, find (paginated), read, their cards, consents (issue 6 item 1)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from citycard.api.auth import Caller, authorize
from citycard.api.deps import check_cardholder, check_sector_consent, reading
from citycard.api.idempotency import IdempotencyKey, idempotent_write
from citycard.api.pagination import Cursor, Limit, decode_cursor, page
from citycard.platform import cardholders

router = APIRouter(prefix="/v1/cardholders", tags=["cardholders"], dependencies=[Depends(authorize)])

NAME_CHARS_MAX = 64
QUERY_CHARS_MAX = 64
SECTOR_PATTERN = r"^[a-z][a-z0-9_-]{1,31}$"
CardholderId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class NewCardholder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    id_number: str = Field(pattern=r"^[0-9]{17}[0-9Xx]$", description="resident ID (GB 11643-1999, 18 chars)")
    kind: str = Field(
        min_length=1, max_length=32, description="cardholder kind, e.g. resident, student, elderly"
    )
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9 -]{5,20}$")
    address: str | None = Field(default=None, max_length=200)
    photo_ref: str | None = Field(default=None, max_length=200)


class Consent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sector: str = Field(pattern=SECTOR_PATTERN)
    scope: str = Field(
        min_length=1, max_length=64, description="what the sector may read, e.g. cards, identity"
    )


@router.post("", name="cardholders.register", status_code=201, summary="Register a cardholder")
def register(request: Request, body: NewCardholder, principal: Caller, key: IdempotencyKey) -> Response:
    return idempotent_write(
        request, principal, key, body.model_dump(mode="json"),
        lambda conn: cardholders.register(conn, **body.model_dump(), actor=principal.actor),
        status_code=201,
    )  # fmt: skip


@router.get("", name="cardholders.find", summary="Find cardholders (name, ID number or PAN); paginated")
def find(
    request: Request,
    limit: Limit = 50,
    cursor: Cursor = None,
    query: Annotated[str | None, Query(min_length=1, max_length=QUERY_CHARS_MAX)] = None,
) -> dict[str, Any]:
    with reading(request) as conn:
        items, after = cardholders.find(conn, query=query, limit=limit, after=decode_cursor(cursor))
    return page(items, after)


@router.get("/{cardholder_id}", name="cardholders.get", summary="One cardholder")
def get(request: Request, cardholder_id: CardholderId, principal: Caller) -> dict[str, Any]:
    check_cardholder(principal, cardholder_id)
    with reading(request) as conn:
        holder = cardholders.get(conn, cardholder_id)
        check_sector_consent(conn, principal, cardholder_id)
    return holder


@router.get("/{cardholder_id}/cards", name="cardholders.cards", summary="A cardholder's cards")
def holder_cards(request: Request, cardholder_id: CardholderId, principal: Caller) -> dict[str, Any]:
    from citycard.platform import cards  # written alongside this router (P1); imported when used

    check_cardholder(principal, cardholder_id)
    with reading(request) as conn:
        cardholders.get(conn, cardholder_id)  # 404 for an unknown cardholder, not an empty list
        return page(cards.list_for_cardholder(conn, cardholder_id), None)


@router.get("/{cardholder_id}/consents", name="cardholders.consents", summary="Consents given to sectors")
def consents(request: Request, cardholder_id: CardholderId, principal: Caller) -> dict[str, Any]:
    check_cardholder(principal, cardholder_id)
    with reading(request) as conn:
        cardholders.get(conn, cardholder_id)
        return page(cardholders.consents(conn, cardholder_id), None)


@router.post("/{cardholder_id}/consents", name="cardholders.grant_consent", status_code=201,
             summary="Consent: a sector may read a scope")  # fmt: skip
def grant_consent(
    request: Request, cardholder_id: CardholderId, body: Consent, principal: Caller, key: IdempotencyKey
) -> Response:
    check_cardholder(principal, cardholder_id)
    return idempotent_write(
        request, principal, key, {"cardholder_id": cardholder_id, **body.model_dump()},
        lambda conn: cardholders.grant_consent(conn, cardholder_id, sector=body.sector, scope=body.scope,
                                               actor=principal.actor),
        status_code=201,
    )  # fmt: skip


@router.delete("/{cardholder_id}/consents/{sector}", name="cardholders.revoke_consent",
               summary="Withdraw a sector's consent")  # fmt: skip
def revoke_consent(
    request: Request,
    cardholder_id: CardholderId,
    sector: Annotated[str, Path(pattern=SECTOR_PATTERN)],
    principal: Caller,
    key: IdempotencyKey,
    scope: Annotated[str, Query(min_length=1, max_length=64, description="the scope to withdraw")],
) -> Response:
    check_cardholder(principal, cardholder_id)
    return idempotent_write(
        request, principal, key, {"cardholder_id": cardholder_id, "sector": sector, "scope": scope},
        lambda conn: cardholders.revoke_consent(conn, cardholder_id, sector=sector, scope=scope,
                                                actor=principal.actor),
    )  # fmt: skip
