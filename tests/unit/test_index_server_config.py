"""index-server-config: what it writes for an index root at / and under a URL prefix
(nginx locations, the object-storage layout), same bytes for the same index, and the
arguments it refuses. Real nginx serves the generated configuration in
tests/integration/test_index_nginx.py."""

from __future__ import annotations

import html.parser
import io
import json
import posixpath
import urllib.parse
from pathlib import Path

import pytest
from test_index_layout import make_wheel, to_add

from vllm_wheels.cli import main
from vllm_wheels.errors import ConfigError
from vllm_wheels.index import publish, server_config
from vllm_wheels.index.layout import FILE_CACHE_CONTROL, JSON_TYPE, PAGE_CACHE_CONTROL
from vllm_wheels.index.store import IndexDir
from vllm_wheels.log import Reporter


@pytest.fixture
def index(tmp_path: Path) -> IndexDir:
    index = IndexDir(tmp_path / "index")
    wheels = [make_wheel(tmp_path / "in", "pkg-a", "1.0+cu128.sm120"),
              make_wheel(tmp_path / "in", "pkg-a", "1.1+cu128.sm120"),
              make_wheel(tmp_path / "in", "other", "2.0")]
    publish.add_to_index(index, to_add(wheels), Reporter(None, stream=io.StringIO()))
    return index


@pytest.mark.parametrize(("text", "prefix"), [
    (None, ""), ("", ""), ("/", ""), ("sm120", "/sm120"), ("/sm120/", "/sm120"),
    ("/fleet/sm90a", "/fleet/sm90a"), ("//a//b/", "/a/b"),
])
def test_prefix_is_normalized(text: str | None, prefix: str) -> None:
    assert server_config.parse_prefix(text) == prefix


@pytest.mark.parametrize("text", ["/sm 120", "/$x", "/a;b", "/simple", "/x/files", "/.hidden",
                                  "/a{b}"])
def test_prefixes_nginx_or_the_layout_cannot_hold_are_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        server_config.parse_prefix(text)
    assert info.value.exit_code == 2 and "--prefix /sm120" in info.value.fix


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [v for k, v in attrs if tag == "a" and k == "href" and v]


@pytest.mark.parametrize("prefix", ["", "/sm120"])
def test_object_layout_under_a_prefix_keeps_every_link_valid(index: IndexDir,
                                                             prefix: str) -> None:
    """Every link of every uploaded page (HTML and JSON) resolves, relative to the page's
    key, to an object of the same upload that goes up before the page does."""
    root = server_config.make_root(index, prefix)
    manifest = server_config.object_manifest(root)
    assert manifest["schema_version"] == 1 and manifest["prefix"] == prefix
    objects = {o["key"]: o for o in manifest["objects"]}
    base = prefix.lstrip("/") + "/" if prefix else ""
    assert all(key.startswith(base + ("simple/", "files/")[o["phase"] == 1])
               for key, o in objects.items())
    pages = [o for o in objects.values() if o["phase"] > 1]
    assert {o["key"] for o in pages} == {f"{base}simple/{p}" for p in (
        "index.html", "index.json", "pkg-a/index.html", "pkg-a/index.json",
        "other/index.html", "other/index.json")}
    for page in pages:
        source = index.root / page["source"]
        assert source.is_file() and not Path(page["source"]).is_absolute()
        assert page["cache_control"] == PAGE_CACHE_CONTROL
        if page["key"].endswith(".json"):
            assert page["content_type"] == JSON_TYPE
            data = json.loads(source.read_text())
            hrefs = [f["url"] for f in data.get("files", [])]
        else:
            assert page["content_type"] == "text/html; charset=utf-8"
            parser = _Links()
            parser.feed(source.read_text())
            hrefs = parser.hrefs
        directory = posixpath.dirname(page["key"])
        for href in hrefs:
            target = posixpath.normpath(posixpath.join(
                directory, urllib.parse.unquote(href.split("#")[0])))
            if href.endswith("/"):  # the root page links project pages
                target += "/index.html"
            assert target in objects, (page["key"], href)
            assert objects[target]["phase"] < page["phase"]
    files = [o for o in objects.values() if o["phase"] == 1]
    assert len(files) == 6  # 3 wheels + 3 .metadata
    assert all(o["cache_control"] == FILE_CACHE_CONTROL for o in files)
    assert {o["content_type"] for o in files} == {"application/octet-stream",
                                                  "text/plain; charset=utf-8"}


def test_nginx_locations_carry_the_prefix_and_nothing_else_is_served(index: IndexDir) -> None:
    text = server_config.nginx_locations(server_config.make_root(index, "/sm90a"))
    assert "location ^~ /sm90a/simple/ {" in text and "location ^~ /sm90a/files/ {" in text
    assert f'root "{index.root}";' in text
    assert "autoindex off;" in text and f'add_header Cache-Control "{PAGE_CACHE_CONTROL}"' in text
    assert f'add_header Cache-Control "{FILE_CACHE_CONTROL}";' in text
    # Every location is under the prefix: a second root cannot shadow or be shadowed.
    locations = [line.split()[1:-1] for line in text.splitlines()
                 if line.strip().startswith("location")]
    assert all(any(part.lstrip("^~=").startswith(("/sm90a/", "^/sm90a/", "/sm90a"))
                   for part in loc) for loc in locations), locations
    conf = server_config.nginx_conf("127.0.0.1:8080", None)
    assert "include locations/*.conf;" in conf and "TLS is left to the operator" in conf
    assert "\nuser " not in conf and "pid nginx.pid;" in conf


def test_same_index_same_bytes_and_other_roots_kept(index: IndexDir, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for prefix in ("", "/sm120"):
        assert main(["index-server-config", "--index", str(index.root), "--out", str(out),
                     "--prefix", prefix, "--listen", "127.0.0.1:9000"]) == 0
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {p.relative_to(out).as_posix() for p in first} == {
        "nginx/nginx.conf", "nginx/index-map.conf", "nginx/locations/root.conf",
        "nginx/locations/sm120.conf", "object-storage/root.json",
        "object-storage/root-sync.sh", "object-storage/sm120.json",
        "object-storage/sm120-sync.sh"}
    assert main(["index-server-config", "--index", str(index.root), "--out", str(out),
                 "--listen", "127.0.0.1:9000"]) == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    sync = (out / "object-storage" / "sm120-sync.sh").read_text()
    # Files, then project pages, then the root page.
    order = [sync.index(s) for s in ('"*.whl"', '"*/index.html"', "simple/index.html ")]
    assert order == sorted(order) and '"$BUCKET_URL/sm120"/files' in sync


@pytest.mark.parametrize(("args", "message"), [
    (["--prefix", "/a b"], "not plain URL segments"),
    (["--listen", "127.0.0.1"], "not PORT or ADDRESS:PORT"),
    (["--worker-user", "root; evil"], "not a plain user name"),
])
def test_bad_arguments_exit_2(index: IndexDir, tmp_path: Path, args: list[str], message: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index-server-config", "--index", str(index.root), "--out",
                 str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "nginx" / "nginx.conf").exists()


def test_no_index_and_unsafe_paths_exit_2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index-server-config", "--index", str(tmp_path / "none"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "no wheel index" in capsys.readouterr().err
    odd = IndexDir(tmp_path / "in$dex")
    wheel = make_wheel(tmp_path / "in", "pkg", "1.0")
    publish.add_to_index(odd, to_add([wheel]), Reporter(None, stream=io.StringIO()))
    with pytest.raises(ConfigError, match="nginx reads as syntax"):
        server_config.make_root(odd, "")
