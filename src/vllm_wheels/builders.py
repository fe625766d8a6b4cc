"""Per-package build recipes. Each builder turns a prepared source tree into a list of
`Step`s (what the plan prints and the pipeline runs, with their environment) plus a
`collect` that says which raw wheel came out and what post-processing it needs.

- setuptools: any PEP 517 package built with `python -m build --no-isolation` in the build
  venv (torch CUDA extensions, e.g. the test fixture).
- flashinfer: the flashinfer-python wheel plus AOT-compiled kernels for the stack's arch
  list, placed in flashinfer/data/aot/ where the installed package loads them.
- vllm: CMake configure exactly as vLLM's setup.py does it (so setup.py's own configure
  in the wheel step is a no-op and the compiled objects are reused), then the wheel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.version import Version

from . import telemetry
from .cache import build_root, lock_file, write_atomic
from .errors import BuildError, SourceError
from .fetchcontent import (
    HEADERS_ONLY_CMAKE_ARGS,
    TRACE_FILENAME,
    read_trace,
    trace_sources,
    unplanned,
)
from .runner import capture
from .stack import PackageSpec, Stack
from .telemetry import ENV as TELEMETRY_ENV
from .telemetry import LAUNCHER as MEASURE_LAUNCHER
from .telemetry import UNITS_FILENAME
from .toolchain import CompileCache, Parallelism

HELPERS = Path(__file__).parent / "helpers"
# nvcc hands the host compiler a temporary file named after its process id
# (tmpxft_<pid>_...cudafe1.cpp), and gcc records that name as the object's STT_FILE symbol;
# no prefix map can hide a pid. Dropping local symbols (.symtab only: nothing the loader
# or the dynamic symbol table uses) at link makes the shared objects identical. Measured
# with nvcc 13.0: two objects of one .cu differ in exactly those bytes.
DISCARD_LOCAL_SYMBOLS = "-Wl,--discard-all"
# The SOURCE_DATE_EPOCH of the build steps when the caller sets none: a constant (the
# earliest zip time, 1980-01-01), so that whatever a tool stamps with "now" is the same
# in every build of the same inputs.
DEFAULT_SOURCE_DATE_EPOCH = "315532800"


def prefix_specs_path(pairs: list[tuple[str, str]]) -> Path:
    """The GCC spec file that carries a build's prefix maps (BuildContext.prefix_specs):
    at a fixed path in the build root, named by a digest of the mapped NAMES (the portable
    side, the same on every builder), so compiles whose maps name other targets never
    share it (nor a compile cache key); the builder's own paths are its content only.
    Sorted: the maps' order follows the lengths of this builder's paths."""
    digest = hashlib.sha256(json.dumps(sorted(name for _, name in pairs)).encode()).hexdigest()
    return build_root() / "prefix-maps" / f"{digest[:16]}.specs"


def prefix_specs_text(pairs: list[tuple[str, str]]) -> str:
    """Appends the maps (in order) to the preprocessor's and the compilers' options: they
    reach cc1, cc1plus and the -E runs, after any map already on the command line."""
    maps = " ".join(f"-ffile-prefix-map={path}={name}" for path, name in pairs)
    return f"*cpp_options:\n+ {maps}\n\n*cc1_options:\n+ {maps}\n"


@dataclass(frozen=True)
class Step:
    title: str
    argv: tuple[str, ...]
    env: Mapping[str, str | None]
    cwd: Path
    # Parse ninja [N/M] lines for progress (compile steps).
    progress: bool = False
    # Computes the argv at run time (e.g. ninja target names known only after configure).
    resolve: Callable[[], tuple[str, ...]] | None = None
    # Runs after the step, whether it failed (False) or not (True); may raise a clearer
    # error than the step's own (e.g. naming an external the plan missed).
    after: Callable[[bool], None] | None = None


@dataclass(frozen=True)
class ExternalDir:
    name: str
    env: str | None
    directory: Path
    headers_only: bool


@dataclass(frozen=True)
class BuildContext:
    stack: Stack
    spec: PackageSpec
    tree: Path  # the prepared (patched) source tree
    venv_path: Path
    cuda_home: Path
    nvcc_release: str
    parallelism: Parallelism
    compile_cache: CompileCache
    staging: Path  # where raw wheels are written
    externals: tuple[ExternalDir, ...] = ()
    # Mapped out of objects (prefix_map); empty = not mapped.
    repo_root: Path = Path()
    cache_root: Path = Path()
    python_tag: str = field(default_factory=lambda: sys.implementation.cache_tag)
    # The unit cost record of this package ({unit key: wall_s, cpu_s, peak_rss_kb}; see
    # telemetry.py): peaks for the launcher's memory admission, walls for the order.
    unit_costs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # How the prefix maps reach the compilers: "specs" (a GCC spec file, -specs=PATH, at a
    # path that is the same on every builder: compile caches hash command lines verbatim,
    # so inline maps of this builder's paths made every host compile path-bound), "flags"
    # (inline -ffile-prefix-map=...), or "" = specs when a compile cache is used, else flags.
    # The build falls back to "flags" when another build holds the spec file (hold_specs).
    prefix_maps_via: str = ""

    @property
    def python(self) -> Path:
        return self.venv_path / "bin" / "python"

    @property
    def version(self) -> str:
        return self.spec.source.version or "0"

    def target_version(self) -> str:
        return f"{Version(self.version).public}+{self.stack.local_label()}"

    @property
    def telemetry_units(self) -> Path:
        """Where the measuring launcher appends one JSON line per compiled unit."""
        return self.staging / UNITS_FILENAME

    @property
    def unit_peaks(self) -> Path:
        """What the launcher admits units by (helpers/measure_compile.py, UNIT_PEAKS_ENV)."""
        return self.staging / "unit-peaks.json"

    def admission_env(self) -> dict[str, str]:
        """The launcher's memory admission: only when the parallelism came from a record
        (without one the rule's job count alone bounds memory, as before)."""
        if not self.parallelism.memory_budget_kb:
            return {}
        return {"VLLM_WHEELS_MEMORY_BUDGET_KB": str(self.parallelism.memory_budget_kb),
                "VLLM_WHEELS_MEMORY_LEDGER": str(self.staging / "memory-ledger"),
                "VLLM_WHEELS_UNIT_PEAKS": str(self.unit_peaks)}

    def write_unit_peaks(self) -> None:
        """Before the build (staging exists): the peaks the launcher reserves, keyed as
        telemetry.unit_key keys them."""
        if not self.parallelism.memory_budget_kb:
            return
        write_atomic(self.unit_peaks, json.dumps({
            "roots": [[str(self.tree), ""], [str(self.cache_root), "cache:"]],
            "default_kb": self.parallelism.default_unit_kb,
            "peaks": {k: int(c["peak_rss_kb"]) for k, c in self.unit_costs.items()}}))

    def launcher(self) -> list[str]:
        """The command put in front of every compiler: the measuring launcher (run with the
        build venv's python; -S skips site-packages, it needs only the standard library),
        then the compile cache, if any."""
        cache = self.compile_cache.launcher()
        return [*self.measure_launcher(), *([cache] if cache else [])]

    def measure_launcher(self) -> list[str]:
        return [str(self.python), "-S", str(MEASURE_LAUNCHER)]

    def prefix_map(self) -> list[tuple[str, str]]:
        """(build path, portable name) pairs, longest path last. Compilers write the paths
        they were given into objects (__FILE__ in asserts, debug info); these places differ
        between builders (cache dir, venv, checkout) but not their contents. gcc lets the
        last matching map win, so a directory inside another keeps its own name."""
        pairs = [(self.repo_root, "/repo"), (self.cache_root, "/cache"),
                 (self.venv_path, "/venv"), (self.cuda_home, "/cuda"),
                 (self.base_python_prefix(), "/python"),
                 *[(e.directory, f"/ext/{e.name}") for e in self.externals],
                 (self.tree, f"/src/{self.spec.name}")]
        return sorted(((str(p), name) for p, name in pairs
                       if p.is_absolute() and str(p) != "/"), key=lambda pair: len(pair[0]))

    def base_python_prefix(self) -> Path:
        """The installation the build venv was made from (its Python.h is included by
        every extension), read from pyvenv.cfg; Path() when unknown."""
        try:
            cfg = (self.venv_path / "pyvenv.cfg").read_text(encoding="utf-8")
        except OSError:
            return Path()
        for line in cfg.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                return Path(value.strip()).parent  # home is the bin/ directory
        return Path()

    def portable(self, text: str) -> str:
        """text with the build's paths replaced as the compilers see them replaced."""
        for path, name in sorted(self.prefix_map(), key=lambda pair: -len(pair[0])):
            text = text.replace(path, name)
        return text

    def prefix_specs(self) -> Path | None:
        """The spec file the compilers get the prefix maps from (None: inline flags)."""
        via = self.prefix_maps_via or ("flags" if self.compile_cache.tool == "none"
                                       else "specs")
        return prefix_specs_path(self.prefix_map()) if via == "specs" else None

    def _maps(self) -> list[str]:
        """What gcc/g++ get for the prefix maps: -specs=FILE, or the maps themselves."""
        specs = self.prefix_specs()
        if specs is not None:
            return [f"-specs={specs}"]
        return [f"-ffile-prefix-map={path}={name}" for path, name in self.prefix_map()]

    def nvcc_prefix_flags(self) -> str:
        """The prefix maps as nvcc passes them to its host compiler (nvcc forwards
        -Xcompiler=-specs=FILE to every host compiler call, -E runs included). Also put on
        the nvcc command a compile cache runs, which hashes command lines (an object cached
        before the maps existed must not be reused)."""
        return " ".join(f"-Xcompiler={m}" for m in self._maps())

    def nvcc_launcher(self) -> list[str]:
        """Goes in front of every nvcc command (and of the compile cache wrapping it):
        helpers/nvcc_source_path.py gives nvcc the mapped source path, from which nvcc
        hashes the names of internal-linkage device entities (no prefix map reaches it)."""
        return [str(self.python), str(HELPERS / "nvcc_source_path.py")]

    def nvcc_command(self) -> str:
        """The nvcc command line for builders that take one string (torch's PYTORCH_NVCC,
        FLASHINFER_NVCC): the measuring launcher, the source-path launcher, the compile
        cache, nvcc, prefix maps."""
        return " ".join(p for p in [*self.measure_launcher(), *self.nvcc_launcher(),
                                    self.compile_cache.launcher(),
                                    str(self.cuda_home / "bin" / "nvcc"), self.nvcc_prefix_flags()]
                        if p)

    def reproducibility_env(self) -> dict[str, str]:
        """SOURCE_DATE_EPOCH and path prefix maps: gcc/g++ through CFLAGS/CXXFLAGS (read by
        setuptools and by CMake's first configure), nvcc (and the host compiler it drives)
        through NVCC_APPEND_FLAGS, which nvcc itself reads, so torch's cpp_extension,
        FlashInfer's AOT ninja files and CMake all get it without knowing of it; CUDAFLAGS
        too, so CMake's nvcc command lines (what a compile cache hashes) carry them.
        LDFLAGS (setuptools, CMake) drops local symbols at link: see DISCARD_LOCAL_SYMBOLS."""
        flags = " ".join(self._maps())
        host = self.nvcc_prefix_flags()
        env = {"SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH")
               or DEFAULT_SOURCE_DATE_EPOCH,
               "VLLM_WHEELS_PREFIX_MAP": json.dumps(self.prefix_map())}
        for key, value in (("CFLAGS", flags), ("CXXFLAGS", flags), ("NVCC_APPEND_FLAGS", host),
                           ("CUDAFLAGS", host), ("LDFLAGS", DISCARD_LOCAL_SYMBOLS)):
            # The caller's own flags stay, ours come after them.
            env[key] = f"{os.environ[key]} {value}" if os.environ.get(key) else value
        return env

    def base_env(self) -> dict[str, str | None]:
        path = os.pathsep.join([str(self.venv_path / "bin"), str(self.cuda_home / "bin"),
                                os.environ.get("PATH", "")])
        env: dict[str, str | None] = {
            "PATH": path,
            "VIRTUAL_ENV": str(self.venv_path),
            "CUDA_HOME": str(self.cuda_home),
            "CUDA_PATH": str(self.cuda_home),
            "TORCH_CUDA_ARCH_LIST": self.stack.arch_list_env,
            "MAX_JOBS": str(self.parallelism.jobs),
            "NVCC_THREADS": str(self.parallelism.nvcc_threads),
            "CMAKE_BUILD_TYPE": self.stack.build.build_type,
            "PYTHONNOUSERSITE": "1",
            TELEMETRY_ENV: str(self.telemetry_units),
        }
        env.update(self.admission_env())
        env.update(self.reproducibility_env())
        env.update(self.compile_cache.env(self.tree))
        env.update(self.spec.env)  # the user's values win
        return env


