"""The console's desk pages (issue 6 item 7, what docs/console.md listed as missing): register a
cardholder, issue them a card at the desk, load and unload sector applications on a card.

Same rules as :mod:`citycard.web.routes`: operator sessions only, CSRF on every POST, each action
ONE write transaction through the platform functions (``cardholders.register``; ``cards.apply`` …
``cards.activate``; ``applications.load``/``unload``, which really write the virtual card through
PBOC Part 14 APPEND RECORD / UPDATE CAPP DATA CACHE with MACs), then POST → 303 → GET. A refused
call re-renders the form with the platform's message and HTTP status; nothing has changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from citycard.db import read_transaction, write_transaction
from citycard.platform import applications, cardholders, cards
from citycard.platform.card_rules import rules as card_rules
from citycard.platform.errors import InvalidInput, NotFound, PlatformError
from citycard.platform.identity import kinds as cardholder_kinds
from citycard.web import messages, security, services
from citycard.web.routes import (
    PREFIX,
    RowId,
    _lang,
    _not_found,
    _platform_error_text,
    _render,
    _session,
    _session_form,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

REGISTER_FIELDS = ("name", "id_number", "kind", "phone", "address")
FIELD_CHARS_MAX = 200  # a form value longer than any platform field is cut before the platform sees it
DESK_STEPS = ("approve", "prepare", "personalise", "issue", "activate")
APP_ID_CHARS_MAX = 32


@dataclass(frozen=True)
class AppForm:
    """One catalogue application as the load form shows it."""

    id: str
    name: dict[str, str]
    sector: str
    description: str
    fields: list[dict[str, Any]]
    loaded: bool


def _register_context(values: dict[str, str]) -> dict[str, Any]:
    return {"values": values, "kinds": list(cardholder_kinds())}


def _field_errors(lang: str, exc: PlatformError) -> dict[str, str]:
    fields = getattr(exc, "fields", None) or {}
    return {name: _platform_error_text(lang, exc) for name in fields}


@router.get("/register", name="console.register_form")
async def register_form(request: Request) -> Response:
    session = await _session(request)
    if isinstance(session, Response):
        return session
    principal, token = session
    return _render(request, "desk_register.html", principal=principal, csrf=security.csrf_for_session(token),
                   field_errors={}, **_register_context({"kind": "resident"}))  # fmt: skip


def _register(request: Request, values: dict[str, str], actor: str) -> int:
    optional = {k: values[k] or None for k in ("phone", "address")}
    with write_transaction(services.engine(request)) as conn:
        holder = cardholders.register(
            conn,
            name=values["name"],
            id_number=values["id_number"],
            kind=values["kind"],
            actor=actor,
            **optional,
        )
    return int(holder["id"])


@router.post("/register", name="console.register")
async def register(request: Request) -> Response:
    posted = await _session_form(request)
    if isinstance(posted, Response):
        return posted
    principal, token, form = posted
    values = {name: form.get(name, "").strip()[:FIELD_CHARS_MAX] for name in REGISTER_FIELDS}
    try:
        holder_id = await run_in_threadpool(_register, request, values, principal.actor)
    except PlatformError as exc:
        lang = _lang(request)
        return _render(
            request, "desk_register.html", principal=principal, csrf=security.csrf_for_session(token),
            status_code=exc.status, error=_platform_error_text(lang, exc), field_errors=_field_errors(lang, exc),
            **_register_context(values),
        )  # fmt: skip
    return RedirectResponse(f"{PREFIX}/cardholders/{holder_id}", status_code=303)


def _issue_card(request: Request, cardholder_id: int, profile: str, actor: str) -> int:
    """Apply → approve → prepare → personalise (a virtual card image) → issue → activate: the holder
    waits at the desk, so one transaction does it all (or nothing)."""
    state = request.app.state
    if profile not in card_rules().profiles:
        raise InvalidInput("card.profile", f"profile {profile!r} is not one the platform issues",
                           fields={"profile": "unknown"})  # fmt: skip
    with write_transaction(services.engine(request)) as conn:
        card = cards.apply(conn, cardholder_id, profile=profile, issuer=state.settings.issuer, actor=actor)
        card_id = int(card["id"])
        cards.approve(conn, card_id, actor=actor)
        cards.prepare(conn, card_id, actor=actor)
        cards.personalise(conn, card_id, hsm=state.hsm, image_dir=services._image_dir(request), actor=actor)
        cards.issue(conn, card_id, hsm=state.hsm, actor=actor)
        cards.activate(conn, card_id, actor=actor)
    return card_id


@router.post("/cardholders/{cardholder_id}/cards", name="console.issue_card")
async def issue_card(request: Request, cardholder_id: RowId) -> Response:
    posted = await _session_form(request)
    if isinstance(posted, Response):
        return posted
    principal, _token, form = posted
    profile = form.get("profile", "citizen-card-gm")[:64]
    try:
        card_id = await run_in_threadpool(_issue_card, request, cardholder_id, profile, principal.actor)
    except NotFound:
        return _not_found(request, principal)
    except PlatformError as exc:
        return _render(request, "error.html", principal=principal, status_code=exc.status, status=exc.status,
                       error=_platform_error_text(_lang(request), exc))  # fmt: skip
    return RedirectResponse(f"{PREFIX}/cards/{card_id}?done=issued", status_code=303)


def _applications_page(
    request: Request, card_id: int
) -> tuple[dict[str, Any], dict[str, Any], list[AppForm]]:
    with read_transaction(services.engine(request)) as conn:
        card = cards.get(conn, card_id)
        holder = cardholders.get(conn, card["cardholder_id"])
        loaded = {a["app_id"] for a in applications.on_card(conn, card_id)}
    forms = [
        AppForm(id=entry["id"], name=entry["name"], sector=entry["sector"], description=entry["description"],
                fields=_described(entry), loaded=entry["id"] in loaded)
        for entry in applications.catalogue_entries()
    ]  # fmt: skip
    return card, holder, forms


def _described(entry: dict[str, Any]) -> list[dict[str, Any]]:
    app = applications.get_application(entry["id"])
    described = {f.name: f for f in app.fields}
    return [
        {**field, "description": described[field["name"]].description,
         "default": described[field["name"]].default}
        for field in entry["fields"]
    ]  # fmt: skip


async def _render_applications(
    request: Request, principal: services.Principal, token: str, card_id: int, *, status_code: int = 200,
    notice: str | None = None, error: str | None = None, values: dict[str, str] | None = None,
    failed_app: str | None = None,
) -> Response:  # fmt: skip
    try:
        card, holder, forms = await run_in_threadpool(_applications_page, request, card_id)
    except NotFound:
        return _not_found(request, principal)
    return _render(
        request, "desk_applications.html", principal=principal, csrf=security.csrf_for_session(token),
        status_code=status_code, card=card, holder=holder, apps=forms, notice=notice, error=error,
        values=values or {}, failed_app=failed_app,
    )  # fmt: skip


@router.get("/cards/{card_id}/applications", name="console.applications")
async def applications_page(
    request: Request, card_id: RowId, done: str | None = None, app: str | None = None
) -> Response:
    session = await _session(request)
    if isinstance(session, Response):
        return session
    principal, token = session
    notice = None
    if done in ("loaded", "unloaded") and app:
        name = _app_name(_lang(request), app[:APP_ID_CHARS_MAX])
        notice = messages.translate(_lang(request), f"desk.apps.{done}", app=name)
    return await _render_applications(request, principal, token, card_id, notice=notice)


def _app_name(lang: str, app_id: str) -> str:
    try:
        entry = applications.get_application(app_id)
    except NotFound:
        return app_id
    return entry.name_zh if lang == "zh" else entry.name_en


def _load(request: Request, card_id: int, app_id: str, data: dict[str, str], actor: str) -> None:
    with write_transaction(services.engine(request)) as conn:
        applications.load(conn, card_id, app_id, hsm=request.app.state.hsm, data=data, actor=actor)


def _unload(request: Request, card_id: int, app_id: str, actor: str) -> None:
    with write_transaction(services.engine(request)) as conn:
        applications.unload(conn, card_id, app_id, hsm=request.app.state.hsm, actor=actor)


@router.post("/cards/{card_id}/applications/load", name="console.load_application")
async def load_application(request: Request, card_id: RowId) -> Response:
    posted = await _session_form(request)
    if isinstance(posted, Response):
        return posted
    principal, token, form = posted
    app_id = form.get("app_id", "")[:APP_ID_CHARS_MAX]
    try:
        app = applications.get_application(app_id)
    except NotFound as exc:
        return await _render_applications(request, principal, token, card_id, status_code=404,
                                          error=_platform_error_text(_lang(request), exc))  # fmt: skip
    # Empty optional fields take the catalogue's default; an empty required field is left out, so
    # the platform names it (422 application.data).
    data = {}
    for field in app.fields:
        value = form.get(f"{app.id}.{field.name}", "").strip()[:FIELD_CHARS_MAX]
        if value:
            data[field.name] = value
    try:
        await run_in_threadpool(_load, request, card_id, app.id, data, principal.actor)
    except PlatformError as exc:
        return await _render_applications(
            request, principal, token, card_id, status_code=exc.status,
            error=_platform_error_text(_lang(request), exc), values={f"{app.id}.{k}": v for k, v in data.items()},
            failed_app=app.id,
        )  # fmt: skip
    return RedirectResponse(
        f"{PREFIX}/cards/{card_id}/applications?done=loaded&app={app.id}", status_code=303
    )


@router.post("/cards/{card_id}/applications/{app_id}/unload", name="console.unload_application")
async def unload_application(request: Request, card_id: RowId, app_id: str) -> Response:
    posted = await _session_form(request)
    if isinstance(posted, Response):
        return posted
    principal, token, _form = posted
    app_id = app_id[:APP_ID_CHARS_MAX]
    try:
        await run_in_threadpool(_unload, request, card_id, app_id, principal.actor)
    except PlatformError as exc:
        return await _render_applications(request, principal, token, card_id, status_code=exc.status,
                                          error=_platform_error_text(_lang(request), exc))  # fmt: skip
    return RedirectResponse(
        f"{PREFIX}/cards/{card_id}/applications?done=unloaded&app={app_id}", status_code=303
    )
