"""The shared (remote) compile cache: sccache's Redis backend, S3 and GCS passed through.

One URL names it: `[build] compile_cache_remote` in the stack (the team's shared server),
overridden per machine by `--compile-cache-remote URL` or VLLM_WHEELS_COMPILE_CACHE_REMOTE
("none" turns it off). Credentials never enter a stack file, a manifest or a log: a URL
with a password is refused in the stack and on the command line (it would sit in shell
history and `ps`), and taken from the environment only, where it is shown redacted
(redis://:***@host:port) and handed to sccache as SCCACHE_REDIS_PASSWORD outside the
logged environment.

A remote that does not answer (TCP connect + Redis PING, short timeout, from this
process) is dropped with a warning: the build compiles with the local cache, never fails
for a cache.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigError

if TYPE_CHECKING:
    from .toolchain import CompileCache

ENV_VAR = "VLLM_WHEELS_COMPILE_CACHE_REMOTE"
CLI_FLAG = "--compile-cache-remote"
OFF = "none"
PING_TIMEOUT_S = 2.0
# The guard's watch (RemoteGuard): a ping every GUARD_INTERVAL_S, and GUARD_FAILURES
# failed pings in a row mean the remote is gone for this build.
GUARD_INTERVAL_S = 3.0
GUARD_FAILURES = 2
# scheme -> (backend, sccache's name for it in SCCACHE_MULTILEVEL_CHAIN)
_SCHEMES = {"redis": "redis", "rediss": "redis", "s3": "s3", "gs": "gcs"}
_DEFAULT_REDIS_PORT = 6379
# sccache's own variables that choose a Redis backend. The pipeline sets sccache's backend
# itself (the remote resolved here, or the local disk only), so one of these in the user's
# environment is removed from sccache's (CompileCache.env) and named in a warning
# (user_sccache_warning): left there, it would make sccache use that server unseen, with
# no ping, no guard against a dead server, and its hits counted as local.
SCCACHE_REMOTE_VARS = ("SCCACHE_REDIS_ENDPOINT", "SCCACHE_REDIS", "SCCACHE_REDIS_CLUSTER_ENDPOINTS")


@dataclass(frozen=True)
class Remote:
    backend: str  # "redis", "s3", "gcs"
    scheme: str
    host: str  # redis: host; s3/gcs: bucket
    port: int  # redis only (0 otherwise)
    path: str  # redis: "/DB"; s3/gcs: key prefix
    username: str = ""
    password: str = ""
    source: str = ""  # where the URL came from: the stack, the flag or the variable
    reachable: bool | None = None  # None: not checked (s3/gcs) or not yet
    detail: str = ""

    @property
    def redacted(self) -> str:
        """The URL as it may be printed: the password is never shown."""
        auth = f"{self.username}:***@" if self.password else \
            f"{self.username}@" if self.username else ""
        where = f"{self.host}:{self.port}" if self.backend == "redis" else self.host
        return f"{self.scheme}://{auth}{where}{self.path}"

    def sccache_env(self) -> dict[str, str]:
        """What sccache reads for this backend, without secrets (those: secret_env)."""
        env = {"SCCACHE_MULTILEVEL_CHAIN": f"disk,{self.backend}",
               # The local disk (L0) must take the write; a remote write error is logged
               # by sccache and never fails a compile.
               "SCCACHE_MULTILEVEL_WRITE_ERROR_POLICY": "l0"}
        if self.backend == "redis":
            env["SCCACHE_REDIS_ENDPOINT"] = f"{self.scheme}://{self.host}:{self.port}"
            if self.username:
                env["SCCACHE_REDIS_USERNAME"] = self.username
            db = self.path.strip("/")
            if db:
                env["SCCACHE_REDIS_DB"] = db
        elif self.backend == "s3":
            env["SCCACHE_BUCKET"] = self.host
            if self.path.strip("/"):
                env["SCCACHE_S3_KEY_PREFIX"] = self.path.strip("/")
        else:
            env["SCCACHE_GCS_BUCKET"] = self.host
            if self.path.strip("/"):
                env["SCCACHE_GCS_KEY_PREFIX"] = self.path.strip("/")
        return env

    def secret_env(self) -> dict[str, str]:
        return {"SCCACHE_REDIS_PASSWORD": self.password} if self.password else {}

    def to_dict(self) -> dict[str, object]:
        return {"url": self.redacted, "backend": self.backend, "source": self.source,
                "reachable": self.reachable, "detail": self.detail}


def parse(url: str, source: str) -> Remote:
    """A remote cache URL: redis://[[user]:password@]host[:port][/db], rediss://...,
    s3://bucket[/prefix], gs://bucket[/prefix]. ConfigError (exit 2) names what is wrong."""
    parts = urlsplit(url.strip())
    backend = _SCHEMES.get(parts.scheme)
    examples = "redis://HOST:6379, rediss://HOST:6380, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"
    if backend is None or not parts.hostname:
        raise ConfigError(f"{source}: {_redact_raw(url)!r} is not a remote compile cache URL",
                          why="sccache's shared backends used here are Redis, S3 and GCS",
                          fix=f"use {examples}, or {OFF!r} for the local cache only")
    try:
        port = parts.port or (_DEFAULT_REDIS_PORT if backend == "redis" else 0)
    except ValueError:
        raise ConfigError(f"{source}: {_redact_raw(url)!r} has an invalid port",
                          fix=f"e.g. {examples}") from None
    if backend != "redis" and (parts.password or parts.username):
        raise ConfigError(f"{source}: {_redact_raw(url)!r} carries credentials",
                          why="S3 and GCS credentials come from sccache's own environment",
                          fix="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (S3) or "
                              "SCCACHE_GCS_KEY_PATH (GCS); keep the URL to the bucket")
    if backend == "redis" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ConfigError(f"{source}: {_redact_raw(url)!r}: the path must be a Redis "
                          "database number", fix="e.g. redis://HOST:6379/0")
    return Remote(backend=backend, scheme=parts.scheme, host=parts.hostname, port=port,
                  path=parts.path.rstrip("/"), username=parts.username or "",
                  password=parts.password or "", source=source)


