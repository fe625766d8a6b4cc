"""Current vs candidate, side by side. Pure functions over what release.py read from the
two sources and what the stack pins; no I/O here, so every rule is testable on its own.

The one decision made here is torch's: the stack has ONE torch, so when the candidate pins
another, the whole stack moves to it (every package is rebuilt against it), and when the
user forces a torch with `torch==`, the report says what the release expects instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ..build.fetchcontent import ExternalSource
from ..build.stack import ExternalOverride, Stack
from .release import ReleaseFacts, Switch

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def short_ref(ref: str) -> str:
    """Commits as 8 hex digits (what people compare by eye), tags as they are."""
    return ref[:8] if _COMMIT.match(ref) else ref


@dataclass(frozen=True)
class Row:
    item: str
    current: str
    candidate: str
    change: str  # "same", "changed", "added", "removed"
    note: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"item": self.item, "current": self.current, "candidate": self.candidate,
                "change": self.change, "note": self.note}


def row(item: str, current: str | None, candidate: str | None, note: str = "") -> Row:
    cur, cand = current or "", candidate or ""
    if cur == cand:
        change = "same"
    elif not cur:
        change = "added"
    elif not cand:
        change = "removed"
    else:
        change = "changed"
    return Row(item, cur or "-", cand or "-", change, note)


# ----------------------------------------------------------------------------- torch


@dataclass(frozen=True)
class TorchDecision:
    current: str
    expected: str | None  # what the candidate release pins (None: no exact pin found)
    expected_where: tuple[str, ...]
    chosen: str
    forced: bool
    cuda_current: str
    cuda_chosen: str | None  # None: could not be read (a blocker, never a guess)
    cuda_note: str
    companions_current: Mapping[str, str]
    companions_chosen: Mapping[str, str]
    companions_note: str
    message: str
    risk: str = ""
    disagreements: tuple[str, ...] = field(default_factory=tuple)

    @property
    def moves(self) -> bool:
        return self.chosen != self.current

    @property
    def verdict(self) -> str:
        if self.forced and self.expected and self.chosen != self.expected:
            return "forced"
        return "moves" if self.moves else "stays"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "current": self.current, "expected": self.expected,
                "expected_where": list(self.expected_where), "chosen": self.chosen,
                "forced": self.forced, "moves": self.moves,
                "cuda": {"current": self.cuda_current, "chosen": self.cuda_chosen,
                         "note": self.cuda_note},
                "companions": {"current": dict(self.companions_current),
                               "chosen": dict(self.companions_chosen),
                               "note": self.companions_note},
                "message": self.message, "risk": self.risk,
                "disagreements": list(self.disagreements)}


# Why a forced torch is risky, stated once (facts: docs/facts/torch-abi.md section 1):
# CMake only warns, so the failure shows up late.
FORCED_TORCH_RISK = (
    "vLLM's CMake only warns when torch differs from TORCH_SUPPORTED_VERSION_CUDA, so the build "
    "usually goes through; the C++ extensions are then compiled against torch {chosen}'s headers "
    "while vLLM's Python code and custom-op schemas were written and tested for torch "
    "{expected}. Expect compile errors at best, and at worst undefined symbols or op-schema "
    "mismatches that appear only at import or first use. Run the abi stage (verify-abi) and a "
    "throughput run before trusting the wheels; the torch companions pinned for {expected} "
    "({companions}) do not apply to {chosen}.")


def decide_torch(stack: Stack, release: ReleaseFacts, forced: str | None,
                 cuda_for: Callable[[str], tuple[str | None, str]]) -> TorchDecision:
    """Which torch the candidate stack pins, and what that means.

    `cuda_for(version)` returns (torch.version.cuda of that torch on the stack's torch index,
    where it was read); it is only called when the torch changes.
    """
    current = stack.torch.version
    expected = release.expected_torch()
    where = tuple(p.where for p in release.torch_pins if p.exact == expected) if expected else ()
    chosen = forced or expected or current
    label = f"{release.project} {release.version}"
    risk = ""
    if forced and expected and forced != expected:
        message = (f"torch forced to {forced} (torch=={forced}), but {label} expects torch "
                   f"{expected} ({'; '.join(where)}).")
        if forced != current:
            message += (f" The whole stack moves to torch {forced}: every package is rebuilt "
                        "against it.")
    elif expected is None:
        found = ", ".join(f"torch{p.specifier or ' (unpinned)'} at {p.where}"
                          for p in release.torch_pins) or "no torch requirement"
        message = (f"{label} states no exact torch pin ({found}); the trial uses torch "
                   f"{chosen}" + (" (forced)." if forced else " (the stack's)."))
        unsatisfied = [p for p in release.torch_pins if p.specifier and not _satisfies(
            chosen, p.specifier)]
        if unsatisfied:
            risk = (f"torch {chosen} does not satisfy " + ", ".join(
                f"torch{p.specifier} ({p.where})" for p in unsatisfied) + "; pass torch==V.")
    elif chosen == current:
        message = (f"torch stays {current}: {label} pins torch=={expected} "
                   f"({'; '.join(where)}), the stack's torch.")
    else:
        others = ", ".join(p.name for p in stack.packages)
        message = (f"torch must move {current} -> {chosen}: {label} pins torch=={expected} "
                   f"({'; '.join(where)}). The whole stack moves to torch {chosen}: every "
                   f"package ({others}) is rebuilt against it, FlashInfer and vLLM together "
                   f"in one build; wheels built against torch {current} must not be mixed "
                   "with them.")
    cuda: str | None
    if chosen == current:
        cuda, cuda_note = stack.torch.cuda, "unchanged (same torch)"
    else:
        found_cuda, source = cuda_for(chosen)
        if found_cuda:
            cuda, cuda_note = found_cuda, f"read from {source}"
        else:
            # Never the current value as if it had been read: torch 2.11 moved to CUDA 13,
            # and a kept 12.8 picks the wrong toolkit and arch branch without a word.
            cuda = None
            cuda_note = (f"could not read torch {chosen}'s CUDA version ({source}): the "
                         "candidate stack leaves [torch] cuda and [cuda_toolkit] version out; "
                         f"set them (torch.version.cuda of the torch {chosen} wheel the stack "
                         "installs, and a toolkit of that CUDA major) before building")
    release_companions = {p.name: p.exact for p in release.companions if p.exact}
    current_companions = dict(stack.torch.companions)
    chosen_companions: dict[str, str] = {}
    notes = []
    for name, version in current_companions.items():
        if chosen == expected and name in release_companions:
            chosen_companions[name] = release_companions[name]
        elif chosen == current:
            chosen_companions[name] = version
        else:
            notes.append(f"{name} dropped: no pin known for torch {chosen} (set it by hand)")
    if chosen == expected:
        where_c = [f"{p.name}: {p.where}" for p in release.companions
                   if p.exact and p.name in chosen_companions]
        notes.insert(0, f"as the release pins them with torch {expected}"
                     + (f" ({', '.join(where_c)})" if where_c else ""))
    if forced and expected and forced != expected:
        risk = FORCED_TORCH_RISK.format(
            chosen=forced, expected=expected,
            companions=", ".join(f"{k}=={v}" for k, v in release_companions.items()) or "none")
    return TorchDecision(
        current=current, expected=expected, expected_where=where, chosen=chosen,
        forced=forced is not None, cuda_current=stack.torch.cuda, cuda_chosen=cuda,
        cuda_note=cuda_note, companions_current=current_companions,
        companions_chosen=chosen_companions, companions_note="; ".join(notes), message=message,
        risk=risk, disagreements=tuple(release.torch_disagreements()))


def _satisfies(version: str, specifier: str) -> bool:
    try:
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return True


def toolkit_for(stack: Stack, cuda: str) -> tuple[str, str]:
    """The [cuda_toolkit] version for a torch CUDA version: nvcc's major must equal torch's
    CUDA major (libcudart.so.N), so only a major change moves it."""
    old_major = stack.torch.cuda_major
    new_major = int(cuda.split(".")[0])
    if new_major == old_major:
        return stack.cuda_toolkit.version, "unchanged (same CUDA major)"
    return (f">={cuda},<{new_major + 1}",
            f"torch's CUDA major moves {old_major} -> {new_major}; nvcc must follow")


# ------------------------------------------------------------------------- externals


def diff_externals(current: list[ExternalSource], candidate: list[ExternalSource],
                   overrides: Mapping[str, ExternalOverride]) -> tuple[list[dict[str, Any]],
                                                                       list[str]]:
    """One row per CUDA external (added, removed, moved, same) and warnings about the
    stack's own overrides of them."""
    cur = {e.name: e for e in current if e.device == "cuda"}
    cand = {e.name: e for e in candidate if e.device == "cuda"}
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for name in sorted(set(cur) | set(cand), key=lambda n: (n not in cur, n)):
        a, b = cur.get(name), cand.get(name)
        if a and b:
            change = "same" if (a.url, a.ref) == (b.url, b.ref) else \
                "moved" if a.url == b.url else "url changed"
        else:
            change = "added" if b else "removed"
        note = ""
        if b and not b.override_env:
            note = "no override variable: CMake always clones it (no offline build)"
        override = overrides.get(name)
        if override and change == "removed":
            warnings.append(f"the stack overrides external '{name}', which the candidate no "
                            "longer declares: the override is dropped from the trial stack")
        elif override and change != "same" and b is not None:
            target = override.path or override.from_source or override.url or ""
            pinned = f"commit {override.commit}" if override.commit else ""
            warnings.append(f"external '{name}' moves {short_ref(a.ref if a else '')} -> "
                            f"{short_ref(b.ref)}, but the stack points it at "
                            f"{' '.join(x for x in (target, pinned) if x)}: make sure that "
                            f"copy is at {b.ref}, or drop the override")
        rows.append({
            "name": name, "change": change,
            "current": {"url": a.url, "ref": a.ref, "short": short_ref(a.ref),
                        "declared_in": a.declared_in} if a else None,
            "candidate": {"url": b.url, "ref": b.ref, "short": short_ref(b.ref),
                          "declared_in": b.declared_in, "override_env": b.override_env,
                          "override_subdir": b.override_subdir} if b else None,
            "stack_override": bool(override), "note": note,
        })
    return rows, warnings


