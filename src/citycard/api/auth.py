"""Authentication and the one authorisation dependency (issue 6 item 6).

Two kinds of credential, both random 32-byte secrets of which the database keeps only SHA-256:

* a bearer token (``Authorization: Bearer cct_…``) handed out by ``POST /v1/auth/login`` to a user
  (operator staff or a cardholder) whose scrypt password matched; it expires after
  :data:`~citycard.api.settings.TOKEN_TTL_S` and dies at logout;
* an API key (``X-API-Key: cck_…``) for a sector system or a terminal, created by an operator (or
  ``citycard api-key create``) and shown once.

:func:`authorize` is the single dependency every route goes through: it finds the route's name in
:data:`citycard.api.roles.ROLE_TABLE`, resolves the credential to a :class:`Principal` and checks
its role — 401 without a (valid) credential, 403 with the wrong role, refused for a route missing
from the table. Resolved credentials are cached for ``auth_cache_ttl_s`` (2 s) per process, so a
card-status read costs no extra query; revocation takes effect at once in the revoking process and
within that delay elsewhere.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection

from citycard.api import security
from citycard.api.problems import Unauthorized
from citycard.api.roles import PUBLIC, ROLE_TABLE, Role
from citycard.api.settings import AUTH_CACHE_ENTRIES_MAX
from citycard.api.tables import api_keys, tokens, users
from citycard.db import read_transaction, utc_now
from citycard.platform.errors import Conflict, Forbidden, InvalidInput

USERNAME_PATTERN = r"^[a-z][a-z0-9_.-]{2,63}$"
KEY_NAME_PATTERN = r"^[a-z][a-z0-9_.:-]{1,63}$"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD_ENV = "CITYCARD_ADMIN_PASSWORD"


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``ref`` ("user:7", "key:3") names them in idempotency records and audits."""

    ref: str
    name: str
    role: Role
    cardholder_id: int | None = None  # set for the cardholder role: the only cardholder they see
    subject: str | None = None  # an API key's sector name or terminal id
    expires_at: datetime | None = None

    @property
    def actor(self) -> str:
        """The ``actor`` string the platform writes in audit rows."""
        return f"{self.ref}:{self.name}"


ANONYMOUS = Principal(ref="anonymous", name="anonymous", role=Role.regulator)  # only for PUBLIC routes


# --- users, tokens, keys (called inside the caller's transaction) ------------------------------------
def create_user(
    conn: Connection, *, username: str, password: str, role: Role, cardholder_id: int | None = None
) -> dict[str, Any]:
    """A new login; the password is stored as scrypt with a fresh salt. Conflict if the name is taken."""
    import re

    if not re.fullmatch(USERNAME_PATTERN, username):
        raise InvalidInput("user.bad_username", f"username must match {USERNAME_PATTERN}",
                           fields={"username": "bad format"})  # fmt: skip
    if not security.PASSWORD_CHARS_MIN <= len(password) <= security.PASSWORD_CHARS_MAX:
        raise InvalidInput(
            "user.bad_password",
            f"password must be {security.PASSWORD_CHARS_MIN}…{security.PASSWORD_CHARS_MAX} characters",
            fields={"password": "bad length"},
        )
    if (role is Role.cardholder) != (cardholder_id is not None):
        raise InvalidInput("user.cardholder_id", "cardholder_id is required for, and only for, role cardholder",
                           fields={"cardholder_id": "required for role cardholder only"})  # fmt: skip
    if role is Role.terminal:
        raise InvalidInput("user.bad_role", "terminals authenticate with an API key, not a login")
    if cardholder_id is not None:
        from citycard.platform import cardholders

        cardholders.get(conn, cardholder_id)  # 404 cardholder.not_found: a login for nobody is refused
    if conn.execute(sa.select(users.c.id).where(users.c.username == username)).first() is not None:
        raise Conflict("user.exists", f"user {username!r} already exists")
    user_id = conn.execute(
        users.insert().values(username=username, password_hash=security.hash_password(password), role=role.value,
                              cardholder_id=cardholder_id, disabled=False, created_at=utc_now())
    ).inserted_primary_key[0]  # fmt: skip
    return {"id": user_id, "username": username, "role": role.value, "cardholder_id": cardholder_id}


