"""``/v1/blacklist``: full lists and deltas per terminal class (binary, ready for the kernel's
exception file), publishing, terminals' version reports and stale terminals (issue 6 item 4).

Binary answers are ``application/octet-stream`` with the version and the SHA-256 of the list body
in headers (``X-Blacklist-Version``, ``X-Blacklist-SHA256``), so a terminal checks what it loads.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from citycard.api.auth import Caller, authorize
from citycard.api.deps import reading
from citycard.api.idempotency import IdempotencyKey, idempotent_write
from citycard.api.pagination import page
from citycard.api.roles import Role
from citycard.db import utc_now
from citycard.platform import blacklist
from citycard.platform.errors import Forbidden

router = APIRouter(prefix="/v1", tags=["blacklist"], dependencies=[Depends(authorize)])

TerminalClass = StrEnum("TerminalClass", {name: name for name in blacklist.TERMINAL_CLASSES})  # type: ignore[misc]
Version = Annotated[int, Query(ge=0, le=2**31 - 1)]
BINARY = "application/octet-stream"
VERSIONS_LIMIT_MAX = 200


class VersionReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terminal_class: TerminalClass
    version: int = Field(ge=0, le=2**31 - 1)


def _binary(data: bytes, *, version: int, sha256_hex: str) -> Response:
    return Response(content=data, media_type=BINARY,
                    headers={"X-Blacklist-Version": str(version), "X-Blacklist-SHA256": sha256_hex})  # fmt: skip


@router.get("/blacklist/{terminal_class}", name="blacklist.full",
            summary="The full list (kernel exception file) at a version (default the latest)",
            response_class=Response, responses={200: {"content": {BINARY: {}}}})  # fmt: skip
def full(request: Request, terminal_class: TerminalClass, version: Version | None = None) -> Response:
    with reading(request) as conn:
        listing = blacklist.full_list(conn, terminal_class=terminal_class.value, version=version)
    return _binary(listing.to_bytes(), version=listing.version, sha256_hex=listing.body_sha256.hex().upper())


@router.get("/blacklist/{terminal_class}/delta", name="blacklist.delta",
            summary="Adds and removes from the version a terminal holds to the latest (or to_version)",
            response_class=Response, responses={200: {"content": {BINARY: {}}}})  # fmt: skip
def delta(request: Request, terminal_class: TerminalClass, from_version: Version,
          to_version: Version | None = None) -> Response:  # fmt: skip
    with reading(request) as conn:
        data = blacklist.delta(conn, terminal_class=terminal_class.value, from_version=from_version,
                               to_version=to_version)  # fmt: skip
        target = blacklist.version_info(conn, terminal_class=terminal_class.value, version=to_version)
    return _binary(data, version=target["version"], sha256_hex=target["body_sha256"])


@router.get(
    "/blacklist/{terminal_class}/versions",
    name="blacklist.versions",
    summary="Published versions, newest first",
)
def versions(
    request: Request, terminal_class: TerminalClass,
    limit: Annotated[int, Query(ge=1, le=VERSIONS_LIMIT_MAX)] = 20,
) -> dict[str, Any]:  # fmt: skip
    with reading(request) as conn:
        return page(blacklist.versions(conn, terminal_class=terminal_class.value, limit=limit), None)


@router.post("/blacklist/{terminal_class}/publish", name="blacklist.publish",
             summary="Publish the list as it stands now (a no-op when nothing changed)")  # fmt: skip
def publish(
    request: Request, terminal_class: TerminalClass, principal: Caller, key: IdempotencyKey
) -> Response:
    def action(conn: Any) -> dict[str, Any]:
        version = blacklist.publish(
            conn, terminal_class=terminal_class.value, actor=principal.actor, at=utc_now()
        )
        return {"terminal_class": terminal_class.value, "version": version}

    return idempotent_write(request, principal, key, {"terminal_class": terminal_class.value}, action)


@router.post("/terminals/{terminal_id}/blacklist-version", name="blacklist.report_version",
             summary="A terminal reports the list version it holds")  # fmt: skip
def report_version(
    request: Request,
    terminal_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,32}$")],
    body: VersionReport,
    principal: Caller,
    key: IdempotencyKey,
) -> Response:
    if principal.role is Role.terminal and principal.subject != terminal_id:
        raise Forbidden(
            "auth.other_terminal", f"this key belongs to terminal {principal.subject}, not {terminal_id}"
        )
    return idempotent_write(
        request, principal, key, {"terminal_id": terminal_id, **body.model_dump(mode="json")},
        lambda conn: blacklist.report_version(conn, terminal_id, body.terminal_class.value, body.version, utc_now()),
    )  # fmt: skip


@router.get("/blacklist-stale", name="blacklist.stale", summary="Terminals behind the latest list or silent")
def stale(request: Request) -> dict[str, Any]:
    with reading(request) as conn:
        return page(blacklist.stale(conn, now=utc_now()), None)
