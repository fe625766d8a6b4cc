"""The verify_abi checks. Each takes one wheel's facts and the runtime's, and returns a
Check: pass / fail / n/a (nothing to check) / unknown (could not check), with the
evidence it looked at and, on failure, what to do.

The order follows the loader: identity facts first (cheap, and the usual culprit), then
libraries, symbols and symbol versions, then GPU code, then the real import.
"""

# ruff: noqa: PTH100, PTH110, PTH113, PTH118, PTH119, PTH120, PTH101
# (loader paths are strings on purpose: they are dictionary keys of the
# install overlay and carry $ORIGIN expansions, exactly as the dynamic loader sees them)

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name
from packaging.version import Version

from .elf import ElfInfo, demangle, version_key
from .fatbin import FatbinEntry
from .runtime import Loader, PreloadLib, Runtime, find_preload, read_torch_preload
from .wheelfacts import TORCH_LIBS, WheelElf, WheelFacts

if TYPE_CHECKING:
    from packaging.requirements import Requirement



class Status(StrEnum):
    """The outcome of one check; a wheel's and a run's are their worst (fail, then
    unknown, else pass). The values are those of verify-abi.json."""

    PASS = "pass"
    FAIL = "fail"
    NA = "n/a"  # the check does not apply to this wheel
    UNKNOWN = "unknown"  # could not be checked here (e.g. no torch in the runtime)


PASS, FAIL, NA, UNKNOWN = Status.PASS, Status.FAIL, Status.NA, Status.UNKNOWN
MAX_LISTED = 20  # symbols/libraries listed in the human report (JSON has all)

# Projects whose exact build-time version a wheel pins at runtime (torch companions,
# FlashInfer's family and its FFI layer; docs/facts/flashinfer.md section 2).
COMPANIONS = ("torchvision", "torchaudio", "flashinfer-python", "flashinfer-cubin",
              "flashinfer-jit-cache", "apache-tvm-ffi")
FLASHINFER_FAMILY = ("flashinfer-python", "flashinfer-cubin", "flashinfer-jit-cache")


@dataclass
class Check:
    """One verify_abi check of one wheel against the runtime, and its outcome."""

    name: str
    status: Status
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary,
                "evidence": self.evidence, "fix": self.fix}


def _torch_index(version: str) -> str:
    local = version.partition("+")[2]
    return f"https://download.pytorch.org/whl/{local}" if local else "PyPI"


def _short(git: str | None) -> str:
    return (git or "?")[:7]


# ------------------------------------------------------------- 1. build vs runtime


def check_torch(w: WheelFacts, rt: Runtime) -> Check:
    name = "torch-version"
    if not w.needs_torch:
        return Check(name, NA, "the wheel does not use torch")
    if rt.torch is None:
        return Check(name, UNKNOWN, f"no torch in the runtime ({rt.torch_error or 'not installed'})",
                           fix="install the torch the wheel was built against, or pass "
                               "--python with the environment that has it")
    have = rt.torch
    evidence: dict[str, Any] = {"runtime": {"version": have.version, "git": have.git_version,
                                            "root": str(have.root)}}
    built = w.torch_manifest
    if built:
        evidence["built"] = {"version": built.get("version"), "git": built.get("git_version")}
        same = built.get("version") == have.version and (
            not built.get("git_version") or built.get("git_version") == have.git_version)
        text = (f"built against torch {built.get('version')} (git {_short(built.get('git_version'))}), "
                f"runtime has {have.version} (git {_short(have.git_version)})")
        if same:
            return Check(name, PASS, text, evidence)
        stack = ((w.manifest or {}).get("stack") or {}).get("name", "a stack pinning it")
        public = str(built.get("version", "")).partition("+")[0]
        return Check(
            name, FAIL, text, evidence,
            fix=f"install torch=={public} from {_torch_index(str(built.get('version')))} in the "
                f"runtime, or rebuild the wheels with a stack pinning torch {have.version} "
                f"(built with stack {stack})")
    pin = w.pin("torch")
    assert pin is not None or w.needs_torch
    if pin is None or not pin.specifier:
        return Check(name, UNKNOWN,
                           f"the wheel uses torch but records no torch version (runtime "
                           f"{have.version}); extensions need the exact build-time torch",
                           evidence, fix="ask the wheel's builder which torch it was built "
                                         "against; rebuild with this pipeline to record it")
    evidence["pin"] = str(pin)
    ok = pin.specifier.contains(Version(have.version).public, prereleases=True) or \
        pin.specifier.contains(have.version, prereleases=True)
    text = (f"wheel requires {pin} (no build manifest: git commit unknown), runtime has "
            f"{have.version} (git {_short(have.git_version)})")
    return Check(name, PASS if ok else FAIL, text, evidence,
                       fix="" if ok else f"install {pin} in the runtime, or rebuild the wheel "
                                         f"against torch {have.version}")


