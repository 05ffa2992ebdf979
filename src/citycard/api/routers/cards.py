"""``/v1/cards``: apply, read, status, timeline, and every lifecycle action as
``POST /v1/cards/{id}/<action>`` (issue 6 item 2; the state machine is citycard.platform.cards).

A loss report is one call: the platform blocks the card at the issuer, records the report minute
and emits ``card.lost`` in the same transaction (outbox); blacklists and sector subscribers follow
from that event.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from citycard.api.auth import Caller, Principal, authorize
from citycard.api.deps import check_card, check_sector_consent, reading
from citycard.api.idempotency import IdempotencyKey, idempotent_write
from citycard.api.pagination import page
from citycard.api.roles import Role
from citycard.platform import cards
from citycard.platform.errors import NotFound
from citycard.platform.tables import cards as card_table

router = APIRouter(prefix="/v1/cards", tags=["cards"], dependencies=[Depends(authorize)])

CardId = Annotated[int, Path(ge=1, le=2**63 - 1)]
PROFILE_PATTERN = r"^[a-z0-9][a-z0-9-]{1,63}$"
TIMELINE_LIMIT_MAX = 200


class CardApplication(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cardholder_id: int = Field(ge=1, le=2**63 - 1)
    profile: str = Field(
        default="citizen-card-gm", pattern=PROFILE_PATTERN, description="card profile (data/profiles)"
    )
    issuer: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{1,31}$",
                               description="issuer (data/hosts/issuers.toml); the platform default if absent")  # fmt: skip


REASON_CHARS_MAX = 200


class NoBody(BaseModel):
    """An action's optional body: the reason written in the audit row (or no body at all)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=REASON_CHARS_MAX, description="why (kept in the audit trail)")


class LossReport(NoBody):
    formal: bool = Field(
        default=False, description="false: oral report (挂失, temporary); true: formal (正式挂失)"
    )
    at: AwareDatetime | None = Field(default=None, description="the report minute; now if absent")


# The status read's statement: only the five columns it needs (the full card view masks the PAN,
# formats six dates and lists the allowed actions), one named parameter. Compiled once per dialect
# by _status_sql and run on a pooled DBAPI connection (see _status_row).
_STATUS_READ = (
    sa.select(card_table.c.id, card_table.c.cardholder_id, card_table.c.state, card_table.c.dormant,
              card_table.c.lost_at)
    .where(card_table.c.id == sa.bindparam("card_id"))
)  # fmt: skip
_STATUS_SQL: dict[tuple[str, str], tuple[str, bool, Callable[[Any], Any] | None]] = {}


def _status_sql(dialect: Any) -> tuple[str, bool, Callable[[Any], Any] | None]:
    """(SQL text, positional?, lost_at's result processor) of the status read for ``dialect``.

    >>> from sqlalchemy.dialects import sqlite
    >>> sql, positional, _ = _status_sql(sqlite.dialect())
    >>> sql.split()[-3:], positional
    (['platform_cards.id', '=', '?'], True)
    """
    key = (dialect.name, dialect.driver)
    found = _STATUS_SQL.get(key)
    if found is None:
        compiled = _STATUS_READ.compile(dialect=dialect)
        # lost_at is UTCDateTime: its processor (the dialect's and then ours) makes it aware UTC,
        # exactly as a Connection.execute would.
        lost_at = card_table.c.lost_at.type.dialect_impl(dialect).result_processor(dialect, None)
        found = _STATUS_SQL[key] = (str(compiled), bool(compiled.positional), lost_at)
    return found


