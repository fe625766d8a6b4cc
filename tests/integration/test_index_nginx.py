"""The wheel index served by Debian's real nginx with the configuration that
`index-server-config` writes (run as it is, on loopback): pip and uv install from it, a
PEP 691 client gets JSON, a yank done while nginx serves reaches the next install, and a
publish never shows a client a half-written page. A second root of the same nginx sits
under a URL prefix (/sm120/simple/), as per-target roots do.

pip and uv run isolated (no machine configuration), the test nginx the only index.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from index_support import (
    LABEL_CU128,
    LABEL_CU130,
    TinyWheels,
    build_verified_tiny_wheels,
    cli,
    sha256,
    uv_bin,
)
from nginx_server import nginx_serving
from pypi_simple import ACCEPT_JSON_ONLY, PyPISimple

from vllm_wheels.index.layout import FILE_CACHE_CONTROL, JSON_TYPE, PAGE_CACHE_CONTROL

pytestmark = pytest.mark.timeout(300)
PIP_ACCEPT = f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> TinyWheels:
    return build_verified_tiny_wheels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def indexes(wheels: TinyWheels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two roots: everything at /simple/, and the cu128 variant alone at /sm120/simple/."""
    base = tmp_path_factory.mktemp("indexes")
    main, sm120 = base / "main", base / "sm120"
    folders = {w.parent for w in wheels.labelled} | {wheels.yankme["1.0"].parent}
    cli("publish", "--index", main, "--wheels", *sorted(folders))
    cli("publish", "--index", sm120, "--wheels", wheels.variants[LABEL_CU128][0].parent)
    return {"": main, "/sm120": sm120}


