"""The operator console (issue 6 item 7): server-rendered pages in Chinese and English at ``/console``.

Find a cardholder (by name, resident ID number or card number), see their cards, a card's timeline
across all sectors, perform lifecycle actions (report loss, unblock, replace, cancel) and see the
blacklist versions and stale terminals. Operators log in with the API's logins (``citycard.api.auth``);
the session cookie holds the API's bearer token. See ``docs/console.md``.

``citycard.api.create_app`` mounts it with :func:`mount`; the app's ``state`` must carry ``engine``,
``hsm``, ``settings`` (``image_dir``, ``token_ttl_s``) and ``credential_cache`` — what ``create_app``
sets anyway for the API.

Layering (DESIGN §2): web imports platform and the API's auth helpers; nothing imports web.
"""

from __future__ import annotations

from fastapi import FastAPI

from citycard.web.routes import PREFIX, router

__all__ = ["PREFIX", "mount", "router"]


def mount(app: FastAPI) -> None:
    """Serve the console under ``/console`` of ``app`` (idempotent: a second call adds nothing)."""
    if getattr(app.state, "console_mounted", False):
        return
    app.include_router(router)
    from citycard.web.health_routes import router as health_router  # the health desk and consent pages

    app.include_router(health_router)
    from citycard.web.desk_routes import router as desk_router  # registration, desk issue, app loading

    app.include_router(desk_router)
    app.state.console_mounted = True
