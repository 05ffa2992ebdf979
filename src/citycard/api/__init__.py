"""The HTTP API of the citizen card platform (issue 6 item 6; DESIGN §2 ``api``).

``create_app(engine=, hsm=, settings=)`` builds the FastAPI app: one router per area under
``/v1`` (auth, cardholders, cards, applications, blacklist, exchange), one authorisation
dependency driven by the role table (:mod:`citycard.api.roles`), idempotency keys on every write,
pagination with opaque cursors and problem+json errors. See docs/api.md.
"""

from __future__ import annotations

from citycard.api.app import create_app
from citycard.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
