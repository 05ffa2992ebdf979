"""A real uvicorn server in a thread on a free port, for the API, console and lifespan tests: the
demo's (``citycard.demo.httpserver``), so the tests and ``citycard demo`` serve the same way."""

from __future__ import annotations

from citycard.demo.httpserver import SERVER_START_S, ThreadServer, start_server, stop_server

__all__ = ["SERVER_START_S", "ThreadServer", "start_server", "stop_server"]