@contextlib.contextmanager
def hold_specs(ctx: BuildContext) -> Iterator[tuple[BuildContext, str]]:
    """For the build of one package: the context to build with and a warning ("" if none).
    In spec-file mode the spec file is written (atomically) under an flock held for the
    whole block: two builds on this host whose maps name the same targets from other paths
    would otherwise rewrite each other's file mid-build. When another build holds it, this
    build passes the maps inline (as before spec files: the same objects, but the keys of
    its host compiles name its own paths). The file is left in place afterwards (a step
    re-run from the log still finds it; the next build rewrites it under the lock)."""
    specs = ctx.prefix_specs()
    if specs is None:
        yield ctx, ""
        return
    with lock_file(specs.with_name(specs.name + ".lock"), wait=False) as held:
        if not held:
            yield replace(ctx, prefix_maps_via="flags"), (
                f"{ctx.spec.name}: another build on this host holds the prefix-map spec file "
                f"{specs}: passing the maps inline for this build, so the compile cache "
                "keys of its host compiles (sccache's CUDA and C/C++) name this builder's "
                "paths: no hits there from or for other builders")
            return
        write_atomic(specs, prefix_specs_text(ctx.prefix_map()))
        yield ctx, ""


def _wheel_step(ctx: BuildContext, env: Mapping[str, str | None]) -> Step:
    return Step("build the wheel (PEP 517, no build isolation)",
                (str(ctx.python), "-m", "build", "--wheel", "--no-isolation",
                 "--outdir", str(ctx.staging), str(ctx.tree)),
                env, ctx.tree, progress=True)


