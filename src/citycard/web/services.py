"""What the console asks of the layers under it, in one place (DESIGN §2: web imports platform and
the API's auth helpers; nothing imports web).

Logins and sessions go through ``citycard.api.auth`` (the same scrypt logins and bearer tokens as
the HTTP API), cardholders and cards through ``citycard.platform`` (cardholders, cards), blacklists
through ``citycard.platform.blacklist``. Each function opens ONE transaction on the app's engine —
a read-only one for pages, a write transaction for an action, so a lifecycle change, its audit row
and its events commit together or not at all — and is blocking: the routes call it in a worker
thread (``run_in_threadpool``) so scrypt, the database and personalisation never stall the event loop.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from sqlalchemy import Connection, Engine, select

from citycard.api import auth
from citycard.api.auth import Principal
from citycard.api.problems import Unauthorized
from citycard.api.settings import TOKEN_TTL_S
from citycard.db import read_transaction, write_transaction
from citycard.platform import cardholders, cards
from citycard.platform import tables as platform_tables
from citycard.platform.errors import InvalidInput, NotFound

__all__ = ["Principal"]

SEARCH_PAGE_SIZE = 50  # cardholders per result page
TIMELINE_EVENTS_MAX = 500  # a card's page shows its newest events up to this many
AUDIT_ROWS_MAX = 100  # newest audit rows on a card's page; the full trail is in the database
PAN_DIGITS_MIN = 12  # a query of 12–19 digits is a card number (pboc-notes: PAN n..19)
PAN_DIGITS_MAX = 19
ID_NUMBER_CHARS = 18  # GB 11643-1999: an 18-digit query is an ID number, not a PAN
BLACKLIST_VERSIONS_SHOWN = 5  # newest versions per terminal class on the blacklist page
STALE_TERMINALS_SHOWN = 200  # the worst first; the full list is in the API

# Console action (URL segment) → the platform actions (lifecycle.TRANSITIONS) that enable its button.
# The card view lists the actions its state allows; the platform still decides on every POST.
CONSOLE_ACTIONS: dict[str, tuple[str, ...]] = {
    "activate": ("activate",),
    "report-loss": ("report_loss_oral", "report_loss_formal"),
    "unblock": ("unblock",),
    "replace": ("replace",),
    "cancel": ("cancel",),
}


@dataclass(frozen=True)
class LoginSession:
    """A successful login: the bearer token (it goes into the cookie only) and the user's role."""

    token: str
    expires_at: datetime
    username: str
    role: str


@dataclass(frozen=True)
class Outcome:
    """What a lifecycle action produced besides the state change."""

    new_card_id: int | None = None
    refund_fen: int | None = None


def engine(request: Request) -> Engine:
    return request.app.state.engine


# --- sessions (citycard.api.auth) --------------------------------------------------------------------


def login(request: Request, username: str, password: str) -> LoginSession | None:
    """A bearer token for a good user name and password, ``None`` otherwise (never says which was wrong)."""
    settings = getattr(request.app.state, "settings", None)
    ttl_s = getattr(settings, "token_ttl_s", TOKEN_TTL_S)
    try:
        with write_transaction(engine(request)) as conn:
            answer = auth.login(conn, username=username, password=password, ttl_s=ttl_s)
    except Unauthorized:
        return None
    return LoginSession(
        token=answer["token"],
        expires_at=answer["expires_at"],
        username=answer["username"],
        role=answer["role"],
    )


async def principal_for_token(request: Request, token: str) -> Principal | None:
    """The principal behind a bearer token (the API's resolver and its cache), or ``None`` when the
    token is unknown, expired or revoked."""
    try:
        return await auth.resolve(request, token=token, api_key=None)
    except Unauthorized:
        return None


def logout(request: Request, token: str) -> None:
    """Revoke the token, and forget the cached credentials so it stops working at once here."""
    with write_transaction(engine(request)) as conn:
        auth.logout(conn, token)
    cache = getattr(request.app.state, "credential_cache", None)
    if cache is not None:
        cache.clear()


# --- cardholders and cards (citycard.platform) -------------------------------------------------------


def _looks_like_pan(query: str) -> bool:
    return (
        query.isascii()
        and query.isdigit()
        and PAN_DIGITS_MIN <= len(query) <= PAN_DIGITS_MAX
        and len(query) != ID_NUMBER_CHARS
    )


