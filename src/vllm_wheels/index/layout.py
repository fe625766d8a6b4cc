"""Pages of the static index, generated from the file records and the wheels' metadata.

Per project: PEP 503 HTML (`#sha256=` fragments, `data-requires-python`, PEP 592
`data-yanked`, PEP 658/714 `data-core-metadata` plus the older `data-dist-info-metadata`)
and PEP 691 JSON with the PEP 700 keys (`versions`, `size`, `upload-time`); both carry
the repository version (PEP 629 meta tag / `meta.api-version`). The output depends only
on its inputs, so regenerating an unchanged index gives byte-identical pages.
"""

from __future__ import annotations

import email.parser
import hashlib
import html
import json
import urllib.parse
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from ..errors import IndexPublishError

if TYPE_CHECKING:
    from .store import FileRecord, IndexDir

# 1.1 = PEP 700 (versions, size, upload-time in JSON). The HTML carries the same number:
# the version is the repository's, not the serialization's.
API_VERSION = "1.1"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
PRIVATE_KEY = "_vllm_wheels"  # PEP 700: keys with a leading underscore are server-private
# How every server of the tree labels and caches what it sends (serve-index, and the nginx
# and object-storage configurations of server_config.py): one place, one meaning.
HTML_PAGE_TYPE = "text/html; charset=utf-8"  # what a client that did not ask for JSON gets
METADATA_TYPE = "text/plain; charset=utf-8"  # PEP 658 files: the wheel's METADATA as is
WHEEL_TYPE = "application/octet-stream"
# Pages change with every generation (a yank, a publish): a cache keeps them but asks again
# each time (ETag / If-None-Match), so a yank reaches the next install at once.
PAGE_CACHE_CONTROL = "no-cache"
# Files never change under their name (publish refuses other bytes under a published name).
FILE_CACHE_CONTROL = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class WheelFacts:
    project: str  # normalized
    version: str
    metadata: bytes  # the wheel's .dist-info/METADATA, served as <wheel>.metadata
    requires_python: str | None


