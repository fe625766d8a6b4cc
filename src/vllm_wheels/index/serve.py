"""Serve the index over HTTP (stdlib ThreadingHTTPServer) with PEP 691 content
negotiation: /simple/ and /simple/<project>/ answer JSON or HTML by the Accept header
(or PEP 691's `?format=` parameter), with the matching Content-Type and `Vary: Accept`.
/files/ serves the wheels and their .metadata files. Nothing else is served (no
directory listings, no state, no lock file).

For a production host, any web server can serve the same tree (HTML only, or JSON via
an Accept map); this server is for trials, CI and small teams.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import re
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import Version

from ..errors import ConfigError
from .layout import HTML_TYPE, JSON_TYPE
from .store import IndexDir, IndexState

# media type -> (representation, Content-Type sent back). `latest` aliases v1 (PEP 691).
_OFFERS: dict[str, tuple[str, str]] = {
    JSON_TYPE: ("json", JSON_TYPE),
    "application/vnd.pypi.simple.latest+json": ("json", JSON_TYPE),
    HTML_TYPE: ("html", HTML_TYPE),
    "application/vnd.pypi.simple.latest+html": ("html", HTML_TYPE),
    "text/html": ("html", "text/html; charset=utf-8"),
}
# Among equal q values the server picks: JSON carries more (PEP 700 keys), then the
# versioned HTML type, then plain text/html. A bare wildcard (curl, browsers) gets
# text/html, the format every client understands.
_PREFERENCE = [JSON_TYPE, "application/vnd.pypi.simple.latest+json", HTML_TYPE,
               "application/vnd.pypi.simple.latest+html", "text/html"]
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
PAGE_CACHE_CONTROL = "max-age=0, must-revalidate"  # yanks must reach clients at once
FILE_CACHE_CONTROL = "max-age=31536000, immutable"  # filenames are immutable


def negotiate(accept: str | None) -> tuple[str, str] | None:
    """(representation, Content-Type) for an Accept header; None = 406 Not Acceptable.
    No header means HTML, the format every client understands."""
    if not accept or not accept.strip():
        return _OFFERS["text/html"]
    quality: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        media = media.lower()
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in ("*/*", "text/*"):
            quality.setdefault("text/html", q)
        if media in ("*/*", "application/*"):
            for offer in (JSON_TYPE, HTML_TYPE):
                quality.setdefault(offer, q * 0.999)  # explicit types win over wildcards
        if media in _OFFERS:
            quality[media] = q
    ranked = sorted((m for m in quality if quality[m] > 0),
                    key=lambda m: (-quality[m], _PREFERENCE.index(m)))
    return _OFFERS[ranked[0]] if ranked else None


class IndexHandler(http.server.SimpleHTTPRequestHandler):
    server_version = "vllm-wheels-index/1"
    # Keep-alive: an install asks for several pages and files; every response below
    # carries Content-Length, which HTTP/1.1 persistent connections need.
    protocol_version = "HTTP/1.1"
    index: IndexDir  # set on the subclass made by make_server
    quiet = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if not self.quiet:
            super().log_message(format, *args)

    def send_head(self) -> Any:
        parts = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parts.path)
        if path in ("", "/"):
            return self._redirect("/simple/")
        if path == "/simple" or path.startswith("/simple/"):
            return self._page(path, urllib.parse.parse_qs(parts.query), parts.query)
        if path.startswith("/files/"):
            return self._file(path)
        self.send_error(404, "not part of the index")
        return None

    def _redirect(self, location: str) -> None:
        self.send_response(301)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _page(self, path: str, query: dict[str, list[str]], raw_query: str) -> Any:
        if not path.endswith("/"):
            # `path` is decoded: re-quote it, or an encoded CR/LF would end the Location
            # header and start one of the client's choosing (and non-Latin-1 characters
            # could not be sent at all).
            return self._redirect(urllib.parse.quote(path + "/")
                                  + (f"?{raw_query}" if raw_query else ""))
        segments = [s for s in path.split("/") if s]
        if len(segments) > 2:
            self.send_error(404)
            return None
        if len(segments) == 2:
            name = segments[1]
            normalized = canonicalize_name(name)
            if normalized != name and _NAME.match(normalized):
                # PEP 503: non-normalized names redirect to the normalized URL.
                return self._redirect(f"/simple/{normalized}/"
                                      + (f"?{raw_query}" if raw_query else ""))
            if not _NAME.match(name):
                self.send_error(404)
                return None
        fmt = query.get("format")
        # A literal '+' in a query string decodes to a space; people type it literally.
        chosen = negotiate(fmt[0].replace(" ", "+") if fmt else self.headers.get("Accept"))
        if chosen is None:
            self.send_error(406, "Not Acceptable",
                            f"offers: {', '.join(_PREFERENCE)}")
            return None
        representation, content_type = chosen
        page = self.index.simple.joinpath(*segments[1:], f"index.{representation}")
        try:
            body = page.read_bytes()
        except FileNotFoundError:
            self.send_error(404, "no such project in this index")
            return None
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Vary", "Accept")
        self.send_header("Cache-Control", PAGE_CACHE_CONTROL)
        self.end_headers()
        return _BytesBody(body)

    def _file(self, path: str) -> Any:
        segments = path.split("/")[2:]
        if len(segments) != 2 or any(s in ("", ".", "..") or s.startswith(".")
                                     for s in segments):
            self.send_error(404)
            return None
        target = self.index.files / segments[0] / segments[1]
        try:
            handle = target.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.send_error(404)
            return None
        except ValueError:  # a NUL byte or an unencodable name: no such file can exist
            self.send_error(404)
            return None
        size = target.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8" if
                         target.name.endswith(".metadata") else "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", FILE_CACHE_CONTROL)
        self.end_headers()
        return handle

    def copyfile(self, source: Any, outputfile: Any) -> None:
        shutil.copyfileobj(source, outputfile, 1 << 20)


class _BytesBody:
    """What send_head returns for in-memory pages (do_GET copies it, then closes it)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        self._done = True
        return self.data

    def close(self) -> None:
        self._done = True