def _status_row(engine: Any, card_id: int) -> tuple[int, int, str, bool, Any] | None:
    """(id, cardholder_id, state, dormant, lost_at) of the card, or None; one SELECT, no transaction.

    A single SELECT is atomic on its own on both backends (SQLite autocommit mode takes and drops its
    read snapshot around it; PostgreSQL gives the statement one snapshot), so the BEGIN … ROLLBACK of
    a read_transaction and the Connection's event and compile-cache machinery around it buy nothing
    here — and cost about as much as the read itself. The pool still checks the connection out
    (pre-ping where configured) and resets it when it is returned.
    """
    sql, positional, lost_at = _status_sql(engine.dialect)
    dbapi_connection = engine.raw_connection()
    # psycopg would wrap the SELECT in BEGIN … ROLLBACK: two more round trips to the server. In
    # autocommit the statement runs alone, as on SQLite (whose pysqlite connections the engine keeps
    # in autocommit: db/engine.py). Put back before the connection returns to the pool.
    driver = dbapi_connection.driver_connection  # the pool's proxy passes reads on, not assignments
    switch = engine.dialect.name == "postgresql" and not driver.autocommit
    try:
        if switch:
            driver.autocommit = True
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql, (card_id,) if positional else {"card_id": card_id})
            row = cursor.fetchone()
        finally:
            cursor.close()
    finally:
        if switch:
            try:
                driver.autocommit = False
            except engine.dialect.loaded_dbapi.Error:
                # A connection that cannot be put back as it was (server gone) must not be reused:
                # a later write transaction would commit statement by statement.
                dbapi_connection.invalidate()
        dbapi_connection.close()  # back to the pool
    if row is None:
        return None
    return int(row[0]), int(row[1]), row[2], bool(row[3]), lost_at(row[4]) if lost_at else row[4]


class CardStatus(BaseModel):
    id: int
    state: str
    dormant: bool
    lost_at: str | None = Field(description="the loss report minute (ISO 8601 UTC), if reported")


def _card_for(conn: Any, principal: Principal, card_id: int) -> dict[str, Any]:
    card = check_card(principal, cards.get(conn, card_id))
    check_sector_consent(conn, principal, card["cardholder_id"])
    return card


def _platform_call(function: Callable[..., Any], conn: Any, card_id: int, request: Request, principal: Principal,
                   **given: Any) -> Any:  # fmt: skip
    """Call a lifecycle function with the keyword arguments it declares among hsm, image_dir, actor."""
    state = request.app.state
    offered = {
        "hsm": state.hsm,
        "image_dir": FsPath(state.settings.image_dir),
        "actor": principal.actor,
        **given,
    }
    accepted = inspect.signature(function).parameters
    return function(conn, card_id, **{k: v for k, v in offered.items() if k in accepted})


def _reason(body: NoBody | None) -> dict[str, Any]:
    return {"reason": body.reason} if body is not None and body.reason else {}


def _lifecycle(request: Request, principal: Principal, key: str, card_id: int, function: Callable[..., Any],
               payload: dict[str, Any] | None = None, **given: Any) -> Response:  # fmt: skip
    def action(conn: Any) -> Any:
        _card_for(conn, principal, card_id)  # 404 for a card the caller may not see
        result = _platform_call(function, conn, card_id, request, principal, **given)
        if function is cards.cancel:  # returns the refund in fen
            return {"card": cards.get(conn, card_id), "refund_fen": result}
        return result

    payload = {
        "card_id": card_id,
        **(payload or {}),
        **({"reason": given["reason"]} if "reason" in given else {}),
    }
    return idempotent_write(request, principal, key, payload, action)


@router.post("", name="cards.apply", status_code=201, summary="Apply for a card for a cardholder")
def apply(request: Request, body: CardApplication, principal: Caller, key: IdempotencyKey) -> Response:
    issuer = body.issuer or request.app.state.settings.issuer
    return idempotent_write(
        request, principal, key, body.model_dump() | {"issuer": issuer},
        lambda conn: cards.apply(conn, body.cardholder_id, profile=body.profile, issuer=issuer,
                                 actor=principal.actor),
        status_code=201,
    )  # fmt: skip


@router.get("/{card_id}", name="cards.get", summary="One card")
def get(request: Request, card_id: CardId, principal: Caller) -> dict[str, Any]:
    with reading(request) as conn:
        return _card_for(conn, principal, card_id)