def check_cuda(w: WheelFacts, rt: Runtime) -> Check:
    name = "cuda-major"
    if not w.needs_torch:
        # The coupling that breaks is torch's CUDA vs the wheel's; without torch, the CUDA
        # runtime the wheel links is simply a library (checked under needed-libraries).
        return Check(name, NA, "no torch coupling (any linked libcudart is checked under "
                                     "needed-libraries)")
    built_cuda = (w.torch_manifest or {}).get("cuda")
    majors = w.cudart_majors()
    if built_cuda:
        want = {int(str(built_cuda).split(".")[0])}
        source = f"built with CUDA {built_cuda}"
    elif majors:
        want = majors
        source = "links " + ", ".join(f"libcudart.so.{m}" for m in sorted(majors))
    elif w.has_device_code():
        return Check(name, UNKNOWN, "the wheel has GPU code but records no CUDA version")
    else:
        return Check(name, NA, "the wheel has no CUDA dependency")
    if rt.torch is None:
        return Check(name, UNKNOWN, f"{source}; no torch in the runtime to compare with")
    have = rt.torch.cuda_major
    evidence = {"built": sorted(want), "runtime_torch_cuda": rt.torch.cuda}
    text = f"{source}; runtime torch {rt.torch.version} is " + \
        (f"CUDA {rt.torch.cuda}" if rt.torch.cuda else "a CPU build")
    if have is not None and want == {have}:
        return Check(name, PASS, text, evidence)
    return Check(name, FAIL, text, evidence,
                       fix=f"use a runtime torch built for CUDA {sorted(want)[0]}.x (e.g. "
                           f"+cu{sorted(want)[0]}x from download.pytorch.org), or rebuild the "
                           "wheels with a stack for the runtime's CUDA")


def runtime_cxx11_abi(rt: Runtime) -> bool | None:
    if rt.torch is None:
        return None
    lib = rt.torch.lib_dir / "libc10.so"
    if not lib.exists():
        return None
    from .elf import read_runtime_elf

    exports = read_runtime_elf(lib).exports
    return any("__cxx11" in name for name in exports)


def check_cxx11(w: WheelFacts, rt: Runtime) -> Check:
    name = "cxx11-abi"
    built = w.built_cxx11_abi()
    if built is None:
        return Check(name, NA, "no C++ torch interface to compare")
    have = runtime_cxx11_abi(rt)
    if have is None:
        return Check(name, UNKNOWN, f"built with _GLIBCXX_USE_CXX11_ABI={int(built)}; "
                                          "runtime torch not found")
    text = f"built with _GLIBCXX_USE_CXX11_ABI={int(built)}, runtime torch uses {int(have)}"
    return Check(name, PASS if built == have else FAIL, text,
                       {"built": built, "runtime": have},
                       fix="" if built == have else "rebuild against a torch with the runtime's "
                                                    "C++11 ABI (every torch >= 2.7 uses 1)")


