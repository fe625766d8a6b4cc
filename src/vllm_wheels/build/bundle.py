"""Offline source bundles: everything a build of one stack reads, in one directory with a
lock file of sha256s, so a build farm without network (or the lent GPU machine) builds
exactly what the stack pins.

`build-wheels --export-bundle DIR` writes, after the normal source step (download, verify,
prefetch of external sources):

    bundle-lock.json              schema_version, stack, every file with sha256 and size
    files/<repo path>             the stack file, its patch series, local path sources
    sdists/<sdist>                the pinned sdists, byte for byte as the index served them
    externals/<pkg>/<name>.tar.gz each external source at its pinned ref, only the files
                                  the build reads (CUTLASS: headers and its python/ package)

`--bundle-part-size 60M` splits it into part-01/, part-02/, ... directories of at most that
size (a file larger than a part is cut into `.chunk-NNN` pieces); copying the parts into one
directory, in any order, gives back a bundle. `build-wheels --bundle DIR` checks every hash
before anything is unpacked (a missing or changed file is exit 4), takes the stack, patches
and sources from the bundle, and never opens a network connection: sdists are placed in the
cache where the source step finds them, and each external comes from its archive.

Archives are deterministic (sorted members, zero mtimes and owners, gzip without a
timestamp): the same sources give the same bundle bytes, so two exports can be compared.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from .. import layout
from ..cache import Cache, publish_dir, remove, temp_sibling
from ..errors import ConfigError, SourceError
from .sources import sha256_file

if TYPE_CHECKING:
    from ..log import Reporter
    from .plan import Plan

BUNDLE_SCHEMA_VERSION = 1
LOCK_NAME = "bundle-lock.json"
_CHUNK = re.compile(r"^(?P<base>.+)\.chunk-(?P<index>\d{3})$")
_SIZE = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMG]i?B?|B)?$", re.IGNORECASE)

# Which parts of an external the build reads, where that is less than the whole tree.
# CUTLASS is used headers-only by vLLM (CUTLASS_ENABLE_HEADERS_ONLY), plus its python/
# package, which vLLM's Machete kernel generator imports (PYTHONPATH=${CUTLASS_DIR}/python),
# and two example directories whose headers vLLM's CUTLASS MLA kernel includes (10.x and
# 12.x builds). Without its CMakeLists.txt the bundled tree is headers-only (CUTLASS_DIR and
# the include dirs are passed to vLLM's configure), as FlashInfer's vendored copy is: CUTLASS's
# own CMakeLists would need the rest of its repository.
USED_PATHS: dict[str, tuple[str, ...]] = {
    "cutlass": ("include", "tools/util/include", "python", "examples/common",
                "examples/77_blackwell_fmha", "LICENSE.txt"),
    # vLLM compiles DeepGEMM's csrc/python_api.cpp and installs its deep_gemm/ package and
    # headers (kernels are JIT-compiled at run time); the submodules' sources are not read.
    "deepgemm": ("csrc", "deep_gemm", "third-party/cutlass/include",
                 "third-party/cutlass/tools/util/include", "third-party/fmt/include", "LICENSE"),
}
# Never part of a source: VCS metadata and the pipeline's own markers.
_SKIP_NAMES = {".git", "__pycache__", layout.COMMIT_MARKER}


def parse_size(text: str) -> int:
    """'60M', '60MiB', '500k', '1G' or a byte count -> bytes (binary units)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ConfigError(f"--bundle-part-size {text!r} is not a size",
                          fix="give bytes or a number with K, M or G, e.g. 60M")
    unit = (match.group("unit") or "B")[0].upper()
    size = int(float(match.group("number")) * {"B": 1, "K": 1024, "M": 1024 ** 2,
                                               "G": 1024 ** 3}[unit])
    if size < 1024 * 1024:
        raise ConfigError(f"--bundle-part-size {text!r} is under 1 MiB",
                          why="a part must at least hold the lock file and a chunk",
                          fix="give 1M or more")
    return size


# ------------------------------------------------------------------------ archives


def _members(directory: Path, used: tuple[str, ...] | None) -> list[Path]:
    roots = [directory / p for p in used] if used else [directory]
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
            continue
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            rel = path.relative_to(directory)
            if any(part in _SKIP_NAMES for part in rel.parts):
                continue
            if path.is_file() or path.is_symlink():
                files.append(path)
    return sorted(set(files), key=lambda p: p.relative_to(directory).as_posix())


