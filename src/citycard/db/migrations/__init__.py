"""Alembic migrations of every citycard table; run them with :func:`citycard.db.upgrade`."""