def login(conn: Connection, *, username: str, password: str, ttl_s: int) -> dict[str, Any]:
    """A bearer token for a user whose password matches; the same 401 for an unknown name or a wrong
    password (nothing tells which). The token is returned once; the database keeps its SHA-256."""
    row = conn.execute(sa.select(users).where(users.c.username == username)).first()
    # Hash even for an unknown user so the answer takes as long either way.
    stored = row.password_hash if row is not None else security.hash_password("x" * 10, salt=bytes(16))
    if not security.verify_password(password, stored) or row is None or row.disabled:
        raise Unauthorized("auth.bad_credentials", "unknown user or wrong password")
    token = security.new_secret(security.TOKEN_PREFIX)
    now = utc_now()
    expires_at = now + timedelta(seconds=ttl_s)
    conn.execute(tokens.insert().values(token_hash=security.secret_hash(token), user_id=row.id, created_at=now,
                                        expires_at=expires_at))  # fmt: skip
    return {"token": token, "token_type": "bearer", "expires_at": expires_at, "role": row.role,
            "username": row.username}  # fmt: skip


def logout(conn: Connection, token: str) -> None:
    """Revoke a bearer token (idempotent)."""
    conn.execute(
        tokens.update()
        .where(tokens.c.token_hash == security.secret_hash(token), tokens.c.revoked_at.is_(None))
        .values(revoked_at=utc_now())
    )


def create_api_key(conn: Connection, *, name: str, role: Role, subject: str | None = None) -> dict[str, Any]:
    """A new API key for a sector system or terminal; ``key`` is in this answer only, never again."""
    import re

    if not re.fullmatch(KEY_NAME_PATTERN, name):
        raise InvalidInput(
            "api_key.bad_name", f"name must match {KEY_NAME_PATTERN}", fields={"name": "bad format"}
        )
    if role is Role.cardholder:
        raise InvalidInput(
            "api_key.bad_role", "cardholders log in; they get no API key", fields={"role": "cardholder"}
        )
    if conn.execute(sa.select(api_keys.c.id).where(api_keys.c.name == name)).first() is not None:
        raise Conflict("api_key.exists", f"an API key named {name!r} already exists")
    key = security.new_secret(security.API_KEY_PREFIX)
    prefix = key[: security.SHOWN_PREFIX_CHARS]
    now = utc_now()
    key_id = conn.execute(
        api_keys.insert().values(name=name, key_hash=security.secret_hash(key), prefix=prefix, role=role.value,
                                 subject=subject, created_at=now)
    ).inserted_primary_key[0]  # fmt: skip
    return {"id": key_id, "name": name, "role": role.value, "subject": subject, "prefix": prefix,
            "created_at": now, "key": key}  # fmt: skip


def list_api_keys(conn: Connection) -> list[dict[str, Any]]:
    """Every API key (never the secret: its prefix only)."""
    rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.id)).all()
    return [{"id": r.id, "name": r.name, "role": r.role, "subject": r.subject, "prefix": r.prefix,
             "created_at": r.created_at, "revoked_at": r.revoked_at} for r in rows]  # fmt: skip


def revoke_api_key(conn: Connection, key_id: int) -> dict[str, Any]:
    from citycard.platform.errors import NotFound

    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
    if row is None:
        raise NotFound("api_key.not_found", f"no API key {key_id}")
    if row.revoked_at is None:
        conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=utc_now()))
    return {"id": key_id, "name": row.name, "revoked": True}


def bootstrap_admin(conn: Connection, password: str | None) -> str | None:
    """Create the ``admin`` operator when no user exists yet. Returns the password when this call made
    one up (to be shown once), ``None`` when a user already existed or ``password`` was given."""
    if conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one():
        return None
    made_up = None
    if not password:
        made_up = password = secrets.token_urlsafe(15)
    create_user(conn, username=ADMIN_USERNAME, password=password, role=Role.operator)
    return made_up


