"""What a release asks for, read from its own unpacked source, never from a table kept
per version: the torch pin (and every place that states it), the torch companions pinned
with it, the FlashInfer pin, the default CUDA version, the CUDA architectures its CMake
accepts per nvcc branch, its FetchContent external sources, and the build switches it reads
(environment variables and CMake options).

Everything found carries the file (and line) it came from, so the report can show it.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..build import cmake_eval, fetchcontent
from ..build.pins import TORCH_FAMILY

# Where a release states its requirements, most authoritative first: the runtime pins a
# user installs (requirements/cuda.txt), then the build ones. Older releases kept them at
# the top level (requirements-cuda.txt).
RUNTIME_REQUIREMENTS = ("requirements/cuda.txt", "requirements-cuda.txt", "requirements.txt")
# Newer releases split the build requirements per device (requirements/build/cuda.txt).
BUILD_REQUIREMENTS = ("requirements/build/cuda.txt", "requirements/build.txt",
                      "requirements-build.txt")
# Variables that every build reads from the OS, not switches of the project.
_GENERIC_ENV = frozenset({"PATH", "LD_LIBRARY_PATH", "HOME", "PYTHONPATH", "CC", "CXX", "TMPDIR"})

_CMAKE_TORCH = re.compile(r'set\(\s*TORCH_SUPPORTED_VERSION_CUDA\s+"([^"]+)"\s*\)')
_CMAKE_CONDITION = re.compile(r"\b(if|elseif|else|endif)\s*\(", re.IGNORECASE)
_CMAKE_ARCHS = re.compile(r'set\(\s*CUDA_SUPPORTED_ARCHS\s+"([^"]*)"\s*\)')
_GREATER_EQUAL = re.compile(r"CMAKE_CUDA_COMPILER_VERSION\s+VERSION_GREATER_EQUAL\s+([\d.]+)")
_CMAKE_ENV_READ = re.compile(r"(?:\$ENV|DEFINED\s+ENV)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CMAKE_OPTION = re.compile(r"^\s*option\(\s*([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)
_PY_ENV_READ = re.compile(
    r"""(?:os\.environ\.get|os\.getenv|os\.environ\[|envs\.is_set)\(?\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|["']([A-Z][A-Z0-9_]*)["']\s+in\s+os\.environ"""
    r"""|\benvs\.([A-Z][A-Z0-9_]*)\b""")
_MAIN_CUDA = re.compile(r'\b(?:VLLM_)?MAIN_CUDA_VERSION\b\s*(?::\s*str\s*)?=\s*["\']([\d.]+)["\']')
_DOCKER_CUDA = re.compile(r"^ARG\s+CUDA_VERSION=([\d.]+)", re.MULTILINE)
_INSTALL_SECTION = re.compile(r"=+\s*Installation Time Env Vars\s*=+(.*?)=+\s*Runtime Env Vars",
                              re.DOTALL)
_ENVS_KEY = re.compile(r'^\s{4}"([A-Z][A-Z0-9_]*)"\s*:', re.MULTILINE)


@dataclass(frozen=True)
class Pin:
    """One requirement on one package as a file states it."""

    name: str
    specifier: str  # e.g. "==2.9.0"; "" = unpinned
    where: str  # "requirements/cuda.txt:9"

    @property
    def exact(self) -> str | None:
        """The version when the pin is exact (==V, ===V), else None."""
        m = re.fullmatch(r"===?\s*([^,*\s]+)", self.specifier.strip())
        return m.group(1) if m else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "specifier": self.specifier, "exact": self.exact,
                "where": self.where}


@dataclass(frozen=True)
class ArchBranch:
    """One `set(CUDA_SUPPORTED_ARCHS ...)` and the nvcc versions it applies to."""

    min_nvcc: str | None  # None = the fallback branch (older nvcc)
    archs: tuple[str, ...]
    where: str

    @property
    def condition(self) -> str:
        return f"nvcc >= {self.min_nvcc}" if self.min_nvcc else "older nvcc"

    def to_dict(self) -> dict[str, Any]:
        return {"condition": self.condition, "min_nvcc": self.min_nvcc,
                "archs": list(self.archs), "where": self.where}


@dataclass(frozen=True)
class Switch:
    """A build-time input the source reads: an environment variable or a CMake option."""

    name: str
    kind: str  # "env" or "cmake-option"
    where: str  # first file that reads it
    device: str = "cuda"  # "cpu", "rocm", ... for device-specific CMake files

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "where": self.where, "device": self.device}


