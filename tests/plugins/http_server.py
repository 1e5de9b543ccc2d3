"""A real HTTP server on loopback, for the tests that download (Dataverse, the ISIC bucket).

``http_server(Handler)`` starts a ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) serving
``Handler`` in a daemon thread and returns it (``.url``, ``.close()``); its request log is kept
out of pytest's output. Every server a test started is shut down when the test ends, whatever
happened; ``close()`` before that (a server with nothing listening) is allowed and idempotent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class LoopbackServer:
    """One started server: ``url`` is where it listens until :meth:`close`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        quiet = type(handler.__name__, (handler,), {"log_message": lambda self, *args: None})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), quiet)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def http_server() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], LoopbackServer]]:
    """``http_server(Handler) -> LoopbackServer``, each stopped at the test's end."""
    started: list[LoopbackServer] = []

    def serve(handler: type[BaseHTTPRequestHandler]) -> LoopbackServer:
        server = LoopbackServer(handler)
        started.append(server)
        return server

    yield serve
    for server in started:
        server.close()
