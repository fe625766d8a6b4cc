"""Patch series: patches/<package>/<version>/series lists the patches in order (one file
name per line, '#' comments). Applied with GNU patch, which names the failing hunk.

Patches apply exactly or not at all: GNU patch runs with --fuzz=0 (its default, 2, lets a
hunk land where up to two lines of its context no longer match, i.e. on code the patch was
not written against, and says so only in its output). A hunk found a few lines away from
where the patch says (an offset: its context matches exactly) applies, and the offset is
reported; a hunk that needs fuzz is a conflict, named with the fuzz it would need.

`check_patch` answers the question trials ask too: does this patch apply cleanly, is it
already in the source (it reverse-applies), or does it conflict, and at which hunks?
Builds (apply_series) and trials (trial/plan.check_series) use the same check.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..errors import ConfigError, PatchError, ToolchainError
from ..runner import QueryResult, query
from .stack import PackageSpec, default_patch_dir

_HUNK_FAILED = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
_HUNK_OFFSET = re.compile(r"Hunk #(\d+) succeeded at (\d+) .*\(offset (-?\d+) lines?\)")
_HUNK_FUZZ = re.compile(r"Hunk #(\d+) succeeded at (\d+) with fuzz (\d+)")
# GNU patch's own default, used only to say how far a conflicting hunk is from applying.
_DEFAULT_FUZZ = 2
_PATCHING = re.compile(r"^(?:patching|checking) file '?([^']+?)'?$")


@dataclass(frozen=True)
class PatchFile:
    name: str
    path: Path
    sha256: str


class PatchStatus(StrEnum):
    """What `check_patch` found (JSON shows the value)."""

    APPLIES = "applies"
    ALREADY_APPLIED = "already-applied"  # the source has it already (fixed upstream)
    CONFLICTS = "conflicts"


@dataclass(frozen=True)
class PatchCheck:
    patch: str
    status: PatchStatus
    failed_hunks: tuple[str, ...] = field(default_factory=tuple)  # "file: hunk #N at line L"
    output: str = ""
    offsets: tuple[str, ...] = field(default_factory=tuple)  # "file: hunk #N at offset +K"

    def describe(self) -> str:
        """'applied' or 'applied, file: hunk #2 at offset +3': what the plan shows."""
        return ", ".join(("applied", *self.offsets))


def package_series(spec: PackageSpec, repo_root: Path) -> list[PatchFile]:
    """The package's series. Its default directory (patches/NAME/VERSION) may be absent (no
    patches); a directory the stack names (`patches = "DIR"`) must exist: a typo there
    would otherwise build without the patches the stack asks for."""
    directory = repo_root / spec.patches
    if spec.patches != default_patch_dir(spec.name, spec.version) and not directory.is_dir():
        raise ConfigError(
            f"the patch directory of {spec.name}, patches = \"{spec.patches}\", does not "
            f"exist ({directory})",
            why="a directory the stack names must hold the series it means; without it the "
                "package would be built with no patches at all",
            fix="fix the path (it is relative to the repository root), create the directory "
                "with a `series` file, or remove the `patches` key (the default "
                f"{default_patch_dir(spec.name, spec.version)} may be absent: no patches)")
    return read_series(directory)


def read_series(patch_dir: Path) -> list[PatchFile]:
    """The patches to apply, in order. A directory without patches is an empty series
    (a missing one too: package_series refuses a missing directory the stack names)."""
    if not patch_dir.is_dir():
        return []
    series = patch_dir / "series"
    present = sorted(p.name for p in patch_dir.iterdir()
                     if p.suffix in (".patch", ".diff") and p.is_file())
    if not series.exists():
        if present:
            raise ConfigError(f"{patch_dir} has patches but no series file",
                              why="the order of patches matters and must be explicit",
                              fix=f"list them, one per line, in {series}")
        return []
    names = []
    for raw in series.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.append(line)
    missing = [n for n in names if not (patch_dir / n).is_file()]
    if missing:
        raise ConfigError(f"{series} lists missing patches: {', '.join(missing)}")
    unlisted = sorted(set(present) - set(names))
    if unlisted:
        raise ConfigError(f"{patch_dir} has patches not listed in series: {', '.join(unlisted)}",
                          why="an unlisted patch would be silently skipped",
                          fix=f"add them to {series}, or delete them")
    return [PatchFile(n, patch_dir / n, hashlib.sha256((patch_dir / n).read_bytes()).hexdigest())
            for n in names]


def _patch(tree: Path, patch: Path, *extra: str, fuzz: int = 0) -> QueryResult:
    done = query(["patch", "-p1", "--batch", "--force", f"--fuzz={fuzz}",
                  "--no-backup-if-mismatch", "-d", tree, "-i", patch.resolve(), *extra],
                 timeout=600)
    if done.not_run is not None:
        raise ToolchainError(f"GNU patch could not run: {done.not_run}",
                             why="local patches are applied with `patch -p1`",
                             fix="install it (Debian/Ubuntu: apt-get install patch)")
    return done


def _lines(output: str) -> Iterator[tuple[str, str]]:
    """(the file GNU patch is working on, line) for each line of its output."""
    current = "?"
    for line in output.splitlines():
        m = _PATCHING.match(line.strip())
        if m:
            current = m.group(1)
        else:
            yield current, line


def _failed_hunks(output: str, fuzzed: str = "") -> tuple[str, ...]:
    """"file: hunk #N at line L" per failed hunk, with "(needs fuzz F: ...)" where the
    same patch with GNU patch's default fuzz (`fuzzed`, its output) applies that hunk."""
    needs = {(f, h.group(1)): h.group(3)
             for f, line in _lines(fuzzed) if (h := _HUNK_FUZZ.search(line))}
    hunks = []
    for current, line in _lines(output):
        h = _HUNK_FAILED.search(line)
        if h:
            fuzz = needs.get((current, h.group(1)))
            hunks.append(f"{current}: hunk #{h.group(1)} at line {h.group(2)}"
                         + (f" (needs fuzz {fuzz}: its context lines differ from the source)"
                            if fuzz else ""))
        elif "can't find file to patch" in line:
            hunks.append(f"{current}: file not found")
    return tuple(hunks)


