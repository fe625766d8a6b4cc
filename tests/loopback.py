"""A request handler served on 127.0.0.1 in a background thread, for tests that need a
real HTTP peer (a registry, a download server, an OpenAI-compatible stream)."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def serve_on_loopback(handler: Callable[..., http.server.BaseHTTPRequestHandler]
                      ) -> Iterator[str]:
    """Yields the server's base URL, http://127.0.0.1:PORT (a free port)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