@router.get("/{card_id}/status", name="cards.status", summary="A card's state (terminals, banks, sectors)",
            response_model=CardStatus)  # fmt: skip
async def status(request: Request, card_id: CardId) -> Response:
    # The hot read (terminals; `citycard bench api`): one primary-key read run on the event loop, and
    # the JSON written directly — a worker-thread hop and the response-model pass cost more than the
    # read itself (docs/api.md, Performance).
    principal = request.state.principal  # set by the router's authorize (one dependency tree, not two)
    row = _status_row(request.app.state.engine, card_id)
    if row is None:
        raise NotFound("card.not_found", f"no card {card_id}")  # as cards.get says it
    found_id, cardholder_id, state, dormant, lost_at = row
    # The same visibility rules as every other card read: a cardholder sees only their own cards
    # (404 otherwise), a sector only consenting cardholders' (403 consent.missing).
    check_card(principal, {"id": found_id, "cardholder_id": cardholder_id})
    if principal.role is Role.sector:
        with reading(request) as conn:
            check_sector_consent(conn, principal, cardholder_id)
    # json.dumps of four values (lost_at as cards.view formats it), no response-model pass.
    body = {"id": found_id, "state": state, "dormant": dormant,
            "lost_at": lost_at.isoformat() if lost_at else None}  # fmt: skip
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


@router.get("/{card_id}/timeline", name="cards.timeline", summary="A card's events across all sectors")
def timeline(request: Request, card_id: CardId, principal: Caller) -> dict[str, Any]:
    with reading(request) as conn:
        _card_for(conn, principal, card_id)
        return page(cards.timeline(conn, card_id), None)


# The lifecycle actions without a body of their own: (path and name, summary, platform function).
SIMPLE_ACTIONS: tuple[tuple[str, str, Callable[..., Any]], ...] = (
    ("approve", "Approve an application", cards.approve),
    ("prepare", "Data preparation (PAN/PSN, keys in the HSM)", cards.prepare),
    ("personalise", "Personalise a virtual card image", cards.personalise),
    ("issue", "Issue: enrol the card at the issuer", cards.issue),
    ("activate", "Activate an issued card", cards.activate),
    ("unblock", "Lift an oral loss report", cards.unblock),
    (
        "replace",
        "Replace: a new card, the EC balance moved exactly once, applications reloaded",
        cards.replace,
    ),
    ("cancel", "Cancel and refund (balance + deposit)", cards.cancel),
)


def _simple_action(action: Callable[..., Any]) -> Callable[..., Response]:
    def endpoint(request: Request, card_id: CardId, principal: Caller, key: IdempotencyKey,
                 body: NoBody | None = None) -> Response:  # fmt: skip
        return _lifecycle(request, principal, key, card_id, action, **_reason(body))

    return endpoint


for _path, _summary, _action in SIMPLE_ACTIONS:
    router.post(f"/{{card_id}}/{_path}", name=f"cards.{_path}", summary=_summary)(_simple_action(_action))


@router.post("/{card_id}/report-loss", name="cards.report_loss",
             summary="Loss report: blocks the card at the issuer, blacklists it, tells every sector")  # fmt: skip
def report_loss(request: Request, card_id: CardId, principal: Caller, key: IdempotencyKey,
                body: LossReport | None = None) -> Response:  # fmt: skip
    body = body or LossReport()
    given: dict[str, Any] = {"formal": body.formal, **_reason(body)}
    if body.at is not None:
        given["at"] = body.at
    return _lifecycle(
        request, principal, key, card_id, cards.report_loss, body.model_dump(mode="json"), **given
    )


@router.get("", name="cards.by_pan", summary="Find a card by PAN and PSN")
def by_pan(
    request: Request,
    principal: Caller,
    pan: Annotated[str, Query(pattern=r"^[0-9]{12,19}$")],
    psn: Annotated[int, Query(ge=0, le=99)] = 1,
) -> dict[str, Any]:
    with reading(request) as conn:
        return _card_for(conn, principal, cards.by_pan(conn, pan, psn)["id"])
