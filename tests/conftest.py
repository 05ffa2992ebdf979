"""Shared test configuration.

Tests that need an outside service call :func:`require_service`; on a laptop they skip with the
reason, but with ``CITYCARD_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing service fails.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_SERVICES = os.environ.get("CITYCARD_REQUIRE_SERVICES") == "1"


def require_service(available: bool, reason: str) -> None:
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing (CITYCARD_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


# --- databases (citycard.db): every persistent test runs on SQLite and on PostgreSQL ---------------


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)], ids=["sqlite", "postgresql"]
)
def db_url(request: pytest.FixtureRequest, tmp_path):  # type: ignore[no-untyped-def]
    """URL of a fresh empty database: a SQLite file in tmp_path, or a new PostgreSQL ``cc_<random>``."""
    from tests import dbtools

    if request.param == "postgresql":
        problem = dbtools.postgres_problem()
        require_service(problem is None, problem or "")
    with dbtools.fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(db_url: str):  # type: ignore[no-untyped-def]
    """An engine on the fresh database after Alembic ``upgrade head``; disposed afterwards."""
    from tests import dbtools

    eng = dbtools.migrated_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()
