"""The operator console's pages (issue 6 item 7): server-rendered HTML, no script.

Every page reads the session cookie (the API's bearer token), resolves it through the API's auth
(``citycard.web.services``) and refuses any role but :data:`CONSOLE_ROLES`. Without a valid session
a page redirects to the login form; a POST whose CSRF token does not match gets 403 and changes
nothing. Lifecycle actions call the platform functions inside one ``write_transaction`` — the state
change, its audit row and its events commit together — then redirect (POST → 303 → GET) to the card
page with a notice. A :class:`~citycard.platform.errors.PlatformError` re-renders the card page with
its message and its HTTP status, and nothing has changed (the transaction rolled back).

The engine, HSM and card image directory come from ``app.state`` (set by ``citycard.api``'s
``create_app``; see :func:`citycard.web.mount`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from citycard.db import utc_now
from citycard.platform.errors import NotFound, PlatformError
from citycard.web import formatting, messages, security, services

PREFIX = "/console"
CONSOLE_ROLES = frozenset({"operator"})  # the card operator's staff; other roles use the API
SEARCH_QUERY_CHARS_MAX = 64
CURSOR_CHARS_MAX = 200
FORM_BYTES_MAX = 8 * 1024  # a console form is a few fields; anything bigger is refused
LOGIN_FIELD_CHARS_MAX = 256
STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = frozenset({"console.css"})
STATIC_MAX_AGE_S = 3600

ID_MAX = 2**63 - 1  # database ids are signed 64-bit; a larger number names nothing
RowId = Annotated[int, FastApiPath(ge=1, le=ID_MAX)]
RowIdQuery = Annotated[int | None, Query(ge=1, le=ID_MAX)]
FenQuery = Annotated[int | None, Query(ge=0, le=ID_MAX)]

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(prefix=PREFIX, include_in_schema=False)


# --- helpers -------------------------------------------------------------------------------------


def _lang(request: Request) -> str:
    return messages.pick_language(request.cookies.get(security.LANG_COOKIE))


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (never another site: an open redirect would help phishing)."""
    if not target or (not target.startswith(PREFIX + "/") and target != PREFIX):
        return PREFIX + "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or ".." in unquote(target):
        return PREFIX + "/"
    return target


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _render(
    request: Request,
    name: str,
    *,
    principal: services.Principal | None = None,
    status_code: int = 200,
    csrf: str = "",
    **context: Any,
) -> HTMLResponse:
    lang = _lang(request)

    def t(key: str, **values: object) -> str:
        return messages.translate(lang, key, **values)

    def named(prefix: str, value: str) -> str:
        return messages.translate_or(lang, f"{prefix}.{value}", value)

    base = {
        "t": t,
        "named": named,
        "lang": lang,
        "prefix": PREFIX,
        "principal": principal,
        "csrf": csrf,
        "here": _here(request),
        "yuan": formatting.yuan,
        "beijing": formatting.beijing,
        "details": formatting.details,
        "notice": None,
        "error": None,
    }
    base.update(context)
    response = templates.TemplateResponse(request, name, base, status_code=status_code)
    # Pages show personal data: never cached by a shared proxy, never framed by another site.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _to_login(request: Request, *, expired: bool = False) -> RedirectResponse:
    target = f"{PREFIX}/login?next={_here_quoted(request)}"
    if expired:
        target += "&expired=1"
    response = RedirectResponse(target, status_code=303)
    if expired:
        response.delete_cookie(security.SESSION_COOKIE, path=security.COOKIE_PATH)
    return response


def _here_quoted(request: Request) -> str:
    # After login the browser GETs ``next``: for a form POST that is the console's start page.
    return quote(_here(request) if request.method == "GET" else PREFIX + "/", safe="")


async def _session(request: Request) -> tuple[services.Principal, str] | Response:
    """The operator behind the session cookie and the cookie's token, or the response to send instead."""
    token = request.cookies.get(security.SESSION_COOKIE)
    if not token:
        return _to_login(request)
    principal = await services.principal_for_token(request, token)
    if principal is None:
        return _to_login(request, expired=True)
    if principal.role not in CONSOLE_ROLES:
        return _render(
            request,
            "error.html",
            principal=None,
            status_code=403,
            status=403,
            error=messages.translate(_lang(request), "error.forbidden"),
        )
    return principal, token


async def _session_form(request: Request) -> tuple[services.Principal, str, dict[str, str]] | Response:
    """A POST from a console page: the operator, the session token and the CSRF-checked form fields,
    or the response to send instead (login, 403, 413)."""
    return await _form_of(request, await _session(request))


async def _form_of(
    request: Request, session: tuple[Any, str] | Response
) -> tuple[Any, str, dict[str, str]] | Response:
    """A POST under ``session`` (principal, token — an operator's or, for the health pages, a
    cardholder's): the principal, the token and the form checked against the session's CSRF token,
    or the response to send instead."""
    if isinstance(session, Response):
        return session
    principal, token = session
    form = await _checked_form(request, security.csrf_for_session(token), principal)
    if isinstance(form, Response):
        return form
    return principal, token, form


