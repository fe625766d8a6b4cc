"""Sources: find an sdist on a package index (PEP 691 JSON, PEP 503 HTML as fallback),
download it into the content-addressed cache, verify its sha256, clone git sources at a
commit, and unpack archives safely.
"""

from __future__ import annotations

import email.parser
import hashlib
import html.parser
import json
import shutil
import tarfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename
from packaging.version import InvalidVersion, Version

from .. import layout
from ..cache import Cache, publish_dir, remove, temp_sibling
from ..errors import DiskFullError, SourceError
from ..log import Reporter
from ..runner import run
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
                 submodules: bool = True, *, label: str | None = None,
                 fix: str | None = None) -> str:
    """Shallow-fetch `ref` (commit or tag) of `url` into `dest`; return the commit.

    `label` names what is fetched (e.g. "external deepgemm of vllm") at the start of the
    error, and `fix` replaces the generic advice: the caller knows the stack key to set."""
    tmp = temp_sibling(dest)
    remove(tmp)
    tmp.mkdir(parents=True)
    fix = fix or (f"make {url} reachable, or build from an offline source bundle "
                  "(`--bundle DIR`, docs/build.md), or use a local copy: "
                  "source = { path = \"DIR_OR_ARCHIVE\" }")
    prefix = f"{label}: " if label else ""
    try:
        run(["git", "init", "-q", tmp], reporter=reporter, what="git init")
        run(["git", "-C", tmp, "fetch", "-q", "--depth", "1", url, ref], reporter=reporter,
            error_cls=SourceError, what=f"{prefix}git fetch {url} {ref}", fix=fix)
        run(["git", "-C", tmp, "checkout", "-q", "FETCH_HEAD"], reporter=reporter,
            error_cls=SourceError, what="git checkout")
        if submodules and (tmp / ".gitmodules").exists():
            run(["git", "-C", tmp, "submodule", "update", "--init", "--recursive", "--depth", "1"],
                reporter=reporter, error_cls=SourceError, what=f"{prefix}submodules of {url}",
                fix=fix)
        commit = run(["git", "-C", tmp, "rev-parse", "HEAD"], reporter=reporter,
                     error_cls=SourceError, what="git rev-parse")[-1].strip()
    except BaseException:
        remove(tmp)
        raise
    (tmp / layout.COMMIT_MARKER).write_text(commit + "\n")
    publish_dir(tmp, dest)
    return commit


@dataclass(frozen=True)
class FetchedSource:
    """Where a package's pristine source is, before patches."""

    archive: Path | None  # the sdist / archive, when there is one
    directory: Path | None  # a local directory or git checkout
    sha256: str | None  # of the archive
    commit: str | None  # of a git checkout
    url: str | None  # a git source's repository (from the stack); None otherwise


def resolve_pypi(spec: PackageSpec) -> IndexFile:
    src = spec.source
    assert src.kind == "pypi" and src.version is not None
    return find_sdist(src.simple_url, spec.name, src.version)


def _same_version(a: str, b: str) -> bool:
    """PEP 440 equality (0.11.2 == 0.11.2.0 == v0.11.2); plain text for non-PEP 440."""
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a.strip() == b.strip()


def sdist_filename_disagreement(filename: str, name: str, version: str) -> str | None:
    """What `filename` is when it is not the sdist of `name` `version` (None when it is).
    The name is compared canonicalized and the version normalized (PEP 625, packaging's
    parse_sdist_filename): flashinfer_python-0.5.2.tar.gz is flashinfer-python 0.5.2."""
    try:
        file_name, file_version = parse_sdist_filename(filename)
    except InvalidSdistFilename:
        return f"{filename}, not an sdist file name (NAME-VERSION.tar.gz)"
    if file_name != canonicalize_name(name) or not _same_version(str(file_version), version):
        return f"{filename} ({file_name} {file_version})"
    return None


@dataclass(frozen=True)
class SourceMetadata:
    """The name and version a source states about itself."""

    name: str | None
    version: str | None
    where: str  # e.g. "PKG-INFO", "pyproject.toml"


def _metadata_from(pkg_info: str | None, pyproject: str | None) -> SourceMetadata | None:
    if pkg_info is not None:
        headers = email.parser.HeaderParser().parsestr(pkg_info)
        return SourceMetadata(headers.get("Name"), headers.get("Version"), "PKG-INFO")
    if pyproject is not None:
        try:
            project = tomllib.loads(pyproject).get("project", {})
        except tomllib.TOMLDecodeError:
            return None
        # A dynamic version (setuptools-scm, a version file) is only known after a build.
        version = None if "version" in project.get("dynamic", []) else project.get("version")
        return SourceMetadata(project.get("name"), version, "pyproject.toml")
    return None


