"""Wheel index: PEP 691 Accept negotiation, the printed install commands, the upload
configuration (credentials only from the environment), and the real server's answers to
hostile paths and to a port already in use."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import urllib.parse
from pathlib import Path

import pytest

from vllm_wheels.errors import ConfigError
from vllm_wheels.index import serve, upload
from vllm_wheels.index.store import FileRecord, IndexDir, IndexState

JSON = "application/vnd.pypi.simple.v1+json"
HTML = "application/vnd.pypi.simple.v1+html"


@pytest.mark.parametrize(("accept", "expected"), [
    (None, ("html", "text/html; charset=utf-8")),
    ("", ("html", "text/html; charset=utf-8")),
    (JSON, ("json", JSON)),
    ("application/vnd.pypi.simple.latest+json", ("json", JSON)),
    (HTML, ("html", HTML)),
    ("application/vnd.pypi.simple.latest+html", ("html", HTML)),
    (f"{JSON}, {HTML};q=0.1, text/html;q=0.01", ("json", JSON)),  # pip, uv
    (f"text/html, {JSON};q=0.9", ("html", "text/html; charset=utf-8")),
    (f"{JSON};q=0, text/html", ("html", "text/html; charset=utf-8")),
    ("*/*", ("html", "text/html; charset=utf-8")),  # generic clients get the fallback
    (f"*/*, {JSON};q=0.5", ("html", "text/html; charset=utf-8")),
    (f"*/*;q=0.1, {HTML}", ("html", HTML)),
    ("TEXT/HTML", ("html", "text/html; charset=utf-8")),
    ("image/png", None),
    (f"{JSON};q=0", None),
    ("application/json", None),  # PEP 691 uses its own media types only
])
def test_negotiate(accept: str | None, expected: tuple[str, str] | None) -> None:
    assert serve.negotiate(accept) == expected


def _record(project: str, version: str, yanked: str | None = None) -> FileRecord:
    return FileRecord(filename=f"{project}-{version}-py3-none-any.whl", project=project,
                      version=version, sha256="0" * 64, size=1, upload_time="t",
                      origin="built", verification="verify-abi", verification_detail="",
                      yanked=yanked)


def test_install_commands_pin_vllm_exactly_and_skip_yanked() -> None:
    records = [_record("flashinfer-python", "0.5.2+cu128.torch290.sm120"),
               _record("vllm", "0.11.2+cu128.torch290.sm120"),
               _record("vllm", "0.11.3+cu128.torch290.sm120", yanked="broken")]
    state = IndexState(1, {r.filename: r for r in records})
    pip_cmd, uv_cmd = serve.install_commands("http://h:1/simple/", state)
    assert pip_cmd.startswith('pip install "vllm==0.11.2+cu128.torch290.sm120" '
                              "--index-url http://h:1/simple/")
    assert uv_cmd == 'uv pip install "vllm==0.11.2+cu128.torch290.sm120" --index http://h:1/simple/'
    assert "PACKAGE==" in serve.install_commands("u", IndexState())[0]


def test_upload_config_rejects_credentials_and_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "index.toml"
    config.write_text('schema_version = 1\n[upload]\nurl = "https://idx.example/"\n'
                      'password = "hunter2"\n')
    with pytest.raises(ConfigError, match="credential") as info:
        upload.load_upload_config(config)
    assert "UV_PUBLISH_PASSWORD" in info.value.fix
    config.write_text('[upload]\nurl = "https://idx.example/"\nchek_url = "x"\n')
    with pytest.raises(ConfigError, match="unknown key") as info:
        upload.load_upload_config(config)
    assert "check_url" in info.value.fix
    config.write_text('[upload]\nurl = "ftp://idx"\n')
    with pytest.raises(ConfigError, match="http"):
        upload.load_upload_config(config)


def test_upload_commands(tmp_path: Path) -> None:
    config = tmp_path / "index.toml"
    config.write_text('[upload]\nurl = "https://idx.example/up/"\n'
                      'check_url = "https://idx.example/simple/"\n')
    loaded = upload.load_upload_config(config)
    assert loaded == upload.UploadConfig(url="https://idx.example/up/", tool="uv",
                                         check_url="https://idx.example/simple/")
    cmd = upload.upload_command(loaded, [Path("a.whl")])
    assert cmd[1:] == ["publish", "--trusted-publishing", "never", "--publish-url",
                       "https://idx.example/up/", "--check-url", "https://idx.example/simple/",
                       "a.whl"]
    twine = upload.upload_command(upload.UploadConfig(url="https://x/", tool="twine"),
                                  [Path("a.whl")])
    assert twine[1:] == ["-m", "twine", "upload", "--non-interactive", "--skip-existing",
                         "--repository-url", "https://x/", "a.whl"]
    assert not any("password" in part.lower() for part in cmd + twine)


def test_upload_urls_with_credentials_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "index.toml"
    for url, check in (("https://ci:s3cret-token@idx.example/", None),
                       ("https://idx.example/", "https://ci:s3cret-token@idx.example/simple/"),
                       ("https://only-a-token@idx.example/", None)):
        config.write_text(f'[upload]\nurl = "{url}"\n'
                          + (f'check_url = "{check}"\n' if check else ""))
        with pytest.raises(ConfigError, match="holds credentials") as info:
            upload.load_upload_config(config)
        assert info.value.exit_code == 2
        assert "s3cret" not in info.value.render() and "only-a-token" not in info.value.render()
        assert "UV_PUBLISH_PASSWORD" in info.value.fix


# ------------------------------------------------------------------ the real server


def _get(url: str, path: str) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_server_answers_hostile_paths_without_injection_or_crash(tmp_path: Path) -> None:
    """Real server on loopback, real HTTP client: encoded CR/LF must not reach the
    Location header, and undecodable or NUL-bearing paths get an answer, not a traceback."""
    with serve.serving(IndexDir(tmp_path / "index")) as url:
        injected = _get(url, "/simple/pkg%0d%0aSet-Cookie:%20x=1")
        assert injected.status == 301
        assert injected.getheader("Set-Cookie") is None
        location = injected.getheader("Location") or ""
        assert location == "/simple/pkg%0D%0ASet-Cookie%3A%20x%3D1/"
        assert not any(ch in location for ch in "\r\n")

        wide = _get(url, "/simple/%C4%80?format=x")
        assert (wide.status, wide.getheader("Location")) == (301, "/simple/%C4%80/?format=x")
        assert _get(url, "/simple/%C4%80/").status == 404
        assert _get(url, "/files/pkg/a%00b").status == 404
        assert _get(url, "/files/pkg%00/a.whl").status == 404
        assert _get(url, "/simple/pkg%0d%0aSet-Cookie:%20x=1/").status == 404


def test_serving_on_a_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}") as info:
            serve.make_server(IndexDir(tmp_path / "index"), "127.0.0.1", port)
    assert info.value.exit_code == 2
    assert "--port" in info.value.fix and str(port) in info.value.fix


# ------------------------------------------------- pages from memory, files, raw HTTP


def _published(tmp_path: Path) -> tuple[IndexDir, Path]:
    from test_index_layout import make_wheel, to_add

    from vllm_wheels.index import publish
    from vllm_wheels.log import Reporter

    index = IndexDir(tmp_path / "index")
    # Stored (not deflated) random bytes: a wheel well above serve.SMALL_FILE, so it goes
    # out by sendfile; its .metadata is small and goes in one write.
    big = make_wheel(tmp_path / "in", "bigpkg", "1.0", extra=os.urandom(3 * serve.SMALL_FILE))
    small = make_wheel(tmp_path / "in", "smallpkg", "2.0")
    publish.add_to_index(index, to_add([big, small]), Reporter(None, stream=io.StringIO()))
    return index, big


def _exchange(port: int, payload: bytes, *, until_closed: bool = False,
              responses: int = 1) -> bytes:
    """Send raw bytes; read `responses` whole responses (or until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return data
            data += chunk
            if not until_closed and _complete(data) >= responses:
                return data


def _complete(data: bytes) -> int:
    count, rest = 0, data
    while b"\r\n\r\n" in rest:
        head, rest = rest.split(b"\r\n\r\n", 1)
        length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), b"0"))
        if b" 304 " in head.split(b"\r\n")[0] or head.startswith(b"HTTP/1.1 304"):
            length = 0
        if len(rest) < length:
            break
        rest = rest[length:]
        count += 1
    return count


