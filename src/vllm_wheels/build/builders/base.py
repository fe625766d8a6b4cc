"""What every builder shares: the `BuildContext` a builder turns into `Step`s (what the
plan prints and the pipeline runs, with their environment), the build environment
(compile launchers, reproducibility flags, prefix maps), the PEP 517 wheel step, and the
parsing of a builder's typed options from its stack table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from packaging.version import Version

from ... import layout
from ...cache import build_root, lock_file, write_atomic
from ...errors import ConfigError, ToolchainError
from ...runner import capture
from ..stack import PackageSpec, Stack
from ..telemetry import ENV as TELEMETRY_ENV
from ..telemetry import LAUNCHER as MEASURE_LAUNCHER
from ..telemetry import UNITS_FILENAME
from ..toolchain import CompileCache, Parallelism

HELPERS = layout.HELPERS_DIR
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


def wheel_step(ctx: BuildContext, env: Mapping[str, str | None]) -> Step:
    """`python -m build --wheel --no-isolation` in the build venv, into ctx.staging."""
    return Step("build the wheel (PEP 517, no build isolation)",
                (str(ctx.python), "-m", "build", "--wheel", "--no-isolation",
                 "--outdir", str(ctx.staging), str(ctx.tree)),
                env, ctx.tree, progress=True)


def dist_version(python: Path, dist: str, missing_ok: bool = False) -> str | None:
    """The version of `dist` installed in the venv of `python` (None if missing_ok and
    it is not installed)."""
    out = capture([python, HELPERS / "dist_version.py", dist]).strip()
    if not out and not missing_ok:
        raise ToolchainError(f"{dist} is not installed in the build venv {python.parent.parent}")
    return out or None


@dataclass(frozen=True)
class WheelExtras:
    """A builder's post-processing of its raw wheel: files to add (wheel path -> file),
    a platform tag to set (None = keep the wheel's), runtime pins to add beside torch's,
    and fields the builder adds to the wheel's manifest."""

    add_files: Mapping[str, Path] = field(default_factory=dict)
    platform_tag: str | None = None
    pins: Mapping[str, str] = field(default_factory=dict)
    manifest: Mapping[str, Any] = field(default_factory=dict)


OptionsT = TypeVar("OptionsT")


def parse_options(cls: type[OptionsT], options: Mapping[str, Any], where: str) -> OptionsT:
    """A builder's frozen options dataclass from its [packages.NAME.options] table: the
    defaults are the dataclass's; an unknown key or a value of the wrong type is a
    ConfigError (exit 2). Lists become tuples."""
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1, cutoff=0.6)
        raise ConfigError(f"[{where}] unknown option '{unknown[0]}'",
                          why="a typo would otherwise silently fall back to a default",
                          fix=f"did you mean '{close[0]}'?" if close else
                          ("known options: " + ", ".join(sorted(known)) if known else
                           "this builder takes no options: remove the table"))
    values: dict[str, Any] = {}
    for name, value in options.items():
        kind = hints[name]
        if typing.get_origin(kind) is tuple:
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, str) for v in value):
                raise ConfigError(f"[{where}] {name} must be a list of strings, got {value!r}")
            value = tuple(value)
        elif not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"[{where}] {name} must be {getattr(kind, '__name__', kind)}, "
                              f"got {value!r}")
        values[name] = value
    return cls(**values)
