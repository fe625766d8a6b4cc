"""External sources: what a package's build would download (its builder discovers them,
e.g. vLLM's CMake FetchContent calls, fetchcontent.py) resolved before the build, each to
one directory: a stack override (path, archive, url/commit, or from_source: a copy
vendored in another package of the stack), a bundle's copy, the cache's checkout at the
pinned ref, or "to fetch". The build then runs disconnected.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from pathlib import Path

from packaging.utils import canonicalize_name

from .. import layout
from ..cache import Cache
from ..errors import ConfigError, SourceError
from ..log import Reporter
from . import bundle, fetchcontent, sources
from .builders import builder_for
from .prepare import ExternalOrigin, PreparedPackage, ResolvedExternal


def resolve_externals(prep: PreparedPackage, cache: Cache, repo_root: Path, reporter: Reporter,
                      *, fetch: bool, others: list[PreparedPackage] | None = None,
                      source_bundle: bundle.Bundle | None = None) -> PreparedPackage:
    discovered = builder_for(prep.spec).discover_externals(prep.tree)
    if discovered is None:
        return prep
    names = {e.name for e in discovered}
    for name in prep.spec.externals:
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            raise ConfigError(f"[packages.{prep.spec.name}.externals.{name}]: this source declares "
                              f"no external named '{name}'",
                              fix=(f"did you mean '{close[0]}'? " if close else "")
                              + "declared: " + ", ".join(sorted(names)))
    resolved = []
    for ext in discovered:
        override = prep.spec.externals.get(ext.name)
        url = (override.url if override and override.url else None) or ext.url
        ref = (override.commit if override and override.commit else None) or ext.ref
        local = bool(override and (override.path or override.from_source))
        if not (url and ref) and not local and source_bundle is None:
            # The evaluation reached this download but could not know where from (a URL
            # or tag computed by something it does not evaluate): never guess, never drop.
            missing = " and ".join(w for w, v in (("URL", url), ("tag", ref)) if not v)
            raise ConfigError(
                f"{prep.spec.name}: the {missing} of external '{ext.name}' "
                f"({ext.declared_in}) cannot be known before the configure",
                why="the pipeline prefetches every external the CUDA configure downloads, "
                    "and this one's CMake computes where it comes from",
                fix=f"pin it in the stack: [packages.{prep.spec.name}.externals.{ext.name}] "
                    f"with url = \"...\" and commit = \"...\" (read them from "
                    f"{ext.declared_in}), or path = DIR_OR_ARCHIVE")
        directory: Path | None = None
        commit: str | None = ref if ext.ref_is_commit else None
        if override and override.from_source:
            pkg_name, _, subdir = override.from_source.partition(":")
            donor = next((o for o in (others or []) if canonicalize_name(o.spec.name)
                          == canonicalize_name(pkg_name)), None)
            if donor is None:
                raise ConfigError(
                    f"[packages.{prep.spec.name}.externals.{ext.name}] from_source: package "
                    f"{pkg_name} was not prepared before {prep.spec.name}",
                    why=f"from_source reads {subdir} from {pkg_name}'s prepared source tree",
                    fix=f"list [packages.{pkg_name}] in the stack before "
                        f"[packages.{prep.spec.name}], or set path = DIR_OR_ARCHIVE instead")
            directory, origin = donor.tree / subdir, f"from-source:{pkg_name}"
            if not directory.is_dir():
                raise ConfigError(f"externals.{ext.name}.from_source: {directory} does not exist")
        elif source_bundle is not None:
            # A bundle build reads every external from the bundle, never from the network
            # or from paths of the machine that exported it; the lock must pin the same
            # source the (patched) CMake files declare.
            entry = source_bundle.external(prep.spec.name, ext.name)
            if entry is not None and (entry["url"], entry["ref"]) != (url, ref):
                raise SourceError(
                    f"the bundle's {ext.name} is {entry['url']} @ {entry['ref']}, but "
                    f"{prep.spec.name}'s CMake files declare {url} @ {ref}",
                    fix="export the bundle again from this stack")
            directory = bundle.external_directory(source_bundle, prep.spec.name, ext.name, cache)
            origin = ExternalOrigin.BUNDLE
            commit = entry.get("commit") if entry else None
        elif override and override.path:
            path = (repo_root / override.path).resolve()
            if not path.exists():
                raise ConfigError(f"externals.{ext.name}.path {path} does not exist")
            if path.is_dir():
                directory, origin = path, ExternalOrigin.OVERRIDE_PATH
            else:
                sha = sources.sha256_file(path)
                directory = cache.externals / "archives" / sha
                if not directory.exists():
                    sources.unpack(path, directory)
                origin = ExternalOrigin.OVERRIDE_ARCHIVE
            commit = override.commit or None
        else:
            checkout = cache.externals / canonicalize_name(ext.name) / \
                hashlib.sha256(f"{url}@{ref}".encode()).hexdigest()[:16]
            if (checkout / layout.COMMIT_MARKER).exists():
                directory, origin = checkout, ExternalOrigin.CACHE
                commit = (checkout / layout.COMMIT_MARKER).read_text().strip()
            elif fetch:
                reporter.say(f"    prefetching {ext.name} {url} @ {ref}")
                commit = sources.git_checkout(url, ref, checkout, reporter,
                                              label=f"external {ext.name} of {prep.spec.name}",
                                              fix=unreachable_fix(prep.spec.name, ext.name, ref))
                directory, origin = checkout, ExternalOrigin.CACHE
            else:
                origin = ExternalOrigin.TO_FETCH
        if directory is not None and ext.override_subdir and origin == ExternalOrigin.CACHE:
            directory = directory / ext.override_subdir
        headers_only = bool(directory and ext.name in fetchcontent.HEADERS_ONLY_CMAKE_ARGS
                            and not (directory / "CMakeLists.txt").exists())
        resolved.append(ResolvedExternal(ext, directory, origin, commit, headers_only))
    return dataclasses.replace(prep, externals=tuple(resolved))


def unreachable_fix(package: str, external: str, ref: str) -> str:
    """What to do when an external's repository cannot be reached (no GitHub here, an
    air-gapped host): build from an offline bundle, or name a mirror or a local copy in the
    stack. The pinned ref stays the same; only where it is read from changes."""
    return (f"build from an offline source bundle exported where the repository is "
            f"reachable (`--export-bundle DIR` there, `--bundle DIR` here; docs/build.md), "
            f"or point the stack at a mirror or a local copy: "
            f"[packages.{package}.externals.{external}] url = \"MIRROR\" (it must hold {ref}) "
            f"or path = \"DIR_OR_ARCHIVE\"")
