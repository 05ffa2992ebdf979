"""Pagination: ``limit`` (1…200, default 50) and an opaque ``cursor`` (issue 6 item 6).

The cursor wraps whatever the platform function returned as its "next" position (an id, a
sequence number, a tuple) in base64url JSON, so clients cannot depend on its shape; a cursor that
does not decode is refused with 422 ``pagination.bad_cursor`` and changes nothing.

>>> encode_cursor(42)
'NDI'
>>> decode_cursor(encode_cursor(["Li Lei", 42]))
['Li Lei', 42]
>>> decode_cursor(None) is None
True
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import Query

from citycard.api.problems import Unprocessable

LIMIT_DEFAULT = 50
LIMIT_MAX = 200
CURSOR_CHARS_MAX = 512

Limit = Annotated[int, Query(ge=1, le=LIMIT_MAX, description=f"page size, 1…{LIMIT_MAX}")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=CURSOR_CHARS_MAX,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="opaque: next_cursor of the previous page",
    ),
]


def encode_cursor(value: Any) -> str | None:
    """The opaque form of a platform position (``None`` → ``None``: no next page)."""
    if value is None:
        return None
    raw = json.dumps(value, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str | None) -> Any:
    """The platform position inside ``cursor``; 422 ``pagination.bad_cursor`` if it is not one of ours."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise Unprocessable("pagination.bad_cursor", "cursor is not one this API handed out") from exc


def page(items: list[Any], next_position: Any) -> dict[str, Any]:
    """The page shape every list endpoint returns: ``{"items": [...], "next_cursor": str | null}``."""
    return {"items": items, "next_cursor": encode_cursor(next_position)}
