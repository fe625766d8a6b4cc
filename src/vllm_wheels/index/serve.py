"""Serve the index over HTTP with PEP 691 content negotiation: /simple/ and
/simple/<project>/ answer JSON or HTML by the Accept header (or PEP 691's `?format=`
parameter), with the matching Content-Type, `Vary: Accept`, an ETag and `no-cache`;
/files/ serves the wheels and their .metadata files, immutable. Nothing else is served
(no directory listings, no state, no lock file).

A fleet runs a real web server (nginx) with the configuration `index-server-config`
writes; this server is for trials, CI and small teams (docs/wheel-index.md, "Serving a
fleet", has the measured figures of both).

Why it is built this way, each measured with wrk on loopback against nginx (issue 22):
- One asyncio event loop with a small HTTP/1.1 parser, not the stdlib's
  ThreadingHTTPServer nor aiohttp. A thread per connection spends its time in the GIL:
  with TCP_NODELAY and a deep backlog the threading server still gave about a fifth of
  nginx's requests/s at 100 connections, p99 above 100 ms; aiohttp about a third. The
  event loop answers in arrival order with no thread switches. The parser takes only what
  the index needs (GET and HEAD, no request bodies: anything else is refused and the
  connection closed, so nothing can be smuggled past it).
- TCP_NODELAY: a response never waits for the client's delayed ACK (~40 ms each), and
  each page goes out in one write with its headers.
- A listen backlog of 1,024: 100-200 clients connecting at once are queued, not dropped
  and retried after 1, 3 and 7 s.
- Pages from memory: read once per index generation (the `current` symlink, read with one
  readlink per request, so a yank or publish is served by the next request) and kept with
  their ETag; a revalidation that matches gets 304.
- Files by sendfile(2) (loop.sendfile); small ones (the PEP 658 .metadata) in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import functools
import hashlib
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from packaging.utils import canonicalize_name
from packaging.version import Version

from ..errors import ConfigError
from .layout import (
    FILE_CACHE_CONTROL,
    HTML_PAGE_TYPE,
    HTML_TYPE,
    JSON_TYPE,
    METADATA_TYPE,
    PAGE_CACHE_CONTROL,
    WHEEL_TYPE,
)
from .store import IndexDir, IndexState

# media type -> (representation, Content-Type sent back). `latest` aliases v1 (PEP 691).
_OFFERS: dict[str, tuple[str, str]] = {
    JSON_TYPE: ("json", JSON_TYPE),
    "application/vnd.pypi.simple.latest+json": ("json", JSON_TYPE),
    HTML_TYPE: ("html", HTML_TYPE),
    "application/vnd.pypi.simple.latest+html": ("html", HTML_TYPE),
    "text/html": ("html", HTML_PAGE_TYPE),
}
# Among equal q values the server picks: JSON carries more (PEP 700 keys), then the
# versioned HTML type, then plain text/html. A bare wildcard (curl, browsers) gets
# text/html, the format every client understands.
_PREFERENCE = [JSON_TYPE, "application/vnd.pypi.simple.latest+json", HTML_TYPE,
               "application/vnd.pypi.simple.latest+html", "text/html"]
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")

LISTEN_BACKLOG = 1024
ACCEPT_BATCH = 16  # connections one worker accepts per wake-up
SERVER_NAME = "vllm-wheels-index/2"
_HEAD_END = re.compile(rb"\r?\n\r?\n")
MAX_HEAD = 64 * 1024  # request line + headers; pip sends well under 1 KiB
SMALL_FILE = 64 * 1024  # below this a file goes in one write with its headers
# Page responses kept per generation, by request bytes (the cache is emptied when full:
# requests for random URLs cannot grow it without bound).
MAX_CACHED_RESPONSES = 4096
IDLE_TIMEOUT = 65.0  # seconds a keep-alive connection may sit idle (nginx's default)
HEAD_TIMEOUT = 30.0  # seconds to send a whole request line + headers once begun


def negotiate(accept: str | None) -> tuple[str, str] | None:
    """(representation, Content-Type) for an Accept header; None = 406 Not Acceptable.
    No header means HTML, the format every client understands."""
    if not accept or not accept.strip():
        return _OFFERS["text/html"]
    return _negotiate(accept)


@functools.lru_cache(maxsize=256)  # pip and uv send the same header on every request
def _negotiate(accept: str) -> tuple[str, str] | None:
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


@dataclass(frozen=True)
class _Page:
    body: bytes
    etag: str


class PageCache:
    """The pages of the current generation, read from disk once per generation.

    The generation is what `current` points at (generations/NNNNNN, switched by one
    rename per change), read on every request: one readlink, and the next request after
    a yank or a publish gets the new page. Pages are read from that generation's own
    directory, so a page and the generation it is filed under always agree."""

    def __init__(self, index: IndexDir) -> None:
        self.index = index
        self._generation: str | None = None
        self._pages: dict[tuple[str, str], _Page] = {}
        self.responses: dict[bytes, _Response] = {}
        # A str for os.readlink: on every request, without building Path objects.
        self._current = str(index.current)

    def generation(self) -> str | None:
        """The current generation (one readlink); forgets everything of an older one."""
        try:
            generation = os.readlink(self._current)  # noqa: PTH115
        except OSError:
            generation = None  # nothing published yet
        if generation != self._generation:
            self._generation, self._pages, self.responses = generation, {}, {}
        return generation

    def get(self, project: str, representation: str) -> _Page | None:
        for _attempt in range(3):
            generation = self.generation()
            if generation is None:
                return None
            key = (project, representation)
            page = self._pages.get(key)
            if page is not None:
                return page
            path = self.index.root / generation / "simple"
            if project:
                path = path / project
            try:
                body = (path / f"index.{representation}").read_bytes()
            except FileNotFoundError:
                # No such project, or this generation was pruned after two quick changes:
                # only a generation that is still current proves the page is missing.
                with contextlib.suppress(OSError):
                    if os.readlink(self._current) != generation:  # noqa: PTH115
                        continue
                return None
            page = _Page(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
            # Not-found answers are never stored: unknown names must not grow the cache.
            self._pages[key] = page
            return page
        return None

    def remember(self, head: bytes, response: _Response) -> None:
        if len(self.responses) >= MAX_CACHED_RESPONSES:
            self.responses = {}
        self.responses[head] = response


@dataclass(frozen=True)
class _Response:
    """A whole page response but its Date, stored under the request's exact bytes: the
    same request line and headers in the same generation get the same answer, so a client
    repeating its request (pip and uv do, per project) skips parsing and negotiation."""

    before_date: bytes
    after_date: bytes  # the rest of the headers and the body (none for HEAD)
    status: int
    line: str  # the request line, for the log
    size: int
    close: bool


class _Request:
    __slots__ = ("method", "target", "version", "accept", "if_none_match", "keep_alive",
                 "line", "head")

    def __init__(self, method: str, target: str, version: str, line: str) -> None:
        self.method, self.target, self.version, self.line = method, target, version, line
        self.head = b""  # the request's bytes: its key in the response cache
        self.accept: str | None = None
        self.if_none_match: str | None = None
        self.keep_alive = version == "HTTP/1.1"


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_REASONS = {200: "OK", 301: "Moved Permanently", 304: "Not Modified", 400: "Bad Request",
            404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            505: "HTTP Version Not Supported"}


def _parse(head: bytes) -> _Request:
    """The request line and the headers the index uses; _BadRequest for anything else
    (bodies, folded headers, unknown versions), after which the connection is closed."""
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505 if version.startswith("HTTP/") else 400, "HTTP/1.0 or 1.1 only")
    if method not in ("GET", "HEAD"):
        raise _BadRequest(405, "GET and HEAD only")
    request = _Request(method, target, version, lines[0].rstrip("\r"))
    for raw in lines[1:]:
        line = raw.rstrip("\r")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[:1] in (" ", "\t"):
            raise _BadRequest(400, "malformed header line")
        name, value = name.lower(), value.strip()
        if name == "accept":
            request.accept = value if request.accept is None else f"{request.accept}, {value}"
        elif name == "if-none-match":
            request.if_none_match = value
        elif name == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "close" in tokens:
                request.keep_alive = False
            elif "keep-alive" in tokens:
                request.keep_alive = True
        elif name == "transfer-encoding" or (name == "content-length" and value != "0"):
            raise _BadRequest(400, "request bodies are not accepted")
    return request


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


class _HttpDate:
    """The Date header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = email.utils.formatdate(second, usegmt=True).encode("ascii")
        return self._text