def runtime_tags(rt: Runtime) -> list[Tag]:
    """The tags pip would accept in the runtime, computed from its facts (the runtime
    need not have `packaging`)."""
    major, minor = rt.version[0], rt.version[1]
    arch = rt.platform.split("-", 1)[-1].replace("-", "_")
    platforms = []
    if rt.glibc and rt.platform.startswith("linux"):
        glibc_major, glibc_minor = rt.glibc
        for m in range(glibc_minor, 4, -1):
            platforms.append(f"manylinux_{glibc_major}_{m}_{arch}")
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}.get(m)
            if legacy:
                platforms.append(f"{legacy}_{arch}")
    platforms.append(f"linux_{arch}" if rt.platform.startswith("linux") else
                     rt.platform.replace("-", "_").replace(".", "_"))
    tags: list[Tag] = []
    if rt.implementation == "cpython":
        abis = [f"cp{major}{minor}{rt.abiflags}", "abi3", "none"]
        tags += list(cpython_tags((major, minor), abis, platforms))
    tags += list(compatible_tags((major, minor), f"cp{major}{minor}", platforms))
    return tags


# The extension-module suffixes of CPython and PyPy on Linux (PEP 3149):
# .cpython-312-x86_64-linux-gnu.so, .cpython-313t-...so (free-threaded), .pypy310-pp73-...so
CPYTHON_SUFFIX = re.compile(r"^\.cpython-(\d)(\d+)([a-z]*)-([^.]+)\.so$")
PYPY_SUFFIX = re.compile(r"^\.pypy(\d)(\d+)-pp\d+-([^.]+)\.so$")


def python_for_suffix(suffix: str, runtime_suffixes: Sequence[str]) -> str:
    """Which Python looks for extension files ending in `suffix` ('CPython 3.12'); the
    platform is named only where it differs from the runtime's."""
    own = next((m.group(4) for m in map(CPYTHON_SUFFIX.match, runtime_suffixes) if m), None)
    m = CPYTHON_SUFFIX.match(suffix)
    if m:
        major, minor, flags, platform = m.groups()
        text = f"CPython {major}.{minor}{'t (free-threaded)' if 't' in flags else ''}"
        text += " debug build" if "d" in flags else ""
        return text + (f" on {platform}" if own and platform != own else "")
    m = PYPY_SUFFIX.match(suffix)
    if m:
        return f"PyPy {m.group(1)}.{m.group(2)}"
    if suffix == ".abi3.so":
        return "a CPython that loads stable-ABI (abi3) modules (not a free-threaded build)"
    return f"a Python whose import system looks for {suffix} files"


def file_found(files: Sequence[WheelElf], suffixes: Sequence[str]) -> WheelElf | None:
    """The file `import name` loads among one module's files, or None: FileFinder tries
    the runtime's EXTENSION_SUFFIXES in their order and takes the first file that exists."""
    by_suffix = {e.suffix: e for e in files}
    return next((by_suffix[s] for s in suffixes if s in by_suffix), None)


@dataclass(frozen=True)
class Unfindable:
    """An extension file the runtime's import system never finds."""
    module: str
    member: str
    suffix: str
    needs: str

    def describe(self, python: str, suffixes: Sequence[str]) -> str:
        return (f"{self.member}: `import {self.module}` never finds it on Python {python} "
                f"(which looks for {', '.join(suffixes)}): needs {self.needs}")


def unfindable_extensions(w: WheelFacts, suffixes: Sequence[str]) -> list[Unfindable]:
    """Every file of every extension module for which no file has a suffix the runtime
    looks for. A file beside one that is found (a wheel carrying one per Python) is not
    listed: the module imports."""
    lost = []
    for module, files in w.extension_modules().items():
        if file_found(files, suffixes) is None:
            lost += [Unfindable(module, e.member, e.suffix, python_for_suffix(e.suffix, suffixes))
                     for e in files]
    return lost


