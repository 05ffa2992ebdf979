"""Console pages of the health service (issue 8 item 4): the hospital desk and the patient's consent.

Two people, two pages, under ``/console/health``, zh/en like the operator console:

* **the hospital desk** (``/console/health/desk``) — a desk login of role ``sector`` bound to its
  hospital (``citycard health institution bind --user-id``): find the patient by card (platform card
  id, PAN + PSN or health card number), open a patient file, see the hospital's own visits;
* **the patient** (``/console/health/consent``) — a cardholder login: grant a hospital access to a
  scope of their records, revoke it, and see the audit of who read what (allowed or refused).

They have their own login form (the operator console's admits operators only) and share its
session cookie, CSRF scheme, language switch and security headers (``citycard.web.routes``). Every
change is one platform transaction; a POST with a bad CSRF token gets 403 and changes nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from citycard.db import read_transaction, write_transaction
from citycard.platform.errors import PlatformError
from citycard.sectors.health import service
from citycard.sectors.health import tables as health_tables
from citycard.sectors.health.rules import load_rules
from citycard.web import messages, security, services
from citycard.web.routes import (
    LOGIN_FIELD_CHARS_MAX,
    PREFIX,
    _checked_form,
    _form_of,
    _lang,
    _platform_error_text,
    _render,
    _safe_next,
    _set_login_csrf,
)

HEALTH_PREFIX = f"{PREFIX}/health"
HEALTH_ROLES = frozenset({"sector", "cardholder"})
AUDIT_SHOWN = 100
VISITS_SHOWN = 50
router = APIRouter(prefix=HEALTH_PREFIX, include_in_schema=False)


def _start_page(role: str) -> str:
    return f"{HEALTH_PREFIX}/consent" if role == "cardholder" else f"{HEALTH_PREFIX}/desk"


def _to_login(request: Request) -> RedirectResponse:
    from urllib.parse import quote

    return RedirectResponse(f"{HEALTH_PREFIX}/login?next={quote(request.url.path, safe='')}", status_code=303)


def _forbidden(request: Request, principal: Any = None) -> Response:
    return _render(request, "health_base.html", principal=principal, status_code=403,
                   error=messages.translate(_lang(request), "health.forbidden"))  # fmt: skip


async def _session(request: Request, role: str) -> tuple[Any, str] | Response:
    token = request.cookies.get(security.SESSION_COOKIE)
    if not token:
        return _to_login(request)
    principal = await services.principal_for_token(request, token)
    if principal is None:
        return _to_login(request)
    if principal.role != role:
        return _forbidden(request, principal)
    return principal, token


def _institution(request: Request, principal: Any) -> str | None:
    with read_transaction(request.app.state.engine) as conn:
        return service.institution_of(conn, principal.ref)


# --- login / logout ------------------------------------------------------------------------------------
@router.get("/login", name="health.login_form")
async def login_form(request: Request, next: str | None = None) -> Response:
    csrf = security.new_login_csrf()
    response = _render(request, "health_login.html", csrf=csrf, next=_safe_next(next), username="")
    _set_login_csrf(request, response, csrf)
    return response


@router.post("/login", name="health.login")
async def login(request: Request) -> Response:
    form = await _checked_form(request, request.cookies.get(security.LOGIN_CSRF_COOKIE), None)
    if isinstance(form, Response):
        return form
    username, password = form.get("username", ""), form.get("password", "")
    session = None
    if 0 < len(username) <= LOGIN_FIELD_CHARS_MAX and 0 < len(password) <= LOGIN_FIELD_CHARS_MAX:
        session = await run_in_threadpool(services.login, request, username, password)
    if session is None or session.role not in HEALTH_ROLES:
        if session is not None:
            await run_in_threadpool(services.logout, request, session.token)
        csrf = security.new_login_csrf()
        key = "login.failed" if session is None else "health.forbidden"
        response = _render(request, "health_login.html", status_code=401 if session is None else 403, csrf=csrf,
                           next=_safe_next(form.get("next")), username=username[:LOGIN_FIELD_CHARS_MAX],
                           error=messages.translate(_lang(request), key))  # fmt: skip
        _set_login_csrf(request, response, csrf)
        return response
    wanted = form.get("next") or ""
    target = wanted if wanted.startswith(HEALTH_PREFIX + "/") else _start_page(session.role)
    return security.signed_in_redirect(_safe_next(target), session, https=request.url.scheme == "https")


@router.post("/logout", name="health.logout")
async def logout(request: Request) -> Response:
    token = request.cookies.get(security.SESSION_COOKIE)
    if not token:
        return _to_login(request)
    form = await _checked_form(request, security.csrf_for_session(token), None)
    if isinstance(form, Response):
        return form
    await run_in_threadpool(services.logout, request, token)
    response = RedirectResponse(f"{HEALTH_PREFIX}/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path=security.COOKIE_PATH)
    return response


# --- the patient's consent page ------------------------------------------------------------------------
def _consent_context(request: Request, cardholder_id: int) -> dict[str, Any]:
    with read_transaction(request.app.state.engine) as conn:
        institutions = service.list_institutions(conn)
        consents = service.consents(conn, cardholder_id)
        audit, _ = service.audit_trail(conn, cardholder_id, limit=AUDIT_SHOWN)
    names = {i["id"]: i["name"] for i in institutions}
    return {"institutions": institutions, "names": names, "scopes": health_tables.SCOPES,
            "active": [c for c in consents if not c["revoked_at"]],
            "revoked": [c for c in consents if c["revoked_at"]], "audit": audit}  # fmt: skip


@router.get("/consent", name="health.consent")
async def consent_page(request: Request, done: str | None = None) -> Response:
    session = await _session(request, "cardholder")
    if isinstance(session, Response):
        return session
    principal, token = session
    context = await run_in_threadpool(_consent_context, request, principal.cardholder_id)
    notice = (
        messages.translate(_lang(request), f"health.done.{done}") if done in ("grant", "revoke") else None
    )
    return _render(request, "health_consent.html", principal=principal, csrf=security.csrf_for_session(token),
                   notice=notice, **context)  # fmt: skip


async def _consent_change(request: Request, change: str) -> Response:
    posted = await _form_of(request, await _session(request, "cardholder"))
    if isinstance(posted, Response):
        return posted
    principal, token, form = posted
    institution_id, scope = form.get("institution_id", "")[:16], form.get("scope", "visits")[:16]

    def act() -> None:
        with write_transaction(request.app.state.engine) as conn:
            action = service.grant if change == "grant" else service.revoke
            action(conn, cardholder_id=principal.cardholder_id, institution_id=institution_id, scope=scope,
                   actor=principal.actor)  # fmt: skip

    try:
        await run_in_threadpool(act)
    except PlatformError as exc:
        context = await run_in_threadpool(_consent_context, request, principal.cardholder_id)
        return _render(request, "health_consent.html", principal=principal, csrf=security.csrf_for_session(token),
                       status_code=exc.status, error=_platform_error_text(_lang(request), exc), **context)  # fmt: skip
    return RedirectResponse(f"{HEALTH_PREFIX}/consent?done={change}", status_code=303)


@router.post("/consent/grant", name="health.consent_grant")
async def consent_grant(request: Request) -> Response:
    return await _consent_change(request, "grant")


@router.post("/consent/revoke", name="health.consent_revoke")
async def consent_revoke(request: Request) -> Response:
    return await _consent_change(request, "revoke")


# --- the hospital desk ---------------------------------------------------------------------------------
def _card_ref(values: dict[str, str]) -> dict[str, Any]:
    """card_id, pan + psn or health_card_no from the form/query (whichever was given)."""
    card = values.get("card", "").strip()[:19]
    psn = values.get("psn", "").strip()[:2]
    if card.isdigit() and len(card) <= 12:
        return {"card_id": int(card)}
    if card.isdigit() and 13 <= len(card) <= 19:
        return {"pan": card, "psn": int(psn) if psn.isdigit() else 0}
    return {"health_card_no": card}


def _desk_context(request: Request, institution_id: str, ref: dict[str, Any] | None) -> dict[str, Any]:
    with read_transaction(request.app.state.engine) as conn:
        institution = service.get_institution(conn, institution_id)
        own, _ = service.visits_of_institution(conn, institution_id, limit=VISITS_SHOWN)
        found = service.lookup(conn, institution_id=institution_id, **ref) if ref else None
    if found is not None:
        own = [v for v in own if v["patient_id"] == found["patient_id"]]
    return {
        "institution": institution,
        "found": found,
        "visits": own,
        "schemes": sorted(load_rules().schemes),
    }


async def _desk_session(request: Request) -> tuple[Any, str, str] | Response:
    session = await _session(request, "sector")
    if isinstance(session, Response):
        return session
    principal, token = session
    institution_id = await run_in_threadpool(_institution, request, principal)
    if institution_id is None:
        return _render(request, "health_base.html", principal=principal, status_code=403,
                       csrf=security.csrf_for_session(token),
                       error=messages.translate(_lang(request), "health.no_institution"))  # fmt: skip
    return principal, token, institution_id


@router.get("/desk", name="health.desk")
async def desk(request: Request, card: str = "", psn: str = "", done: str | None = None) -> Response:
    session = await _desk_session(request)
    if isinstance(session, Response):
        return session
    principal, token, institution_id = session
    ref = _card_ref({"card": card, "psn": psn}) if card.strip() else None
    error, status = None, 200
    try:
        context = await run_in_threadpool(_desk_context, request, institution_id, ref)
    except PlatformError as exc:
        error, status = _platform_error_text(_lang(request), exc), exc.status
        context = await run_in_threadpool(_desk_context, request, institution_id, None)
    notice = messages.translate(_lang(request), "health.done.register") if done == "register" else None
    return _render(request, "health_desk.html", principal=principal, csrf=security.csrf_for_session(token),
                   status_code=status, error=error, notice=notice, card=card[:19], psn=psn[:2], **context)  # fmt: skip


@router.post("/desk/register", name="health.desk_register")
async def desk_register(request: Request) -> Response:
    session = await _desk_session(request)
    if isinstance(session, Response):
        return session
    principal, token, institution_id = session
    form = await _checked_form(request, security.csrf_for_session(token), principal)
    if isinstance(form, Response):
        return form
    ref = _card_ref(form)
    scheme = form.get("scheme") or None

    def act() -> None:
        with write_transaction(request.app.state.engine) as conn:
            service.register(conn, institution_id=institution_id, file_no=form.get("file_no", "")[:32],
                             scheme=scheme, actor=principal.actor, **ref)  # fmt: skip

    try:
        await run_in_threadpool(act)
    except PlatformError as exc:
        context = await run_in_threadpool(_desk_context, request, institution_id, None)
        return _render(request, "health_desk.html", principal=principal, csrf=security.csrf_for_session(token),
                       status_code=exc.status, error=_platform_error_text(_lang(request), exc),
                       card=form.get("card", "")[:19], psn=form.get("psn", "")[:2], **context)  # fmt: skip
    from urllib.parse import urlencode

    query = urlencode({"card": form.get("card", "")[:19], "psn": form.get("psn", "")[:2], "done": "register"})
    return RedirectResponse(f"{HEALTH_PREFIX}/desk?{query}", status_code=303)