def tree_digest(directory: Path, used: tuple[str, ...] | None = None) -> str:
    """sha256 over (relative path, file sha256) of the files the build reads: the same
    tree gives the same digest wherever it lies."""
    digest = hashlib.sha256()
    for path in _members(directory, used):
        rel = path.relative_to(directory).as_posix()
        digest.update(rel.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"link:" + str(path.readlink()).encode())
        else:
            digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def write_tree_archive(directory: Path, dest: Path, used: tuple[str, ...] | None = None) -> None:
    """A deterministic .tar.gz of `directory` (members sorted, no times or owners)."""
    buffer_path = temp_sibling(dest)
    with buffer_path.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _members(directory, used):
            rel = path.relative_to(directory).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if info.mode & 0o111 else 0o644
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    os.replace(buffer_path, dest)


# -------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportSummary:
    directory: Path
    files: int
    total_bytes: int
    parts: tuple[tuple[str, int], ...]  # (part directory name, bytes)


def _relative_to_root(path: Path, root: Path, what: str) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ConfigError(f"{what} {path} lies outside the repository {root}",
                          why="a bundle stores local files at their repository paths",
                          fix="move it into the repository, or use a pypi/git source") from None


def check_export_dest(dest: Path) -> None:
    """The export replaces `dest` whole: refuse anything there but an earlier bundle or an
    empty directory, so `--export-bundle .` (or a typo naming a real directory) never
    deletes what it holds."""
    if not dest.exists() and not dest.is_symlink():
        return
    if dest.is_dir() and not dest.is_symlink() and (
            (dest / LOCK_NAME).is_file() or any(dest.glob(f"part-*/{LOCK_NAME}"))
            or not any(dest.iterdir())):
        return
    raise ConfigError(f"--export-bundle {dest} exists and is not a source bundle",
                      why="the export replaces the directory whole, and would delete what "
                          "it holds",
                      fix="give a new or empty directory (or an earlier bundle to replace)")


def export(plan: Plan, dest: Path, reporter: Reporter, part_size: int | None = None
           ) -> ExportSummary:
    """Write the bundle of `plan` (made with every external prefetched) into `dest`."""
    check_export_dest(dest)
    stage = temp_sibling(dest)
    remove(stage)
    stage.mkdir(parents=True)
    entries: list[dict[str, Any]] = []
    sdists: dict[str, Any] = {}
    externals: dict[str, dict[str, Any]] = {}
    root = plan.repo_root

    def add(rel: str, source: Path, kind: str) -> None:
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        entries.append({"path": rel, "kind": kind, "sha256": sha256_file(target),
                        "size": target.stat().st_size})

    try:
        stack_rel = _relative_to_root(plan.stack.path, root, "the stack file")
        add(f"files/{stack_rel}", plan.stack.path, "stack")
        for prep in plan.packages:
            name = canonicalize_name(prep.spec.name)
            patch_dir = root / prep.spec.patches
            if patch_dir.is_dir():
                for item in sorted(p for p in patch_dir.iterdir() if p.is_file()):
                    add(f"files/{_relative_to_root(item, root, 'a patch')}", item, "patch")
            src = prep.spec.source
            if src.kind == "pypi":
                archive = prep.fetched.archive
                assert archive is not None and prep.fetched.sha256 is not None
                rel = f"sdists/{archive.name}"
                add(rel, archive, "sdist")
                sdists[name] = {"file": rel, "filename": archive.name,
                                "version": src.version, "sha256": prep.fetched.sha256}
            elif src.kind == "path":
                local = (root / str(src.path)).resolve()
                rel_local = _relative_to_root(local, root, f"[packages.{prep.spec.name}] path")
                if local.is_dir():
                    for item in _members(local, None):
                        add(f"files/{rel_local}/{item.relative_to(local).as_posix()}", item,
                            "path-source")
                else:
                    add(f"files/{rel_local}", local, "path-source")
            else:
                raise ConfigError(f"[packages.{prep.spec.name}]: git sources cannot be bundled yet",
                                  fix="use the release's sdist (pypi) or a path archive")
            for ext in prep.externals:
                entry = {"url": ext.source.url, "ref": ext.source.ref, "commit": ext.commit,
                         "origin": ext.origin, "override_env": ext.source.override_env}
                if ext.origin.startswith("from-source:"):
                    # Derived from another package's sdist, which the bundle holds already.
                    externals.setdefault(name, {})[ext.source.name] = {**entry, "file": None}
                    continue
                if ext.directory is None:
                    raise SourceError(f"external {ext.source.name} of {prep.spec.name} is not "
                                      "in the cache, so it cannot be bundled",
                                      fix="run the export where it can be fetched, or set "
                                          f"[packages.{prep.spec.name}.externals."
                                          f"{ext.source.name}] path = DIR_OR_ARCHIVE")
                used = USED_PATHS.get(ext.source.name)
                rel = f"externals/{name}/{canonicalize_name(ext.source.name)}.tar.gz"
                target = stage / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                reporter.say(f"    bundling {ext.source.name} ({ext.origin}) from {ext.directory}")
                write_tree_archive(ext.directory, target, used)
                entries.append({"path": rel, "kind": "external", "sha256": sha256_file(target),
                                "size": target.stat().st_size})
                externals.setdefault(name, {})[ext.source.name] = {
                    **entry, "file": rel, "tree_sha256": tree_digest(ext.directory, used),
                    "used_paths": list(used) if used else None}
        entries.sort(key=lambda e: e["path"])
        lock = {"schema_version": BUNDLE_SCHEMA_VERSION,
                "stack": {"file": stack_rel, "name": plan.stack.name,
                          "digest": plan.stack.digest()},
                "files": entries, "sdists": sdists, "externals": externals}
        parts = _split(stage, entries, part_size) if part_size else ()
        lock["parts"] = [{"name": n, "bytes": b} for n, b in parts]
        text = json.dumps(lock, indent=2, sort_keys=True) + "\n"
        if parts:
            for part_name, _bytes in parts:
                (stage / part_name / LOCK_NAME).write_text(text)
        else:
            (stage / LOCK_NAME).write_text(text)
    except BaseException:
        remove(stage)
        raise
    remove(dest)
    publish_dir(stage, dest)
    total = sum(e["size"] for e in entries)
    return ExportSummary(dest, len(entries), total, tuple(parts))