# ----------------------------------------------------------------------------- archs


def _base_arch(arch: str) -> str:
    return re.sub(r"[af]?(\+PTX)?$", "", arch)


def arch_support(stack: Stack, nvcc_floor: Version | None, current: ReleaseFacts,
                 candidate: ReleaseFacts, candidate_floor: Version | None = None, *,
                 candidate_nvcc_unknown: str = "") -> dict[str, Any]:
    """The stack's arch list against the CUDA_SUPPORTED_ARCHS branch each release's CMake
    takes with the nvcc it is built with: the current stack's for the current release, the
    candidate stack's (which moves with torch's CUDA major) for the candidate.

    candidate_nvcc_unknown: why the candidate's nvcc is not known (torch's CUDA could not
    be read); then no candidate branch is picked rather than one for a guessed nvcc."""
    cand_floor = None if candidate_nvcc_unknown else \
        candidate_floor if candidate_floor is not None else nvcc_floor
    result: dict[str, Any] = {"stack_archs": list(stack.cuda_arch_list),
                              "nvcc_floor": str(nvcc_floor) if nvcc_floor else None,
                              "candidate_nvcc_floor": str(cand_floor) if cand_floor else None}
    unsupported: list[str] = []
    for key, facts, floor in (("current", current, nvcc_floor),
                              ("candidate", candidate, cand_floor)):
        branch = None if key == "candidate" and candidate_nvcc_unknown else \
            facts.branch_for(floor)
        result[key] = {"branches": [b.to_dict() for b in facts.arch_branches],
                       "branch": branch.to_dict() if branch else None}
        if key == "candidate" and candidate_nvcc_unknown:
            result[key]["unknown"] = candidate_nvcc_unknown
        if branch is None:
            result[key]["missing"] = []
            continue
        supported = {_base_arch(a) for a in branch.archs}
        missing = [a for a in stack.cuda_arch_list if _base_arch(a) not in supported]
        result[key]["missing"] = missing
        if key == "candidate":
            unsupported = missing
    result["candidate_drops"] = unsupported
    result["found"] = bool(candidate.arch_branches)
    return result


# -------------------------------------------------------------------------- switches


def diff_switches(current: list[Switch], candidate: list[Switch]) -> dict[str, Any]:
    """Build switches (env vars, CMake options) of the CUDA build that appeared or vanished."""
    cur = {(s.kind, s.name): s for s in current if s.device == "cuda"}
    cand = {(s.kind, s.name): s for s in candidate if s.device == "cuda"}
    return {
        "appeared": [cand[k].to_dict() for k in sorted(set(cand) - set(cur))],
        "vanished": [cur[k].to_dict() for k in sorted(set(cur) - set(cand))],
        "unchanged": len(set(cur) & set(cand)),
    }
