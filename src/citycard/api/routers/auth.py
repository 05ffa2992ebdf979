"""``/v1/auth``: login/logout for users, the caller's identity, users and API keys (operators)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from citycard.api import auth
from citycard.api.auth import KEY_NAME_PATTERN, USERNAME_PATTERN, Caller, authorize
from citycard.api.deps import reading, settings
from citycard.api.idempotency import IdempotencyKey, idempotent_write
from citycard.api.roles import Role
from citycard.api.security import PASSWORD_CHARS_MAX, PASSWORD_CHARS_MIN
from citycard.db import write_transaction

router = APIRouter(prefix="/v1/auth", tags=["auth"], dependencies=[Depends(authorize)])


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=1, max_length=PASSWORD_CHARS_MAX)


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=PASSWORD_CHARS_MIN, max_length=PASSWORD_CHARS_MAX)
    role: Role
    cardholder_id: int | None = Field(default=None, ge=1)


class NewApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=KEY_NAME_PATTERN)
    role: Role
    subject: str | None = Field(default=None, min_length=1, max_length=64,
                                description="sector name (sector keys) or terminal id (terminal keys)")  # fmt: skip


@router.post("/login", name="auth.login", summary="Log in: a bearer token for a user")
def login_route(request: Request, body: Login) -> dict[str, Any]:
    # No Idempotency-Key: a login changes no platform state, and its answer (a token) must not be
    # stored for replay. Each login is a new session.
    with write_transaction(request.app.state.engine) as conn:
        return auth.login(conn, username=body.username, password=body.password,
                          ttl_s=settings(request).token_ttl_s)  # fmt: skip


@router.post("/logout", name="auth.logout", status_code=204, summary="Revoke the caller's bearer token")
def logout_route(request: Request, principal: Caller) -> Response:
    # Idempotent by nature (revoking twice is revoking once), so it needs no key either.
    header = request.headers.get("authorization", "")
    if principal.ref.startswith("user:") and header.lower().startswith("bearer "):
        with write_transaction(request.app.state.engine) as conn:
            auth.logout(conn, header[7:].strip())
        request.app.state.credential_cache.clear()
    return Response(status_code=204)


@router.get("/me", name="auth.me", summary="Who am I")
def me_route(principal: Caller) -> dict[str, Any]:
    return {"ref": principal.ref, "name": principal.name, "role": principal.role.value,
            "cardholder_id": principal.cardholder_id, "subject": principal.subject}  # fmt: skip


@router.post("/users", name="auth.create_user", status_code=201, summary="Create a login (operator only)")
def create_user_route(request: Request, body: NewUser, principal: Caller, key: IdempotencyKey) -> Response:
    return idempotent_write(
        request, principal, key, body.model_dump(mode="json") | {"password": "<hashed>"},
        lambda conn: auth.create_user(conn, username=body.username, password=body.password, role=body.role,
                                      cardholder_id=body.cardholder_id),
        status_code=201,
    )  # fmt: skip


@router.post("/api-keys", name="auth.create_api_key", status_code=201,
             summary="Create an API key (shown once)")  # fmt: skip
def create_api_key_route(
    request: Request, body: NewApiKey, principal: Caller, key: IdempotencyKey
) -> Response:
    return idempotent_write(
        request, principal, key, body.model_dump(mode="json"),
        lambda conn: auth.create_api_key(conn, name=body.name, role=body.role, subject=body.subject),
        status_code=201,
        # A replay must not hand out the secret again: the stored answer carries key = null.
        stored_view=lambda result: result | {"key": None},
    )  # fmt: skip


@router.get("/api-keys", name="auth.list_api_keys", summary="List API keys (prefixes, never secrets)")
def list_api_keys_route(request: Request) -> dict[str, Any]:
    with reading(request) as conn:
        return {"items": auth.list_api_keys(conn), "next_cursor": None}


@router.delete("/api-keys/{key_id}", name="auth.revoke_api_key", summary="Revoke an API key")
def revoke_api_key_route(
    request: Request, key_id: Annotated[int, Path(ge=1, le=2**63 - 1)], principal: Caller, key: IdempotencyKey
) -> Response:
    response = idempotent_write(request, principal, key, {"key_id": key_id},
                                lambda conn: auth.revoke_api_key(conn, key_id))  # fmt: skip
    request.app.state.credential_cache.clear()
    return response