def check_python_tag(w: WheelFacts, rt: Runtime) -> Check:
    """The wheel's tags, and then its files: a tag says what the wheel claims (vLLM 0.20.0
    is cp38-abi3 yet carries DeepGEMM's _C.cpython-312-...so), the file suffixes are what
    the runtime's import system will actually find."""
    name = "python-tag"
    supported = runtime_tags(rt)
    best = next((t for t in supported if t in w.tags), None)
    wheel_tags = sorted(str(t) for t in w.tags)
    py = ".".join(map(str, rt.version[:2]))
    evidence: dict[str, Any] = {}
    problems: list[str] = []
    fixes: list[str] = []
    if best is not None:
        evidence["matched"] = str(best)
        text = (f"{', '.join(wheel_tags)} installs on Python {py} ({rt.platform}, glibc "
                f"{'.'.join(map(str, rt.glibc or ()))})")
    else:
        evidence.update(wheel=wheel_tags, runtime_best=[str(t) for t in supported[:5]])
        text = f"{', '.join(wheel_tags)} does not install on Python {py} ({rt.platform})"
        problems.append(text)
        fixes.append("build with the runtime's Python version (stack `python`) or use a "
                     "runtime Python the wheel supports")
    modules = w.extension_modules()
    if modules and rt.extension_suffixes is None:
        if problems:
            return Check(name, FAIL, text, evidence, fix=fixes[0])
        return Check(name, UNKNOWN, f"{text}; the runtime's extension suffixes were not "
                                          "probed", evidence)
    suffixes = rt.extension_suffixes or []
    if modules:
        evidence["extension_suffixes"] = suffixes
        lost = unfindable_extensions(w, suffixes)
        if lost:
            evidence["unfindable"] = {u.member: {"module": u.module, "suffix": u.suffix,
                                                 "needs": u.needs} for u in lost}
            problems += [u.describe(py, suffixes) for u in lost]
            needs = sorted({u.needs for u in lost})
            fixes.append(f"use a runtime with {' or '.join(needs)}, or build the wheel with the "
                         f"runtime's Python (stack `python`) so that every extension carries a "
                         f"suffix Python {py} looks for ({', '.join(suffixes[:2])})")
    if problems:
        # When the tag is fine, say so first: the files are the problem.
        summary = ("" if best is None else f"{text}, but ") + "; ".join(problems)
        return Check(name, FAIL, summary, evidence, fix="; ".join(fixes))
    if modules:
        text += f"; all {len(modules)} extension module(s) have a suffix it finds"
    return Check(name, PASS, text, evidence)


def check_companions(w: WheelFacts, rt: Runtime, wheel_set: Sequence[WheelFacts]) -> Check:
    name = "companions"
    in_set = {canonicalize_name(o.name): o.version for o in wheel_set}
    pins: dict[str, Requirement] = {}
    for project in COMPANIONS:
        req = w.pin(project)
        if req is not None and req.specifier:
            pins[project] = req
    rows, bad = [], []
    for project, req in pins.items():
        key = canonicalize_name(project)
        have = in_set.get(key) or rt.dists.get(project)
        where = "in this wheel set" if key in in_set else "in the runtime"
        if have is None:
            rows.append(f"{req}: not installed (pip installs it)")
            continue
        rows.append(f"{req}: {have} {where}")
        if not req.specifier.contains(have, prereleases=True):
            bad.append(f"{project} {have} {where} but the wheel needs {req.specifier}")
    # FlashInfer's packages are built together and must share one version.
    family: dict[str, str] = {}
    uses_flashinfer = any(p in pins for p in FLASHINFER_FAMILY) or canonicalize_name(
        w.name) in map(canonicalize_name, FLASHINFER_FAMILY)
    for project in FLASHINFER_FAMILY if uses_flashinfer else ():
        v = in_set.get(canonicalize_name(project)) or rt.dists.get(project)
        if v is not None:
            family[project] = Version(v).public
    if len(set(family.values())) > 1:
        bad.append("FlashInfer packages differ: " +
                   ", ".join(f"{k} {v}" for k, v in sorted(family.items())))
    if not pins and len(family) <= 1:
        return Check(name, NA, "no companion pins")
    evidence = {"pins": {k: str(v) for k, v in pins.items()}, "flashinfer_family": family}
    if bad:
        return Check(name, FAIL, "; ".join(bad), evidence,
                           fix="install the companions at the versions built together "
                               "(`pip install` the whole wheel set with its pins), or rebuild")
    return Check(name, PASS, "; ".join(rows) or "FlashInfer family consistent", evidence)


