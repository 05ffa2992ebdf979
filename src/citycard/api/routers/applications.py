"""``/v1/applications`` and ``/v1/cards/{id}/applications``: the catalogue of sector applications
and loading/unloading them onto issued cards — really on the (virtual) card, through PBOC Part 14
APPEND RECORD with MAC (issue 6 item 3; citycard.platform.applications).

A sector system (role ``sector``) loads and unloads only its own sector's applications.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from citycard.api.auth import Caller, Principal, authorize
from citycard.api.deps import check_card, check_sector_consent, reading
from citycard.api.idempotency import IdempotencyKey, idempotent_write
from citycard.api.pagination import page
from citycard.api.roles import Role
from citycard.platform import applications, cards
from citycard.platform.errors import Forbidden

router = APIRouter(prefix="/v1", tags=["applications"], dependencies=[Depends(authorize)])

CardId = Annotated[int, Path(ge=1, le=2**63 - 1)]
APP_ID_PATTERN = r"^[a-z][a-z0-9_-]{1,31}$"
DATA_FIELDS_MAX = 64


class Load(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app_id: str = Field(pattern=APP_ID_PATTERN, description="an id from GET /v1/applications")
    data: dict[str, str | int] = Field(default_factory=dict, max_length=DATA_FIELDS_MAX,
                                       description="field values of the application's record layout")  # fmt: skip


def _sector_owns(principal: Principal, app_id: str) -> None:
    if principal.role is Role.sector:
        app = applications.get_application(app_id)
        if app.sector != principal.subject:
            raise Forbidden("application.other_sector", f"{app_id} belongs to sector {app.sector!r}")


def _visible_card(conn: Any, principal: Principal, card_id: int) -> dict[str, Any]:
    card = check_card(principal, cards.get(conn, card_id))
    check_sector_consent(conn, principal, card["cardholder_id"])
    return card


@router.get("/applications", name="applications.catalogue", summary="The catalogue of sector applications")
def catalogue() -> dict[str, Any]:
    return page(applications.catalogue_entries(), None)


@router.get("/cards/{card_id}/applications", name="applications.on_card", summary="Applications on a card")
def on_card(request: Request, card_id: CardId, principal: Caller) -> dict[str, Any]:
    with reading(request) as conn:
        _visible_card(conn, principal, card_id)
        return page(applications.on_card(conn, card_id), None)


@router.post("/cards/{card_id}/applications", name="applications.load", status_code=201,
             summary="Load an application onto the card (APPEND RECORD with MAC on the card)")  # fmt: skip
def load(request: Request, card_id: CardId, body: Load, principal: Caller, key: IdempotencyKey) -> Response:
    _sector_owns(principal, body.app_id)

    def action(conn: Any) -> dict[str, Any]:
        _visible_card(conn, principal, card_id)
        return applications.load(conn, card_id, body.app_id, hsm=request.app.state.hsm, data=body.data,
                                 actor=principal.actor)  # fmt: skip

    return idempotent_write(request, principal, key, {"card_id": card_id, **body.model_dump()}, action,
                            status_code=201)  # fmt: skip


@router.delete("/cards/{card_id}/applications/{app_id}", name="applications.unload",
               summary="Unload an application (its record marked invalid on the card)")  # fmt: skip
def unload(
    request: Request,
    card_id: CardId,
    app_id: Annotated[str, Path(pattern=APP_ID_PATTERN)],
    principal: Caller,
    key: IdempotencyKey,
) -> Response:
    _sector_owns(principal, app_id)

    def action(conn: Any) -> dict[str, Any]:
        _visible_card(conn, principal, card_id)
        return applications.unload(conn, card_id, app_id, hsm=request.app.state.hsm, actor=principal.actor)

    return idempotent_write(request, principal, key, {"card_id": card_id, "app_id": app_id}, action)