# -------------------------------------------------------------------------- setuptools


def setuptools_steps(ctx: BuildContext) -> list[Step]:
    env = ctx.base_env()
    # torch.utils.cpp_extension takes its nvcc from PYTORCH_NVCC, the supported way to put
    # launchers (measurement, source path, compile cache) in front of nvcc (the expensive
    # units). Its host C++ units (CXX) are not wrapped: torch checks CXX as one compiler path.
    env["PYTORCH_NVCC"] = ctx.nvcc_command()
    return [_wheel_step(ctx, env)]


# -------------------------------------------------------------------------- flashinfer


def flashinfer_arch_list(stack: Stack, nvcc_release: str, option: str) -> str:
    """FLASHINFER_CUDA_ARCH_LIST (space separated). Arch-specific kernels need a suffix:
    `f` (family) with nvcc >= 12.9, else `a`, as FlashInfer's own later releases do."""
    if option:
        return option
    family = Version(nvcc_release) >= Version("12.9")
    out = []
    for arch in stack.cuda_arch_list:
        arch = arch.replace("+PTX", "")
        if arch[-1] in "af":
            out.append(arch)
        elif Version(arch) >= Version("9.0"):
            out.append(arch + ("f" if family and Version(arch) >= Version("10.0") else "a"))
        else:
            out.append(arch)
    return " ".join(out)


