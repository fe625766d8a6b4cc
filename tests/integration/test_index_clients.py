"""The wheel index against real clients: wheels published by the CLI, served by the real
serve-index command on loopback, installed by pip (in a fresh venv) and by uv, and read
back by an independent Simple API client (pypi-simple), hashes checked everywhere.

pip and uv run with their configuration isolated (PIP_CONFIG_FILE=/dev/null + --isolated,
UV_NO_CONFIG + --no-config) and the test index as the only index: nothing may come from
anywhere else, which the tests check on pip's own install report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from index_support import (
    LABEL_CU128,
    LABEL_CU130,
    Server,
    TinyWheels,
    build_verified_tiny_wheels,
    cli,
    pip_resolve,
    sha256,
    start_server,
    stop_server,
    uv_bin,
)
from pypi_simple import ACCEPT_HTML_ONLY, ACCEPT_JSON_ONLY, PyPISimple

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> TinyWheels:
    return build_verified_tiny_wheels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def index(wheels: TinyWheels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("index") / "index"
    folders = {w.parent for w in wheels.labelled} | {wheels.yankme["1.0"].parent}
    cli("publish", "--index", root, "--wheels", *sorted(folders))
    return root


@pytest.fixture(scope="module")
def server(index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(index, tmp_path_factory.mktemp("log") / "serve.log")
    yield running
    stop_server(running)


def _installed(python: Path, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "--isolated", "list", "--format", "json"],
                         check=True, capture_output=True, text=True, env=env).stdout
    return {item["name"]: item["version"] for item in json.loads(out)}


def test_banner_prints_index_url_and_exact_install_commands(server: Server) -> None:
    assert f"index URL: {server.url}" in server.banner
    pip_line = next(line for line in server.banner.splitlines() if "pip install" in line
                    and "uv" not in line)
    uv_line = next(line for line in server.banner.splitlines() if "uv pip install" in line)
    # The exact version with its local label, so PyPI can never satisfy it.
    assert f'"tinyflash==1.0+{LABEL_CU130}"' in pip_line
    assert f"--index-url {server.url}" in pip_line
    assert f"--index {server.url}" in uv_line


def test_a_second_server_on_the_same_port_is_a_config_error(server: Server,
                                                           index: Path) -> None:
    port = urllib.parse.urlsplit(server.url).port
    proc = cli("serve-index", "--index", index, "--port", str(port), "--quiet", check=False,
               timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "--port 0" in proc.stderr and "Traceback" not in proc.stderr
    with urllib.request.urlopen(server.url) as resp:  # the first one still serves
        assert resp.status == 200


def test_pip_installs_one_variant_with_its_pinned_dependency(
        server: Server, pip_venv: Path, client_env: dict[str, str], tmp_path: Path) -> None:
    requirement = f"tinyvllm==1.0+{LABEL_CU130}"
    report = tmp_path / "pip-report.json"
    subprocess.run([str(pip_venv), "-m", "pip", "--isolated", "install", "--report",
                    str(report), "--index-url", server.url, requirement],
                   check=True, capture_output=True, text=True, env=client_env)
    installed = _installed(pip_venv, client_env)
    assert installed["tinyvllm"] == f"1.0+{LABEL_CU130}"
    # tinyvllm pins tinyflash to the same variant; the other variant is never chosen.
    assert installed["tinyflash"] == f"1.0+{LABEL_CU130}"
    urls = [item["download_info"]["url"] for item in json.loads(report.read_text())["install"]]
    assert len(urls) == 2
    assert all(url.startswith(server.url.removesuffix("simple/") + "files/") for url in urls)


def test_uv_installs_the_other_variant(server: Server, client_env: dict[str, str],
                                       tmp_path: Path) -> None:
    uv = uv_bin()
    venv = tmp_path / "uvvenv"
    subprocess.run([uv, "venv", "--no-config", "--python", sys.executable, str(venv)],
                   check=True, capture_output=True, env=client_env)
    subprocess.run([uv, "pip", "install", "--no-config", "--python", str(venv / "bin/python"),
                    "--index-url", server.url, f"tinyvllm==1.0+{LABEL_CU128}"],
                   check=True, capture_output=True, text=True, env=client_env)
    freeze = subprocess.run([uv, "pip", "freeze", "--no-config", "--python",
                             str(venv / "bin/python")],
                            check=True, capture_output=True, text=True, env=client_env).stdout
    assert f"tinyvllm==1.0+{LABEL_CU128}" in freeze.splitlines()
    assert f"tinyflash==1.0+{LABEL_CU128}" in freeze.splitlines()


@pytest.mark.parametrize("accept", [ACCEPT_JSON_ONLY, ACCEPT_HTML_ONLY], ids=["json", "html"])
def test_pypi_simple_reads_pages_metadata_and_hashes(server: Server, wheels: TinyWheels,
                                                     accept: str, tmp_path: Path) -> None:
    local = {w.name: w for w in [*wheels.labelled, *wheels.yankme.values()]}
    with PyPISimple(endpoint=server.url, accept=accept) as client:
        root = client.get_index_page()
        assert sorted(root.projects) == ["tinyflash", "tinyvllm", "yankme"]
        assert root.repository_version == "1.1"
        page = client.get_project_page("tinyvllm")
        assert page.repository_version == "1.1"
        assert sorted(p.filename for p in page.packages) == sorted(
            w.name for w in wheels.labelled if w.name.startswith("tinyvllm"))
        for pkg in page.packages:
            assert pkg.digests["sha256"] == sha256(local[pkg.filename])
            assert pkg.requires_python == ">=3.8"
            assert pkg.has_metadata
            assert pkg.metadata_digests is not None
            metadata = client.get_package_metadata(pkg, verify=True)  # checks the hash
            assert f"Requires-Dist: tinyflash==1.0+{pkg.version.split('+')[1]}" in metadata
            target = tmp_path / pkg.filename
            client.download_package(pkg, target, verify=True)  # checks the sha256 too
            assert target.read_bytes() == local[pkg.filename].read_bytes()
            if accept == ACCEPT_JSON_ONLY:  # PEP 700 keys exist in JSON only
                assert pkg.size == local[pkg.filename].stat().st_size
                assert pkg.upload_time is not None
        if accept == ACCEPT_JSON_ONLY:
            assert page.versions == [f"1.0+{LABEL_CU128}", f"1.0+{LABEL_CU130}"]


def _get(url: str, accept: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Accept": accept} if accept is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize(("accept", "status", "content_type"), [
    ("application/vnd.pypi.simple.v1+json", 200, "application/vnd.pypi.simple.v1+json"),
    ("application/vnd.pypi.simple.latest+json", 200, "application/vnd.pypi.simple.v1+json"),
    ("application/vnd.pypi.simple.v1+html", 200, "application/vnd.pypi.simple.v1+html"),
    ("text/html", 200, "text/html; charset=utf-8"),
    (None, 200, "text/html; charset=utf-8"),
    # pip's header: JSON preferred, HTML as fallback.
    ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
     "text/html; q=0.01", 200, "application/vnd.pypi.simple.v1+json"),
    ("text/html;q=0.9, application/vnd.pypi.simple.v1+json;q=0.5", 200,
     "text/html; charset=utf-8"),
    ("image/png", 406, None),
])
def test_accept_negotiation_and_content_type(server: Server, accept: str | None, status: int,
                                             content_type: str | None) -> None:
    code, headers, body = _get(server.url + "tinyflash/", accept)
    assert code == status
    if content_type is None:
        return
    assert headers["Content-Type"] == content_type
    assert headers["Vary"] == "Accept"
    if "json" in content_type:
        data = json.loads(body)
        assert data["meta"]["api-version"] == "1.1"
        assert data["name"] == "tinyflash"
    else:
        assert b'<meta name="pypi:repository-version" content="1.1">' in body


def test_format_parameter_and_name_normalization(server: Server) -> None:
    code, headers, _ = _get(server.url + "tinyflash/?format=application/vnd.pypi.simple.v1+json",
                            "text/html")
    assert (code, headers["Content-Type"]) == (200, "application/vnd.pypi.simple.v1+json")
    # PEP 503: a non-normalized name is redirected to the normalized URL (urllib follows).
    code, _, body = _get(server.url + "TinyFlash/", "application/vnd.pypi.simple.v1+json")
    assert code == 200 and json.loads(body)["name"] == "tinyflash"
    assert _get(server.url + "nosuchproject/", None)[0] == 404
    # Only the index is served: not the state, the lock or the generations.
    base = server.url.removesuffix("simple/")
    for path in ("index-state.json", ".lock", "generations/", "files/../index-state.json"):
        assert _get(base + path, None)[0] == 404, path


def test_index_list_reports_needs_from_the_manifest(index: Path) -> None:
    data = json.loads(cli("index-list", "--index", index, "--json", "-").stdout)
    assert data["schema_version"] == 1
    rows = {r["filename"]: r for r in data["files"]}
    cu130 = rows[f"tinyvllm-1.0+{LABEL_CU130}-py3-none-any.whl"]
    assert (cu130["torch"], cu130["cuda"], cu130["arch"], cu130["needs_from"]) == \
        ("2.14.1+cu130", "13.0", ["12.0"], "manifest")
    assert cu130["local_label"] == LABEL_CU130 and cu130["yanked"] is None
    table = cli("index-list", "--index", index).stdout
    assert "2.9.0+cu128" in table and LABEL_CU128 in table


def test_yank_hides_file_from_ranges_not_from_exact_pins(
        server: Server, index: Path, pip_venv: Path, client_env: dict[str, str],
        tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert pip_resolve(pip_venv, server.url, "yankme>=1.0", client_env, report)["yankme"] \
        .endswith("yankme-1.1-py3-none-any.whl")
    cli("index-yank", "--index", index, "yankme-1.1-py3-none-any.whl", "--reason",
        "breaks import on sm_120")
    try:
        picked = pip_resolve(pip_venv, server.url, "yankme>=1.0", client_env, report)
        assert picked["yankme"].endswith("yankme-1.0-py3-none-any.whl")
        picked = pip_resolve(pip_venv, server.url, "yankme==1.1", client_env, report)
        assert picked["yankme"].endswith("yankme-1.1-py3-none-any.whl")
        uv_out = subprocess.run(
            [uv_bin(), "pip", "install", "--dry-run", "--no-config", "--python",
             str(pip_venv), "--index-url", server.url, "yankme>=1.0"],
            check=True, capture_output=True, text=True, env=client_env).stderr
        assert "yankme==1.0" in uv_out
        with PyPISimple(endpoint=server.url, accept=ACCEPT_JSON_ONLY) as client:
            yanked = {p.filename: p.yanked_reason for p in
                      client.get_project_page("yankme").packages if p.is_yanked}
        assert yanked == {"yankme-1.1-py3-none-any.whl": "breaks import on sm_120"}
    finally:
        cli("index-yank", "--index", index, "yankme-1.1-py3-none-any.whl", "--undo")
    assert pip_resolve(pip_venv, server.url, "yankme>=1.0", client_env, report)["yankme"] \
        .endswith("yankme-1.1-py3-none-any.whl")
    state = json.loads((index / "index-state.json").read_text())
    entry = next(f for f in state["files"] if f["filename"] == "yankme-1.1-py3-none-any.whl")
    assert [h["action"] for h in entry["history"]] == ["publish", "yank", "unyank"]