# --- resolving a credential ---------------------------------------------------------------------------
class CredentialCache:
    """credential SHA-256 → (Principal, monotonic time fetched); bounded LRU with a TTL."""

    def __init__(self, ttl_s: float, entries_max: int = AUTH_CACHE_ENTRIES_MAX) -> None:
        self.ttl_s = ttl_s
        self.entries_max = entries_max
        self._items: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        with self._lock:
            hit = self._items.get(digest)
            if hit is None:
                return None
            principal, fetched = hit
            if time.monotonic() - fetched > self.ttl_s or (
                principal.expires_at is not None and principal.expires_at <= utc_now()
            ):
                del self._items[digest]
                return None
            self._items.move_to_end(digest)
            return principal

    def put(self, digest: str, principal: Principal) -> None:
        with self._lock:
            self._items[digest] = (principal, time.monotonic())
            self._items.move_to_end(digest)
            while len(self._items) > self.entries_max:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _principal_for_token(conn: Connection, digest: str) -> Principal | None:
    row = conn.execute(
        sa.select(users.c.id, users.c.username, users.c.role, users.c.cardholder_id, users.c.disabled,
                  tokens.c.expires_at, tokens.c.revoked_at)
        .join(users, users.c.id == tokens.c.user_id)
        .where(tokens.c.token_hash == digest)
    ).first()  # fmt: skip
    if row is None or row.revoked_at is not None or row.disabled or row.expires_at <= utc_now():
        return None
    return Principal(ref=f"user:{row.id}", name=row.username, role=Role(row.role),
                     cardholder_id=row.cardholder_id, expires_at=row.expires_at)  # fmt: skip


def _principal_for_key(conn: Connection, digest: str) -> Principal | None:
    row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == digest)).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(ref=f"key:{row.id}", name=row.name, role=Role(row.role), subject=row.subject)


async def resolve(request: Request, *, token: str | None, api_key: str | None) -> Principal:
    """The principal behind the request's credential; 401 when there is none or it is not valid.

    A cache hit costs no query and no thread hop; a miss looks the hash up in a worker thread.
    """
    if token is None and api_key is None:
        raise Unauthorized("auth.missing_credentials", "send Authorization: Bearer <token> or X-API-Key")
    is_token = token is not None
    digest = security.secret_hash(token if is_token else api_key)  # type: ignore[arg-type]
    cache: CredentialCache = request.app.state.credential_cache
    principal = cache.get(digest)
    if principal is None:

        def lookup() -> Principal | None:
            with read_transaction(request.app.state.engine) as conn:
                return _principal_for_token(conn, digest) if is_token else _principal_for_key(conn, digest)

        principal = await run_in_threadpool(lookup)
        if principal is None:
            what = "token" if is_token else "API key"
            raise Unauthorized("auth.bad_credentials", f"{what} unknown, expired or revoked")
        cache.put(digest, principal)
    return principal


BEARER_SCHEME = "bearerToken"
API_KEY_SCHEME = "apiKey"
API_KEY_HEADER = "x-api-key"
# Declared in the OpenAPI document by create_app (components.securitySchemes); parsed here by hand,
# which spares every request two sub-dependencies (docs/api.md, Performance).
SECURITY_SCHEMES = {
    BEARER_SCHEME: {"type": "http", "scheme": "bearer", "description": "token from POST /v1/auth/login"},
    API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "key of a sector system or terminal"},
}  # fmt: skip


def credentials(request: Request) -> tuple[str | None, str | None]:
    """(bearer token, API key) from the headers; a non-Bearer Authorization counts as none."""
    headers = request.headers
    authorization = headers.get("authorization")
    token = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    return token, headers.get(API_KEY_HEADER) or None


async def authorize(request: Request) -> Principal:
    """THE authorisation check: the route's roles from ROLE_TABLE, then the caller's credential and role."""
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    allowed = ROLE_TABLE.get(name) if name else None
    if allowed is None:
        # A route nobody listed is refused to all: forgetting the table must not open a hole.
        raise Forbidden("auth.route_not_in_role_table", f"route {name!r} has no entry in the role table")
    if allowed is PUBLIC:
        return ANONYMOUS
    token, api_key = credentials(request)
    principal = await resolve(request, token=token, api_key=api_key)
    if principal.role not in allowed:
        roles = ", ".join(sorted(allowed))
        raise Forbidden("auth.forbidden", f"role {principal.role} may not call {name} (allowed: {roles})")
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(authorize)]