def aot_out_dir(ctx: BuildContext) -> Path:
    return ctx.tree / "build" / "vllm-wheels-aot"


def flashinfer_steps(ctx: BuildContext) -> list[Step]:
    env = ctx.base_env()
    steps = [Step("label the version (flashinfer/_build_meta.py)",
                  (str(ctx.python), "-c", _SET_BUILD_META, str(ctx.tree), ctx.target_version()),
                  {}, ctx.tree)]
    options = ctx.spec.options
    if options.get("aot", True):
        arch = flashinfer_arch_list(ctx.stack, ctx.nvcc_release, str(options.get("aot_arch_list")
                                                                      or ""))
        aot_env = dict(env)
        # FlashInfer's ninja files link with $cxx or nvcc: -Xlinker is understood by both.
        aot_env["FLASHINFER_EXTRA_LDFLAGS"] = "-Xlinker --discard-all"
        aot_env.update({"FLASHINFER_CUDA_ARCH_LIST": arch,
                        "FLASHINFER_WORKSPACE_BASE": str(ctx.tree / "build" / "workspace")})
        aot_env["FLASHINFER_NVCC"] = ctx.nvcc_command()
        # FlashInfer's JIT writes CXX verbatim into its build.ninja (host units, links).
        aot_env["CXX"] = " ".join([*ctx.launcher(), env.get("CXX") or "c++"])
        steps.append(Step(
            f"AOT-compile FlashInfer kernels for {arch}",
            (str(ctx.python), str(HELPERS / "flashinfer_aot.py"), "--source-root", str(ctx.tree),
             "--out-dir", str(aot_out_dir(ctx)), "--build-dir", str(ctx.tree / "build" / "aot"),
             "--arch", arch, "-v", *[str(m) for m in options.get("aot_modules", ["*"])]),
            aot_env, ctx.tree, progress=True))
    steps.append(_wheel_step(ctx, env))
    return steps