@dataclass(frozen=True)
class ReleaseFacts:
    project: str
    version: str
    tree: Path
    torch_pins: tuple[Pin, ...]  # every place the release pins torch
    companions: tuple[Pin, ...]  # torchvision, torchaudio, ... as pinned next to torch
    flashinfer: Pin | None
    requires_python: str | None
    default_cuda: tuple[str, str] | None  # (version, where)
    docker_cuda: tuple[str, str] | None
    arch_branches: tuple[ArchBranch, ...]
    externals: tuple[fetchcontent.ExternalSource, ...]
    switches: tuple[Switch, ...]
    build_requires: tuple[str, ...] = field(default_factory=tuple)
    runtime_requires: tuple[str, ...] = field(default_factory=tuple)

    def expected_torch(self) -> str | None:
        """The torch version the release builds and runs with (its first exact pin)."""
        return next((p.exact for p in self.torch_pins if p.exact), None)

    def torch_disagreements(self) -> list[str]:
        """Places that pin another torch than the first exact pin (a release bug worth
        showing: the build and the runtime would disagree)."""
        expected = self.expected_torch()
        return [f"{p.where} pins torch{p.specifier}" for p in self.torch_pins
                if expected and p.exact and p.exact != expected]

    def branch_for(self, nvcc: Version | None) -> ArchBranch | None:
        """The branch CMake takes with this nvcc (branches are an if/elseif chain)."""
        for branch in self.arch_branches:
            if branch.min_nvcc is None:
                return branch
            if nvcc is not None and nvcc >= Version(branch.min_nvcc):
                return branch
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            # No tree: its path is in this machine's cache, and the report is committed.
            "project": self.project, "version": self.version,
            "torch_pins": [p.to_dict() for p in self.torch_pins],
            "expected_torch": self.expected_torch(),
            "torch_disagreements": self.torch_disagreements(),
            "companions": [p.to_dict() for p in self.companions],
            "flashinfer": self.flashinfer.to_dict() if self.flashinfer else None,
            "requires_python": self.requires_python,
            "default_cuda": list(self.default_cuda) if self.default_cuda else None,
            "docker_cuda": list(self.docker_cuda) if self.docker_cuda else None,
            "arch_branches": [b.to_dict() for b in self.arch_branches],
            "externals": [e.to_dict() for e in self.externals],
            "switches": [s.to_dict() for s in self.switches],
            "build_requires": list(self.build_requires),
            "runtime_requires": list(self.runtime_requires),
        }


# ------------------------------------------------------------------------ readers


def _requirement_lines(path: Path, root: Path) -> list[tuple[Requirement, str]]:
    """(requirement, "file:line") for each parseable line, following -r includes."""
    out: list[tuple[Requirement, str]] = []
    if not path.is_file():
        return out
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(),
                                 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += _requirement_lines(path.parent / line.split(None, 1)[1].strip(), root)
            continue
        if line.startswith("-"):
            continue
        try:
            out.append((Requirement(line), f"{path.relative_to(root)}:{number}"))
        except InvalidRequirement:
            continue
    return out


def _pyproject(tree: Path) -> dict[str, Any]:
    path = tree / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError:
        return {}


def _line_of(text: str, needle: str) -> int:
    index = text.find(needle)
    return text[:index].count("\n") + 1 if index >= 0 else 0


