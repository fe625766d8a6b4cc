"""Facts of a runtime environment, read from outside through its interpreter, and the
dynamic loader's library search modelled on them.

The probe runs helpers/runtime_probe.py in the runtime: it reads torch's version.py as text
(never imports torch: fast, and works when torch is broken or built for another GPU),
the installed distributions' versions, sys.path, the loader-relevant environment, the
glibc version, the extension-module file suffixes its import system looks for.
Everything else (ELF reading, resolution) happens in this process.
"""

# ruff: noqa: PTH100, PTH110, PTH113, PTH118, PTH119, PTH120, PTH101
# (loader paths are strings on purpose: they are dictionary keys of the
# install overlay and carry $ORIGIN expansions, exactly as the dynamic loader sees them)

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CannotCheckError
from ..runner import query
from .elf import ElfInfo, NotElf, expand_origin, read_runtime_elf

# Distributions whose versions matter for the checks (read from their metadata).
WATCHED_DISTS = ("torch", "torchvision", "torchaudio", "vllm", "flashinfer-python",
                 "flashinfer-cubin", "flashinfer-jit-cache", "apache-tvm-ffi", "triton")

# Run by the runtime's interpreter; prints `VLLM_WHEELS_PROBE {json}`.
PROBE = Path(__file__).resolve().parent.parent / "helpers" / "runtime_probe.py"


@dataclass(frozen=True)
class TorchRuntime:
    root: Path
    version: str
    cuda: str | None
    git_version: str

    @property
    def lib_dir(self) -> Path:
        return self.root / "lib"

    @property
    def cuda_major(self) -> int | None:
        return int(self.cuda.split(".")[0]) if self.cuda else None


@dataclass(frozen=True)
class PreloadLib:
    """A library `import torch` may ctypes-load from the nvidia wheels: its folder, its file
    name glob, and whether torch gives up on the rest of its list when it is absent."""

    folder: str  # "cuda_nvrtc"
    pattern: str  # "libnvrtc.so.*[0-9]"
    required: bool = True

    @property
    def stem(self) -> str:
        """What torch looks for in a load error's message ("libnvrtc")."""
        return self.pattern.split(".", 1)[0]


@dataclass(frozen=True)
class TorchPreload:
    """The CUDA libraries `import torch` ctypes-loads (RTLD_LOCAL) besides its own DT_NEEDED
    closure, as the runtime's torch/__init__.py `_load_global_deps` says: once
    libtorch_global_deps.so is loaded, `after_load` when `condition` occurs in a loaded
    object's path (its /proc/self/maps test: "libcudart.so" in torch 2.11, the nvidia wheel's
    "nvidia/cuda_runtime/lib/libcudart.so" before); when libtorch_global_deps.so fails to
    load for a missing library of `on_error`, those first."""

    condition: str | None
    after_load: tuple[PreloadLib, ...]
    on_error: tuple[PreloadLib, ...]