def _split(stage: Path, entries: list[dict[str, Any]], part_size: int
           ) -> tuple[tuple[str, int], ...]:
    """Move the files into part-NN/ directories of at most `part_size` bytes (first fit,
    largest first); a file larger than a part goes in chunks."""
    budget = part_size - 64 * 1024  # room for the lock file in every part
    pieces: list[tuple[str, int, Path, int, int]] = []  # (rel, size, source, offset, length)
    for entry in sorted(entries, key=lambda e: (-e["size"], e["path"])):
        source = stage / entry["path"]
        size = entry["size"]
        if size <= budget:
            pieces.append((entry["path"], size, source, 0, size))
            continue
        for index, offset in enumerate(range(0, size, budget)):
            length = min(budget, size - offset)
            pieces.append((f"{entry['path']}.chunk-{index:03d}", length, source, offset, length))
    bins: list[list[tuple[str, int, Path, int, int]]] = []
    used: list[int] = []
    for piece in pieces:
        for i, filled in enumerate(used):
            if filled + piece[1] <= budget:
                bins[i].append(piece)
                used[i] += piece[1]
                break
        else:
            bins.append([piece])
            used.append(piece[1])
    for i, pieces_in_bin in enumerate(bins, 1):
        for rel, _size, source, offset, length in pieces_in_bin:
            target = stage / f"part-{i:02d}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with source.open("rb") as src_handle, target.open("wb") as out:
                src_handle.seek(offset)
                out.write(src_handle.read(length))
    for entry in entries:
        (stage / entry["path"]).unlink()
    for top in ("files", "sdists", "externals"):
        remove(stage / top)
    return tuple((f"part-{i:02d}", total) for i, total in enumerate(used, 1))