def _torch_and_companions(tree: Path) -> tuple[list[Pin], list[Pin], list[str]]:
    torch: list[Pin] = []
    companions: dict[str, Pin] = {}
    runtime: list[str] = []
    for rel in RUNTIME_REQUIREMENTS:
        lines = _requirement_lines(tree / rel, tree)
        for req, where in lines:
            name = canonicalize_name(req.name)
            if name == "torch":
                torch.append(Pin("torch", str(req.specifier), where))
            elif name in TORCH_FAMILY:
                companions.setdefault(name, Pin(name, str(req.specifier), where))
        if lines:
            runtime = [str(r) for r, _ in lines]
            break
    for rel in BUILD_REQUIREMENTS:
        for req, where in _requirement_lines(tree / rel, tree):
            if canonicalize_name(req.name) == "torch":
                torch.append(Pin("torch", str(req.specifier), where))
    text = (tree / "pyproject.toml").read_text(encoding="utf-8") \
        if (tree / "pyproject.toml").is_file() else ""
    for item in _pyproject(tree).get("build-system", {}).get("requires", []):
        try:
            req = Requirement(item)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) == "torch":
            torch.append(Pin("torch", str(req.specifier),
                             f"pyproject.toml:{_line_of(text, item)} [build-system]"))
    cmake = tree / "CMakeLists.txt"
    if cmake.is_file():
        cmake_text = cmake.read_text(encoding="utf-8", errors="replace")
        m = _CMAKE_TORCH.search(cmake_text)
        if m:
            torch.append(Pin("torch", f"=={m.group(1)}",
                             f"CMakeLists.txt:{cmake_text[:m.start()].count(chr(10)) + 1} "
                             "(TORCH_SUPPORTED_VERSION_CUDA)"))
    return torch, sorted(companions.values(), key=lambda p: p.name), runtime


def _flashinfer_pin(tree: Path) -> Pin | None:
    for rel in RUNTIME_REQUIREMENTS:
        for req, where in _requirement_lines(tree / rel, tree):
            if canonicalize_name(req.name) == "flashinfer-python":
                return Pin("flashinfer-python", str(req.specifier), where)
    # Releases before requirements/cuda.txt carried it only as a setup.py extra.
    setup = tree / "setup.py"
    if setup.is_file():
        text = setup.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"""["']flashinfer-python\s*(==\s*[\w.+]+)["']""", text)
        if m:
            return Pin("flashinfer-python", m.group(1).replace(" ", ""),
                       f"setup.py:{text[:m.start()].count(chr(10)) + 1} (extra)")
    return None


def _default_cuda(tree: Path) -> tuple[str, str] | None:
    for rel in ("vllm/envs.py", "setup.py"):
        path = tree / rel
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        m = _MAIN_CUDA.search(text)
        if m:
            return m.group(1), f"{rel}:{text[:m.start()].count(chr(10)) + 1}"
    return None


def _docker_cuda(tree: Path) -> tuple[str, str] | None:
    path = tree / "docker" / "Dockerfile"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    m = _DOCKER_CUDA.search(text)
    return (m.group(1), f"docker/Dockerfile:{text[:m.start()].count(chr(10)) + 1}") if m else None


def arch_branches(tree: Path) -> list[ArchBranch]:
    """Each `set(CUDA_SUPPORTED_ARCHS "...")` with the nvcc condition guarding it."""
    path = tree / "CMakeLists.txt"
    if not path.is_file():
        return []
    text = cmake_eval.strip_comments(path.read_text(encoding="utf-8", errors="replace"))
    conditions = [(m.start(), m.group(1).lower(), cmake_eval.parenthesized(text, m.end()))
                  for m in _CMAKE_CONDITION.finditer(text)]
    branches = []
    for m in _CMAKE_ARCHS.finditer(text):
        before = [c for c in conditions if c[0] < m.start()]
        kind, condition = (before[-1][1], before[-1][2]) if before else ("", "")
        ge = _GREATER_EQUAL.search(condition) if kind in ("if", "elseif") else None
        archs = tuple(a for a in m.group(1).split(";") if a)
        line = text[:m.start()].count("\n") + 1
        branches.append(ArchBranch(ge.group(1) if ge else None, archs, f"CMakeLists.txt:{line}"))
    return branches