def inspect_wheel(path: Path) -> WheelFacts:
    """Name, version and METADATA of a wheel; IndexPublishError if it is not a wheel."""
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise IndexPublishError(f"{path.name} is not a valid wheel filename: {exc}",
                                why="the index holds wheels only (PEP 427 names)") from None
    try:
        with zipfile.ZipFile(path) as zf:
            metadata_files = [n for n in zf.namelist()
                          if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            wanted = [n for n in metadata_files
                      if canonicalize_name(n.split("/")[0].removesuffix(".dist-info")
                                            .rsplit("-", 1)[0]) == name]
            if len(wanted) != 1:
                raise IndexPublishError(f"{path.name}: expected one {name}-*.dist-info/METADATA,"
                                        f" found {metadata_files or 'none'}",
                                        why="installers read the metadata from there")
            metadata = zf.read(wanted[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise IndexPublishError(f"{path} is not a readable wheel: {exc}") from None
    headers = email.parser.BytesHeaderParser().parsebytes(metadata)
    meta_name, meta_version = headers.get("Name"), headers.get("Version")
    try:
        parsed_version = None if meta_version is None else Version(meta_version)
    except InvalidVersion:
        raise IndexPublishError(
            f"{path.name}: its METADATA has an invalid Version {meta_version!r}",
            why="installers compare versions; they would reject or misorder this wheel",
            fix="rebuild the wheel with a PEP 440 version") from None
    if meta_name is None or canonicalize_name(meta_name) != name or \
            parsed_version != version:
        raise IndexPublishError(
            f"{path.name}: its METADATA says {meta_name} {meta_version}",
            why="the filename and the metadata disagree; installers would reject it",
            fix="rebuild the wheel (or re-run the post-processing that renamed it)")
    return WheelFacts(project=str(name), version=str(version), metadata=metadata,
                      requires_python=_requires_python(metadata))


def _requires_python(metadata: bytes) -> str | None:
    value = email.parser.BytesHeaderParser().parsebytes(metadata).get("Requires-Python")
    return str(value).strip() if value else None


@dataclass(frozen=True)
class _Entry:
    record: FileRecord
    metadata_sha256: str
    requires_python: str | None

    @property
    def href(self) -> str:
        # Relative to /simple/<project>/; the '+' of local labels is quoted (%2B) because
        # some object stores read a literal '+' in a path as a space.
        return f"../../files/{self.record.project}/{urllib.parse.quote(self.record.filename)}"


def _entries(index: IndexDir, records: Iterable[FileRecord]) -> dict[str, list[_Entry]]:
    by_project: dict[str, list[_Entry]] = {}
    for record in records:
        metadata = index.metadata_path(record.project, record.filename).read_bytes()
        by_project.setdefault(record.project, []).append(
            _Entry(record, hashlib.sha256(metadata).hexdigest(), _requires_python(metadata)))
    for entries in by_project.values():
        entries.sort(key=lambda e: (Version(e.record.version), e.record.filename))
    return by_project


def _page(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        f"    <title>{html.escape(title)}</title>",
        "  </head>",
        "  <body>",
        *body,
        "  </body>",
        "</html>",
        "",
    ])


def root_html(projects: Iterable[str]) -> str:
    links = [f'    <a href="{p}/">{p}</a><br/>' for p in sorted(projects)]
    return _page("Simple index", links)


def root_json(projects: Iterable[str]) -> str:
    return _dump({"meta": {"api-version": API_VERSION},
                  "projects": [{"name": p} for p in sorted(projects)]})


def project_html(project: str, entries: list[_Entry]) -> str:
    links = []
    for e in entries:
        attrs = [f'href="{html.escape(e.href)}#sha256={e.record.sha256}"']
        if e.requires_python:
            attrs.append(f'data-requires-python="{html.escape(e.requires_python)}"')
        # PEP 714: data-core-metadata is the current name; data-dist-info-metadata is
        # kept for older pip versions (HTML only: in JSON the old key triggers a pip bug).
        attrs.append(f'data-core-metadata="sha256={e.metadata_sha256}"')
        attrs.append(f'data-dist-info-metadata="sha256={e.metadata_sha256}"')
        if e.record.yanked is not None:
            attrs.append(f'data-yanked="{html.escape(e.record.yanked)}"')
        links.append(f"    <a {' '.join(attrs)}>{html.escape(e.record.filename)}</a><br/>")
    return _page(f"Links for {project}", links)


def project_json(project: str, entries: list[_Entry]) -> str:
    files = []
    for e in entries:
        r = e.record
        item: dict[str, Any] = {
            "filename": r.filename,
            "url": e.href,
            "hashes": {"sha256": r.sha256},
            "requires-python": e.requires_python,
            "core-metadata": {"sha256": e.metadata_sha256},
            "yanked": (r.yanked or True) if r.yanked is not None else False,
            "size": r.size,
            "upload-time": r.upload_time,
            PRIVATE_KEY: {"origin": r.origin, "verification": r.verification,
                          "verification_detail": r.verification_detail},
        }
        if item["requires-python"] is None:
            del item["requires-python"]
        files.append(item)
    versions = sorted({e.record.version for e in entries}, key=Version)
    return _dump({"meta": {"api-version": API_VERSION}, "name": project,
                  "versions": versions, "files": files})


def _dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def write_pages(dest: Path, index: IndexDir, records: Iterable[FileRecord]) -> None:
    """Write root and project pages (HTML + JSON) under dest (a fresh directory)."""
    by_project = _entries(index, records)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "index.html").write_text(root_html(by_project), encoding="utf-8")
    (dest / "index.json").write_text(root_json(by_project), encoding="utf-8")
    for project, entries in by_project.items():
        page_dir = dest / project
        page_dir.mkdir()
        (page_dir / "index.html").write_text(project_html(project, entries), encoding="utf-8")
        (page_dir / "index.json").write_text(project_json(project, entries), encoding="utf-8")