# -------------------------------------------------------------------------- import


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, laid out in the cache: `root` holds files/ (stack, patches, path
    sources) at their repository paths; sdists and external archives beside it."""

    root: Path
    lock: dict[str, Any]

    @property
    def files_root(self) -> Path:
        return self.root / "files"

    @property
    def stack_path(self) -> Path:
        return self.files_root / str(self.lock["stack"]["file"])

    def external(self, package: str, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.lock["externals"].get(
            canonicalize_name(package), {}).get(name)
        return found


def _find_lock(directory: Path) -> Path:
    candidates = [directory / LOCK_NAME, *sorted(directory.glob(f"part-*/{LOCK_NAME}"))]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise SourceError(f"{directory} is not a source bundle (no {LOCK_NAME})",
                          fix="export one with `build-wheels --export-bundle DIR`, and copy "
                              "every part-NN/ directory into DIR")
    texts = {c.read_text() for c in found}
    if len(texts) > 1:
        raise SourceError(f"the parts in {directory} come from different bundles "
                          f"({len(texts)} different {LOCK_NAME} files)",
                          fix="copy the parts of one export only")
    return found[0]


def _gather(directory: Path, rel: str) -> list[Path]:
    """Where the file `rel` lies in the bundle: whole, or as chunks across parts."""
    places = [directory, *sorted(p for p in directory.glob("part-*") if p.is_dir())]
    for place in places:
        if (place / rel).is_file():
            return [place / rel]
    chunks: dict[int, Path] = {}
    for place in places:
        parent = (place / rel).parent
        if not parent.is_dir():
            continue
        for item in parent.iterdir():
            match = _CHUNK.match(item.name)
            if match and match.group("base") == Path(rel).name:
                chunks[int(match.group("index"))] = item
    if chunks and sorted(chunks) == list(range(len(chunks))):
        return [chunks[i] for i in range(len(chunks))]
    return []


def load(directory: Path, cache: Cache, reporter: Reporter) -> Bundle:
    """Check every file of the bundle in `directory` against its lock and lay it out in
    the cache. Raises SourceError (exit 4) on any missing or changed file, before anything
    is used."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise SourceError(f"--bundle {directory} does not exist",
                          fix="give the directory that --export-bundle wrote")
    lock_path = _find_lock(directory)
    lock_bytes = lock_path.read_bytes()
    lock = json.loads(lock_bytes)
    if lock.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise SourceError(f"{lock_path}: bundle schema_version {lock.get('schema_version')} is "
                          f"not {BUNDLE_SCHEMA_VERSION}",
                          fix="export the bundle again with this version of the pipeline")
    key = hashlib.sha256(lock_bytes).hexdigest()[:16]
    root = cache.root / "bundles" / key
    marker = root / ".verified"
    problems: list[str] = []
    with cache.lock(f"bundle-{key}"):
        if not marker.exists():
            stage = temp_sibling(root)
            remove(stage)
            stage.mkdir(parents=True)
            try:
                for entry in lock["files"]:
                    rel = str(entry["path"])
                    if rel.startswith("/") or ".." in Path(rel).parts:
                        raise SourceError(f"{lock_path}: unsafe path {rel!r} in the lock")
                    pieces = _gather(directory, rel)
                    if not pieces:
                        problems.append(f"missing: {rel}")
                        continue
                    target = stage / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256()
                    with target.open("wb") as out:
                        for piece in pieces:
                            with piece.open("rb") as handle:
                                while block := handle.read(1 << 20):
                                    digest.update(block)
                                    out.write(block)
                    if digest.hexdigest() != entry["sha256"]:
                        problems.append(f"changed: {rel}\n    expected sha256 {entry['sha256']}"
                                        f"\n    actual   sha256 {digest.hexdigest()}")
                if problems:
                    raise SourceError(
                        f"the bundle in {directory} does not match its lock "
                        f"({len(problems)} file(s)):\n  " + "\n  ".join(problems),
                        why="every file of a bundle is pinned by sha256; a missing part or a "
                            "changed file would build something else than the stack says",
                        fix="copy every part of the export again (or export it again from a "
                            "trusted machine); never edit a bundle by hand")
                (stage / LOCK_NAME).write_bytes(lock_bytes)
                (stage / ".verified").write_text(key + "\n")
            except BaseException:
                remove(stage)
                raise
            remove(root)
            publish_dir(stage, root)
            reporter.say(f"    bundle {directory}: {len(lock['files'])} files verified by sha256")
        else:
            reporter.log(f"bundle {directory} already verified in {root}")
    bundle = Bundle(root, lock)
    _place_sdists(bundle, cache)
    return bundle


def _place_sdists(bundle: Bundle, cache: Cache) -> None:
    """Put each sdist where the source step looks first (the cache by sha256), so the
    index is never asked."""
    for item in bundle.lock["sdists"].values():
        dest = cache.download_path(item["sha256"], item["filename"])
        if dest.exists() and sha256_file(dest) == item["sha256"]:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(dest)
        shutil.copyfile(bundle.root / item["file"], tmp)
        os.replace(tmp, dest)


def external_directory(bundle: Bundle, package: str, name: str, cache: Cache) -> Path:
    """The unpacked tree of a bundled external (unpacked once, by archive hash)."""
    entry = bundle.external(package, name)
    if entry is None or entry.get("file") is None:
        raise SourceError(f"the bundle has no external source {name} for {package}",
                          why="a bundle build never downloads; every external must be in it",
                          fix="export the bundle again from this stack (the source or its "
                              "patches changed since), or add the external to the stack")
    archive = bundle.root / str(entry["file"])
    sha = sha256_file(archive)
    dest = cache.externals / "bundled" / sha[:32]
    if not dest.is_dir():
        tmp = temp_sibling(dest)
        remove(tmp)
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except BaseException:
            remove(tmp)
            raise
        publish_dir(tmp, dest)
    return dest


def render_summary(summary: ExportSummary) -> str:
    lines = [f"Bundle: {summary.directory} ({summary.files} files, "
             f"{summary.total_bytes / 1e6:.1f} MB)"]
    for name, size in summary.parts:
        lines.append(f"  {name}/  {size / 1e6:.1f} MB")
    lines.append(f"Build from it with no network: build-wheels --bundle {summary.directory}")
    return "\n".join(lines)


__all__ = ["BUNDLE_SCHEMA_VERSION", "Bundle", "ExportSummary", "check_export_dest", "export",
           "external_directory", "load", "parse_size", "render_summary", "tree_digest", "write_tree_archive"]
