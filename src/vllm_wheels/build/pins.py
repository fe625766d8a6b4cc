"""Remove a source's own torch pins so nothing in its build or install can pull another
torch than the stack's (the job of vLLM's use_existing_torch.py, which changed across
releases: 0.10.2 only printed a hint, 0.11-0.14 deleted every line containing "torch",
0.16+ strips only pins and moved the script in 0.31). Done here, robustly, once.

Pins are parsed as PEP 508 requirements, so `torch==2.9.0`, `torch >= 2.8 ; sys_platform
== 'linux'` and `"torch == 2.9.0",` in pyproject.toml are all found, while packages whose
name merely contains "torch" (e.g. `pytorch-triton` comments, `torchao`) are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

TORCH_FAMILY = frozenset({"torch", "torchvision", "torchaudio", "torchcodec"})
_PYPROJECT_ITEM = re.compile(r'^(\s*)(["\'])([^"\']+)\2(\s*,?\s*(#.*)?)$')


@dataclass(frozen=True)
class StrippedPin:
    file: str
    line: str


def is_torch_requirement(text: str) -> bool:
    """Whether a requirement line names torch or one of its companions (TORCH_FAMILY)."""
    text = text.split("#", 1)[0].strip()
    if not text or text.startswith("-"):
        return False
    try:
        return canonicalize_name(Requirement(text).name) in TORCH_FAMILY
    except InvalidRequirement:
        return False


def strip_requirements_file(path: Path, root: Path) -> list[StrippedPin]:
    kept, removed = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if is_torch_requirement(line):
            removed.append(StrippedPin(str(path.relative_to(root)), line.strip()))
            kept.append(f"# removed by vllm-wheels (torch comes from the stack): {line.strip()}\n")
        else:
            kept.append(line)
    if removed:
        path.write_text("".join(kept), encoding="utf-8")
    return removed


def strip_pyproject(path: Path, root: Path) -> list[StrippedPin]:
    """Drop quoted torch requirements from array items (build-system.requires etc.)."""
    kept, removed = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        m = _PYPROJECT_ITEM.match(line.rstrip("\n"))
        if m and is_torch_requirement(m.group(3)):
            removed.append(StrippedPin(str(path.relative_to(root)), line.strip()))
            continue
        kept.append(line)
    if removed:
        path.write_text("".join(kept), encoding="utf-8")
    return removed


def strip_torch_pins(tree: Path) -> list[StrippedPin]:
    removed: list[StrippedPin] = []
    if (tree / "pyproject.toml").is_file():
        removed += strip_pyproject(tree / "pyproject.toml", tree)
    req_dir = tree / "requirements"
    candidates = sorted(req_dir.rglob("*.txt")) + sorted(req_dir.rglob("*.in")) \
        if req_dir.is_dir() else []
    candidates += [p for p in (tree / "requirements.txt",) if p.is_file()]
    for path in candidates:
        removed += strip_requirements_file(path, tree)
    return removed


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a requirements file, following -r includes."""
    out: list[str] = []
    if not path.is_file():
        return out
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += read_requirements(path.parent / line.split(None, 1)[1])
        elif not line.startswith("-"):
            out.append(line)
    return out


def exact_version(requirement: Requirement) -> str | None:
    """The one version a requirement pins (`==V` or `===V`, without a wildcard), else None:
    a range, `==2.*`, a URL requirement or several clauses pin nothing exactly."""
    if requirement.url or len(requirement.specifier) != 1:
        return None
    spec = next(iter(requirement.specifier))
    if spec.operator not in ("==", "===") or spec.version.endswith(".*"):
        return None
    return spec.version


def exact_pins(requirements: list[str]) -> list[str]:
    """The requirements that pin one exact version (exact_version), as written: what a
    wheel built from these declarations requires at that version (vLLM's
    `apache-tvm-ffi==0.1.9`). Torch pins are left to the stack; unparsable lines are not
    pins (pip would refuse them when the wheel is installed, not here)."""
    out: list[str] = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if exact_version(req) is not None and not is_torch_requirement(text):
            out.append(text)
    return out
