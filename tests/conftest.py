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