# ------------------------------------------------------------ 2. libraries and symbols


# Libraries of the NVIDIA driver, not of any wheel or toolkit: present on GPU hosts only.
# On a host without a GPU their absence (and that of the driver API symbols, cuXxx/nvmlXxx)
# says nothing about the wheels, so it is reported, not failed.
DRIVER_LIBS = frozenset({"libcuda.so.1", "libnvidia-ml.so.1"})
DRIVER_SYMBOL = re.compile(r"^(cu[A-Z]|nvml[A-Z])")


# Libraries a Python package loads with RTLD_GLOBAL before the objects that rely on it:
# their symbols are visible to those objects without a DT_NEEDED entry. FlashInfer's
# AOT kernels (tvm-ffi modules) bind TVMFFI* this way (tvm_ffi/__init__.py loads
# libtvm_ffi.so with RTLD_GLOBAL). dist -> (library paths under site-packages, symbol prefix)
GLOBAL_PROVIDERS: dict[str, tuple[tuple[str, ...], str]] = {
    "apache-tvm-ffi": (("tvm_ffi/lib/libtvm_ffi.so",), "TVMFFI"),
}


@dataclass
class LinkScope:
    """What one wheel ELF will be linked with at import time."""
    elf: WheelElf
    objects: list[tuple[str, ElfInfo]]  # own closure (itself first)
    missing: list[tuple[str, str]]  # (needed name, requester)
    global_exports: frozenset[str]


def global_scope(loader: Loader, rt: Runtime, with_torch: bool,
                 providers: Sequence[str] = ()) -> frozenset[str]:
    """Symbols every later-loaded object can bind to: the interpreter (and libpython),
    what torch loads RTLD_GLOBAL (libtorch_global_deps) and the GLOBAL_PROVIDERS the
    wheels depend on. Also marks what `import torch` loads, so later DT_NEEDED lookups by
    soname find those objects: its own libraries and the CUDA libraries it preloads
    (load_torch_global_deps)."""
    names: set[str] = set()
    for dist in providers:
        for relative in GLOBAL_PROVIDERS[dist][0]:
            for directory in rt.sys_path:
                candidate = directory / relative
                if candidate.exists():
                    for _path, obj in loader.closure(str(candidate), mark_loaded=True)[0]:
                        names |= obj.exports
                    break
    roots = [str(rt.executable)] + ([str(rt.libpython)] if rt.libpython else [])
    for root in roots:
        objects, _missing = loader.closure(root, mark_loaded=True)
        for _path, obj in objects:
            names |= obj.exports
    if with_torch and rt.torch is not None:
        deps = rt.torch.lib_dir / "libtorch_global_deps.so"
        if deps.exists():
            names |= load_torch_global_deps(loader, rt, str(deps))
        for ext in sorted(rt.torch.root.glob("_C*.so")):
            loader.closure(str(ext), mark_loaded=True)
    return frozenset(names)