_SET_BUILD_META = r"""
import re, sys, pathlib
meta = pathlib.Path(sys.argv[1]) / "flashinfer" / "_build_meta.py"
text = meta.read_text()
new = re.sub(r'^__version__ = ".*"$', '__version__ = "%s"' % sys.argv[2], text, flags=re.M)
if new == text and sys.argv[2] not in text:
    sys.exit("cannot find __version__ in " + str(meta))
meta.write_text(new)
print("version:", sys.argv[2])
"""


def flashinfer_aot_files(ctx: BuildContext) -> dict[str, Path]:
    out = aot_out_dir(ctx)
    if not ctx.spec.options.get("aot", True):
        return {}
    files = {f"flashinfer/data/aot/{p.relative_to(out).as_posix()}": p
             for p in sorted(out.rglob("*.so"))}
    if not files:
        raise BuildError(f"FlashInfer AOT produced no kernels in {out}",
                         fix="check aot_modules in the stack (the globs must match module names)")
    return files


# -------------------------------------------------------------------------------- vllm


def vllm_build_dir(ctx: BuildContext) -> Path:
    """The directory vLLM's setup.py configures in (`build_temp` of setuptools), so that
    our configure and setup.py's share one CMake cache and one set of objects."""
    plat = sysconfig.get_platform()
    return ctx.tree / "build" / f"temp.{plat}-{ctx.python_tag}"


def vllm_cmake_args(ctx: BuildContext) -> list[str]:
    args = []
    # CMake lists: vLLM's setup.py splits CMAKE_ARGS at whitespace. C/C++: the measuring
    # launcher, then the compile cache; CUDA: also the source-path launcher before the cache.
    cache = ctx.compile_cache
    args.append(f"-DCMAKE_C_COMPILER_LAUNCHER={';'.join(ctx.launcher())}")
    args.append(f"-DCMAKE_CXX_COMPILER_LAUNCHER={';'.join(ctx.launcher())}")
    args.append("-DCMAKE_CUDA_COMPILER_LAUNCHER=" + ";".join(
        [*ctx.measure_launcher(), *ctx.nvcc_launcher(),
         *([cache.launcher()] if cache.path else [])]))
    for ext in ctx.externals:
        if ext.headers_only and ext.name in HEADERS_ONLY_CMAKE_ARGS:
            args += [a.format(dir=ext.directory) for a in HEADERS_ONLY_CMAKE_ARGS[ext.name]]
    # A hermetic configure: FetchContent never downloads (every external comes from the
    # plan's prefetched, hashed cache or a stack override). FULLY_DISCONNECTED alone only
    # warns for a declared-but-missing source unless policy CMP0170 is NEW, and a
    # FetchContent_Populate() with its own arguments ignores it (measured with CMake 4.4),
    # so vllm_env also points every proxy at a closed port for the configure.
    args += ["-DFETCHCONTENT_FULLY_DISCONNECTED=ON", "-DCMAKE_POLICY_DEFAULT_CMP0170=NEW"]
    args += [str(a) for a in ctx.spec.options.get("cmake_args", [])]
    return args


