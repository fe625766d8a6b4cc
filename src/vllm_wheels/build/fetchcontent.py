"""vLLM's external sources (CUTLASS, vllm-flash-attn, FlashMLA, qutlass, triton_kernels,
DeepGEMM, ...), discovered from the unpacked source's own CMake files, never from a
table per release: the CMake files are evaluated from CMakeLists.txt for the target
device (cmake_eval, which says why not CMake itself), and every FetchContent_Declare /
FetchContent_Populate that downloads (GIT_REPOSITORY + GIT_TAG, or URL + URL_HASH) on the
device's branch is one external; the environment variable tested by the if-chain that
avoids the download names the override that makes CMake use a local directory instead.

The pipeline prefetches each into the cache at its pinned ref (or takes the user's
local directory/archive) and exports the override variables, so the compile runs offline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import cmake_eval

_DEFINED_ENV = re.compile(r"DEFINED\s+ENV\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEX_COMMIT = re.compile(r"^[0-9a-f]{40}$")

# Facts no CMake file states in a parseable way, kept as data with their source:
# CUTLASS as a headers-only tree (no CMakeLists.txt) also needs its include dirs passed
# explicitly, or compiles fail with `cutlass/cutlass.h: No such file or directory`
# (measured, docs/facts/toolchain.md section 4).
HEADERS_ONLY_CMAKE_ARGS = {
    # CUTLASS_DIR is what CUTLASS's own CMakeLists sets (a cache PATH) and what vLLM reads
    # for the CUTLASS MLA kernel's include dirs (${CUTLASS_DIR}/examples/common, 10.x/12.x)
    # and Machete's generator (PYTHONPATH=${CUTLASS_DIR}/python, 9.0a); a headers-only
    # tree is never processed by CMake, so without it those paths start at "/" (found on
    # the GPU machine: gather_tensor.hpp not found in the full 12.0 build).
    "cutlass": ("-DCUTLASS_DIR={dir}",
                "-DCUTLASS_INCLUDE_DIR={dir}/include",
                "-DCUTLASS_TOOLS_UTIL_INCLUDE_DIR={dir}/tools/util/include"),
}


@dataclass(frozen=True)
class ExternalSource:
    name: str  # FetchContent name, e.g. "cutlass", "vllm-flash-attn"
    url: str
    ref: str  # GIT_TAG: a commit or a tag
    override_env: str | None  # e.g. VLLM_CUTLASS_SRC_DIR
    override_subdir: str  # where inside the checkout the override must point ("" = root)
    declared_in: str  # file:line
    device: str = "cuda"  # the VLLM_TARGET_DEVICE whose configure fetches it

    @property
    def ref_is_commit(self) -> bool:
        return bool(_HEX_COMMIT.match(self.ref))

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "ref": self.ref,
                "ref_is_commit": self.ref_is_commit, "override_env": self.override_env,
                "override_subdir": self.override_subdir, "declared_in": self.declared_in,
                "device": self.device}


def cmake_files(tree: Path) -> list[Path]:
    """The CMake files of a source tree that declare its externals: the top
    CMakeLists.txt and everything under cmake/."""
    files = [tree / "CMakeLists.txt"] if (tree / "CMakeLists.txt").is_file() else []
    cmake_dir = tree / "cmake"
    if cmake_dir.is_dir():
        files += sorted(cmake_dir.rglob("*.cmake"))
        files += sorted(cmake_dir.rglob("CMakeLists.txt"))
    return files


_OTHER_DEVICES = ("cpu", "xpu", "rocm", "hip", "tpu")


def device_of(path: Path) -> str:
    """vLLM names device-specific CMake files after the device (cmake/cpu_extension.cmake,
    included only when VLLM_TARGET_DEVICE=cpu); everything else belongs to the CUDA build."""
    stem = path.stem.lower()
    return next((d for d in _OTHER_DEVICES if stem.startswith(d)), "cuda")


def discover(tree: Path, device: str = "cuda", *,
             cuda_version: str | None = None) -> list[ExternalSource]:
    """The external sources a configure of `tree` for `device` fetches, found by
    evaluating its CMake files from CMakeLists.txt (cmake_eval): only what the device's
    branch reaches, a superset where the plan cannot know a condition. An external whose
    URL or tag the evaluation cannot know has url/ref "" (the caller refuses it).
    `cuda_version` (nvcc's, e.g. "12.8") decides the branches that test it."""
    known = {"VLLM_TARGET_DEVICE": device}
    if cuda_version is not None:
        known |= {"CMAKE_CUDA_COMPILER_VERSION": cuda_version, "CUDA_VERSION": cuda_version}
    found: dict[str, ExternalSource] = {}
    texts: dict[Path, str] = {}
    for fetch in cmake_eval.evaluate(tree, known).fetches:
        path = fetch.command.file
        if path not in texts:
            texts[path] = cmake_eval.strip_comments(path.read_text(encoding="utf-8", errors="replace"))
        text = texts[path]
        fields = {k: (v if isinstance(v, str) else "") for k, v in fetch.fields.items()}
        override_env = fetch.override_env
        if override_env is None:
            # No enclosing if-chain names one: the `DEFINED ENV{X}` test a few lines
            # above (never further, so an unrelated variable is never taken for it).
            before = "\n".join(text.splitlines()[max(0, fetch.command.line - 31):
                                                  fetch.command.line - 1])
            envs = _DEFINED_ENV.findall(before)
            override_env = envs[-1] if envs else None
        # When the override path is used as-is but the git checkout is entered at a
        # subdirectory (`${name_SOURCE_DIR}/python/...`), the override must point there.
        subdir = ""
        sub = re.search(r"\$\{" + re.escape(fetch.name) + r"_SOURCE_DIR\}/([^\"\s)]+)", text)
        if sub and fields.get("SOURCE_SUBDIR"):
            subdir = sub.group(1).strip("/")
        # The git form pins GIT_TAG; the archive form pins URL_HASH.
        url = fields.get("GIT_REPOSITORY", fields.get("URL", ""))
        ref = fields.get("GIT_TAG", "") if "GIT_REPOSITORY" in fields \
            else fields.get("URL_HASH", "")
        found.setdefault(fetch.name, ExternalSource(
            name=fetch.name, url=url, ref=ref, override_env=override_env,
            override_subdir=subdir,
            declared_in=f"{path.relative_to(tree.resolve())}:{fetch.command.line}",
            device=device))
    return sorted(found.values(), key=lambda e: e.declared_in)


# ------------------------------------------------------------- CMake's own view (trace)

# The configure runs with `--trace-expand --trace-format=json-v1` restricted to the source's
# own CMake files, so every FetchContent call is recorded with its arguments expanded by
# CMake itself. That is the ground truth the discovery above is checked against, and what
# names an external the plan missed when the disconnected configure refuses it.
TRACE_FILENAME = "vllm-wheels-cmake-trace.json"
_FETCH_COMMANDS = {"fetchcontent_declare", "fetchcontent_populate"}


@dataclass(frozen=True)
class TracedFetch:
    name: str  # FetchContent lowercases names; kept as written
    command: str  # FetchContent_Declare / FetchContent_Populate
    url: str  # GIT_REPOSITORY or URL ("" when only SOURCE_DIR was given)
    ref: str  # GIT_TAG or URL_HASH
    source_dir: str  # SOURCE_DIR when given (an override or a fixed location)
    where: str  # file:line

    @property
    def downloads(self) -> bool:
        return bool(self.url)


def trace_sources(tree: Path) -> list[Path]:
    """The files `--trace-source` is given: the source's own CMake files."""
    return cmake_files(tree)


def read_trace(path: Path) -> list[TracedFetch]:
    """Every FetchContent_Declare / FetchContent_Populate call that carries arguments, in
    the order CMake ran them. A missing trace (configure never ran) gives []."""
    if not path.is_file():
        return []
    found: list[TracedFetch] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{") or '"cmd"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the last line of a trace cut short by a failing configure
        if str(record.get("cmd", "")).lower() not in _FETCH_COMMANDS:
            continue
        # The trace records each argument as expanded but not yet split: an unquoted
        # `${args}` holding a list (`set(args GIT_REPOSITORY url GIT_TAG tag)`) is one
        # "GIT_REPOSITORY;url;GIT_TAG;tag" string. Split it as CMake does for the command.
        args: list[str] = []
        for arg in (str(a) for a in record.get("args", [])):
            args += [part for part in arg.split(";") if part] if ";" in arg else [arg]
        if len(args) < 2:
            continue  # FetchContent_Populate(name): uses the declaration, already seen
        fields: dict[str, str] = {}
        for key in ("GIT_REPOSITORY", "GIT_TAG", "URL", "URL_HASH", "SOURCE_DIR"):
            if key in args and args.index(key) + 1 < len(args):
                fields[key] = args[args.index(key) + 1]
        found.append(TracedFetch(
            name=args[0], command=str(record["cmd"]),
            url=fields.get("GIT_REPOSITORY") or fields.get("URL", ""),
            ref=fields.get("GIT_TAG") or fields.get("URL_HASH", ""),
            source_dir=fields.get("SOURCE_DIR", ""),
            where=f"{Path(str(record.get('file', '?'))).name}:{record.get('line', '?')}"))
    return found


def unplanned(traced: list[TracedFetch], planned: set[str]) -> list[TracedFetch]:
    """Calls that would download something the plan does not know (names compare as
    FetchContent compares them: case-insensitively)."""
    known = {n.lower() for n in planned}
    return [t for t in traced if t.downloads and t.name.lower() not in known]
