"""Small helpers the routers share: the app's engine/HSM/settings, read transactions, and the
cardholder-role visibility rule (a cardholder sees only their own records)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from sqlalchemy import Connection

from citycard.api.auth import Principal
from citycard.api.roles import Role
from citycard.api.settings import ApiSettings
from citycard.db import read_transaction
from citycard.platform.errors import Forbidden, NotFound


def settings(request: Request) -> ApiSettings:
    return request.app.state.settings


@contextmanager
def reading(request: Request) -> Iterator[Connection]:
    """A read-only transaction on the app's engine."""
    with read_transaction(request.app.state.engine) as conn:
        yield conn


def check_cardholder(principal: Principal, cardholder_id: int, *, what: str = "cardholder") -> None:
    """A cardholder may only see their own records; anything else looks absent (404), so a
    cardholder cannot learn by probing which ids exist."""
    if principal.role is Role.cardholder and principal.cardholder_id != cardholder_id:
        raise NotFound(f"{what}.not_found", f"no {what} {cardholder_id}")


def check_card(principal: Principal, card: dict[str, Any]) -> dict[str, Any]:
    """``card`` when the principal may see it; 404 ``card.not_found`` for another cardholder's card."""
    if principal.role is Role.cardholder and principal.cardholder_id != card.get("cardholder_id"):
        raise NotFound("card.not_found", f"no card {card.get('id')}")
    return card


def check_sector_consent(conn: Connection, principal: Principal, cardholder_id: int) -> None:
    """A sector system reads a cardholder (and their cards) only with that cardholder's consent for
    its sector (issue 6 item 1: consent records say which sector may read what)."""
    if principal.role is not Role.sector:
        return
    from citycard.platform import cardholders

    granted = {c.get("sector") for c in cardholders.consents(conn, cardholder_id) if not c.get("revoked_at")}
    if principal.subject not in granted:
        raise Forbidden("consent.missing",
                        f"cardholder {cardholder_id} has not consented to sector {principal.subject!r}")  # fmt: skip