# No process of a vLLM build step needs the network: git and CMake's file(DOWNLOAD) honour
# these and fail at once on a closed local port, instead of fetching something unpinned.
# (A remote compile cache, when one is configured, is reached directly, not over HTTP
# proxies; NO_PROXY lists loopback for a local one.)
OFFLINE_ENV = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "ALL_PROXY": "http://127.0.0.1:9", "all_proxy": "http://127.0.0.1:9",
               "NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
               "GIT_TERMINAL_PROMPT": "0"}


def vllm_env(ctx: BuildContext) -> dict[str, str | None]:
    env = ctx.base_env()
    env["VLLM_TARGET_DEVICE"] = "cuda"
    env["MAX_JOBS"] = str(ctx.parallelism.vllm_max_jobs)
    # 0.11.1+ takes this verbatim as the version (no +cuXYZ suffix appended).
    env["VLLM_VERSION_OVERRIDE"] = ctx.target_version()
    env["SETUPTOOLS_SCM_PRETEND_VERSION"] = ctx.target_version()
    env["FETCHCONTENT_BASE_DIR"] = str(ctx.tree / ".deps")
    env["CMAKE_ARGS"] = " ".join(vllm_cmake_args(ctx))
    if ctx.compile_cache.tool != "sccache":
        env["VLLM_DISABLE_SCCACHE"] = "1"
    for ext in ctx.externals:
        if ext.env:
            env[ext.env] = str(ext.directory)
    env.update(OFFLINE_ENV)
    return env


def vllm_configure_argv(ctx: BuildContext) -> tuple[str, ...]:
    """The configure command of vLLM's setup.py (cmake_build_ext.configure), verbatim in
    its arguments, so setup.py's own configure during the wheel step changes nothing."""
    jobs = ctx.parallelism.jobs
    return (
        str(ctx.venv_path / "bin" / "cmake"), str(ctx.tree), "-G", "Ninja",
        f"-DCMAKE_BUILD_TYPE={ctx.stack.build.build_type}", "-DVLLM_TARGET_DEVICE=cuda",
        f"-DVLLM_PYTHON_EXECUTABLE={ctx.python}",
        f"-DFETCHCONTENT_BASE_DIR={ctx.tree / '.deps'}",
        f"-DNVCC_THREADS={ctx.parallelism.nvcc_threads}",
        "-DCMAKE_JOB_POOL_COMPILE:STRING=compile", f"-DCMAKE_JOB_POOLS:STRING=compile={jobs}",
        f"-DCMAKE_CUDA_COMPILER={ctx.cuda_home / 'bin' / 'nvcc'}",
        *vllm_cmake_args(ctx),
        *cmake_flag_args(ctx),
        # CMake's own record of every FetchContent call (checked by check_fetches); trace
        # options are not cached, so setup.py's later configure is unaffected.
        "--trace-expand", "--trace-format=json-v1",
        f"--trace-redirect={vllm_build_dir(ctx) / TRACE_FILENAME}",
        *[f"--trace-source={p}" for p in trace_sources(ctx.tree)],
    )


def cmake_flag_args(ctx: BuildContext) -> list[str]:
    """This build's CFLAGS, CXXFLAGS and CUDAFLAGS as CMake cache values. CMake reads those
    variables on a build directory's first configure only and keeps them in its cache, so a
    reused tree would keep an earlier build's prefix maps: a spec file path of another build
    root or one since removed ("cannot read spec file"), or the inline maps of a fallback
    build. Only on our configure (an argv: values with spaces stay whole), not in
    CMAKE_ARGS (setup.py splits it at whitespace); setup.py's own configure passes none, so
    the cache keeps them."""
    env = ctx.base_env()
    return [f"-DCMAKE_{lang}_FLAGS={env.get(var) or ''}"
            for lang, var in (("C", "CFLAGS"), ("CXX", "CXXFLAGS"), ("CUDA", "CUDAFLAGS"))]


