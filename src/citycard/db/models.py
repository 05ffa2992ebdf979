"""Every module that defines tables on :class:`citycard.db.Base`, in migration order.

Append one line when a package adds tables (and add its Alembic revision under ``migrations/versions``);
the autogenerate test in ``tests/db`` fails if a table here has no migration or differs from it.
"""

from __future__ import annotations

import importlib

MODEL_MODULES: list[str] = [
    "citycard.ledger.tables",
    "citycard.host.issuer.tables",
    "citycard.host.switch.tables",
    "citycard.platform.tables",
    "citycard.platform.exchange_tables",
    "citycard.platform.application_tables",
    "citycard.api.tables",
    "citycard.clearing.tables",
    "citycard.platform.terminal_tables",
    "citycard.sectors.health.tables",
]


def import_models() -> None:
    """Import every module in :data:`MODEL_MODULES`, so ``Base.metadata`` holds all tables."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