def _redact_raw(url: str) -> str:
    """An unparsed URL with anything between '//' and '@' replaced (for error messages)."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail.split("/", 1)[0]:
        return f"{head}://***@{tail.split('@', 1)[1]}"
    return url


def check_stack_value(url: str, where: str) -> None:
    """The stack is committed and shared: it may name the server, never a password."""
    if not url or url == OFF:
        return
    remote = parse(url, where)
    if remote.password:
        raise ConfigError(f"{where}: the URL carries a password ({remote.redacted})",
                          why="a stack file is committed, copied into bundles and recorded "
                              "by path in every manifest; a password there leaks",
                          fix=f"keep the server in the stack ({remote.scheme}://{remote.host}:"
                              f"{remote.port}) and give the password on the build machine "
                              f"only: {ENV_VAR}='{remote.scheme}://:PASSWORD@{remote.host}:"
                              f"{remote.port}'")


def resolve(stack_value: str, cli_value: str | None,
            environ: dict[str, str] | None = None) -> Remote | None:
    """The remote for this build: the flag, then the variable, then the stack."""
    env = os.environ if environ is None else environ
    if cli_value is not None:
        value, source = cli_value, CLI_FLAG
    elif env.get(ENV_VAR):
        value, source = env[ENV_VAR], ENV_VAR
    else:
        value, source = stack_value, "[build] compile_cache_remote"
    value = value.strip()
    if not value or value == OFF:
        return None
    remote = parse(value, source)
    if remote.password and source == CLI_FLAG:
        raise ConfigError(f"{CLI_FLAG}: the URL carries a password ({remote.redacted})",
                          why="a command line is visible in `ps` and kept in shell history",
                          fix=f"export {ENV_VAR}='{value.split('://')[0]}://:PASSWORD@"
                              f"{remote.host}:{remote.port}' instead of the flag")
    return remote


def user_sccache_warning(remote: Remote | None, environ: dict[str, str] | None = None
                         ) -> tuple[str, str]:
    """(warning, fix) when the user's environment sets sccache's own remote variables
    (SCCACHE_REMOTE_VARS), which this build does not use; ("", "") when it sets none."""
    env = os.environ if environ is None else environ
    found = [k for k in SCCACHE_REMOTE_VARS if env.get(k)]
    if not found:
        return "", ""
    shown = ", ".join(f"{k}={_redact_raw(env[k])}" for k in found)
    using = (f"this build's remote is {remote.redacted} (from {remote.source})" if remote
             else "this build uses the local compile cache only")
    endpoint = _redact_raw(env[found[0]])
    return (f"{shown} is set, but sccache's backend is chosen by the pipeline: it is not "
            f"used ({using})",
            f"to use that server as the remote, set {ENV_VAR}={endpoint} (a password, if "
            f"any, in that variable only) or pass {CLI_FLAG}; else unset {found[0]}")


def _resp(*words: str) -> bytes:
    return b"".join([f"*{len(words)}\r\n".encode()] +
                    [f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words])


def ping(remote: Remote, timeout: float = PING_TIMEOUT_S) -> Remote:
    """TCP connect + (AUTH +) PING against a Redis remote; the remote with `reachable`
    and `detail` set. S3/GCS are not probed (sccache's own credentials chain decides)."""
    if remote.backend != "redis":
        return replace(remote, reachable=None,
                       detail=f"{remote.backend} is passed to sccache unchecked")
    started = time.monotonic()
    try:
        with socket.create_connection((remote.host, remote.port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            sock: socket.socket = raw
            if remote.scheme == "rediss":
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=remote.host)
            if remote.password:
                words = [remote.username, remote.password] if remote.username \
                    else [remote.password]
                sock.sendall(_resp("AUTH", *words))
                answer = _read_line(sock)
                if not answer.startswith("+OK"):
                    return replace(remote, reachable=False,
                                   detail=f"AUTH refused: {answer[:80] or 'no answer'}")
            sock.sendall(_resp("PING"))
            answer = _read_line(sock)
    except (OSError, ssl.SSLError) as exc:
        return replace(remote, reachable=False, detail=f"{type(exc).__name__}: {exc}")
    ms = (time.monotonic() - started) * 1000
    if answer.startswith("+PONG"):
        return replace(remote, reachable=True, detail=f"PONG in {ms:.0f} ms")
    return replace(remote, reachable=False,
                   detail=f"PING answered {answer[:80]!r}, not +PONG")


def _read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\r\n") and len(data) < 4096:
        chunk = sock.recv(512)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def attach(cache: CompileCache, remote: Remote | None) -> tuple[CompileCache, str]:
    """The compile cache with its remote when sccache can use it (checked now), and a
    warning ("" when none) for a remote that is configured but not used."""
    if remote is None:
        return cache, ""
    checked = ping(remote)
    if cache.tool != "sccache":
        return cache, (f"compile cache remote {checked.redacted} ({checked.source}) is not "
                       f"used: the compile cache is {cache.tool}, the remote needs sccache "
                       "(set [build] compile_cache = \"sccache\")")
    if checked.reachable is False:
        return replace(cache, remote=checked), (
            f"compile cache remote {checked.redacted} ({checked.source}) is unreachable "
            f"({checked.detail}): building with the local cache only "
            f"{cache.directory}; the build does not wait for the remote")
    return replace(cache, remote=checked), ""


@dataclass(frozen=True)
class Fallback:
    """What RemoteGuard did: when the remote stopped answering (seconds into the package
    build), what the last ping said, and the statistics of the sccache server it stopped
    (that server's counts are lost with it; the build's own are the sum of both)."""
    after_s: float
    detail: str
    stats_before: dict[str, Any] | None


class RemoteGuard:
    """Watches a Redis remote while a package compiles; when it stops answering, calls
    `switch_to_local` once, which restarts the sccache server with the local cache only.

    Why: sccache 0.16 waits 60 s on every lookup in a Redis that went away (its cache
    lookup timeout; the Redis client keeps retrying the connection underneath, and the
    error counters stay 0). Measured with a C file: 0.2 s with Redis up, 60.1 s after
    SHUTDOWN, per compile. A build of thousands of units would crawl for hours. With the
    guard an outage costs about GUARD_INTERVAL_S × GUARD_FAILURES plus sccache's 10 s
    shutdown grace once: compiles in flight see their server go away and compile locally
    (SCCACHE_IGNORE_SERVER_IO_ERROR=1 in the compile environment), later ones reach the
    local-only server. S3/GCS remotes are not watched (not probed, see ping)."""

    def __init__(self, remote: Remote | None,
                 switch_to_local: Callable[[], dict[str, Any] | None],
                 interval_s: float = GUARD_INTERVAL_S, failures: int = GUARD_FAILURES
                 ) -> None:
        self.remote = remote if remote is not None and remote.backend == "redis" else None
        self._switch = switch_to_local
        self._interval = interval_s
        self._failures = failures
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self.fallback: Fallback | None = None
        self.error = ""

    def __enter__(self) -> RemoteGuard:
        if self.remote is not None:
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="remote-cache-guard",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        assert self.remote is not None
        failed = 0
        while not self._stop.wait(self._interval):
            checked = ping(self.remote, timeout=min(PING_TIMEOUT_S, self._interval))
            failed = failed + 1 if checked.reachable is False else 0
            if failed < self._failures:
                continue
            after = time.monotonic() - self._started
            try:
                stats = self._switch()
            except Exception as exc:  # noqa: BLE001 - a thread must not die silently
                self.error = f"{type(exc).__name__}: {exc}"
                stats = None
            self.fallback = Fallback(round(after, 1), checked.detail, stats)
            return


def after_build(remote: Remote, stats: dict[str, Any] | None,
                checked: Remote | None = None, fallback: Fallback | None = None) -> str:
    """A warning ("" when none) for a remote that stopped working during a build: sccache's
    storage error counters of the build (`stats`, toolchain.compile_cache_stats) are not
    zero, or the remote does not answer now (`checked`: ping after the build; a remote
    that was already unreachable when the plan was made was warned about then). The build
    itself does not fail: sccache keeps every object in its local cache (write policy l0)."""
    errors = (stats or {}).get("errors") or {}
    failed = {k: int(v) for k, v in errors.items() if v}
    if remote.reachable is False:
        return ""
    gone = checked.detail if checked is not None and checked.reachable is False else ""
    if not failed and not gone and fallback is None:
        return ""
    why = []
    if fallback is not None:
        why.append(f"it stopped answering {fallback.after_s:.0f} s into the build "
                   f"({fallback.detail}), and the sccache server was restarted with the "
                   "local cache only")
    if failed:
        why.append("sccache counted " + ", ".join(
            f"{n} {'cache ' + k + ' errors' if k != 'timeouts' else 'cache timeouts'}"
            for k, n in failed.items()))
    if gone and fallback is None:
        why.append(f"it does not answer after the build ({gone})")
    misses = int((stats or {}).get("misses", 0))
    compiles = int((stats or {}).get("hits", 0)) + misses
    return (f"compile cache remote {remote.redacted} failed during the build: "
            f"{'; '.join(why)}. The compiles fell back to the local compile cache "
            f"({compiles} cache lookups, {misses} compiled here; objects compiled after the "
            "remote failed are not on the remote, so other builders will compile them "
            "again). Fix: check the server (is it running and reachable from this host?), "
            f"then rebuild to fill it; while it is down, build with {CLI_FLAG} {OFF}")