def read_source_metadata(path: Path) -> SourceMetadata | None:
    """PKG-INFO (an sdist's own metadata), else pyproject.toml's static [project] name and
    version, at the top of a directory or archive (below its single top-level folder, as
    `unpack` strips it). None when the source states neither."""
    wanted = ("PKG-INFO", "pyproject.toml")
    found: dict[str, str] = {}
    if path.is_dir():
        for name in wanted:
            if (path / name).is_file():
                found[name] = (path / name).read_text(encoding="utf-8", errors="replace")
        return _metadata_from(found.get("PKG-INFO"), found.get("pyproject.toml"))

    roots: list[str] = []

    def top(member: str) -> str | None:
        """"PKG-INFO" for PKG-INFO or ROOT/PKG-INFO, ROOT being the first top-level entry."""
        parts = [p for p in member.split("/") if p not in ("", ".")]
        if parts and not roots:
            roots.append(parts[0])
        if parts and parts[-1] in wanted and (len(parts) == 1 or
                                              (len(parts) == 2 and parts[0] == roots[0])):
            return parts[-1]
        return None

    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if (key := top(member)) and key not in found:
                        found[key] = zf.read(member).decode("utf-8", "replace")
        else:
            with tarfile.open(path) as tar:
                # Stop at PKG-INFO: the rest of the archive need not be decompressed
                # (vLLM 0.11.2's 17 MB sdist lists it 159th: 0.05 s instead of a full pass).
                for info in tar:
                    key = top(info.name)
                    handle = tar.extractfile(info) if key and key not in found else None
                    if key and handle is not None:
                        found[key] = handle.read().decode("utf-8", "replace")
                        if key == "PKG-INFO":
                            break
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"cannot read {path}: {exc}",
                          fix="delete the cached file and re-run to download it again") from None
    return _metadata_from(found.get("PKG-INFO"), found.get("pyproject.toml"))


def check_source_metadata(spec: PackageSpec, fetched: FetchedSource) -> None:
    """The source must be what the stack says: its own metadata's name and version (PKG-INFO,
    else pyproject.toml) must agree with [packages.NAME] and its version. A disagreement is
    a SourceError naming both, whatever the cache holds: a build would otherwise compile one
    release and label the wheel as another. Git and path sources are checked when the
    stack gives them a version; a source without metadata (or a dynamic version) is not."""
    src = spec.source
    if src.version is None:
        return
    location = fetched.archive or fetched.directory
    assert location is not None
    meta = read_source_metadata(location)
    if meta is None:
        return
    problems = []
    if meta.name is not None and canonicalize_name(meta.name) != canonicalize_name(spec.name):
        problems.append(f"name: the stack says {spec.name}, {meta.where} says {meta.name}")
    if meta.version is not None and not _same_version(meta.version, src.version):
        problems.append(f"version: the stack says {src.version}, {meta.where} says "
                        f"{meta.version}")
    if problems:
        raise SourceError(f"[packages.{spec.name}]: the source {location} is not what the stack "
                          "says\n  " + "\n  ".join(problems),
                          why="the wheel would be built from one release and labelled as "
                              "another",
                          fix="make the stack's name, version and sha256/commit/path describe "
                              "the same release")


def fetch(spec: PackageSpec, cache: Cache, repo_root: Path, reporter: Reporter) -> FetchedSource:
    """The pristine source of `spec`, checked to be the name and version the stack states
    (see check_source_metadata)."""
    fetched = _fetch(spec, cache, repo_root, reporter)
    check_source_metadata(spec, fetched)
    return fetched


def _cached_sdist(spec: PackageSpec, cache: Cache) -> Path | None:
    """The cached sdist with the pinned sha256, if it is also the sdist of the stack's name
    and version. A cached file with the right hash but another name is a SourceError (the
    stack pairs a sha256 with the wrong release), not a reason to go to the index."""
    src = spec.source
    assert src.sha256 is not None and src.version is not None
    disagreements = []
    for cached in sorted((cache.downloads / "sha256" / src.sha256[:2] / src.sha256)
                         .glob("*.tar.gz")):
        if sha256_file(cached) != src.sha256:
            continue
        why = sdist_filename_disagreement(cached.name, spec.name, src.version)
        if why is None:
            return cached
        disagreements.append(why)
    if disagreements:
        raise SourceError(f"[packages.{spec.name}]: the stack says {spec.name} {src.version}, "
                          f"but its sha256 {src.sha256} is the sdist "
                          f"{' and '.join(disagreements)}",
                          why="the sha256 pins one file, and that file is another release "
                              "(or package) than the stack names",
                          fix=f"put the sha256 of {spec.name} {src.version}'s sdist in the "
                              "stack (`pip download --no-deps --no-binary :all: "
                              f"{spec.name}=={src.version}` and sha256sum it), or the version "
                              "that sha256 belongs to")
    return None


def _fetch(spec: PackageSpec, cache: Cache, repo_root: Path, reporter: Reporter) -> FetchedSource:
    src: Source = spec.source
    if src.kind == "pypi":
        assert src.sha256 is not None and src.version is not None
        # A cached file with the pinned hash needs no index at all (offline rebuilds).
        cached = _cached_sdist(spec, cache)
        if cached is not None:
            return FetchedSource(cached, None, src.sha256, None, None)
        found = resolve_pypi(spec)
        if found.sha256 and found.sha256 != src.sha256:
            raise SourceError(f"sha256 mismatch for {found.filename} on {src.simple_url}\n"
                              f"  expected: {src.sha256}\n  actual:   {found.sha256}",
                              why="the index serves a different file than the stack pins",
                              fix="check where the pin came from; only change sha256 in the "
                                  "stack file if you trust the new file")
        path = download(found.url, cache.download_path(src.sha256, found.filename), src.sha256,
                        reporter)
        # No download URL (the log has it): the same source whether downloaded now or found
        # in the cache, so the same manifest and wheel bytes. The stack's index and sha256
        # say where it comes from.
        return FetchedSource(path, None, src.sha256, None, None)
    if src.kind == "git":
        assert src.url and src.commit
        dest = cache.externals / "git" / hashlib.sha256(src.url.encode()).hexdigest()[:16] / src.commit
        if not (dest / layout.COMMIT_MARKER).exists():
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
