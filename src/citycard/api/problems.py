"""Every error the API returns is problem+json (RFC 9457): ``{"type", "title", "status", "detail",
"code"}`` plus ``"errors"`` (field errors) for validation failures. ``code`` is stable and dotted
(``card.invalid_transition``, ``auth.missing_credentials``, ``request.invalid``…) so clients branch
on it; ``detail`` is for people. Platform errors (:mod:`citycard.platform.errors`) keep their code.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from citycard.platform.errors import PlatformError

PROBLEM_MEDIA_TYPE = "application/problem+json"
FIELD_ERRORS_MAX = 50  # a huge bad body gets the first 50 field errors, not megabytes of them
log = logging.getLogger("citycard.api")


class Unauthorized(PlatformError):  # noqa: N818 (named like the platform errors)
    """No credential, or one that is unknown, expired or revoked (401)."""

    status = 401
    title = "Unauthorized"


class Unprocessable(PlatformError):  # noqa: N818
    """A request the API refuses before reaching the platform (422), e.g. an idempotency mismatch."""

    status = 422
    title = "Unprocessable request"


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 406: "Not acceptable", 409: "Conflict", 413: "Payload too large",
           415: "Unsupported media type", 422: "Unprocessable request", 500: "Internal error"}  # fmt: skip


def problem(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": f"urn:citycard:problem:{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    headers = {"WWW-Authenticate": 'Bearer realm="citycard"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``[{"field": "body.name", "message": "..."}]`` (location joined by dots)."""
    out = []
    for error in exc.errors()[:FIELD_ERRORS_MAX]:
        field = ".".join(str(part) for part in error.get("loc", ()))
        out.append({"field": field, "message": str(error.get("msg", "invalid"))})
    return out


async def _platform_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PlatformError)
    extra: dict[str, Any] = {}
    if exc.fields:
        extra["errors"] = [{"field": k, "message": v} for k, v in exc.fields.items()]
    return problem(exc.status, exc.code, exc.detail, **extra)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc)
    fields = ", ".join(e["field"] for e in errors[:5])
    return problem(422, "request.invalid", f"invalid request: {fields}", errors=errors)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "route.not_found", 405: "route.method_not_allowed", 413: "request.too_large"}
    code = codes.get(exc.status_code, "http.error")
    return problem(exc.status_code, code, str(exc.detail))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    # Logged with its traceback for the operator; the client learns nothing internal.
    log.error("unhandled error", exc_info=exc)
    return problem(500, "server.error", "internal error; the request was not applied")


def install(app: FastAPI) -> None:
    """Register the handlers that make every error problem+json."""
    app.add_exception_handler(PlatformError, _platform_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
