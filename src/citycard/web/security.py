"""The console's session cookie and CSRF tokens (issue 6 item 7).

The session cookie holds the bearer token the API's operator login issued (``citycard.api``): the
console keeps no session table of its own, so logging out or expiring the token in the API ends the
console session too. The cookie is ``HttpOnly`` (no script reads it) and ``SameSite=Strict`` (a
cross-site form never carries it), and is scoped to ``/console``.

CSRF: every POST form carries a token. With a session it is an HMAC of the bearer token — a page
from another site cannot compute it because it cannot read the cookie — so it needs no server
state and survives restarts and several workers. The login form (no session yet) uses the
double-submit pattern: a random value in a short-lived cookie and the same value in the form.

>>> a = csrf_for_session("token-1"); a == csrf_for_session("token-1"), a == csrf_for_session("token-2")
(True, False)
>>> csrf_matches(a, a), csrf_matches(a, ""), csrf_matches(None, a)
(True, False, False)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

SESSION_COOKIE = "citycard_console"
LANG_COOKIE = "citycard_lang"
LOGIN_CSRF_COOKIE = "citycard_login_csrf"
COOKIE_PATH = "/console"
CSRF_FIELD = "csrf_token"
LOGIN_CSRF_MAX_AGE_S = 30 * 60  # the login form stays valid this long after it was shown
LANG_MAX_AGE_S = 365 * 24 * 3600  # a language preference is not a secret: keep it a year
CSRF_TOKEN_BYTES = 32
CSRF_TOKEN_MAX_CHARS = 128  # longer form values are refused before any comparison
_CSRF_LABEL = b"citycard-console-csrf/1"  # domain separation: this HMAC means nothing else


def csrf_for_session(bearer_token: str) -> str:
    """The CSRF token bound to one session (HMAC-SHA256 keyed with the session's bearer token)."""
    return hmac.new(bearer_token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def new_login_csrf() -> str:
    """A fresh random value for the login form's double-submit cookie."""
    return secrets.token_urlsafe(CSRF_TOKEN_BYTES)


def csrf_matches(expected: str | None, submitted: str | None) -> bool:
    """Constant-time comparison; a missing, empty or oversized value never matches."""
    if not expected or not submitted or len(submitted) > CSRF_TOKEN_MAX_CHARS:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())


def signed_in_redirect(target: str, session: Any, *, https: bool) -> Any:
    """The answer to a successful login: a 303 to ``target`` that sets the session cookie (HttpOnly,
    SameSite=Strict, Secure over HTTPS, living as long as the bearer token) and drops the login CSRF
    cookie. ``session`` has ``token`` and ``expires_at`` (aware)."""
    from datetime import datetime

    from fastapi.responses import RedirectResponse

    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=max(1, int((session.expires_at - datetime.now(session.expires_at.tzinfo)).total_seconds())),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=https,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)
    return response
