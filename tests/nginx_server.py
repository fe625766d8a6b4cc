"""A real nginx (Debian's) on a free loopback port, serving wheel index roots with the
configuration `vllm-wheels index-server-config` writes, run as it is: no root needed
(`nginx -p DIR -c nginx.conf`, pid and temp files in DIR), stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from redis_server import free_port


def nginx_binary() -> str:
    exe = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None)
    if exe is None:
        pytest.fail("nginx is not installed (apt-get install -y nginx; .ci/run installs it)")
    return exe


def write_config(out: Path, roots: Sequence[tuple[Path, str]], port: int) -> None:
    """The generator's own command, once per (index, prefix) root, into one directory."""
    for index, prefix in roots:
        # As root, nginx runs its workers as nobody, who cannot enter pytest's 0700 tmp dirs.
        user = ["--worker-user", "root"] if os.geteuid() == 0 else []
        subprocess.run([sys.executable, "-m", "vllm_wheels", "index-server-config", "--index",
                        str(index), "--out", str(out), "--prefix", prefix, "--listen",
                        f"127.0.0.1:{port}", *user], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def nginx_serving(roots: Sequence[tuple[Path, str]], out: Path) -> Iterator[str]:
    """Yields http://127.0.0.1:PORT, nginx serving each (index dir, URL prefix) root."""
    exe = nginx_binary()
    port = free_port()
    write_config(out, roots, port)
    log = (out / "nginx-stderr.log").open("w")
    proc = subprocess.Popen([exe, "-p", str(out / "nginx"), "-c", "nginx.conf", "-e", "stderr",
                             "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start on port {port}:\n"
                            f"{(out / 'nginx-stderr.log').read_text()}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
