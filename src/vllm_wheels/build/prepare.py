"""Source preparation: a package's source fetched, unpacked, patched and stripped of its
torch pins, once per content (the tree's name carries a digest of the source and the
patch series), plus what building it needs. `PreparedPackage` is what the plan holds
per package; its external sources are resolved afterwards (externals.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from .. import layout
from ..cache import Cache, publish_dir, remove, temp_sibling
from ..log import Reporter
from . import fetchcontent, patches, pins, sources
from .builders import builder_for
from .stack import PackageSpec

# Bump when the way a source tree is prepared changes (invalidates prepared trees).
# 2: reproducible builds (prefix maps, nvcc source-path launcher): a tree built before
# keeps objects and a CMake cache without them, and FlashInfer's AOT step keeps its
# kernels; new trees rebuild everything once.
# 3: patches apply without fuzz (a tree patched with fuzz must not be reused) and the
# marker records each patch's offsets.
PREPARE_LAYOUT = 3


class ExternalOrigin(StrEnum):
    """Where an external's directory comes from (a from_source override is
    "from-source:PACKAGE", naming the package)."""

    OVERRIDE_PATH = "override:path"  # the stack's path = DIR
    OVERRIDE_ARCHIVE = "override:archive"  # the stack's path = ARCHIVE, unpacked by hash
    BUNDLE = "bundle"  # an exported source bundle
    CACHE = "cache"  # the cache's checkout at the pinned ref
    TO_FETCH = "to fetch"  # not in the cache yet: the build fetches it


@dataclass(frozen=True)
class ResolvedExternal:
    source: fetchcontent.ExternalSource
    directory: Path | None  # the directory CMake will use (None = not fetched yet)
    origin: str  # an ExternalOrigin, or "from-source:PACKAGE"
    commit: str | None
    headers_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**self.source.to_dict(), "directory": str(self.directory or ""),
                "origin": self.origin, "commit": self.commit, "headers_only": self.headers_only}


@dataclass(frozen=True)
class PreparedPackage:
    spec: PackageSpec
    fetched: sources.FetchedSource
    tree: Path
    patches: tuple[patches.PatchFile, ...]
    stripped_pins: tuple[pins.StrippedPin, ...]
    build_requirements: tuple[str, ...]
    externals: tuple[ResolvedExternal, ...] = ()
    # The content's key (source and patches): the tree's marker file names it.
    key: str = ""
    # Per patch, how it applied: "applied" or "applied, FILE: hunk #N at offset +K".
    patch_notes: tuple[str, ...] = ()
    # The exact pins (`name==V`) the built wheel will require, as the source declares
    # them (runtime_requirements): the build venv is constrained to them.
    runtime_pins: tuple[str, ...] = ()


def dir_digest(path: Path) -> str:
    """The identity of a local source directory (no sha256, no commit): its files' names
    and contents, build outputs and caches left out."""
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and not any(part in ("build", "dist") for part in
                                   p.relative_to(path).parts[:1])):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(hashlib.sha256(item.read_bytes()).digest())
    return digest.hexdigest()


def _pyproject(tree: Path) -> dict[str, Any]:
    """The source's pyproject.toml, parsed ({} without one)."""
    import tomllib

    pyproject = tree / "pyproject.toml"
    return tomllib.loads(pyproject.read_text(encoding="utf-8")) if pyproject.is_file() else {}


def build_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    """What building this source needs, read from the source itself (torch pins already
    stripped): PEP 518 build-system.requires, then what its builder adds (vLLM's
    requirements/build.txt, FlashInfer AOT's runtime requirements)."""
    reqs: list[str] = list(_pyproject(tree).get("build-system", {}).get("requires", []))
    reqs += builder_for(spec).build_requirements(tree, spec)
    reqs += ["build", "wheel"]
    return [r for r in dict.fromkeys(r.strip() for r in reqs if r.strip())
            if not pins.is_torch_requirement(r)]


def runtime_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    """What the built wheel will require (its Requires-Dist), read from the source itself
    (torch pins already stripped): PEP 621 [project] dependencies, static or setuptools'
    dynamic `dependencies = {file = [...]}` (FlashInfer's requirements.txt), then what its
    builder adds (vLLM's setup.py reads requirements/cuda.txt)."""
    reqs: list[str] = []
    data = _pyproject(tree)
    project = data.get("project", {})
    if "dependencies" in project.get("dynamic", []):
        dynamic = data.get("tool", {}).get("setuptools", {}).get("dynamic", {})
        files = dynamic.get("dependencies", {}).get("file", [])
        for rel in [files] if isinstance(files, str) else files:
            reqs += pins.read_requirements(tree / rel)
    else:
        reqs += project.get("dependencies", [])
    reqs += builder_for(spec).runtime_requirements(tree, spec)
    return list(dict.fromkeys(r.strip() for r in reqs if r.strip()))