def read_torch_preload(init_py: Path) -> TorchPreload | None:
    """TorchPreload from a torch/__init__.py, read (never run) with `ast`. It follows the
    calls of `_load_global_deps`: the try body after libtorch_global_deps.so is loaded (the
    string tested against /proc/self/maps, then what it preloads) and its `except` (what it
    preloads before trying again). A preload is a call with two string constants to a
    module function that calls ctypes.CDLL (torch 2.11's `_preload_cuda_lib("nvtx",
    "libnvToolsExt.so.*[0-9]", required=False)`), or a literal list of (folder, glob)
    pairs or dict the code loops over (its `cuda_libs`); a call to another module function
    is followed into it. None when the file has no such function (a torch without CUDA
    preloading, or a shape this does not know): then nothing beyond the DT_NEEDED closure
    is modelled, which can only make needed-libraries fail, never pass, where torch
    preloads more."""
    try:
        tree = ast.parse(init_py.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    load = functions.get("_load_global_deps")
    attempt = next((n for n in ast.walk(load) if isinstance(n, ast.Try)), None) if load else None
    if attempt is None:
        return None
    condition = next((node.left.value for statement in attempt.body
                      for node in ast.walk(statement)
                      if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
                      and isinstance(node.left.value, str)
                      and isinstance(node.ops[0], ast.In | ast.NotIn)
                      and isinstance(node.comparators[0], ast.Name)), None)
    after_load = _preloads(attempt.body, functions, frozenset())
    on_error = [lib for handler in attempt.handlers
                for lib in _preloads(handler.body, functions, frozenset())]
    if not after_load and not on_error:
        return None
    return TorchPreload(condition, tuple(after_load), tuple(on_error))


def _string_pair(node: ast.expr) -> tuple[str, str] | None:
    if isinstance(node, ast.Tuple) and len(node.elts) == 2 and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        first, second = node.elts
        assert isinstance(first, ast.Constant) and isinstance(second, ast.Constant)
        return str(first.value), str(second.value)
    return None


def _constant_str(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _calls_cdll(function: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == "CDLL" for n in ast.walk(function))


def _preloads(body: list[ast.stmt], functions: dict[str, ast.FunctionDef],
              followed: frozenset[str]) -> list[PreloadLib]:
    """The libraries these statements preload, in source order (read_torch_preload)."""
    nodes: list[ast.Call | ast.List | ast.Dict] = []
    for statement in body:
        nodes += [n for n in ast.walk(statement) if isinstance(n, ast.Call | ast.List | ast.Dict)]
    found: list[PreloadLib] = []
    for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.List):
            pairs = [_string_pair(e) for e in node.elts]
            found += [PreloadLib(*pair) for pair in pairs if pair] \
                if pairs and all(pairs) else []
        elif isinstance(node, ast.Dict):
            keys = [_constant_str(k) for k in node.keys]
            values = [_constant_str(v) for v in node.values]
            if keys and all(keys) and all(values):
                found += [PreloadLib(str(k), str(v)) for k, v in zip(keys, values, strict=True)]
        elif isinstance(node.func, ast.Name) and node.func.id in functions:
            callee = functions[node.func.id]
            args = [_constant_str(a) for a in node.args[:2]]
            if len(args) == 2 and args[0] and args[1] and _calls_cdll(callee):
                flag = next((k.value for k in node.keywords if k.arg == "required"),
                            node.args[2] if len(node.args) > 2 else None)
                required = not (isinstance(flag, ast.Constant) and flag.value is False)
                found.append(PreloadLib(args[0], args[1], required))
            elif callee.name not in followed:
                found += _preloads(callee.body, functions, followed | {callee.name})
    return found


def find_preload(runtime: Runtime, lib: PreloadLib) -> str | None:
    """The file torch's _preload_cuda_lib loads for `lib`, or None: the first sys.path
    entry holding nvidia/<folder>/lib/<glob>, nvidia/cu<CUDA major>/lib/<glob> (the CUDA 13
    wheels) or <folder>/lib/<glob>, and there the first match (mirrors
    torch/__init__.py `_get_cuda_dep_paths` of torch 2.11; torch 2.9 and before looked in
    nvidia/<folder>/lib only, which this includes). Matches are sorted here; torch takes
    glob's order, and the wheels hold one file per glob."""
    major = runtime.torch.cuda_major if runtime.torch else None
    for entry in runtime.sys_path:
        where = [entry / "nvidia" / lib.folder / "lib"]
        if major is not None:
            where.append(entry / "nvidia" / f"cu{major}" / "lib")
        where.append(entry / lib.folder / "lib")
        for directory in where:
            matches = sorted(directory.glob(lib.pattern))
            if matches:
                return str(matches[0])
    return None


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int]
    driver: str


@dataclass
class Runtime:
    python: Path
    executable: Path
    version: tuple[int, int, int]
    implementation: str
    abiflags: str
    platform: str
    glibc: tuple[int, int] | None
    sys_path: list[Path]
    site_packages: Path
    ld_library_path: list[str]
    libpython: Path | None
    dists: dict[str, str]
    torch: TorchRuntime | None
    torch_error: str | None
    gpus: list[Gpu] = field(default_factory=list)
    # Host GPUs that no --arch target runs on (an H200 checking RTX 5090 wheels): not
    # required by gpu-archs, no GPU op on them, and said so in the report.
    non_target_gpus: list[Gpu] = field(default_factory=list)
    # The file-name endings this interpreter's import system tries for an extension module,
    # in its order (importlib.machinery.EXTENSION_SUFFIXES); None: not probed.
    extension_suffixes: list[str] | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "python": str(self.python), "executable": str(self.executable),
            "python_version": ".".join(map(str, self.version)),
            "implementation": self.implementation, "platform": self.platform,
            "glibc": ".".join(map(str, self.glibc)) if self.glibc else None,
            "site_packages": str(self.site_packages),
            "ld_library_path": self.ld_library_path,
            "torch": None if self.torch is None else {
                "version": self.torch.version, "cuda": self.torch.cuda,
                "git_version": self.torch.git_version, "root": str(self.torch.root)},
            "torch_error": self.torch_error,
            "distributions": self.dists,
            "extension_suffixes": self.extension_suffixes,
            "gpus": [{"name": g.name, "compute_capability": "{}.{}".format(*g.compute_capability),
                      "driver": g.driver} for g in self.gpus],
        }