def find_cardholders(
    request: Request, query: str, *, after: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Cardholders by name prefix, full resident ID number or phone (the platform's search), or by
    card number (PAN, any PSN)."""
    with read_transaction(engine(request)) as conn:
        if _looks_like_pan(query):
            ids = _cardholder_ids_by_pan(conn, query)
            return [cardholders.get(conn, holder_id) for holder_id in ids], None
        return cardholders.find(conn, query=query, limit=SEARCH_PAGE_SIZE, after=after)


def _cardholder_ids_by_pan(conn: Connection, pan: str) -> list[int]:
    """Holders of any card with this PAN (every PSN).

    The platform offers ``cards.by_pan(pan, psn)`` only, and an operator at the desk rarely knows
    the PSN, so this one read goes to ``platform_cards`` directly (read-only; the (pan, psn) unique
    index serves it).
    """
    c = platform_tables.cards.c
    rows = conn.execute(
        select(c.cardholder_id)
        .where(c.pan == pan)
        .distinct()
        .order_by(c.cardholder_id)
        .limit(SEARCH_PAGE_SIZE)
    )
    return [int(row.cardholder_id) for row in rows]


def cardholder_with_cards(
    request: Request, cardholder_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cardholder's public view and their cards, newest first (:class:`NotFound` if absent)."""
    with read_transaction(engine(request)) as conn:
        return cardholders.get(conn, cardholder_id), cards.list_for_cardholder(conn, cardholder_id)


@dataclass(frozen=True)
class CardPage:
    """Everything the card page shows, read in one snapshot."""

    card: dict[str, Any]
    holder: dict[str, Any]
    timeline: list[dict[str, Any]]  # newest first
    applications: list[dict[str, Any]] | None  # None: the applications package is not installed
    audit: list[dict[str, Any]]  # newest first


def card_page(request: Request, card_id: int) -> CardPage:
    """The card, its holder, its events across every sector, the sector applications loaded on it
    and its audit trail (who changed its state, when, why) — one read transaction."""
    with read_transaction(engine(request)) as conn:
        card = cards.get(conn, card_id)
        holder = cardholders.get(conn, card["cardholder_id"])
        events = cards.timeline(conn, card_id)
        audit = cards.audit_trail(conn, card_id)
        loaded = _applications_on(conn, card_id)
    events.sort(key=lambda e: e["seq"], reverse=True)
    return CardPage(
        card=card, holder=holder, timeline=events[:TIMELINE_EVENTS_MAX], applications=loaded,
        audit=list(reversed(audit))[:AUDIT_ROWS_MAX],
    )  # fmt: skip


def _applications_on(conn: Connection, card_id: int) -> list[dict[str, Any]] | None:
    try:
        applications = importlib.import_module("citycard.platform.applications")
    except ModuleNotFoundError:
        return None
    return applications.on_card(conn, card_id)


def actions_for(card_view: dict[str, Any]) -> list[dict[str, Any]]:
    """The console's buttons for a card: ``{"name", "formal_choice", "formal_only"}`` each.

    A loss report offers the oral/formal choice when both are allowed; from ``lost_oral`` only the
    formal report remains (口头挂失 first, then 正式挂失 with the holder's ID).
    """
    allowed = set(card_view.get("actions") or ())
    buttons = []
    for name, platform_actions in CONSOLE_ACTIONS.items():
        enabled = [a for a in platform_actions if a in allowed]
        if not enabled:
            continue
        buttons.append(
            {
                "name": name,
                "formal_choice": len(enabled) == 2,
                "formal_only": enabled == ["report_loss_formal"],
            }
        )
    return buttons


def perform(request: Request, card_id: int, action: str, *, formal: bool, actor: str) -> Outcome:
    """One lifecycle action through the platform, in one write transaction (all or nothing)."""
    if action not in CONSOLE_ACTIONS:
        raise InvalidInput("console.unknown_action", f"unknown action {action!r}")
    state = request.app.state
    with write_transaction(engine(request)) as conn:
        if action == "activate":
            cards.activate(conn, card_id, actor=actor)
        elif action == "report-loss":
            cards.report_loss(conn, card_id, formal=formal, actor=actor)
        elif action == "unblock":
            cards.unblock(conn, card_id, actor=actor)
        elif action == "replace":
            new_card = cards.replace(conn, card_id, hsm=state.hsm, image_dir=_image_dir(request), actor=actor)
            return Outcome(new_card_id=int(new_card["id"]))
        elif action == "cancel":
            return Outcome(refund_fen=int(cards.cancel(conn, card_id, actor=actor)))
    return Outcome()


def _image_dir(request: Request) -> Path:
    settings = getattr(request.app.state, "settings", None)
    image_dir = getattr(settings, "image_dir", None)
    if image_dir is None:
        raise NotFound("console.no_image_dir", "this server has no card image directory configured")
    return Path(image_dir)


# --- blacklists (citycard.platform.blacklist) --------------------------------------------------------


def blacklist_overview(request: Request, *, now: datetime) -> dict[str, list[dict[str, Any]]] | None:
    """Recent list versions of every terminal class and the stale terminals (behind or silent), or
    ``None`` when the blacklist package is not installed."""
    try:
        blacklist = importlib.import_module("citycard.platform.blacklist")
    except ModuleNotFoundError:
        return None
    versions: list[dict[str, Any]] = []
    with read_transaction(engine(request)) as conn:
        for terminal_class in blacklist.classes():
            versions.extend(
                blacklist.versions(conn, terminal_class=terminal_class, limit=BLACKLIST_VERSIONS_SHOWN)
            )
        stale = blacklist.stale(conn, now=now)[:STALE_TERMINALS_SHOWN]
    return {
        "versions": versions,
        "stale": [{**row, "latest": row["version"] + row["versions_behind"]} for row in stale],
    }
