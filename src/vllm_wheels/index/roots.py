"""Which index root a machine installs from: one root per GPU target of the stack
(<base>/<target>/simple/, docs/wheel-index.md), chosen for the GPUs this machine has.

The GPUs come from nvidia-smi (`compute_cap`, verify/runtime.py: the same query
verify_abi uses), or, where nvidia-smi is absent or fails, from torch when it is
importable here (`torch.cuda.get_device_capability`). A target fits a GPU when its arch
list has code that runs there, by CUDA's rules (verify/fatbin.py FatbinEntry.runs_on: a
plain cubin on its major at an equal or higher minor, an `a` cubin on its exact arch, an
`f` cubin within its family, PTX on anything newer through the driver's JIT). Among the
targets that fit every GPU, the best is the one whose worst fit is best: exact cubin,
then compatible cubin, then PTX only; on a tie, the first in the stack.

A stack without targets has one root, <base>/simple/, for its own arch list.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..build.stack import Stack
from ..errors import NoGpuError, NoMatchingTargetError
from ..verify.fatbin import FatbinEntry
from ..verify.runtime import query_gpus

SCHEMA_VERSION = 1
# How well a target's arch list fits one GPU (higher is better; 0: it has no code there).
EXACT, COMPATIBLE, PTX_ONLY, NONE = 3, 2, 1, 0
FIT_NAMES = {EXACT: "exact cubin", COMPATIBLE: "compatible cubin",
             PTX_ONLY: "PTX only (driver JIT on first use)", NONE: "no code"}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: tuple[int, int]
    source: str  # "nvidia-smi" or "torch"

    @property
    def capability(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class Choice:
    target: str | None  # None: the stack has no targets (its one root)
    root: str  # the simple URL the machine installs from
    arch_list: tuple[str, ...]
    gpus: tuple[Gpu, ...]
    fits: tuple[int, ...]  # per GPU

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "gpu_target": self.target, "root": self.root,
                "cuda_arch_list": list(self.arch_list),
                "gpus": [{"index": g.index, "name": g.name, "compute_capability": g.capability,
                          "source": g.source, "fit": FIT_NAMES[f]}
                         for g, f in zip(self.gpus, self.fits, strict=True)]}


def detect_gpus() -> list[Gpu]:
    """This machine's GPUs: nvidia-smi, else torch; NoGpuError (exit 15) saying what was
    tried when neither finds one."""
    found, smi_reason = query_gpus()
    if found:
        return [Gpu(i, g.name, g.compute_capability, "nvidia-smi") for i, g in enumerate(found)]
    if smi_reason == "nvidia-smi lists no GPU":
        raise NoGpuError("no GPU on this machine: nvidia-smi lists none",
                         why="the index root is chosen by the GPU's compute capability",
                         fix="run this on the machine that will run the wheels")
    gpus, torch_reason = _torch_gpus()
    if gpus:
        return gpus
    raise NoGpuError(f"no GPU found on this machine: {smi_reason}; {torch_reason}",
                     why="the index root is chosen by the GPU's compute capability",
                     fix="run this on the machine that will run the wheels, with the NVIDIA "
                         "driver installed (it brings nvidia-smi)")


def _torch_gpus() -> tuple[list[Gpu], str]:
    """GPUs as torch sees them, when torch is importable in this interpreter."""
    if importlib.util.find_spec("torch") is None:
        return [], "torch is not importable here"
    try:
        torch: Any = importlib.import_module("torch")
        if not torch.cuda.is_available():
            return [], f"torch {torch.__version__} sees no CUDA device"
        gpus = []
        for i in range(int(torch.cuda.device_count())):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append(Gpu(i, str(torch.cuda.get_device_name(i)), (int(major), int(minor)),
                            "torch"))
        return gpus, "" if gpus else "torch sees no CUDA device"
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign import is "no GPU"
        return [], f"torch failed to report its devices: {exc}"


def arch_entries(arch: str) -> list[FatbinEntry]:
    """What a TORCH_CUDA_ARCH_LIST entry compiles, as fatbin entries: "9.0a" -> sm_90a,
    "8.0+PTX" -> sm_80 and compute_80."""
    base = arch.removesuffix("+PTX")
    variant = base[-1] if base[-1] in "af" else ""
    major, _, minor = base.rstrip("af").partition(".")
    number = int(major) * 10 + int(minor)
    entries = [FatbinEntry("sass", number, variant)]
    if arch.endswith("+PTX"):
        entries.append(FatbinEntry("ptx", number))
    return entries


def fit(arch_list: Sequence[str], capability: tuple[int, int]) -> int:
    """How well code for `arch_list` runs on a GPU of `capability` (EXACT ... NONE)."""
    best = NONE
    for arch in arch_list:
        for entry in arch_entries(arch):
            if not entry.runs_on(*capability):
                continue
            if entry.kind == "ptx":
                best = max(best, PTX_ONLY)
            elif divmod(entry.arch, 10) == capability:
                best = max(best, EXACT)
            else:
                best = max(best, COMPATIBLE)
    return best


def root_url(base_url: str, target: str | None) -> str:
    """The simple URL of a target's root under the index's base URL."""
    base = base_url.rstrip("/")
    return f"{base}/{target}/simple/" if target else f"{base}/simple/"


def choose(stack: Stack, base_url: str, gpus: Sequence[Gpu]) -> Choice:
    """The root for these GPUs, or NoMatchingTargetError (exit 16) naming what each
    target has and what the GPUs need."""
    candidates: list[tuple[str | None, tuple[str, ...]]] = (
        [(name, t.cuda_arch_list) for name, t in stack.targets.items()] if stack.targets
        else [(None, stack.cuda_arch_list)])
    scored = []
    for order, (name, archs) in enumerate(candidates):
        fits = tuple(fit(archs, g.compute_capability) for g in gpus)
        if min(fits) > NONE:
            scored.append(((min(fits), sum(fits), -order), name, archs, fits))
    if not scored:
        have = "; ".join(f"{name or 'the stack'}: {' '.join(archs)}"
                         for name, archs in candidates)
        need = ", ".join(sorted({f"{g.capability} ({g.name})" for g in gpus}))
        raise NoMatchingTargetError(
            f"no target of {stack.path} has code for this machine's GPU(s): {need}",
            why=f"the targets are built for {have}; their wheels would not run here",
            fix=f"add a target for compute capability {gpus[0].capability} to the stack, e.g. "
                f"[targets.sm{gpus[0].capability.replace('.', '')}] cuda_arch_list = "
                f"\"{gpus[0].capability}\", then build and publish it")
    _, name, archs, fits = max(scored, key=lambda s: s[0])
    return Choice(name, root_url(base_url, name), archs, tuple(gpus), fits)
