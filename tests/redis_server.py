"""A real Redis (Debian's redis-server) on a free loopback port, for the shared compile
cache tests: no persistence (--save '' --appendonly no), stopped and its files removed
afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_command(port: int, *words: str, password: str = "") -> str:
    """One command over RESP, answered as the first reply line (the tests' own client,
    independent of the pipeline's)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if password:
            sock.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n".encode())
            sock.recv(64)
        payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        sock.sendall(payload.encode())
        return sock.recv(4096).decode().split("\r\n")[0]


@contextlib.contextmanager
def redis_server(password: str = "") -> Iterator[int]:
    """Yields the port of a fresh redis-server on 127.0.0.1."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server; "
                    ".ci/run installs it)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="redis-"))
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--dir", str(workdir)]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis_command(port, "PING", password=password) == "+PONG":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