def check_fetches(ctx: BuildContext, configure_ok: bool) -> None:
    """After the configure: every FetchContent call that would download must be an
    external the plan knows. With the disconnected configure such a call fails the
    configure; this names it and says how to add it."""
    traced = read_trace(vllm_build_dir(ctx) / TRACE_FILENAME)
    missed = unplanned(traced, {e.name for e in ctx.externals})
    if not missed:
        return
    lines = [f"{m.name}: {m.url} @ {m.ref or '?'} ({m.command} at {m.where})" for m in missed]
    raise SourceError(
        f"{ctx.spec.name}'s configure declares external source(s) the plan does not know: "
        + "; ".join(lines),
        why="the configure is disconnected, so it cannot download them; a download there "
            "would be unpinned and unhashed" + ("" if configure_ok else
                                                 " (the configure failed because of it)"),
        fix="add each to the stack: [packages." + ctx.spec.name + ".externals." + missed[0].name
            + "] path = DIR_OR_ARCHIVE (or url + commit of a mirror); and report the missed "
              "discovery as a bug of vllm_wheels.fetchcontent")


def object_targets(build_dir: Path, sources: list[str], ninja: Path) -> tuple[str, ...]:
    """Ninja's object-file target names for the given source files."""
    out = capture([ninja, "-C", build_dir, "-t", "targets", "all"])
    targets = []
    for src in sources:
        suffix = "/" + src.lstrip("/") + ".o"
        found = [line.split(":")[0] for line in out.splitlines()
                 if line.split(":")[0].endswith(suffix)]
        if not found:
            raise BuildError(f"{src} is not compiled by this configuration",
                             why="vLLM gates sources by CUDA arch and nvcc version",
                             fix="pick a translation unit built for the stack's arch list "
                                 "(see the configure log)")
        targets.append(found[0])
    return tuple(targets)


def _ninja_escape(path: str) -> str:
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def longest_first_manifest(build_dir: Path, objects: list[str]) -> str:
    """A ninja file that includes build.ninja and asks for `objects` (longest first) so
    that ninja starts them in that order.

    Ninja >= 1.12 starts the ready edge with the longest chain of edges after it first, and
    among equals the one declared first in the manifest; the order of targets on the
    command line does not matter (measured with ninja 1.13: `ninja f.o e.o ... a.o`
    compiles a.o first). So each object gets a chain of stamp edges after it, the longest
    object the longest chain: stamp i needs object i and stamp i-1, so object i is followed
    by n - i + 1 stamps. The stamps live in ORDER_DIR; build.ninja's own edges and the
    build log are shared, so vLLM's setup.py finds the objects up to date."""
    order = telemetry.ORDER_DIR
    lines = ["# Written by vllm-wheels: compile the recorded units longest first.",
             "include build.ninja", "rule vllm_wheels_order_stamp",
             "  command = touch $out", "  description = order stamp $out"]
    prev = ""
    for i, obj in enumerate(objects, 1):
        lines.append(f"build {order}/{i}: vllm_wheels_order_stamp {_ninja_escape(obj)}"
                     + (f" {prev}" if prev else ""))
        prev = f"{order}/{i}"
    if not objects:
        lines.append(f"build {order}/0: phony")
    (build_dir / order).mkdir(parents=True, exist_ok=True)
    return "\n".join(lines) + "\n"


def recorded_objects(costs: Mapping[str, Mapping[str, float]], targets: str) -> list[str]:
    """The object targets (from `ninja -t targets all`) of the record's units, longest
    recorded wall time first; units this configuration does not compile are left out."""
    names = [line.split(":")[0] for line in targets.splitlines()]
    found: list[str] = []
    for key in sorted(costs, key=lambda k: (-float(costs[k]["wall_s"]), k)):
        # CMake names an object after its source: <target>.dir/<path below the source
        # dir>.o, or the source's absolute path for one outside it (bundled externals).
        # (one source compiled for two targets: both objects)
        suffix = "/" + key.removeprefix("cache:") + ".o"
        found += [n for n in names if n.endswith(suffix) and n not in found]
    return found