@pytest.fixture(scope="module")
def nginx(indexes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    roots = [(index, prefix) for prefix, index in indexes.items()]
    with nginx_serving(roots, tmp_path_factory.mktemp("nginx")) as base:
        yield base


def _get(url: str, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _pip_pick(python: Path, url: str, requirement: str, env: dict[str, str], report: Path,
              *cache: str) -> str:
    """The download URL pip picks for `yankme` (pip --report)."""
    subprocess.run([str(python), "-m", "pip", "--isolated", *cache, "install", "--dry-run",
                    "--ignore-installed", "--report", str(report), "--index-url", url,
                    requirement], check=True, capture_output=True, text=True, env=env)
    picked = {item["metadata"]["name"]: item["download_info"]["url"]
              for item in json.loads(report.read_text())["install"]}
    return picked["yankme"]


def test_pip_and_uv_install_from_nginx(nginx: str, pip_venv: Path, client_env: dict[str, str],
                                      tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    subprocess.run([str(pip_venv), "-m", "pip", "--isolated", "--no-cache-dir", "install",
                    "--report", str(report), "--index-url", f"{nginx}/simple/",
                    f"tinyvllm==1.0+{LABEL_CU130}"],
                   check=True, capture_output=True, text=True, env=client_env)
    installed = {i["metadata"]["name"]: (i["metadata"]["version"], i["download_info"]["url"])
                 for i in json.loads(report.read_text())["install"]}
    assert installed["tinyvllm"][0] == installed["tinyflash"][0] == f"1.0+{LABEL_CU130}"
    assert all(url.startswith(f"{nginx}/files/") for _v, url in installed.values())

    uv = uv_bin()
    venv = tmp_path / "uvvenv"
    subprocess.run([uv, "venv", "--no-config", "--python", sys.executable, str(venv)],
                   check=True, capture_output=True, env=client_env)
    # The cu128 root under its URL prefix: a machine points uv at its own root.
    subprocess.run([uv, "pip", "install", "--no-config", "--python", str(venv / "bin/python"),
                    "--index-url", f"{nginx}/sm120/simple/", f"tinyflash==1.0+{LABEL_CU128}"],
                   check=True, capture_output=True, text=True, env=client_env)
    freeze = subprocess.run([uv, "pip", "freeze", "--no-config", "--python",
                             str(venv / "bin/python")], check=True, capture_output=True,
                            text=True, env=client_env).stdout
    assert f"tinyflash==1.0+{LABEL_CU128}" in freeze.splitlines()
    # That root holds only its own variant.
    status, _, body = _get(f"{nginx}/sm120/simple/tinyflash/", {"Accept": JSON_TYPE})
    assert status == 200
    assert [f["filename"] for f in json.loads(body)["files"]] == \
        [f"tinyflash-1.0+{LABEL_CU128}-py3-none-any.whl"]


def test_pep691_client_gets_json_and_the_headers_are_right(nginx: str, wheels: TinyWheels,
                                                           tmp_path: Path) -> None:
    status, headers, body = _get(f"{nginx}/simple/tinyvllm/", {"Accept": PIP_ACCEPT})
    assert status == 200
    assert headers["Content-Type"] == JSON_TYPE
    assert headers["Vary"] == "Accept" and headers["Cache-Control"] == PAGE_CACHE_CONTROL
    assert headers.get("ETag")
    data = json.loads(body)
    assert data["meta"]["api-version"] == "1.1" and data["name"] == "tinyvllm"
    # q=0 refuses JSON; no Accept at all gets the HTML every client reads.
    for accept in (f"{JSON_TYPE};q=0, text/html", None):
        status, headers, body = _get(f"{nginx}/simple/tinyvllm/",
                                     {"Accept": accept} if accept else {})
        assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
        assert b'<meta name="pypi:repository-version" content="1.1">' in body
    # The same answers an independent Simple API client checks, hashes included.
    local = {w.name: w for w in wheels.labelled}
    with PyPISimple(endpoint=f"{nginx}/simple/", accept=ACCEPT_JSON_ONLY) as client:
        assert sorted(client.get_index_page().projects) == ["tinyflash", "tinyvllm", "yankme"]
        for pkg in client.get_project_page("tinyvllm").packages:
            assert pkg.digests["sha256"] == sha256(local[pkg.filename])
            assert "Requires-Dist: tinyflash==" in client.get_package_metadata(pkg, verify=True)
            client.download_package(pkg, tmp_path / pkg.filename, verify=True)
    name = wheels.variants[LABEL_CU130][0].name
    status, headers, _ = _get(f"{nginx}/files/tinyflash/{name.replace('+', '%2B')}")
    assert (status, headers["Content-Type"]) == (200, "application/octet-stream")
    assert headers["Cache-Control"] == FILE_CACHE_CONTROL
    status, headers, _ = _get(f"{nginx}/files/tinyflash/{name}.metadata")
    assert (status, headers["Content-Type"]) == (200, "text/plain; charset=utf-8")
    # Only the index: no state, lock, generations, listings or hidden files.
    for path in ("/index-state.json", "/.lock", "/generations/", "/current/", "/files/",
                 "/files/tinyflash/", "/simple/../index-state.json", "/sm120/index-state.json",
                 "/files/tinyflash/.hidden"):
        assert _get(nginx + path)[0] == 404, path
    # Redirects keep the URL prefix and point at a path (right behind any proxy).
    request = urllib.request.Request(f"{nginx}/sm120/simple/tinyflash", method="HEAD")
    opener = urllib.request.build_opener(_NoRedirect())
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(request, timeout=10)
    info.value.close()
    assert (info.value.code, info.value.headers["Location"]) == (301, "/sm120/simple/tinyflash/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_a_yank_while_nginx_serves_reaches_the_next_pip_install(
        nginx: str, indexes: dict[str, Path], pip_venv: Path, client_env: dict[str, str],
        tmp_path: Path) -> None:
    url, index, report = f"{nginx}/simple/", indexes[""], tmp_path / "report.json"
    page = f"{url}yankme/"
    # pip once with no cache, and once with its HTTP cache kept between the two installs:
    # the page's no-cache + ETag must make the cached copy be asked for again.
    no_cache, with_cache = ("--no-cache-dir",), ("--cache-dir", str(tmp_path / "pip-cache"))
    for cache in (no_cache, with_cache):
        assert _pip_pick(pip_venv, url, "yankme>=1.0", client_env, report, *cache) \
            .endswith("yankme-1.1-py3-none-any.whl")
    _, before, _ = _get(page, {"Accept": PIP_ACCEPT})
    cli("index-yank", "--index", index, "yankme-1.1-py3-none-any.whl", "--reason", "broken")
    try:
        for cache in (no_cache, with_cache):
            assert _pip_pick(pip_venv, url, "yankme>=1.0", client_env, report, *cache) \
                .endswith("yankme-1.0-py3-none-any.whl"), cache
        # A cache revalidating with the old ETag gets the new page, not 304.
        status, after, body = _get(page, {"Accept": PIP_ACCEPT,
                                          "If-None-Match": before["ETag"]})
        assert status == 200 and after["ETag"] != before["ETag"]
        assert after["Cache-Control"] == PAGE_CACHE_CONTROL
        yanked = {f["filename"]: f["yanked"] for f in json.loads(body)["files"]}
        assert yanked["yankme-1.1-py3-none-any.whl"] == "broken"
        # ... and the unchanged ETag gets 304: revalidation is cheap when nothing changed.
        assert _get(page, {"Accept": PIP_ACCEPT, "If-None-Match": after["ETag"]})[0] == 304
    finally:
        cli("index-yank", "--index", index, "yankme-1.1-py3-none-any.whl", "--undo")
    assert _pip_pick(pip_venv, url, "yankme>=1.0", client_env, report, *with_cache) \
        .endswith("yankme-1.1-py3-none-any.whl")


def test_a_publish_never_shows_a_client_a_half_written_page(
        nginx: str, indexes: dict[str, Path], wheels: TinyWheels) -> None:
    """Clients poll the root and a project page, JSON and HTML, while publishes and yanks
    switch generations: every answer is 200 and whole, and every file a JSON page lists
    is there."""
    index = indexes[""]
    stop = threading.Event()
    problems: list[str] = []
    seen_projects: set[tuple[str, ...]] = set()
    answers = [0]

    def poll(path: str, accept: str) -> None:
        while not stop.is_set():
            status, headers, body = _get(nginx + path, {"Accept": accept})
            answers[0] += 1
            if status != 200:
                problems.append(f"{path}: {status}")
                continue
            if accept == JSON_TYPE:
                try:
                    data = json.loads(body)
                except ValueError as exc:
                    problems.append(f"{path}: not whole JSON ({exc}): {body[-80:]!r}")
                    continue
                if "projects" in data:
                    seen_projects.add(tuple(p["name"] for p in data["projects"]))
                for item in data.get("files", []):
                    if _get(urllib.parse.urljoin(nginx + path, item["url"]))[0] != 200:
                        problems.append(f"{path} lists {item['url']}, not served")
            elif not body.rstrip().endswith(b"</html>") or len(body) != \
                    int(headers["Content-Length"]):
                problems.append(f"{path}: HTML cut short: {body[-80:]!r}")

    pollers = [threading.Thread(target=poll, args=(path, accept)) for path in
               ("/simple/", "/simple/yankme/") for accept in (JSON_TYPE, "text/html")]
    for thread in pollers:
        thread.start()
    try:
        cli("publish", "--index", index, "--wheels", wheels.spare, "--allow-unverified",
            "concurrency test")
        for _ in range(3):
            cli("index-yank", "--index", index, "yankme-1.0-py3-none-any.whl", "--reason", "x")
            cli("index-yank", "--index", index, "yankme-1.0-py3-none-any.whl", "--undo")
    finally:
        stop.set()
        for thread in pollers:
            thread.join()
    assert not problems, problems[:10]
    assert answers[0] > 20
    # The pollers saw the index before and after the publish (generations switched).
    assert {("tinyflash", "tinyvllm", "yankme"),
            ("sparepkg", "tinyflash", "tinyvllm", "yankme")} <= seen_projects
