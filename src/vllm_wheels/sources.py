"""Sources: find an sdist on a package index (PEP 691 JSON, PEP 503 HTML as fallback),
download it into the content-addressed cache, verify its sha256, clone git sources at a
commit, and unpack archives safely.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from .cache import Cache, publish_dir, remove, temp_sibling
from .errors import DiskFullError, SourceError
from .log import Reporter
from .runner import run
from .stack import PackageSpec, Source

USER_AGENT = "vllm-wheels/0.1 (+source-build pipeline)"


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str | None
    size: int | None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append(("".join(self._text).strip(), self._href))
            self._href = None


def _open(url: str, accept: str, timeout: float = 60) -> tuple[bytes, str]:
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return response.read(), response.headers.get("Content-Type", "")


def list_project_files(index: str, project: str) -> list[IndexFile]:
    """All files an index lists for a project (PEP 691 JSON, else PEP 503 HTML)."""
    base = index.rstrip("/") + "/" + canonicalize_name(project) + "/"
    accept = ("application/vnd.pypi.simple.v1+json, "
              "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01")
    try:
        body, content_type = _open(base, accept)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise SourceError(f"{project} is not on the index {index}",
                              fix="check the package name and the index URL") from None
        raise SourceError(f"the index {index} answered HTTP {exc.code} for {project}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise SourceError(f"cannot reach the index {index}: {exc}",
                          why="the sdist must be downloaded once into the cache",
                          fix="check the network or proxy, or use a mirror index "
                              "(source = { pypi = ..., index = \"URL\" }) or a local path "
                              "source") from None
    files: list[IndexFile] = []
    if "json" in content_type:
        data = json.loads(body)
        for item in data.get("files", []):
            url = urllib.parse.urljoin(base, item["url"])
            files.append(IndexFile(item["filename"], url, item.get("hashes", {}).get("sha256"),
                                   item.get("size")))
        return files
    parser = _LinkParser()
    parser.feed(body.decode("utf-8", "replace"))
    for text, href in parser.links:
        url, _, fragment = href.partition("#")
        sha = fragment.split("=", 1)[1] if fragment.startswith("sha256=") else None
        filename = text or urllib.parse.unquote(url.rsplit("/", 1)[-1])
        files.append(IndexFile(filename, urllib.parse.urljoin(base, url), sha, None))
    return files


def find_sdist(index: str, project: str, version: str) -> IndexFile:
    files = list_project_files(index, project)
    stem_names = {canonicalize_name(project).replace("-", "_"), canonicalize_name(project)}
    wanted = {f"{stem}-{version}.tar.gz".lower() for stem in stem_names}
    for item in files:
        if item.filename.lower() in wanted:
            return item
    versions_with_files = [f.filename for f in files if f"-{version}" in f.filename]
    if versions_with_files:
        raise SourceError(f"{project} {version} has no sdist on {index} (only "
                          f"{', '.join(sorted(versions_with_files)[:4])})",
                          why="a source build needs the source distribution",
                          fix="use a git source at the release's commit instead")
    raise SourceError(f"{project} {version} does not exist on {index}",
                      fix="check the version (e.g. `pip index versions "
                          f"{project}`) or the index URL")


def download(url: str, dest: Path, expected_sha256: str | None, reporter: Reporter) -> Path:
    """Download into `dest` (atomic), verifying the hash. Reuses a verified cache entry."""
    if dest.exists():
        if expected_sha256 is None or sha256_file(dest) == expected_sha256:
            reporter.log(f"cache hit: {dest}")
            return dest
        remove(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dest)
    digest = hashlib.sha256()
    started = time.monotonic()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=120) as response, tmp.open("wb") as out:  # noqa: S310
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        remove(tmp)
        if getattr(exc, "errno", None) == 28:
            raise DiskFullError(f"disk full while downloading {url}",
                                fix="free space in the cache directory") from None
        raise SourceError(f"download failed: {url}: {exc}",
                          fix="check the network; re-running resumes from scratch safely"
                          ) from None
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        remove(tmp)
        raise SourceError(f"sha256 mismatch for {url}\n  expected: {expected_sha256}\n"
                          f"  actual:   {actual}",
                          why="the file is not the one the stack pins (tampered, re-uploaded, "
                              "or the pin is wrong)",
                          fix="check where the pin came from; only change sha256 in the stack "
                              "file if you trust the new file")
    tmp.rename(dest)
    reporter.log(f"downloaded {url} ({dest.stat().st_size} bytes, "
                 f"{time.monotonic() - started:.1f}s, sha256 {actual})")
    return dest


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack an archive into `dest` (atomic). A single top-level folder is stripped."""
    tmp = temp_sibling(dest)
    remove(tmp)
    tmp.mkdir(parents=True)
    try:
        name = archive.name.lower()
        if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths and ../ escapes
        elif name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    target = (tmp / member).resolve()
                    if not str(target).startswith(str(tmp.resolve())):
                        raise SourceError(f"{archive}: unsafe path in archive: {member}")
                zf.extractall(tmp)
        else:
            raise SourceError(f"{archive}: unknown archive type",
                              fix="use .tar.gz, .tgz, .tar.xz, .tar.bz2, .tar or .zip")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        remove(tmp)
        if isinstance(exc, OSError) and exc.errno == 28:
            raise DiskFullError(f"disk full while unpacking {archive}") from None
        raise SourceError(f"cannot unpack {archive}: {exc}",
                          fix="delete the cached file and re-run to download it again") from None
    entries = list(tmp.iterdir())
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    if root is not tmp:
        inner = temp_sibling(dest.with_name(dest.name + "-inner"))
        root.rename(inner)
        tmp.rmdir()
        tmp = inner
    publish_dir(tmp, dest)
    return dest