def longest_first_step(ctx: BuildContext, env: Mapping[str, str | None],
                       build_dir: Path) -> Step:
    ninja = ctx.venv_path / "bin" / "ninja"
    manifest = build_dir / telemetry.ORDER_DIR / "order.ninja"

    def resolve() -> tuple[str, ...]:
        listing = capture([ninja, "-C", build_dir, "-t", "targets", "all"])
        objects = recorded_objects(ctx.unit_costs, listing)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(longest_first_manifest(build_dir, objects), encoding="utf-8")
        last = f"{telemetry.ORDER_DIR}/{len(objects)}"  # needs every stamp before it
        return (str(ninja), "-C", str(build_dir), "-f", str(manifest),
                "-j", str(ctx.parallelism.jobs), last)

    return Step(f"compile the {len(ctx.unit_costs)} recorded unit(s) longest first "
                "(setup.py then finds them up to date)",
                (str(ninja), "-C", str(build_dir), "-f", str(manifest), "-j",
                 str(ctx.parallelism.jobs), "<recorded objects, longest first>"),
                env, build_dir, progress=True, resolve=resolve)


def stale_cmake_cache(build_dir: Path, nvcc: Path) -> bool:
    """Whether build_dir's CMakeCache.txt was configured with another CUDA compiler: that of
    another builder whose pipeline cache (and the CUDA_HOME assembled in it) differs, on a
    tree it shares under the build root. CMake would then throw the cache away and configure
    again without the command line's -D values ("You have changed variables that require
    your cache to be deleted"), and vLLM stops at "Please set VLLM_PYTHON_EXECUTABLE"
    (seen in `nox -s bench_build`: the one-file patch after the second builder). The
    configure step then runs with `--fresh` (CMake >= 3.24): a new cache, the same build
    tree; ninja recompiles what the new commands change, from the compile cache."""
    try:
        text = (build_dir / "CMakeCache.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    match = re.search(r"^CMAKE_CUDA_COMPILER:[A-Z]+=(.*)$", text, re.M)
    return match is not None and match.group(1).strip() != str(nvcc)


def vllm_steps(ctx: BuildContext) -> list[Step]:
    env = vllm_env(ctx)
    build_dir = vllm_build_dir(ctx)
    configure = vllm_configure_argv(ctx)
    nvcc = ctx.cuda_home / "bin" / "nvcc"

    def fresh_if_stale() -> tuple[str, ...]:
        return (*configure, "--fresh") if stale_cmake_cache(build_dir, nvcc) else configure

    steps = [Step("CMake configure (as vLLM's setup.py does), disconnected",
                  configure, env, build_dir, resolve=fresh_if_stale,
                  after=lambda ok: check_fetches(ctx, ok))]
    compile_only = [str(s) for s in ctx.spec.options.get("compile_only", [])]
    if compile_only:
        ninja = ctx.venv_path / "bin" / "ninja"

        def resolve() -> tuple[str, ...]:
            return (str(ctx.venv_path / "bin" / "cmake"), "--build", str(build_dir), "--target",
                    *object_targets(build_dir, compile_only, ninja))

        steps.append(Step(f"compile {len(compile_only)} translation unit(s) only: "
                          + ", ".join(compile_only),
                          (str(ctx.venv_path / "bin" / "cmake"), "--build", str(build_dir),
                           "--target", *[f"<object of {s}>" for s in compile_only]),
                          env, build_dir, progress=True, resolve=resolve))
        return steps
    if ctx.unit_costs:
        steps.append(longest_first_step(ctx, env, build_dir))
    steps.append(_wheel_step(ctx, env))
    return steps


def steps_for(ctx: BuildContext) -> list[Step]:
    return {"setuptools": setuptools_steps, "flashinfer": flashinfer_steps,
            "vllm": vllm_steps}[ctx.spec.builder](ctx)


def makes_wheel(spec: PackageSpec) -> bool:
    return not (spec.builder == "vllm" and spec.options.get("compile_only"))