def load_torch_global_deps(loader: Loader, rt: Runtime, deps: str) -> set[str]:
    """What torch/__init__.py's `_load_global_deps` loads, marked loaded; returns the
    exports of libtorch_global_deps.so's closure (loaded RTLD_GLOBAL). Around it, torch's
    CUDA wheels ctypes-load a list of CUDA libraries from site-packages' nvidia/ folders
    (read from the runtime's own torch/__init__.py: runtime.read_torch_preload): cuBLAS,
    cuDNN, NVRTC, ... (torch 2.11) once libcudart is loaded, or before trying again when
    libtorch_global_deps.so does not load for want of one. They are loaded RTLD_LOCAL
    (ctypes' default): a later DT_NEEDED finds them by soname (vLLM's DeepGEMM _C needs
    libnvrtc.so.13 and has no RPATH to it) and the objects that need them bind their
    symbols, but their exports are not global: they are marked loaded and nothing more."""
    assert rt.torch is not None
    preload = read_torch_preload(rt.torch.root / "__init__.py")
    _objects, missing = loader.closure(deps)
    retried = preload is not None and bool(missing) and any(
        lib.stem in missing[0][0] for lib in preload.on_error)
    if retried:
        # The dlopen fails naming its first missing library; one of torch's list: it
        # preloads the list (a required one absent raises: import torch fails) and retries.
        assert preload is not None
        _preload(loader, rt, preload.on_error)
    objects = loader.closure(deps, mark_loaded=True)[0]
    if not retried and preload is not None and preload.condition is not None:
        # `"libcudart.so" not in /proc/self/maps`: no preload. The maps hold the real
        # paths of everything loaded so far, never the path a DT_NEEDED was found under.
        loaded = {os.path.realpath(p) for p in loader.loaded_paths()}
        if any(preload.condition in path for path in loaded):
            _preload(loader, rt, preload.after_load)
    names: set[str] = set()
    for _path, obj in objects:
        names |= obj.exports
    return names


def _preload(loader: Loader, rt: Runtime, libs: Sequence[PreloadLib]) -> None:
    """torch's preload loop: each library's file (runtime.find_preload) loaded with its
    closure, until a required one is absent (torch raises there; after the global deps
    loaded, the exception is swallowed and the rest of the list stays unloaded)."""
    for lib in libs:
        path = find_preload(rt, lib)
        if path is None:
            if lib.required:
                return
            continue
        loader.closure(path, mark_loaded=True)


def check_needed(w: WheelFacts, scopes: list[LinkScope], rt: Runtime) -> Check:
    name = "needed-libraries"
    if not w.elfs:
        return Check(name, NA, "no shared objects in the wheel")
    problems: dict[str, list[str]] = {}
    driver: set[str] = set()
    for scope in scopes:
        for needed, requester in scope.missing:
            if needed in DRIVER_LIBS and not rt.gpus:
                driver.add(needed)
                continue
            problems.setdefault(scope.elf.member, []).append(
                needed if requester == scope.elf.installed else
                f"{needed} (needed by {os.path.basename(requester)})")
    total = sum(len(s.objects) for s in scopes)
    note = (f"; {', '.join(sorted(driver))} (NVIDIA driver) absent: this host has no GPU"
            if driver else "")
    if not problems:
        return Check(name, PASS, f"{len(w.elfs)} shared object(s): every DT_NEEDED "
                                       f"resolves ({total} objects in their load closures)"
                                       f"{note}", {"driver_absent": sorted(driver)})
    fix = "install what provides them in the runtime"
    cudart = [n for v in problems.values() for n in v if n.startswith("libcudart.so.")]
    if cudart and rt.torch is not None:
        fix = (f"{cudart[0]} is the CUDA runtime of another CUDA major than the runtime torch "
               f"({rt.torch.version}): use a torch of the wheels' CUDA major, or rebuild")
    elif any(TORCH_LIBS.match(n) for v in problems.values() for n in v):
        fix = "the runtime's torch lacks these libraries (a CPU build?): install the torch " \
              "the wheels were built against"
    summary = "; ".join(f"{member}: missing {', '.join(names[:MAX_LISTED])}"
                        for member, names in problems.items())
    return Check(name, FAIL, summary, {"missing": problems,
                                             "searched": _search_description(rt)}, fix=fix)


def _search_description(rt: Runtime) -> list[str]:
    where = ["DT_RPATH/DT_RUNPATH of each object",
             "objects already loaded by import torch (its own and the CUDA libraries it "
             "preloads)"]
    if rt.ld_library_path:
        where.append("LD_LIBRARY_PATH=" + ":".join(rt.ld_library_path))
    return [*where, "ld.so.cache", "/lib, /usr/lib and multiarch dirs"]


