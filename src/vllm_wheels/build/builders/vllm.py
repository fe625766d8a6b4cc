"""The vllm builder: CMake configure exactly as vLLM's setup.py does it (so setup.py's own
configure in the wheel step is a no-op and the compiled objects are reused), disconnected
(every FetchContent external comes from the plan: see externals.py), then the wheel.
With a unit cost record, the recorded units compile longest first before setup.py runs.
`compile_only` (the CI smoke path) compiles the listed translation units and makes no
wheel.
"""

from __future__ import annotations

import re
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import BuildError, SourceError
from ...runner import capture
from .. import fetchcontent, pins, telemetry
from ..fetchcontent import (
    HEADERS_ONLY_CMAKE_ARGS,
    TRACE_FILENAME,
    ExternalSource,
    read_trace,
    trace_sources,
    unplanned,
)
from ..stack import PackageSpec
from .base import BuildContext, Step, WheelExtras, parse_options, wheel_step

NAME = "vllm"
PACKAGES: tuple[str, ...] = ("vllm",)  # built with this builder by default


@dataclass(frozen=True, kw_only=True)
class Options:
    """[packages.vllm.options]"""

    compile_only: tuple[str, ...] = field(default=(), metadata={"doc": (
        "Compile only these translation units after configure, and make no wheel: the CI "
        "smoke path (a full vLLM compile does not fit a 2-core CI job).")})
    cmake_args: tuple[str, ...] = field(default=(), metadata={"doc": (
        "Extra arguments for vLLM's CMake configure.")})


def parse(options: Mapping[str, Any], where: str) -> Options:
    return parse_options(Options, options, where)


def options_of(spec: PackageSpec) -> Options:
    return parse(spec.options, f"packages.{spec.name}.options")


def build_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    """requirements/build.txt until 0.1x; requirements/build/cuda.txt from 0.20 on."""
    reqs: list[str] = []
    for rel in ("requirements/build.txt", "requirements/build/cuda.txt"):
        if (tree / rel).is_file():
            reqs += pins.read_requirements(tree / rel)
    return reqs


def runtime_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    """vLLM's setup.py (get_requirements) gives a CUDA build requirements/cuda.txt (with
    its -r common.txt) as install_requires; older releases kept it at the top level."""
    for rel in ("requirements/cuda.txt", "requirements-cuda.txt"):
        if (tree / rel).is_file():
            return pins.read_requirements(tree / rel)
    return []


def makes_wheel(spec: PackageSpec) -> bool:
    return not options_of(spec).compile_only


def discover_externals(tree: Path) -> list[ExternalSource]:
    """The FetchContent sources the CUDA configure downloads (prefetched by the plan)."""
    return [e for e in fetchcontent.discover(tree) if e.device == "cuda"]


def plan_notes(spec: PackageSpec) -> list[str]:
    if not makes_wheel(spec):
        return ["(compile_only: configure + listed translation units, no wheel)"]
    return []


def manifest_cmake_args(ctx: BuildContext) -> list[str] | None:
    """The configure's CMake arguments without the compile-cache launcher (not an input)
    and with paths made portable."""
    return [ctx.portable(a) for a in vllm_cmake_args(ctx) if "_COMPILER_LAUNCHER=" not in a]


def wheel_extras(ctx: BuildContext) -> WheelExtras:
    return WheelExtras()


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
    args += list(options_of(ctx.spec).cmake_args)
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
              "discovery as a bug of vllm_wheels.build.fetchcontent")


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


def ninja_escape(path: str) -> str:
    """A path as a ninja manifest writes it ($, space and colon escaped)."""
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
        lines.append(f"build {order}/{i}: vllm_wheels_order_stamp {ninja_escape(obj)}"
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


def steps(ctx: BuildContext) -> list[Step]:
    env = vllm_env(ctx)
    build_dir = vllm_build_dir(ctx)
    configure = vllm_configure_argv(ctx)
    nvcc = ctx.cuda_home / "bin" / "nvcc"

    def fresh_if_stale() -> tuple[str, ...]:
        return (*configure, "--fresh") if stale_cmake_cache(build_dir, nvcc) else configure

    planned = [Step("CMake configure (as vLLM's setup.py does), disconnected",
                    configure, env, build_dir, resolve=fresh_if_stale,
                    after=lambda ok: check_fetches(ctx, ok))]
    compile_only = list(options_of(ctx.spec).compile_only)
    if compile_only:
        ninja = ctx.venv_path / "bin" / "ninja"

        def resolve() -> tuple[str, ...]:
            return (str(ctx.venv_path / "bin" / "cmake"), "--build", str(build_dir), "--target",
                    *object_targets(build_dir, compile_only, ninja))

        planned.append(Step(f"compile {len(compile_only)} translation unit(s) only: "
                            + ", ".join(compile_only),
                            (str(ctx.venv_path / "bin" / "cmake"), "--build", str(build_dir),
                             "--target", *[f"<object of {s}>" for s in compile_only]),
                            env, build_dir, progress=True, resolve=resolve))
        return planned
    if ctx.unit_costs:
        planned.append(longest_first_step(ctx, env, build_dir))
    planned.append(wheel_step(ctx, env))
    return planned