def git_checkout(url: str, ref: str, dest: Path, reporter: Reporter,
                 submodules: bool = True) -> str:
    """Shallow-fetch `ref` (commit or tag) of `url` into `dest`; return the commit."""
    tmp = temp_sibling(dest)
    remove(tmp)
    tmp.mkdir(parents=True)
    fix = (f"make {url} reachable, or point the stack at a local copy "
           "(externals.<name>.path = DIR_OR_ARCHIVE, or a path source)")
    try:
        run(["git", "init", "-q", tmp], reporter=reporter, what="git init")
        run(["git", "-C", tmp, "fetch", "-q", "--depth", "1", url, ref], reporter=reporter,
            error_cls=SourceError, what=f"git fetch {url} {ref}", fix=fix)
        run(["git", "-C", tmp, "checkout", "-q", "FETCH_HEAD"], reporter=reporter,
            error_cls=SourceError, what="git checkout")
        if submodules and (tmp / ".gitmodules").exists():
            run(["git", "-C", tmp, "submodule", "update", "--init", "--recursive", "--depth", "1"],
                reporter=reporter, error_cls=SourceError, what=f"submodules of {url}", fix=fix)
        commit = run(["git", "-C", tmp, "rev-parse", "HEAD"], reporter=reporter,
                     error_cls=SourceError, what="git rev-parse")[-1].strip()
    except BaseException:
        remove(tmp)
        raise
    (tmp / ".vllm-wheels-commit").write_text(commit + "\n")
    publish_dir(tmp, dest)
    return commit


@dataclass(frozen=True)
class FetchedSource:
    """Where a package's pristine source is, before patches."""

    archive: Path | None  # the sdist / archive, when there is one
    directory: Path | None  # a local directory or git checkout
    sha256: str | None  # of the archive
    commit: str | None  # of a git checkout
    url: str | None


def resolve_pypi(spec: PackageSpec) -> IndexFile:
    src = spec.source
    assert src.kind == "pypi" and src.version is not None
    return find_sdist(src.index, spec.name, src.version)


def fetch(spec: PackageSpec, cache: Cache, repo_root: Path, reporter: Reporter) -> FetchedSource:
    src: Source = spec.source
    if src.kind == "pypi":
        assert src.sha256 is not None
        # A cached file with the pinned hash needs no index at all (offline rebuilds).
        for cached in (cache.downloads / "sha256" / src.sha256[:2] / src.sha256).glob("*.tar.gz"):
            if sha256_file(cached) == src.sha256:
                return FetchedSource(cached, None, src.sha256, None, None)
        found = resolve_pypi(spec)
        if found.sha256 and found.sha256 != src.sha256:
            raise SourceError(f"sha256 mismatch for {found.filename} on {src.index}\n"
                              f"  expected: {src.sha256}\n  actual:   {found.sha256}",
                              why="the index serves a different file than the stack pins",
                              fix="check where the pin came from; only change sha256 in the "
                                  "stack file if you trust the new file")
        path = download(found.url, cache.download_path(src.sha256, found.filename), src.sha256,
                        reporter)
        return FetchedSource(path, None, src.sha256, None, found.url)
    if src.kind == "git":
        assert src.url and src.commit
        dest = cache.externals / "git" / hashlib.sha256(src.url.encode()).hexdigest()[:16] / src.commit
        if not (dest / ".vllm-wheels-commit").exists():
            git_checkout(src.url, src.commit, dest, reporter)
        return FetchedSource(None, dest, None, src.commit, src.url)
    assert src.path is not None
    path = (repo_root / src.path).resolve()
    if not path.exists():
        raise SourceError(f"local source {path} does not exist",
                          fix=f"fix source.path of [packages.{spec.name}]")
    if path.is_dir():
        return FetchedSource(None, path, None, None, None)
    actual = sha256_file(path)
    if src.sha256 and actual != src.sha256:
        raise SourceError(f"sha256 mismatch for {path}\n  expected: {src.sha256}\n"
                          f"  actual:   {actual}")
    return FetchedSource(path, None, actual, None, None)


def copy_tree(source: Path, dest: Path) -> None:
    tmp = temp_sibling(dest)
    remove(tmp)
    shutil.copytree(source, tmp, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build",
                                                  "dist"))
    publish_dir(tmp, dest)
