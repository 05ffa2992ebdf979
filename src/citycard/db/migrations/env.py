"""Alembic environment: online migrations on the connection :func:`citycard.db.upgrade` passes in.

Run from the ``alembic`` command instead, it opens :func:`citycard.db.database_url`.
"""

from __future__ import annotations

from alembic import context

from citycard.db.base import Base
from citycard.db.engine import database_url, make_engine
from citycard.db.models import import_models

import_models()
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    # Inside upgrade()'s transaction this adds none: the whole chain commits (or not) as one.
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(database_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _under_alembic() -> bool:
    """True when Alembic runs this file; False when it is merely imported (pytest's doctest collection)."""
    try:
        context.is_offline_mode()
    except NameError:  # Alembic's context proxy raises NameError until an environment is set up
        return False
    return True


if _under_alembic():
    if context.is_offline_mode():
        raise SystemExit("citycard migrations run online only (citycard.db.upgrade)")
    run_migrations_online()
