"""A real uvicorn server on a thread and a free port (the demo's platform API; tests/httpserver.py
is the same for the tests)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

SERVER_START_S = 20.0
SERVER_STOP_S = 10.0


class ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


def start_server(app: Any, *, lifespan: str = "off") -> tuple[ThreadServer, threading.Thread, str]:
    """Serve ``app`` on 127.0.0.1:<free port>; (server, thread, base URL) once it has started.

    proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (accepted
    sockets inherit it); otherwise every response with a body waits ~40 ms for a delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = ThreadServer(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="demo-api")
    thread.start()
    deadline = time.monotonic() + SERVER_START_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


def stop_server(server: ThreadServer, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(SERVER_STOP_S)