def test_pages_come_from_memory_and_follow_each_generation(tmp_path: Path) -> None:
    """The same request bytes on one keep-alive connection, before and after a yank: the
    second generation's page arrives at once (the response cache is per generation), and
    an ETag revalidates to 304 only while the page is unchanged."""
    from vllm_wheels.index import yank
    from vllm_wheels.log import Reporter

    index, _big = _published(tmp_path)
    with serve.serving(index) as url:
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        headers = {"Accept": JSON}

        def get(extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
            conn.request("GET", "/simple/smallpkg/", headers={**headers, **(extra or {})})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()

        status, first, body = get()
        assert status == 200 and first["Cache-Control"] == "no-cache"
        assert first["Vary"] == "Accept" and first["Content-Type"] == JSON
        assert get() == (200, {**first, "Date": get()[1]["Date"]}, body)  # cached: same answer
        assert get({"If-None-Match": first["ETag"]})[0] == 304
        yank.set_yanked(index, ["smallpkg-2.0-py3-none-any.whl"], "broken",
                        Reporter(None, stream=io.StringIO()))
        status, second, body = get()
        assert status == 200 and second["ETag"] != first["ETag"]
        assert json.loads(body)["files"][0]["yanked"] == "broken"
        status, _, body = get({"If-None-Match": first["ETag"]})
        assert status == 200 and json.loads(body)["files"][0]["yanked"] == "broken"
        assert get({"If-None-Match": f'W/{second["ETag"]}, "other"'})[0] == 304
        conn.close()


def test_files_and_pipelined_requests(tmp_path: Path) -> None:
    """A large wheel (sendfile), then its page, pipelined in one write: both answers, in
    order, whole; HEAD gives the headers alone; a small file goes in one write."""
    index, big = _published(tmp_path)
    with serve.serving(index) as url:
        port = urllib.parse.urlsplit(url).port or 0
        path = f"/files/bigpkg/{big.name}"
        data = _exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"
                               "GET /simple/bigpkg/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                         responses=2)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert f"Content-Length: {big.stat().st_size}".encode() in head
        assert b"Cache-Control: public, max-age=31536000, immutable" in head
        assert rest[:big.stat().st_size] == big.read_bytes()
        second = rest[big.stat().st_size:]
        assert second.startswith(b"HTTP/1.1 200 OK") and b"bigpkg-1.0-py3-none-any.whl" in second

        head_only = _exchange(port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n"
                                    "Connection: close\r\n\r\n".encode(), until_closed=True)
        assert head_only.endswith(b"\r\n\r\n") and b"Connection: close" in head_only
        metadata = _get(url, f"/files/bigpkg/{big.name}.metadata")
        assert metadata.status == 200
        assert metadata.getheader("Content-Type") == "text/plain; charset=utf-8"


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /simple/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"405"),
    (b"GET /simple/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"400"),
    (b"GET /simple/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
    (b"GET /simple/ HTTP/2.0\r\n\r\n", b"505"),
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"GET /simple/ HTTP/1.1\r\n folded: header\r\n\r\n", b"400"),
    (b"GET /simple/ HTTP/1.1\r\nX: " + b"a" * (serve.MAX_HEAD + 10), b"431"),
    (b"GET /simple/ HTTP/1.0\r\n\r\n", b"404"),  # no index yet; 1.0 closes by default
])
def test_what_the_server_refuses_it_answers_and_closes(tmp_path: Path, request_bytes: bytes,
                                                        status: bytes) -> None:
    """No request bodies (nothing can be smuggled behind one), HTTP/1.x only, bounded
    headers: an error answer, then the connection is closed."""
    with serve.serving(IndexDir(tmp_path / "index")) as url:
        port = urllib.parse.urlsplit(url).port or 0
        answer = _exchange(port, request_bytes, until_closed=True)
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == status, answer[:200]
    assert b"Connection: close" in answer
    if status == b"405":
        assert b"Allow: GET, HEAD" in answer