async def _checked_form(
    request: Request, expected_csrf: str | None, principal: services.Principal | None
) -> dict[str, str] | Response:
    """The urlencoded form fields (strings only) once the CSRF token matches; otherwise the answer to
    send: 413 for a body over :data:`FORM_BYTES_MAX`, 403 for a missing or wrong CSRF token."""
    declared = request.headers.get("content-length")
    too_big = declared is not None and (not declared.isdigit() or int(declared) > FORM_BYTES_MAX)
    if not too_big:
        too_big = len(await request.body()) > FORM_BYTES_MAX  # chunked: counted after reading
    if too_big:
        return _render(request, "error.html", principal=principal, status_code=413, status=413,
                       error=messages.translate(_lang(request), "error.too_large"))  # fmt: skip
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not security.csrf_matches(expected_csrf, form.get(security.CSRF_FIELD)):
        return _csrf_denied(request, principal)
    return form


def _csrf_denied(request: Request, principal: services.Principal | None) -> HTMLResponse:
    return _render(
        request,
        "error.html",
        principal=principal,
        status_code=403,
        status=403,
        error=messages.translate(_lang(request), "error.csrf"),
    )


def _platform_error_text(lang: str, exc: PlatformError) -> str:
    """The translated message for a platform error code if the table has one, plus its detail."""
    key = f"error.{exc.code}"
    known = messages.translate(lang, key)
    head = known if known != key else ""
    generic = messages.translate(lang, "error.generic", detail=exc.detail)
    return f"{head} {generic}".strip()


# --- pages ---------------------------------------------------------------------------------------


@router.get("/static/{name}", name="console.static")
async def static(name: str) -> Response:
    if name not in STATIC_FILES:  # a fixed list: no path ever reaches the file system from the URL
        return Response(status_code=404)
    return FileResponse(STATIC_DIR / name, headers={"Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}"})


@router.get("", name="console.root_bare")
@router.get("/", name="console.root")
async def root(request: Request) -> Response:
    session = await _session(request)
    if isinstance(session, Response):
        return session
    return RedirectResponse(f"{PREFIX}/cardholders", status_code=303)


@router.get("/lang/{code}", name="console.lang")
async def set_language(request: Request, code: str, next: str | None = None) -> Response:
    """Store the language choice in a cookie (not a secret; no CSRF needed: it changes no data)."""
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        security.LANG_COOKIE,
        messages.pick_language(code),
        max_age=security.LANG_MAX_AGE_S,
        path=security.COOKIE_PATH,
        samesite="lax",
        httponly=True,
    )
    return response


@router.get("/login", name="console.login_form")
async def login_form(request: Request, next: str | None = None, expired: str | None = None) -> Response:
    csrf = security.new_login_csrf()
    notice = messages.translate(_lang(request), "login.expired") if expired else None
    response = _render(request, "login.html", csrf=csrf, next=_safe_next(next), username="", notice=notice)
    _set_login_csrf(request, response, csrf)
    return response


def _set_login_csrf(request: Request, response: Response, csrf: str) -> None:
    response.set_cookie(
        security.LOGIN_CSRF_COOKIE,
        csrf,
        max_age=security.LOGIN_CSRF_MAX_AGE_S,
        path=security.COOKIE_PATH,
        samesite="strict",
        httponly=True,
        secure=request.url.scheme == "https",
    )


@router.post("/login", name="console.login")
async def login(request: Request) -> Response:
    form = await _checked_form(request, request.cookies.get(security.LOGIN_CSRF_COOKIE), None)
    if isinstance(form, Response):
        return form
    username = form.get("username", "")
    password = form.get("password", "")
    next_page = _safe_next(form.get("next"))
    session = None
    if 0 < len(username) <= LOGIN_FIELD_CHARS_MAX and 0 < len(password) <= LOGIN_FIELD_CHARS_MAX:
        # scrypt and the database run in a worker thread: the event loop keeps serving other requests.
        session = await run_in_threadpool(services.login, request, username, password)
    username = username[:LOGIN_FIELD_CHARS_MAX]  # shown again in the form, never longer
    if session is None or session.role not in CONSOLE_ROLES:
        if session is not None:  # a valid login of another role: do not leave its token alive
            await run_in_threadpool(services.logout, request, session.token)
        csrf = security.new_login_csrf()
        key = "login.failed" if session is None else "error.forbidden"
        response = _render(
            request,
            "login.html",
            status_code=401 if session is None else 403,
            csrf=csrf,
            next=next_page,
            username=username,
            error=messages.translate(_lang(request), key),
        )
        _set_login_csrf(request, response, csrf)
        return response
    return security.signed_in_redirect(next_page, session, https=request.url.scheme == "https")