def _install_env_vars(tree: Path) -> list[Switch]:
    """vLLM documents its build-time variables as the 'Installation Time Env Vars'
    section of vllm/envs.py."""
    path = tree / "vllm" / "envs.py"
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    m = _INSTALL_SECTION.search(text)
    if not m:
        return []
    start = text[:m.start()].count("\n") + 1
    return [Switch(k.group(1), "env", f"vllm/envs.py:{start + m.group(1)[:k.start()].count(chr(10))}")
            for k in _ENVS_KEY.finditer(m.group(1))]


def build_switches(tree: Path) -> list[Switch]:
    """Environment variables the build scripts read (top-level *.py such as setup.py or
    build_backend.py, vLLM's install-time envs, CMake `$ENV{}`) and CMake `option()`s."""
    found: dict[tuple[str, str], Switch] = {}

    def add(switch: Switch) -> None:
        if switch.name not in _GENERIC_ENV:
            found.setdefault((switch.kind, switch.name), switch)

    for switch in _install_env_vars(tree):
        add(switch)
    for script in sorted(tree.glob("*.py")):
        text = script.read_text(encoding="utf-8", errors="replace")
        for m in _PY_ENV_READ.finditer(text):
            name = next(g for g in m.groups() if g)
            add(Switch(name, "env", f"{script.name}:{text[:m.start()].count(chr(10)) + 1}"))
    for cmake in fetchcontent.cmake_files(tree):
        raw = cmake.read_text(encoding="utf-8", errors="replace")
        text = cmake_eval.strip_comments(raw)
        rel = cmake.relative_to(tree)
        device = fetchcontent.device_of(cmake)
        for m in _CMAKE_ENV_READ.finditer(text):
            add(Switch(m.group(1), "env", f"{rel}:{text[:m.start()].count(chr(10)) + 1}", device))
        for m in _CMAKE_OPTION.finditer(text):
            add(Switch(m.group(1), "cmake-option", f"{rel}:{text[:m.start()].count(chr(10)) + 1}",
                       device))
    return sorted(found.values(), key=lambda s: (s.kind, s.name))


def _requires_python(tree: Path) -> str | None:
    value = _pyproject(tree).get("project", {}).get("requires-python")
    if isinstance(value, str):
        return value
    setup = tree / "setup.py"
    if setup.is_file():
        try:
            module = ast.parse(setup.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            return None
        for node in ast.walk(module):
            if isinstance(node, ast.keyword) and node.arg == "python_requires" and \
                    isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    return None


def read_release(tree: Path, project: str, version: str) -> ReleaseFacts:
    torch, companions, runtime = _torch_and_companions(tree)
    build_requires = [str(r) for r in _pyproject(tree).get("build-system", {}).get("requires", [])]
    return ReleaseFacts(
        project=project, version=version, tree=tree, torch_pins=tuple(torch),
        companions=tuple(companions), flashinfer=_flashinfer_pin(tree),
        requires_python=_requires_python(tree), default_cuda=_default_cuda(tree),
        docker_cuda=_docker_cuda(tree), arch_branches=tuple(arch_branches(tree)),
        externals=tuple(fetchcontent.discover(tree)), switches=tuple(build_switches(tree)),
        build_requires=tuple(build_requires), runtime_requires=tuple(runtime))


def python_supported(requires_python: str | None, python: str) -> bool | None:
    """Whether the stack's Python (e.g. "3.12") satisfies the release; None = unknown."""
    if not requires_python:
        return None
    try:
        return SpecifierSet(requires_python).contains(Version(python + ".0"))
    except (InvalidSpecifier, InvalidVersion):
        return None


def toolkit_floor(version_spec: str, pip_version: str | None) -> Version | None:
    """The oldest nvcc the stack's [cuda_toolkit] accepts, which picks the CMake branch."""
    if pip_version:
        try:
            release = Version(pip_version).release
            return Version(".".join(str(p) for p in release[:2]))
        except InvalidVersion:
            return None
    try:
        spec = SpecifierSet(version_spec)
    except InvalidSpecifier:
        return None
    floors = [Version(s.version.removesuffix(".*")) for s in spec
              if s.operator in (">=", "~=", "==", "===")]
    return max(floors) if floors else None
