"""Errors of the citizen-card platform (issue 6; the contract in platform-contract.md).

Every platform function raises a :class:`PlatformError` subclass for an expected operating error;
the API turns it into problem+json ``{"type", "title", "status", "detail", "code"}``. ``code`` is
stable (dotted, e.g. ``"card.invalid_transition"``) so clients can branch on it; ``detail`` is for
people. A platform function that raises has changed nothing (the caller's transaction rolls back).

>>> e = Conflict("card.invalid_transition", "card 7 is lost; cannot activate")
>>> (e.code, e.status, e.detail)
('card.invalid_transition', 409, 'card 7 is lost; cannot activate')
>>> isinstance(e, PlatformError)
True
"""

from __future__ import annotations

from typing import Any

__all__ = ["Conflict", "Forbidden", "InvalidInput", "NotFound", "PlatformError"]


class PlatformError(Exception):
    """An expected platform error with a stable ``code``, an HTTP ``status`` and a ``detail``.

    ``fields`` optionally maps an input field name to its error (for 422 field errors).
    """

    status: int = 400
    title: str = "Bad request"

    def __init__(self, code: str, detail: str, *, fields: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.fields: dict[str, str] = dict(fields or {})

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem+json body for this error."""
        body: dict[str, Any] = {
            "type": f"urn:citycard:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.fields:
            body["fields"] = dict(self.fields)
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.detail!r})"


class NotFound(PlatformError):  # noqa: N818 (names fixed by the platform contract)
    """The named object does not exist (404)."""

    status = 404
    title = "Not found"


class Conflict(PlatformError):  # noqa: N818 (names fixed by the platform contract)
    """The request contradicts the object's current state (409), e.g. a forbidden transition."""

    status = 409
    title = "Conflict"


class InvalidInput(PlatformError):  # noqa: N818 (names fixed by the platform contract)
    """The input is malformed or violates a rule (422)."""

    status = 422
    title = "Invalid input"


class Forbidden(PlatformError):  # noqa: N818 (names fixed by the platform contract)
    """The actor may not do this (403)."""

    status = 403
    title = "Forbidden"