def check_symbols(w: WheelFacts, scopes: list[LinkScope]) -> Check:
    name = "undefined-symbols"
    if not w.elfs:
        return Check(name, NA, "no shared objects in the wheel")
    unresolved: dict[str, list[str]] = {}
    from_driver: set[str] = set()
    counted = 0
    for scope in scopes:
        available = set(scope.global_exports)
        for _path, obj in scope.objects:
            available |= obj.exports
        no_driver = any(n in DRIVER_LIBS for n, _requester in scope.missing)
        for u in scope.elf.info.undefined:
            if u.weak:
                continue
            counted += 1
            if u.name in available:
                continue
            if no_driver and DRIVER_SYMBOL.match(u.name):
                from_driver.add(u.name)
                continue
            unresolved.setdefault(scope.elf.member, []).append(u.name)
    if not unresolved:
        driver_note = (f" ({len(from_driver)} driver API symbols left to the NVIDIA driver, "
                       "absent on this host)" if from_driver else "")
        return Check(name, PASS, f"all {counted} non-weak undefined symbols resolve in "
                                       f"the objects they will be loaded with{driver_note}",
                           {"left_to_driver": sorted(from_driver)})
    evidence = {"unresolved": {m: [{"mangled": s, "demangled": demangle(s)} for s in names]
                               for m, names in unresolved.items()}}
    parts = []
    for member, names in unresolved.items():
        listed = ", ".join(demangle(s) for s in names[:MAX_LISTED])
        more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
        parts.append(f"{member}: {len(names)} unresolved: {listed}{more}")
    torchy = any(n.startswith(("_ZN3c10", "_ZN2at", "_ZN5torch")) for v in unresolved.values()
                 for n in v)
    provided_by = [dist for dist, (_libs, prefix) in GLOBAL_PROVIDERS.items()
                   if any(n.startswith(prefix) for v in unresolved.values() for n in v)]
    if provided_by:
        fix = (f"install {w.pin(provided_by[0]) or provided_by[0]} in the runtime (its library "
               "provides these symbols when loaded)")
    elif torchy:
        fix = ("the runtime torch does not export what the wheel was built against: install "
               "the exact build-time torch (see torch-version) or rebuild against the "
               "runtime's torch")
    else:
        fix = ("the wheel references symbols defined nowhere (a build bug, e.g. vLLM #29030 "
               "in 0.11.1/0.11.2 for 12.0): rebuild with the fix (patches/) or from a fixed "
               "release")
    return Check(name, FAIL, "; ".join(parts), evidence, fix=fix)


def check_symbol_versions(w: WheelFacts, scopes: list[LinkScope]) -> Check:
    name = "symbol-versions"
    if not w.elfs:
        return Check(name, NA, "no shared objects in the wheel")
    missing: dict[str, list[str]] = {}
    highest: dict[str, str] = {}
    for scope in scopes:
        by_soname = {(obj.soname or os.path.basename(p)): obj for p, obj in scope.objects}
        for soname, versions in scope.elf.info.version_needs.items():
            provider = by_soname.get(soname)
            if provider is None:
                continue  # unresolvable library: reported by needed-libraries
            for version in versions:
                family, number = version_key(version)
                if number and (family not in highest or
                               number > version_key(highest[family])[1]):
                    highest[family] = version
                if version not in provider.version_defs and version != soname:
                    provided = sorted((v for v in provider.version_defs
                                       if version_key(v)[0] == family), key=version_key)
                    missing.setdefault(scope.elf.member, []).append(
                        f"{version} from {soname} (runtime's provides up to "
                        f"{provided[-1] if provided else 'none'})")
    summary_high = ", ".join(sorted(highest.values()))
    if not missing:
        return Check(name, PASS, f"highest required: {summary_high or 'none'}; all "
                                       "provided by the runtime's libraries",
                           {"highest_required": highest})
    return Check(name, FAIL, "; ".join(f"{m}: needs {', '.join(v)}"
                                             for m, v in missing.items()),
                       {"missing": missing, "highest_required": highest},
                       fix="the runtime's C/C++ runtime is older than the build's: build with "
                           "an older toolchain (e.g. the manylinux_2_28 image) or update the "
                           "runtime's libstdc++/glibc (and check LD_LIBRARY_PATH for an old "
                           "copy shadowing the system one)")


