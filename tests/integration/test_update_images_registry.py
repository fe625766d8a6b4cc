"""`update-images` against a registry on loopback: the real HTTP client code (manifest
HEAD, anonymous bearer-token challenge, Docker-Content-Digest) and the real CLI in a
subprocess.

STAND-IN: the registry is a small OCI distribution API server written here, because
Docker Hub, ghcr.io and `registry:2` (which needs a Docker engine) are unreachable from
CI. It speaks the parts of the protocol the lookup uses, including the 401 + token dance
Docker Hub and ghcr.io do.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import serve_on_loopback

from vllm_wheels.images.commands import check_consistency
from vllm_wheels.images.versions import load_versions

TOKEN = "standin-token"


def _manifest(repository: str, tag: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType":
                       "application/vnd.oci.image.index.v1+json", "manifests": [],
                       "annotations": {"ref": f"{repository}:{tag}"}}).encode()


class _Registry(http.server.BaseHTTPRequestHandler):
    tags: set[tuple[str, str]] = set()
    requests: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(f"GET {self.path}")
        if self.path.startswith("/token?"):
            body = json.dumps({"token": TOKEN}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_error(404)

    def do_HEAD(self) -> None:  # noqa: N802
        self.requests.append(f"HEAD {self.path}")
        prefix, _, rest = self.path.partition("/v2/")
        repository, _, tag = rest.partition("/manifests/")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            host = self.headers["Host"]
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",'
                             f'service="standin",scope="repository:{repository}:pull"')
            self.end_headers()
            return
        if prefix or (repository, tag) not in self.tags:
            self.send_response(404)
            self.end_headers()
            return
        body = _manifest(repository, tag)
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.index.v1+json")
        self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()


@pytest.fixture
def registry() -> Iterator[str]:
    _Registry.tags = {("nvidia/cuda", t) for t in (
        "12.8.1-devel-ubuntu22.04", "12.8.1-runtime-ubuntu22.04", "13.0.3-base-ubuntu22.04",
        "13.0.3-devel-ubuntu22.04", "13.0.3-runtime-ubuntu22.04")} | {("astral-sh/uv", "0.13.9")}
    _Registry.requests = []
    with serve_on_loopback(_Registry) as url:
        yield url.removeprefix("http://")


@pytest.fixture
def repo(tmp_path: Path, repo_root: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(repo_root / "docker", root / "docker")
    shutil.copytree(repo_root / "build", root / "build")
    shutil.copy(repo_root / "noxfile.py", root / "noxfile.py")
    return root


def _point_at(repo: Path, registry: str) -> None:
    """Refer to the same images through the stand-in registry (a mirror prefix)."""
    for path in [repo / "docker" / "versions.toml", *(repo / "docker").glob("Dockerfile.*")]:
        text = path.read_text()
        text = text.replace('"nvidia/cuda:', f'"{registry}/nvidia/cuda:')
        text = text.replace('"ghcr.io/astral-sh/uv:', f'"{registry}/astral-sh/uv:')
        path.write_text(text)


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VLLM_WHEELS_CACHE": str(repo.parent / "cache"),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    return subprocess.run([sys.executable, "-m", "vllm_wheels", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_update_images_records_registry_digests(repo: Path, registry: str) -> None:
    _point_at(repo, registry)
    assert check_consistency(repo) == []
    done = _cli(repo, "update-images")
    assert done.returncode == 0, done.stdout + done.stderr
    versions = load_versions(repo / "docker" / "versions.toml")
    for pin in versions.images.values():
        repository, _, tag = pin.ref.partition("/")[2].rpartition(":")
        expected = "sha256:" + hashlib.sha256(_manifest(repository, tag)).hexdigest()
        assert pin.pinned == f"{pin.ref}@{expected}"
    # The anonymous token dance happened, against the realm the registry named.
    assert any(r.startswith("GET /token?") and "scope=repository%3Anvidia%2Fcuda%3Apull" in r
               for r in _Registry.requests)
    # The Dockerfiles now default to the digest-pinned bases, and agree with the stack.
    build = (repo / "docker" / "Dockerfile.build").read_text()
    # The default stack builds with PyPI's CUDA 13 toolkit, so its build image is the base
    # flavour of CUDA 13.0 (no system toolkit needed in it).
    assert f'ARG BASE_IMAGE="{versions.images["cuda-13-0-base"].pinned}"' in build
    assert check_consistency(repo) == []
    assert "updated ARG defaults in docker/Dockerfile.build" in done.stdout


def test_unknown_tag_writes_nothing(repo: Path, registry: str) -> None:
    _point_at(repo, registry)
    _Registry.tags.discard(("nvidia/cuda", "13.0.3-runtime-ubuntu22.04"))
    before = {p: p.read_text() for p in (repo / "docker").iterdir()}
    done = _cli(repo, "update-images")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "13.0.3-runtime-ubuntu22.04: the registry has no such tag" in done.stderr
    assert {p: p.read_text() for p in (repo / "docker").iterdir()} == before


def test_unreachable_registry_never_invents_a_digest(repo: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _point_at(repo, f"127.0.0.1:{port}")
    before = (repo / "docker" / "versions.toml").read_text()
    done = _cli(repo, "update-images")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "cannot reach 127.0.0.1" in done.stderr
    assert "digests are looked up, never guessed" in done.stderr
    assert (repo / "docker" / "versions.toml").read_text() == before
    assert all(not p.pinned for p in load_versions(repo / "docker" / "versions.toml")
               .images.values())