def probe(python: Path, timeout: float = 60) -> Runtime:
    """Read the runtime's facts through its interpreter. CannotCheckError if it cannot run."""
    if not python.exists():
        raise CannotCheckError(
            f"the runtime interpreter {python} does not exist",
            why="verify_abi reads the runtime's torch and libraries through its Python",
            fix="pass --python with the interpreter of the environment that will import "
                "the wheels (e.g. /opt/venv/bin/python), or leave --python out to check "
                "against a venv made from the stack")
    proc = query([python, PROBE, *WATCHED_DISTS], env_changes=RUNTIME_ENV_CHANGES,
                 timeout=timeout)
    if proc.not_run is not None:
        raise CannotCheckError(f"the runtime interpreter {python} could not be run: "
                               f"{proc.not_run}",
                               fix="pass --python with a working Python interpreter")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_WHEELS_PROBE ")),
                None)
    if proc.returncode != 0 or line is None:
        raise CannotCheckError(
            f"the runtime interpreter {python} failed to report its facts "
            f"(exit {proc.returncode}): {proc.stderr.strip()[-400:]}",
            fix="pass --python with a working Python 3 interpreter")
    data = json.loads(line.split(" ", 1)[1])
    torch = None
    torch_error = None
    if data["torch"] is not None:
        facts = data["torch"]
        if facts.get("error") or not facts.get("version"):
            torch_error = f"torch at {facts['root']} has no readable version.py: " \
                          f"{facts.get('error')}"
        else:
            torch = TorchRuntime(Path(facts["root"]), facts["version"], facts.get("cuda"),
                                 facts.get("git_version") or "")
    glibc = None
    if data.get("glibc"):
        m = re.search(r"(\d+)\.(\d+)", data["glibc"])
        glibc = (int(m.group(1)), int(m.group(2))) if m else None
    libpython = None
    if data.get("shared") and data.get("libdir") and data.get("ldlibrary"):
        candidate = Path(data["libdir"]) / data["ldlibrary"]
        libpython = candidate if candidate.exists() else None
    return Runtime(
        python=python, executable=Path(data["executable"]),
        version=(int(data["version"][0]), int(data["version"][1]), int(data["version"][2])),
        implementation=data["implementation"], abiflags=data["abiflags"],
        platform=data["platform"], glibc=glibc,
        sys_path=[Path(p) for p in data["path"]], site_packages=Path(data["platlib"]),
        ld_library_path=[p for p in data["ld_library_path"].split(":") if p],
        libpython=libpython, dists=data["dists"], torch=torch, torch_error=torch_error,
        gpus=detect_gpus(), extension_suffixes=list(data["extension_suffixes"]))


# The environment the runtime interpreter runs in, for the probe and the import test
# alike: this process's, minus PYTHONPATH (which points at this tool, not the runtime).
RUNTIME_ENV_CHANGES: dict[str, str | None] = {"PYTHONPATH": None}


def detect_gpus() -> list[Gpu]:
    """GPUs of this host via nvidia-smi (absent: an empty list, and GPU checks are n/a)."""
    return query_gpus()[0]


