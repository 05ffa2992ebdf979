"""The health tests share the API tests' live server (a real uvicorn on SQLite and PostgreSQL)."""

from tests.api.conftest import live  # noqa: F401 — a pytest fixture, used by name
