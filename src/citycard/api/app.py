"""The app factory: ``create_app(engine=, hsm=, settings=)`` → FastAPI with every router under /v1.

OpenAPI is served at ``/openapi.json`` and the interactive docs at ``/docs``. Every error is
problem+json (:mod:`citycard.api.problems`). The console (``citycard.web``, a higher layer, issue 6
item 7) is mounted by ``citycard serve`` (cli/serve.py), never from here.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from citycard.api import problems
from citycard.api.auth import CredentialCache
from citycard.api.settings import ApiSettings

log = logging.getLogger("citycard.api")

# Routers in the order they are matched; each is (module, platform modules it needs).
ROUTERS: list[tuple[str, tuple[str, ...]]] = [
    # cards first: routes are matched in order, and the card-status read is the hottest path
    ("citycard.api.routers.cards", ("citycard.platform.cards",)),
    ("citycard.api.routers.health", ()),
    ("citycard.api.routers.auth", ()),
    ("citycard.api.routers.cardholders", ("citycard.platform.cardholders",)),
    ("citycard.api.routers.applications", ("citycard.platform.applications", "citycard.platform.cards")),
    ("citycard.api.routers.blacklist", ("citycard.platform.blacklist",)),
    ("citycard.api.routers.exchange", ("citycard.platform.exchange",)),
    ("citycard.api.routers.terminals", ("citycard.clearing.store", "citycard.platform.blacklist")),
    ("citycard.api.routers.healthcare", ("citycard.sectors.health.service",)),
]


class ContentLengthLimit:
    """A body announced (Content-Length) over the limit gets the problem+json 413 at once; FastAPI's
    ``max_body_size`` (which counts streamed bodies) would answer it in plain text."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    response = problems.problem(413, "request.too_large", f"body over {self.limit} bytes")
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """For the life of the server: the NATS JetStream relay of the exchange's event log, when
    ``CITYCARD_NATS_URL`` is set (or a relay config was given); otherwise nothing runs."""
    if importlib.util.find_spec("citycard.platform.nats_relay") is None:
        yield
        return
    from citycard.platform import blacklist_outbox, nats_relay

    # The blacklist publisher drains loss reports and flags into new list versions (unless
    # CITYCARD_BLACKLIST_AUTO_PUBLISH=0); docs/platform-exchange.md "Automatic publishing".
    async with (
        blacklist_outbox.background_publisher(app.state.engine) as publisher,
        nats_relay.background_relay(app.state.engine, app.state.relay_config) as relay,
    ):
        app.state.blacklist_publisher = publisher
        app.state.nats_relay = relay
        yield


def create_app(
    *, engine: Engine, hsm: Any, settings: ApiSettings | None = None, relay_config: Any = None
) -> FastAPI:
    """The API on ``engine`` (already migrated) and ``hsm`` (a :class:`citycard.hsm.SoftHSM`).

    ``relay_config`` (a :class:`citycard.platform.nats_relay.RelayConfig`): where the lifespan relays
    the event log; None reads ``CITYCARD_NATS_URL`` (unset: no relay).
    """
    settings = settings or ApiSettings()
    app = FastAPI(
        lifespan=_lifespan,
        title=settings.title,
        version="1",
        description="Citizen card platform: cardholders, card lifecycle, applications, blacklists, "
        "exchange. Errors are application/problem+json with a stable `code`. Writes need an "
        "`Idempotency-Key` header.",
        # Bodies over the limit are refused with 413 before anything parses them, whether they
        # announce a Content-Length or stream in chunks (a limit on everything: STYLE.md).
        max_body_size=settings.body_bytes_max,
    )
    app.state.engine = engine
    app.state.relay_config = relay_config
    app.state.nats_relay = None
    app.state.hsm = hsm
    app.state.settings = settings
    app.state.credential_cache = CredentialCache(settings.auth_cache_ttl_s)
    problems.install(app)
    app.state.missing_areas = []
    for module_name, needs in ROUTERS:
        missing = [name for name in needs if importlib.util.find_spec(name) is None]
        if missing:
            # A platform area not written yet: the API starts without it, and says so.
            log.warning("API area %s left out: %s not installed", module_name, ", ".join(missing))
            app.state.missing_areas.append(module_name.rsplit(".", 1)[1])
            continue
        app.include_router(importlib.import_module(module_name).router)
    # Outermost, before FastAPI's own body limiter (which would answer in plain text).
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: ContentLengthLimit(build_stack(), settings.body_bytes_max)  # type: ignore[method-assign]
    _declare_security(app)
    return app


def _declare_security(app: FastAPI) -> None:
    """Put the two credential schemes in the OpenAPI document, and on every non-public operation
    (``authorize`` reads the headers itself rather than through two security dependencies)."""
    from fastapi.openapi.utils import get_openapi

    from citycard.api.auth import API_KEY_SCHEME, BEARER_SCHEME, SECURITY_SCHEMES
    from citycard.api.roles import PUBLIC, ROLE_TABLE

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)  # fmt: skip
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            public = {path for _, path, name in routes(app) if ROLE_TABLE.get(name) is PUBLIC}
            for path, operations in schema.get("paths", {}).items():
                if path in public:
                    continue
                for operation in operations.values():
                    operation["security"] = [{BEARER_SCHEME: []}, {API_KEY_SCHEME: []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def principal_of(request: Request) -> Any:
    """The principal :func:`citycard.api.auth.authorize` resolved for this request (or None)."""
    return getattr(request.state, "principal", None)


def routes(app: FastAPI) -> list[tuple[str, str, str]]:
    """Every API route as ``(method, path, name)``, routers included (for the role-table checks).

    FastAPI ≥ 0.16x keeps included routers as one entry in ``app.routes``; its
    ``iter_route_contexts`` walks into them.
    """
    from fastapi.routing import iter_route_contexts

    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                found.append((method, context.path or "", context.name or ""))
    return found