def query_gpus() -> tuple[list[Gpu], str]:
    """GPUs of this host via nvidia-smi, and why there are none when there are none
    (nvidia-smi not on PATH, or its error): ([], reason) or (gpus, "")."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "nvidia-smi is not on PATH"
    done = query([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                 timeout=30)
    if not done.ok:
        return [], done.describe(300)
    gpus = []
    for line in done.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and re.fullmatch(r"\d+\.\d+", parts[1]):
            major, minor = parts[1].split(".")
            gpus.append(Gpu(parts[0], (int(major), int(minor)), parts[2]))
    return gpus, "" if gpus else "nvidia-smi lists no GPU"


# ---------------------------------------------------------------- loader search model


class Loader:
    """glibc's search for a DT_NEEDED name, on the runtime's facts:
    already-loaded object with that soname; DT_RPATH of the requester and of its loaders
    (only while they have no DT_RUNPATH); LD_LIBRARY_PATH; the requester's DT_RUNPATH;
    ld.so.cache; the default directories. `overlay` holds the wheels' own files at the
    paths they will have once installed, so $ORIGIN-relative links inside a wheel and
    between wheels resolve exactly as after `pip install`.
    """

    DEFAULT_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")

    def __init__(self, runtime: Runtime, overlay: dict[str, ElfInfo]) -> None:
        self.runtime = runtime
        self.overlay = overlay
        self.ld_cache = _ld_so_cache()
        self._loaded: dict[str, str] = {}  # soname -> path, objects already in the process

    def elf(self, path: str) -> ElfInfo | None:
        if path in self.overlay:
            return self.overlay[path]
        try:
            return read_runtime_elf(Path(path))
        except (OSError, NotElf):
            return None

    def find(self, name: str, requester: ElfInfo, requester_path: str,
             loader_rpaths: list[str]) -> str | None:
        if "/" in name:
            return name if self._exists(name) else None
        if name in self._loaded:
            return self._loaded[name]
        origin = os.path.dirname(requester_path)
        dirs: list[str] = []
        if not requester.runpath:
            dirs += [expand_origin(d, origin) for d in requester.rpath] + loader_rpaths
        dirs += self.runtime.ld_library_path
        dirs += [expand_origin(d, origin) for d in requester.runpath]
        for directory in dirs:
            candidate = os.path.join(directory, name)
            if self._exists(candidate) and self._compatible(candidate, requester):
                return os.path.normpath(candidate)
        for candidate in self.ld_cache.get(name, []):
            if self._compatible(candidate, requester):
                return candidate
        for directory in (*self.DEFAULT_DIRS, *_multiarch_dirs()):
            candidate = os.path.join(directory, name)
            if self._exists(candidate) and self._compatible(candidate, requester):
                return candidate
        return None

    def _exists(self, path: str) -> bool:
        return os.path.normpath(path) in self.overlay or os.path.isfile(path)

    def loaded_paths(self) -> list[str]:
        """The objects marked loaded so far (closure(mark_loaded=True))."""
        return list(self._loaded.values())

    def _compatible(self, path: str, requester: ElfInfo) -> bool:
        info = self.elf(os.path.normpath(path))
        return info is not None and info.machine == requester.machine

    def closure(self, root: str, mark_loaded: bool = False
                ) -> tuple[list[tuple[str, ElfInfo]], list[tuple[str, str]]]:
        """Every object loading `root` brings in (breadth first, as the loader orders
        its search scope), and the (needed name, requester) pairs that resolve nowhere."""
        info = self.elf(root)
        if info is None:
            return [], []
        order: list[tuple[str, ElfInfo]] = [(root, info)]
        seen = {root}
        missing: list[tuple[str, str]] = []
        queue: list[tuple[str, ElfInfo, list[str]]] = [(root, info, [])]
        while queue:
            path, obj, inherited = queue.pop(0)
            own = [] if obj.runpath else [expand_origin(d, os.path.dirname(path))
                                          for d in obj.rpath]
            for name in obj.needed:
                found = self.find(name, obj, path, inherited)
                if found is None:
                    missing.append((name, path))
                    continue
                if found in seen:
                    continue
                seen.add(found)
                dep = self.elf(found)
                if dep is None:
                    missing.append((name, path))
                    continue
                order.append((found, dep))
                queue.append((found, dep, own + inherited))
        if mark_loaded:
            for path, obj in order:
                self._loaded[obj.soname or os.path.basename(path)] = path
        return order, missing


def _ld_so_cache() -> dict[str, list[str]]:
    """soname -> paths from `ldconfig -p` (this host's loader cache)."""
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig")
                                            else None)
    if ldconfig is None:
        return {}
    out = query([ldconfig, "-p"], timeout=30).stdout  # unreadable: an empty cache
    cache: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+) \(([^)]*)\) => (\S+)", line)
        if m:
            cache.setdefault(m.group(1), []).append(m.group(3))
    return cache


def _multiarch_dirs() -> list[str]:
    machine = os.uname().machine
    return [f"/lib/{machine}-linux-gnu", f"/usr/lib/{machine}-linux-gnu"]