def _offsets(output: str) -> tuple[str, ...]:
    """"file: hunk #N at offset +K" per hunk that applied K lines away from its line."""
    return tuple(f"{current}: hunk #{h.group(1)} at offset {int(h.group(3)):+d}"
                 for current, line in _lines(output) if (h := _HUNK_OFFSET.search(line)))


def check_patch(tree: Path, patch: PatchFile) -> PatchCheck:
    """Dry-run a patch against a tree without changing it (no fuzz; offsets reported)."""
    forward = _patch(tree, patch.path, "--dry-run", "--forward")
    if forward.returncode == 0:
        return PatchCheck(patch.name, PatchStatus.APPLIES, (), forward.stdout,
                          offsets=_offsets(forward.stdout))
    reverse = _patch(tree, patch.path, "--dry-run", "--reverse")
    if reverse.returncode == 0:
        return PatchCheck(patch.name, PatchStatus.ALREADY_APPLIED, (), reverse.stdout)
    text = forward.stdout + forward.stderr
    # Only to say which failed hunks are near misses (context changed within 2 lines).
    fuzzed = _patch(tree, patch.path, "--dry-run", "--forward", fuzz=_DEFAULT_FUZZ)
    return PatchCheck(patch.name, PatchStatus.CONFLICTS, _failed_hunks(text, fuzzed.stdout),
                      text)


def apply_series(tree: Path, patches: list[PatchFile]) -> list[PatchCheck]:
    """Apply every patch in order, exactly (no fuzz); stop at the first that does not.
    Returns each patch's check (its offsets say where hunks landed away from their line)."""
    applied = []
    for index, patch in enumerate(patches, 1):
        check = check_patch(tree, patch)
        if check.status == PatchStatus.ALREADY_APPLIED:
            raise PatchError(
                f"patch {index}/{len(patches)} {patch.name} is already in the source "
                "(it applies in reverse)",
                why="the fix was probably merged upstream in this release",
                fix=f"remove {patch.name} from {patch.path.parent / 'series'}")
        if check.status == PatchStatus.CONFLICTS:
            hunks = "\n".join(f"    {h}" for h in check.failed_hunks) or check.output[-1500:]
            fuzzy = any("needs fuzz" in h for h in check.failed_hunks)
            raise PatchError(
                f"patch {index}/{len(patches)} {patch.name} does not apply exactly:\n{hunks}",
                why="the source changed under the patch"
                    + (" (patches apply without fuzz: a hunk whose context no longer matches "
                       "may land on code it was not written for)" if fuzzy else ""),
                fix=f"rebase {patch.path} onto this source (the failing hunks are listed), "
                    "or drop it from the series")
        done = _patch(tree, patch.path, "--forward")
        if done.returncode != 0:
            raise PatchError(f"patch {patch.name} failed after a clean dry run:\n"
                             f"{done.stdout[-1500:]}{done.stderr[-500:]}")
        applied.append(check)
    return applied
