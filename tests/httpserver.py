"""A real uvicorn server in a thread on a free port, for the API, console and lifespan tests."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

SERVER_START_S = 20.0


class ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test thread is not the main thread
        pass


def start_server(app: Any, *, lifespan: str = "off") -> tuple[ThreadServer, threading.Thread, str]:
    """Serve ``app`` on 127.0.0.1:<free port>; (server, thread, base URL) once it has started.

    proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    accepted sockets inherit it. With proto 0 every response with a body (headers and body are two
    writes) waits ~40 ms for the client's delayed ACK (Nagle).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = ThreadServer(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"