def make_server(index: IndexDir, host: str, port: int, *, quiet: bool = False
                ) -> http.server.ThreadingHTTPServer:
    handler = type("BoundIndexHandler", (IndexHandler,), {"index": index, "quiet": quiet})
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            why="another process already listens on this port" if in_use
            else "the address is not one of this host's, or the port needs privileges",
            fix=f"pass another --port (or --port 0 for any free one), or stop what listens "
                f"on {port} (`ss -ltnp 'sport = :{port}'`)" if in_use
            else "pass --host 127.0.0.1 or an address of this host, and a --port above 1023"
        ) from None
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def serving(index: IndexDir, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve in a background thread; yields the /simple/ URL (used by tests and tools)."""
    server = make_server(index, host, port, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base_url(server) + "simple/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def base_url(server: http.server.ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    host_text = str(host)
    if ":" in host_text:
        host_text = f"[{host_text}]"
    return f"http://{host_text}:{port}/"


def install_commands(simple_url: str, state: IndexState) -> list[str]:
    """The exact pip and uv commands for the newest non-yanked build of the main project
    (vllm when present), pinned to its full version, local label included."""
    records = [r for r in state.files.values() if r.yanked is None]
    if not records:
        spec = "PACKAGE==VERSION+LOCAL"
    else:
        projects = {r.project for r in records}
        main = "vllm" if "vllm" in projects else sorted(projects)[0]
        newest = max((r for r in records if r.project == main), key=lambda r: Version(r.version))
        spec = f"{main}=={newest.version}"
    return [
        f'pip install "{spec}" --index-url {simple_url} --extra-index-url https://pypi.org/simple/',
        f'uv pip install "{spec}" --index {simple_url}',
    ]


def serve_forever(index: IndexDir, host: str, port: int, *, quiet: bool) -> None:
    server = make_server(index, host, port, quiet=quiet)
    simple_url = base_url(server) + "simple/"
    lines = [f"Serving {index.root} at {simple_url}  (Ctrl-C to stop)",
             f"index URL: {simple_url}"]
    pip_cmd, uv_cmd = install_commands(simple_url, index.load())
    lines += [
        "install with pip (the exact version with its local label cannot come from PyPI):",
        f"  {pip_cmd}",
        "install with uv (packages found here are taken only from here: uv's first-index):",
        f"  {uv_cmd}",
    ]
    print("\n".join(lines), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
