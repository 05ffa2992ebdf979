"""``/v1/health``: liveness and the database revision (public; used by serve's start-up check)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from citycard.api.auth import authorize
from citycard.api.deps import reading
from citycard.db import current_revision

router = APIRouter(prefix="/v1", tags=["health"], dependencies=[Depends(authorize)])


@router.get("/health", name="health", summary="Liveness and database revision")
def health(request: Request) -> dict[str, Any]:
    with reading(request) as conn:
        revision = current_revision(conn)
    return {"status": "ok", "db_revision": revision, "missing_areas": request.app.state.missing_areas}