# ------------------------------------------------------------------- 3. GPU archs


def parse_arch(text: str) -> tuple[int, int] | None:
    text = text.strip().lower().removesuffix("+ptx").rstrip("af")
    if text.startswith("sm_"):
        number = text[3:]
        return (int(number[:-1]), int(number[-1])) if number.isdigit() else None
    major, _, minor = text.partition(".")
    if major.isdigit() and minor.isdigit():
        return int(major), int(minor)
    return None


def check_archs(w: WheelFacts, rt: Runtime, targets: Sequence[str]) -> Check:
    name = "gpu-archs"
    with_code = [e for e in w.elfs if e.info.fatbin]
    if not with_code:
        return Check(name, NA, "no GPU code in the wheel")
    wanted: dict[str, tuple[int, int]] = {}
    for t in targets:
        cc = parse_arch(t)
        if cc:
            wanted[f"arch list {t}"] = cc
    for gpu in rt.gpus:
        wanted[f"GPU {gpu.name} ({gpu.compute_capability[0]}.{gpu.compute_capability[1]})"] = \
            gpu.compute_capability
    per_so = {e.member: [x.name + (" (PTX)" if x.kind == "ptx" else "") for x in e.info.fatbin]
              for e in with_code}
    if not wanted:
        return Check(name, UNKNOWN, "no arch list recorded and no GPU here to check "
                                          "against", {"contents": per_so},
                           fix="pass --arch (e.g. 12.0) or run on the target GPU")
    gaps: list[str] = []
    skipped: list[str] = []
    jit_only: list[str] = []
    for label, (major, minor) in wanted.items():
        covering = 0
        for e in with_code:
            runnable: list[FatbinEntry] = [x for x in e.info.fatbin if x.runs_on(major, minor)]
            if runnable:
                covering += 1
                if all(x.kind == "ptx" for x in runnable):
                    jit_only.append(f"{e.member} for {label}: PTX only (driver JIT on first use)")
                continue
            text = f"{e.member} has nothing for {label} (has " \
                   f"{', '.join(sorted(set(per_so[e.member])))})"
            # Our own builds compile every object for the stack's arch list, so any gap is
            # a miss. In other wheels, arch-specific extensions (FlashMLA, FA3: sm_90a /
            # sm_100a only) are by design unusable elsewhere and never selected there;
            # only a core `_C` module, or no object at all, lacking the arch is a failure.
            if w.manifest is not None or e.module_name and e.module_name.endswith("._C"):
                gaps.append(text)
            else:
                skipped.append(text)
        if covering == 0:
            gaps.append(f"no object of the wheel has code for {label}")
    elsewhere = [f"GPU {g.name} ({g.compute_capability[0]}.{g.compute_capability[1]})"
                 for g in rt.non_target_gpus]
    evidence = {"targets": {k: f"{v[0]}.{v[1]}" for k, v in wanted.items()}, "contents": per_so,
                "jit_only": jit_only, "arch_specific_elsewhere": skipped,
                "host_gpus_not_targeted": elsewhere}
    if gaps:
        return Check(name, FAIL, "; ".join(gaps[:MAX_LISTED]), evidence,
                           fix="rebuild with the target's arch in the stack's cuda_arch_list "
                               "(e.g. 12.0 for an RTX 5090)")
    note = f"; {len(jit_only)} PTX-only (slow first launch)" if jit_only else ""
    if skipped:
        note += f"; {len(skipped)} arch-specific object(s) have no code for it (unused there)"
    if elsewhere:
        note += (f"; this host's {', '.join(elsewhere)} is not a target: its code is not "
                 "required, and these wheels' kernels do not run on it (import only, no GPU op)")
    return Check(name, PASS, f"{len(with_code)} object(s) with GPU code; "
                                   f"{', '.join(wanted)} covered{note}", evidence)