def prepare_package(spec: PackageSpec, cache: Cache, repo_root: Path, reporter: Reporter,
                    *, shared_tree: bool = False) -> PreparedPackage:
    """The patched source tree: under the cache dir, or with shared_tree (a build with a
    remote compile cache) under the machine-wide build root, where every builder's tree of
    the same source is at the same path (Cache.tree_parent).

    The path is one per package, version and patch series directory (tree_name); the
    content's key (source and patches) is in the tree's marker file. Why not the key in the
    path: nvcc writes the source's path into the preprocessed device code it hands to
    cudafe++ and cicc, so a new path for a patched tree made every unit of it miss the
    compile cache, not only the patched one (measured with the fixture extension: a
    one-file change missed both of its units). A tree whose key differs is prepared again in
    its place, under the tree's lock."""
    fetched = sources.fetch(spec, cache, repo_root, reporter)
    series = patches.package_series(spec, repo_root)
    identity = _source_identity(fetched)
    key = _content_key(identity, series)
    tree = cache.tree_parent(shared_tree) / tree_name(spec)
    prep = PreparedPackage(spec, fetched, tree, tuple(series), (), (), key=key)
    with cache.tree_lock(tree):
        ensure_prepared(prep, identity)
        data = json.loads((tree / layout.PREPARED_MARKER).read_text())
        requirements = tuple(build_requirements(tree, spec))
        runtime_pins = tuple(pins.exact_pins(runtime_requirements(tree, spec)))
    recorded = tuple(pins.StrippedPin(f, line) for f, line in data["stripped_pins"])
    return dataclasses.replace(prep, stripped_pins=recorded, build_requirements=requirements,
                               runtime_pins=runtime_pins,
                               patch_notes=tuple(note for _n, _s, note in data["patches"]))


def tree_name(spec: PackageSpec) -> str:
    """A prepared tree's directory name: the package, its version and the stack's patch
    series directory (as the stack writes it, so the same on every builder), not the
    patches' content. An edited patch or source file keeps the tree's path (its unchanged
    units hit the compile cache); another series of the same version (another stack's, a
    trial's) gets its own tree, so stacks that differ in patches do not take turns
    rebuilding one tree."""
    version = spec.source.version or "local"
    series = hashlib.sha256(spec.patches.encode()).hexdigest()[:8]
    return f"{canonicalize_name(spec.name)}-{version}-{series}"


def _source_identity(fetched: sources.FetchedSource) -> str:
    return fetched.sha256 or fetched.commit or dir_digest(fetched.directory or Path())


def _content_key(identity: str, series: Sequence[patches.PatchFile]) -> str:
    """What a prepared tree holds: the source and the patches applied to it."""
    return hashlib.sha256(json.dumps({"source": identity, "patches": [p.sha256 for p in series],
                                      "layout": PREPARE_LAYOUT}).encode()).hexdigest()[:12]


def ensure_prepared(prep: PreparedPackage, identity: str | None = None) -> None:
    """The tree holds prep's content (its marker has prep's key), prepared again in place
    if another build (other patches, another source of the same version) left its own
    there. The caller holds the tree's lock. `identity`: the source's, when the caller has
    just computed it (for a path source that reads every file)."""
    tree, marker = prep.tree, prep.tree / layout.PREPARED_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("key") == prep.key:
        return
    # The key of what is copied now (a path source may have changed since the plan).
    if identity is None:
        identity = _source_identity(prep.fetched)
    key = _content_key(identity, prep.patches)
    tmp = temp_sibling(tree)
    remove(tmp)
    try:
        if prep.fetched.archive is not None:
            sources.unpack(prep.fetched.archive, tmp)
        else:
            assert prep.fetched.directory is not None
            sources.copy_tree(prep.fetched.directory, tmp)
        applied = patches.apply_series(tmp, list(prep.patches))
        stripped = pins.strip_torch_pins(tmp)
        (tmp / layout.PREPARED_MARKER).write_text(json.dumps({
            "key": key, "source": identity,
            "patches": [[p.patch, s.sha256, p.describe()]
                        for p, s in zip(applied, prep.patches, strict=True)],
            "stripped_pins": [[s.file, s.line] for s in stripped]}, indent=2))
    except BaseException:
        remove(tmp)
        raise
    publish_dir(tmp, tree)