@router.post("/logout", name="console.logout")
async def logout(request: Request) -> Response:
    posted = await _session_form(request)
    if isinstance(posted, Response):
        return posted
    _principal, token, _form = posted
    await run_in_threadpool(services.logout, request, token)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path=security.COOKIE_PATH)
    return response


@router.get("/cardholders", name="console.search")
async def search(request: Request, q: str = "", after: str | None = None) -> Response:
    session = await _session(request)
    if isinstance(session, Response):
        return session
    principal, token = session
    query = q.strip()[:SEARCH_QUERY_CHARS_MAX]
    cursor = after[:CURSOR_CHARS_MAX] if after else None
    holders: list[dict[str, Any]] = []
    next_cursor = None
    error = None
    if query:
        try:
            holders, next_cursor = await run_in_threadpool(
                services.find_cardholders, request, query, after=cursor
            )
        except PlatformError as exc:
            error = _platform_error_text(_lang(request), exc)
    return _render(
        request,
        "search.html",
        principal=principal,
        csrf=security.csrf_for_session(token),
        query=query,
        holders=holders,
        next_cursor=next_cursor,
        error=error,
    )


@router.get("/cardholders/{cardholder_id}", name="console.cardholder")
async def cardholder(request: Request, cardholder_id: RowId) -> Response:
    session = await _session(request)
    if isinstance(session, Response):
        return session
    principal, token = session
    try:
        holder, cards = await run_in_threadpool(services.cardholder_with_cards, request, cardholder_id)
    except NotFound:
        return _not_found(request, principal)
    return _render(
        request,
        "cardholder.html",
        principal=principal,
        csrf=security.csrf_for_session(token),
        holder=holder,
        cards=cards,
    )


def _not_found(request: Request, principal: services.Principal) -> HTMLResponse:
    return _render(
        request,
        "error.html",
        principal=principal,
        status_code=404,
        status=404,
        error=messages.translate(_lang(request), "error.not_found"),
    )


async def _card_page(
    request: Request,
    principal: services.Principal,
    token: str,
    card_id: int,
    *,
    status_code: int = 200,
    notice: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    try:
        shown = await run_in_threadpool(services.card_page, request, card_id)
    except NotFound:
        return _not_found(request, principal)
    return _render(
        request,
        "card.html",
        principal=principal,
        csrf=security.csrf_for_session(token),
        status_code=status_code,
        card=shown.card,
        holder=shown.holder,
        timeline=shown.timeline,
        applications=shown.applications,
        audit=shown.audit,
        actions=services.actions_for(shown.card),
        notice=notice,
        error=error,
    )


@router.get("/cards/{card_id}", name="console.card")
async def card_page(
    request: Request, card_id: RowId, done: str | None = None, new: RowIdQuery = None, refund: FenQuery = None
) -> Response:
    session = await _session(request)
    if isinstance(session, Response):
        return session
    principal, token = session
    notice = _done_notice(_lang(request), done, new_card_id=new, refund_fen=refund)
    return await _card_page(request, principal, token, card_id, notice=notice)


def _done_notice(
    lang: str, done: str | None, *, new_card_id: int | None, refund_fen: int | None
) -> str | None:
    if done not in services.CONSOLE_ACTIONS:
        return None
    key = "done." + done.replace("-", "_")
    if done == "replace":
        return messages.translate(lang, key, card_id=new_card_id if new_card_id is not None else "?")
    if done == "cancel":
        return messages.translate(lang, key, amount=formatting.yuan(refund_fen))
    return messages.translate(lang, key)


@router.post("/cards/{card_id}/{action}", name="console.card_action")
async def card_action(request: Request, card_id: RowId, action: str) -> Response:
    posted = await _session_form(request)
    if isinstance(posted, Response):
        return posted
    principal, token, form = posted
    if action not in services.CONSOLE_ACTIONS:
        return _not_found(request, principal)
    try:
        outcome = await run_in_threadpool(
            services.perform,
            request,
            card_id,
            action,
            formal=form.get("formal") == "1",
            actor=principal.actor,
        )
    except PlatformError as exc:
        return await _card_page(
            request,
            principal,
            token,
            card_id,
            status_code=exc.status,
            error=_platform_error_text(_lang(request), exc),
        )
    target = f"{PREFIX}/cards/{card_id}?done={action}"
    if outcome.new_card_id is not None:
        target += f"&new={outcome.new_card_id}"
    if outcome.refund_fen is not None:
        target += f"&refund={outcome.refund_fen}"
    return RedirectResponse(target, status_code=303)


@router.get("/blacklist", name="console.blacklist")
async def blacklist(request: Request) -> Response:
    session = await _session(request)
    if isinstance(session, Response):
        return session
    principal, token = session
    overview = await run_in_threadpool(services.blacklist_overview, request, now=utc_now())
    return _render(
        request,
        "blacklist.html",
        principal=principal,
        csrf=security.csrf_for_session(token),
        available=overview is not None,
        versions=(overview or {}).get("versions", []),
        stale=(overview or {}).get("stale", []),
    )