class _Connection(asyncio.Protocol):
    def __init__(self, app: IndexApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sending = False  # a file is going out by sendfile: later requests wait
        self.closing = False
        self.peer = "-"
        self.last_active = 0.0
        self.head_started: float | None = None
        self.timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "-"
        self.last_active = self.app.loop.time()
        self.timer = self.app.loop.call_later(HEAD_TIMEOUT, self._check_idle)
        self.app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        self.app.connections.discard(self)

    def _check_idle(self) -> None:
        """Close a connection idle for IDLE_TIMEOUT, or one that began a request and did
        not finish its headers within HEAD_TIMEOUT (a slow client holds no slot for long).
        One timer per connection, re-armed lazily: requests themselves touch no timer."""
        now = self.app.loop.time()
        if self.closing or self.transport is None:
            return
        if not self.sending:
            if self.head_started is not None and now - self.head_started > HEAD_TIMEOUT:
                self._fail(408, "request headers not received in time")
                return
            if self.head_started is None and now - self.last_active > IDLE_TIMEOUT:
                self.closing = True
                self.transport.close()
                return
        self.timer = self.app.loop.call_later(HEAD_TIMEOUT / 3, self._check_idle)

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.buffer:
            self.head_started = self.app.loop.time()
        self.buffer += data
        if not self.sending:
            self._process()

    def _process(self) -> None:
        while not self.sending and not self.closing:
            match = _HEAD_END.search(self.buffer)
            if match is None:
                if len(self.buffer) > MAX_HEAD:
                    self._fail(431, "request line and headers too large")
                elif not self.buffer:
                    self.head_started = None
                return
            head = bytes(self.buffer[:match.start()])
            del self.buffer[:match.end()]
            self.head_started = self.app.loop.time() if self.buffer else None
            self.last_active = self.app.loop.time()
            cached = self.app.pages.responses.get(head) if self.app.pages.generation() \
                else None
            if cached is not None:
                self.replay(cached)
                continue
            try:
                request = _parse(head.lstrip(b"\r\n"))
            except _BadRequest as exc:
                self._fail(exc.status, str(exc), line=head.split(b"\n", 1)[0]
                           .decode("latin-1").rstrip("\r"))
                return
            request.head = head
            self.app.handle(self, request)

    # ---------------------------------------------------------------- responses

    def respond(self, request: _Request, status: int, headers: list[tuple[str, str]],
                body: bytes = b"", *, body_follows: bool = False, cache: bool = False) -> None:
        """Status line, headers and body in one write (HEAD: no body). body_follows: the
        caller sends the body itself and closes the connection if it must. cache: a page
        response, the same for the same request bytes until the generation changes."""
        lines = [f"{name}: {value}" for name, value in headers]
        if not request.keep_alive:
            lines.append("Connection: close")
        elif request.version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        response = _Response(
            before_date=f"HTTP/1.1 {status} {_REASONS[status]}\r\nServer: {SERVER_NAME}\r\n"
                        "Date: ".encode("latin-1"),
            after_date=("\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            + (b"" if request.method == "HEAD" else body),
            status=status, line=request.line, size=len(body),
            close=not request.keep_alive and not body_follows)
        if cache and request.head:
            self.app.pages.remember(request.head, response)
        self.replay(response)

    def replay(self, response: _Response) -> None:
        assert self.transport is not None
        self.transport.write(response.before_date + self.app.date.now()
                             + response.after_date)
        self.app.log(self, response.line, response.status, response.size)
        if response.close:
            self.closing = True
            self.transport.close()

    def error(self, request: _Request, status: int, message: str,
              extra: list[tuple[str, str]] | None = None) -> None:
        body = f"{status} {_REASONS[status]}: {message}\n".encode()
        self.respond(request, status, [("Content-Type", "text/plain; charset=utf-8"),
                                       ("Content-Length", str(len(body))), *(extra or [])],
                     body)

    def _fail(self, status: int, message: str, line: str = "-") -> None:
        """An error after which the connection cannot be trusted to be in step: answer
        and close."""
        request = _Request("GET", "", "HTTP/1.1", line)
        request.keep_alive = False
        extra = [("Allow", "GET, HEAD")] if status == 405 else []
        self.buffer.clear()
        self.error(request, status, message, extra)

    def send_file(self, request: _Request, handle: BinaryIO, size: int,
                  headers: list[tuple[str, str]]) -> None:
        """The headers, then the file by sendfile(2); requests pipelined behind it wait."""
        self.sending = True
        self.respond(request, 200, headers, body_follows=True)
        self.app.loop.create_task(self._sendfile(request, handle, size))

    async def _sendfile(self, request: _Request, handle: BinaryIO, size: int) -> None:
        assert self.transport is not None
        try:
            await self.app.loop.sendfile(self.transport, handle, 0, size)
        except (OSError, RuntimeError, asyncio.CancelledError):
            self.close()  # the client went away mid-file
            return
        finally:
            handle.close()
            self.sending = False
        self.last_active = self.app.loop.time()
        if not request.keep_alive:
            self.close()
            return
        self._process()


class IndexApp:
    """What the index answers; one per server, used from its event loop only."""

    def __init__(self, index: IndexDir, loop: asyncio.AbstractEventLoop, quiet: bool) -> None:
        self.index = index
        self.loop = loop
        self.quiet = quiet
        self.pages = PageCache(index)
        self.date = _HttpDate()
        self.connections: set[_Connection] = set()

    def log(self, conn: _Connection, line: str, status: int, size: int) -> None:
        if not self.quiet:
            stamp = time.strftime("%d/%b/%Y %H:%M:%S")
            sys.stderr.write(f'{conn.peer} - - [{stamp}] "{line}" {status} {size}\n')

    def handle(self, conn: _Connection, request: _Request) -> None:
        parts = urllib.parse.urlsplit(request.target)
        path = urllib.parse.unquote(parts.path)
        if path in ("", "/"):
            self._redirect(conn, request, "/simple/")
        elif path == "/simple" or path.startswith("/simple/"):
            self._page(conn, request, path, parts.query)
        elif path.startswith("/files/"):
            self._file(conn, request, path)
        else:
            conn.error(request, 404, "not part of the index")

    def _redirect(self, conn: _Connection, request: _Request, location: str) -> None:
        conn.respond(request, 301, [("Location", location), ("Content-Length", "0")])

    def _page(self, conn: _Connection, request: _Request, path: str, raw_query: str) -> None:
        query = f"?{raw_query}" if raw_query else ""
        if not path.endswith("/"):
            # `path` is decoded: re-quote it, or an encoded CR/LF would end the Location
            # header and start one of the client's choosing (and non-Latin-1 characters
            # could not be sent at all).
            self._redirect(conn, request, urllib.parse.quote(path + "/") + query)
            return
        segments = [s for s in path.split("/") if s]
        if len(segments) > 2:
            conn.error(request, 404, "not part of the index")
            return
        project = ""
        if len(segments) == 2:
            project = segments[1]
            normalized = canonicalize_name(project)
            if normalized != project and _NAME.match(normalized):
                # PEP 503: non-normalized names redirect to the normalized URL.
                self._redirect(conn, request, f"/simple/{normalized}/{query}")
                return
            if not _NAME.match(project):
                conn.error(request, 404, "no such project in this index")
                return
        fmt = urllib.parse.parse_qs(raw_query).get("format") if raw_query else None
        # A literal '+' in a query string decodes to a space; people type it literally.
        chosen = negotiate(fmt[0].replace(" ", "+") if fmt else request.accept)
        if chosen is None:
            conn.error(request, 406, f"offers: {', '.join(_PREFERENCE)}")
            return
        representation, content_type = chosen
        page = self.pages.get(project, representation)
        if page is None:
            conn.error(request, 404, "no such project in this index",
                       [("Cache-Control", PAGE_CACHE_CONTROL)])
            return
        headers = [("Content-Type", content_type), ("ETag", page.etag),
                   ("Cache-Control", PAGE_CACHE_CONTROL), ("Vary", "Accept")]
        if request.if_none_match is not None and _etag_matches(request.if_none_match,
                                                               page.etag):
            conn.respond(request, 304, headers, cache=True)
            return
        conn.respond(request, 200, [*headers, ("Content-Length", str(len(page.body)))],
                     page.body, cache=True)

    def _file(self, conn: _Connection, request: _Request, path: str) -> None:
        segments = path.split("/")[2:]
        if len(segments) != 2 or any(s in ("", ".", "..") or s.startswith(".")
                                     for s in segments):
            conn.error(request, 404, "not part of the index")
            return
        target = self.index.files / segments[0] / segments[1]
        try:
            handle = target.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            conn.error(request, 404, "no such file in this index")
            return
        except ValueError:  # a NUL byte or an unencodable name: no such file can exist
            conn.error(request, 404, "no such file in this index")
            return
        size = os.fstat(handle.fileno()).st_size
        headers = [("Content-Type", METADATA_TYPE if target.name.endswith(".metadata")
                    else WHEEL_TYPE),
                   ("Content-Length", str(size)), ("Cache-Control", FILE_CACHE_CONTROL)]
        if request.method == "HEAD" or size < SMALL_FILE:
            with handle:
                body = b"" if request.method == "HEAD" else handle.read(size)
            conn.respond(request, 200, headers, body)
            return
        conn.send_file(request, handle, size, headers)


class IndexServer:
    """A listening socket and the event loop that serves it (run by serve_forever, in
    this thread or another; shutdown() from any thread)."""

    def __init__(self, index: IndexDir, sock: socket.socket, quiet: bool) -> None:
        self.index = index
        self.socket = sock
        self.quiet = quiet
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._parent: int | None = None  # a worker's parent: when it is gone, stop

    def _watch_parent(self) -> None:
        assert self._loop is not None and self._stop is not None
        if os.getppid() != self._parent:
            self._stop.set()
        else:
            self._loop.call_later(1.0, self._watch_parent)

    def serve_workers(self, workers: int) -> None:
        """serve_forever in this process and in workers - 1 forked ones, all on the one
        listening socket (the kernel hands each new connection to one of them): like
        nginx's worker processes, each a GIL of its own. Ends with this process (Ctrl-C,
        SIGTERM); a worker whose parent died stops within a second."""
        children: list[int] = []
        parent = os.getpid()
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    self._parent = parent
                    self.serve_forever()
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)  # never return into the parent's code
            children.append(pid)
        try:
            self.serve_forever()
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._started.set()
            self._stopped.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = IndexApp(self.index, self._loop, self.quiet)
        # asyncio accepts up to `backlog` connections per wake-up: a small batch, so that
        # workers sharing the socket share a burst of new connections too; then listen()
        # again to keep the deep queue for the kernel.
        server = await self._loop.create_server(lambda: _Connection(app), sock=self.socket,
                                                backlog=ACCEPT_BATCH)
        self.socket.listen(LISTEN_BACKLOG)
        if self._parent is not None:
            self._loop.call_later(1.0, self._watch_parent)
        if threading.current_thread() is threading.main_thread():
            # The command line: Ctrl-C and SIGTERM end the loop cleanly (open connections
            # closed, the socket released) instead of raising inside whatever callback runs.
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(signum, self._stop.set)
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for conn in list(app.connections):
                conn.close()
            await server.wait_closed()

    def shutdown(self) -> None:
        self._started.wait()
        if self._loop is not None and self._stop is not None and not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()


def make_server(index: IndexDir, host: str, port: int, *, quiet: bool = False
                ) -> IndexServer:
    """Bind and listen now (so a port in use is a ConfigError before anything prints)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
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
    return IndexServer(index, sock, quiet)


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


def base_url(server: IndexServer) -> str:
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


def default_workers() -> int:
    """One worker per CPU this process may use (nginx's `worker_processes auto`)."""
    return max(1, len(os.sched_getaffinity(0)))


def serve_forever(index: IndexDir, host: str, port: int, *, quiet: bool,
                  workers: int = 1) -> None:
    server = make_server(index, host, port, quiet=quiet)
    simple_url = base_url(server) + "simple/"
    lines = [f"Serving {index.root} at {simple_url} with {workers} worker process"
             f"{'es' if workers > 1 else ''}  (Ctrl-C to stop)",
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
        server.serve_workers(workers)  # returns on Ctrl-C or SIGTERM
    finally:
        server.server_close()
    print("stopped", flush=True)
