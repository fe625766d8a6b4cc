"""The plan stage: fetch the current and the candidate sources (pristine, as released),
read what each release asks for, compare, re-check the patches against the candidate,
and write the candidate stack. Nothing is compiled.

The result is one JSON-able dict, which the state file keeps (so a resumed trial does not
redo it) and the report renders.
"""

from __future__ import annotations

import dataclasses
import email.parser
import platform
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .. import layout
from ..build import sources
from ..build.patches import (
    PatchCheck,
    PatchFile,
    apply_series,
    check_patch,
    package_series,
    read_series,
)
from ..build.stack import (
    PYPI_SIMPLE_URL,
    CudaToolkit,
    PackageSpec,
    Source,
    Stack,
    TorchPin,
    default_patch_dir,
)
from ..cache import Cache, publish_dir, remove, temp_sibling
from ..errors import ConfigError, PipelineError
from ..log import Reporter
from . import compare
from .release import ReleaseFacts, python_supported, read_release, toolkit_floor
from .stack_writer import promotion_commands, write_stack

PLAN_STEPS = 5
_PRISTINE_MARKER = layout.PRISTINE_MARKER
_REQUEST = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s=<>!~,;]+)\s*$")
TRIAL_PACKAGES = ("vllm", "flashinfer-python", "torch")


@dataclass(frozen=True)
class TrialRequest:
    vllm: str
    flashinfer: str | None = None
    torch: str | None = None

    @property
    def name(self) -> str:
        return f"trial-vllm-{self.vllm}"

    def to_dict(self) -> dict[str, str | None]:
        return {"vllm": self.vllm, "flashinfer-python": self.flashinfer, "torch": self.torch}


def parse_request(items: list[str]) -> TrialRequest:
    """`vllm==0.12.0 [flashinfer-python==V] [torch==V]` -> TrialRequest."""
    found: dict[str, str] = {}
    for item in items:
        m = _REQUEST.match(item)
        if not m:
            raise ConfigError(f"cannot read '{item}' as PACKAGE==VERSION",
                              fix="e.g. `nox -s trial -- vllm==0.12.0 [flashinfer-python==0.5.3] "
                                  "[torch==2.9.0]` (exact versions only)")
        name, version = canonicalize_name(m.group(1)), m.group(2)
        if name not in TRIAL_PACKAGES:
            raise ConfigError(f"a trial moves vllm, flashinfer-python and torch; got '{item}'",
                              fix="other packages come from the stack file (--stack)")
        try:
            Version(version)
        except InvalidVersion:
            raise ConfigError(f"'{version}' in '{item}' is not a version") from None
        if name in found:
            raise ConfigError(f"{name} is given twice")
        found[name] = version
    if "vllm" not in found:
        raise ConfigError("which vLLM to try? no vllm==VERSION given",
                          fix="e.g. `nox -s trial -- vllm==0.12.0`")
    return TrialRequest(found["vllm"], found.get("flashinfer-python"), found.get("torch"))


# --------------------------------------------------------------------------- sources


def pristine_tree(spec: PackageSpec, cache: Cache, repo_root: Path, reporter: Reporter
                  ) -> Path:
    """The source as released (no patches, pins kept): what the trial reads and what the
    patches are re-checked against. Unpacked once per sdist hash into the cache."""
    fetched = sources.fetch(spec, cache, repo_root, reporter)
    if fetched.archive is None:
        assert fetched.directory is not None
        return fetched.directory
    key = (fetched.sha256 or sources.sha256_file(fetched.archive))[:12]
    tree = cache.sources / (f"pristine-{canonicalize_name(spec.name)}-"
                            f"{spec.source.version or 'local'}-{key}")
    with cache.lock(f"src-{tree.name}"):
        if not (tree / _PRISTINE_MARKER).exists():
            tmp = temp_sibling(tree)
            remove(tmp)
            try:
                sources.unpack(fetched.archive, tmp)
                (tmp / _PRISTINE_MARKER).write_text(str(fetched.archive) + "\n")
            except BaseException:
                remove(tmp)
                raise
            publish_dir(tmp, tree)
    return tree


def candidate_spec(base: PackageSpec, version: str, cache: Cache, reporter: Reporter
                   ) -> PackageSpec:
    """`base` moved to another release on the same package index, with the sha256 it
    publishes for that sdist (SourceError when the version or its sdist does not exist)."""
    simple_url = base.source.simple_url if base.source.kind == "pypi" else PYPI_SIMPLE_URL
    found = sources.find_sdist(simple_url, base.name, version)
    sha = found.sha256
    if sha is None:
        # A PEP 503 simple URL without hashes: hash the file ourselves once.
        scratch = cache.downloads / "unhashed" / found.filename
        sources.download(found.url, scratch, None, reporter)
        sha = sources.sha256_file(scratch)
        target = cache.download_path(sha, found.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch.replace(target)
    source = Source(kind="pypi", version=version, sha256=sha, simple_url=simple_url)
    return dataclasses.replace(base, source=source)


# torch's CUDA requirement, in every form its wheel metadata has taken on PyPI
# (docs/facts/toolchain.md; real metadata in tests/fixtures/torch-metadata/): the CUDA 12
# runtime package `nvidia-cuda-runtime-cu12==12.8.90` (torch <= 2.10), the CUDA 13 one
# `nvidia-cuda-runtime==13.0.96`, and the `cuda-toolkit[cublas,cudart,...]==13.0.2`
# metapackage (torch 2.11.0; ==13.0.3 from 2.13.0). The version's major.minor is the CUDA
# release torch was built with (torch.version.cuda).
_CUDA_REQUIREMENT = re.compile(r"^(?:nvidia-cuda-runtime(?:-cu\d+)?|cuda-toolkit)$")


def cuda_from_requires_dist(requirements: Sequence[str], *, machine: str, python: str
                            ) -> tuple[str | None, str]:
    """(torch.version.cuda, the requirement it was read from) from a torch wheel's
    Requires-Dist lines, or (None, why not). Markers are evaluated for Linux on `machine`
    with the stack's Python: torch 2.9.0's aarch64 wheel on PyPI names the CUDA runtime
    for x86_64 only, so it is no CUDA build there."""
    environment = {"platform_system": "Linux", "sys_platform": "linux", "os_name": "posix",
                   "platform_machine": machine, "python_version": python,
                   "python_full_version": f"{python}.0", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "extra": ""}
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if not _CUDA_REQUIREMENT.match(canonicalize_name(requirement.name)):
            continue
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        exact = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
        m = re.match(r"^(\d+)\.(\d+)", exact[0]) if len(exact) == 1 else None
        if m is None:
            return None, f"its requirement '{text}' pins no exact CUDA version"
        return f"{m.group(1)}.{m.group(2)}", f"{canonicalize_name(requirement.name)}=={exact[0]}"
    return None, (f"it names no CUDA runtime (nvidia-cuda-runtime[-cuNN] or cuda-toolkit) "
                  f"for linux {machine}")


def torch_cuda_from_simple_url(simple_url: str | None, version: str, python: str
                               ) -> tuple[str | None, str]:
    """torch.version.cuda of `torch==version` as the stack's torch simple URL serves it for
    this platform: from a local label (+cu128) or from the wheel's metadata (the PEP 658
    .metadata file), whose CUDA requirement (cuda_from_requires_dist) names the CUDA it was
    built with. (None, why) when it cannot be read: the caller must not guess."""
    url = (simple_url or PYPI_SIMPLE_URL).rstrip("/")
    tag = "cp" + python.replace(".", "")
    machine = platform.machine()
    try:
        files = sources.list_project_files(url, "torch")
    except PipelineError as exc:
        return None, f"the index could not be read: {exc.what}"
    wheels = [f for f in files if re.match(rf"torch-{re.escape(version)}(\+[\w.]+)?-{tag}-", f.filename)
              and "linux" in f.filename and machine in f.filename]
    for wheel in wheels:
        local = re.match(r"torch-[^-+]+\+cu(\d+)(\d)-", wheel.filename)
        if local:
            return f"{local.group(1)}.{local.group(2)}", f"{wheel.filename} on {url}"
    unread: list[str] = []
    for wheel in wheels:
        request = urllib.request.Request(wheel.url + ".metadata",
                                         headers={"User-Agent": sources.USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                metadata = email.parser.Parser().parsestr(response.read().decode("utf-8",
                                                                                  "replace"))
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            unread.append(f"{wheel.filename}.metadata: {exc}")
            continue
        cuda, where = cuda_from_requires_dist(metadata.get_all("Requires-Dist") or [],
                                              machine=machine, python=python)
        if cuda:
            return cuda, f"{where} in the metadata of {wheel.filename} on {url}"
        return None, f"{wheel.filename} on {url}: {where}"
    if unread:
        return None, f"the wheel metadata could not be read ({'; '.join(unread)})"
    return None, f"no {tag} linux {machine} wheel of torch {version} on {url}"


# --------------------------------------------------------------------------- patches


def patch_dir_for(spec: PackageSpec, new_version: str, repo_root: Path) -> tuple[str, str, bool]:
    """(patch dir for the candidate, why, whether it is the current version's series).

    A per-version series (patches/vllm/0.11.2, or 0.11.2-torch2.14 with a suffix) moves to
    the same name with the new version when that exists; otherwise the current series is
    re-checked against the candidate."""
    current = spec.patches
    name = Path(current).name
    version = spec.source.version
    if version and name.startswith(version):
        wanted = str(Path(current).parent / (new_version + name[len(version):]))
        if (repo_root / wanted).is_dir():
            return wanted, f"{wanted}: the candidate's own series", False
        return current, (f"{wanted} does not exist: the trial re-checks the current series "
                         f"{current} against {new_version}"), True
    return current, f"{current}: the stack's patch directory (not per version)", False


def _touched_files(patch: Path) -> list[str]:
    files = []
    for line in patch.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(("--- ", "+++ ")):
            path = line[4:].split("\t", 1)[0].strip()
            if path != "/dev/null" and "/" in path:
                files.append(path.split("/", 1)[1])
    return list(dict.fromkeys(files))


def hunk_text(patch: Path, file: str, number: int, limit: int = 40) -> str:
    """The Nth hunk of `file` in a patch (what a reviewer needs to see to rebase it)."""
    current, count = "", 0
    out: list[str] = []
    for line in patch.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("+++ "):
            path = line[4:].split("\t", 1)[0].strip()
            current = path.split("/", 1)[1] if "/" in path else path
            count = 0
            continue
        if line.startswith("--- ") and not out:
            continue
        if line.startswith("@@"):
            if out:
                break
            if current == file:
                count += 1
                if count == number:
                    out.append(line)
            continue
        if out:
            if line.startswith(("--- ", "diff ")):
                break
            out.append(line)
    return "\n".join(out[:limit]) + ("\n..." if len(out) > limit else "")


def check_series(tree: Path, series: list[PatchFile]) -> list[PatchCheck]:
    """Each patch of the series against the pristine tree, in order: a patch that applies is
    applied (to scratch copies of the files the series touches, never to the tree) before
    the next one is checked, as a real build would."""
    results: list[PatchCheck] = []
    with tempfile.TemporaryDirectory(prefix="vllm-wheels-trial-") as scratch_dir:
        scratch = Path(scratch_dir)
        for patch in series:
            for rel in _touched_files(patch.path):
                source, target = tree / rel, scratch / rel
                if source.is_file() and not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
        for patch in series:
            check = check_patch(scratch, patch)
            results.append(check)
            if check.status == "applies":
                apply_series(scratch, [patch])
    return results


def _patch_report(spec: PackageSpec, candidate: PackageSpec, tree: Path, repo_root: Path
                  ) -> dict[str, Any]:
    assert candidate.source.version is not None
    package_series(spec, repo_root)  # a directory the stack names must exist (ConfigError)
    directory, note, carried = patch_dir_for(spec, candidate.source.version, repo_root)
    series = read_series(repo_root / directory)
    checks = check_series(tree, series)
    out = []
    for patch, check in zip(series, checks, strict=True):
        hunks = []
        for failed in check.failed_hunks:
            m = re.match(r"^(.*?): hunk #(\d+) at line (\d+)(?: \(.*\))?$", failed)
            hunks.append({"where": failed, "text": hunk_text(patch.path, m.group(1),
                                                              int(m.group(2))) if m else ""})
        out.append({"name": patch.name, "sha256": patch.sha256, "status": check.status,
                    "offsets": list(check.offsets), "failed_hunks": hunks,
                    "output": check.output[-2000:] if check.status == "conflicts" else ""})
    default_dir = default_patch_dir(candidate.name, candidate.source.version)
    if carried and not series:
        # Nothing to carry over: the candidate stack points at the new version's own
        # (not yet existing, so empty) series, which is what promotion wants anyway.
        note += f"; the series is empty, so the candidate stack uses {default_dir}"
        directory, carried = default_dir, False
    return {"package": spec.name, "series_dir": directory, "note": note,
            "carried_over": carried, "default_dir": default_dir, "patches": out}


# ------------------------------------------------------------------------------ plan


def _describe(stack: Stack, replacements: list[tuple[str, str]]) -> str:
    text = stack.description
    changed = False
    for old, new in replacements:
        if old and old != new and old in text:
            text = text.replace(old, new)
            changed = True
    return text if changed else f"trial of {replacements[0][1]} from stack {stack.name}"


def _shown(path: Path, repo_root: Path) -> str:
    """Repo-relative where possible: reports are committed and read on other machines."""
    try:
        return str(path.resolve().relative_to(repo_root.resolve()))
    except ValueError:
        return str(path)


def plan_trial(stack: Stack, request: TrialRequest, *, repo_root: Path, cache: Cache,
               reporter: Reporter, stack_out: Path, default_stack: Path,
               first_step: int = 1, total_steps: int = PLAN_STEPS) -> dict[str, Any]:
    started = time.monotonic()
    vllm_spec = stack.package("vllm")
    if vllm_spec is None:
        raise ConfigError(f"the stack {stack.path} has no vllm package: nothing to trial")
    fi_spec = stack.package("flashinfer-python")
    step = first_step

    reporter.step_at(step, total_steps, "current sources (as released): "
                  + ", ".join(f"{s.name} {s.source.version}" for s in (vllm_spec, fi_spec) if s))
    current: dict[str, ReleaseFacts] = {}
    for spec in (vllm_spec, fi_spec):
        if spec is not None:
            tree = pristine_tree(spec, cache, repo_root, reporter)
            current[spec.name] = read_release(tree, spec.name, spec.source.version or "local")
    reporter.step_done()

    step += 1
    reporter.step_at(step, total_steps, f"candidate vllm {request.vllm}: find the sdist, verify, "
                  "unpack, read its requirements")
    cand_vllm_spec = candidate_spec(vllm_spec, request.vllm, cache, reporter)
    cand_vllm_tree = pristine_tree(cand_vllm_spec, cache, repo_root, reporter)
    cand_vllm = read_release(cand_vllm_tree, "vllm", request.vllm)
    reporter.step_done()

    step += 1
    reporter.step_at(step, total_steps, "torch and FlashInfer pins of the candidate")
    decision = compare.decide_torch(
        stack, cand_vllm, request.torch,
        lambda version: torch_cuda_from_simple_url(stack.torch.simple_url, version, stack.python))
    reporter.say(f"    {decision.message}")
    warnings: list[str] = []
    blockers: list[str] = []
    warnings += [f"the candidate disagrees with itself: {d}" for d in decision.disagreements]
    fi_release = cand_vllm.flashinfer.exact if cand_vllm.flashinfer else None
    fi_version = request.flashinfer or fi_release
    fi_note = ""
    if request.flashinfer and fi_release and request.flashinfer != fi_release:
        fi_note = (f"forced flashinfer-python=={request.flashinfer}; vllm {request.vllm} pins "
                   f"{fi_release} ({cand_vllm.flashinfer.where if cand_vllm.flashinfer else ''})")
        warnings.append(fi_note + ": vLLM's FlashInfer integration is tested against that pin")
    elif fi_release:
        fi_note = f"pinned by vllm {request.vllm} ({cand_vllm.flashinfer.where})" \
            if cand_vllm.flashinfer else ""
    cand_fi_spec: PackageSpec | None = None
    cand_fi: ReleaseFacts | None = None
    if fi_spec is not None:
        if fi_version is None:
            fi_version = fi_spec.source.version
            fi_note = f"vllm {request.vllm} pins no flashinfer-python; kept the stack's"
            warnings.append(fi_note)
        assert fi_version is not None
        cand_fi_spec = fi_spec if fi_version == fi_spec.source.version else \
            candidate_spec(fi_spec, fi_version, cache, reporter)
        cand_fi_tree = pristine_tree(cand_fi_spec, cache, repo_root, reporter)
        cand_fi = read_release(cand_fi_tree, fi_spec.name, fi_version)
        reporter.say(f"    flashinfer-python {fi_spec.source.version} -> {fi_version}"
                     + (f" ({fi_note})" if fi_note else ""))
    reporter.step_done()

    step += 1
    reporter.step_at(step, total_steps, "patches re-checked against the candidate sources")
    patch_reports = [_patch_report(vllm_spec, cand_vllm_spec, cand_vllm_tree, repo_root)]
    if fi_spec is not None and cand_fi_spec is not None and cand_fi is not None:
        patch_reports.append(_patch_report(fi_spec, cand_fi_spec, cand_fi.tree, repo_root))
    for report in patch_reports:
        counts: dict[str, int] = {}
        for item in report["patches"]:
            counts[item["status"]] = counts.get(item["status"], 0) + 1
            if item["status"] == "already-applied":
                warnings.append(f"patch {report['series_dir']}/{item['name']} is already upstream "
                                f"in {report['package']} "
                                f"{_version_of(report, cand_vllm_spec, cand_fi_spec)}: the "
                                "promotion commands drop it; until then build_wheels refuses "
                                "the series (exit 5)")
            if item["status"] == "conflicts":
                blockers.append(f"patch {report['series_dir']}/{item['name']} conflicts with "
                                f"{report['package']} {_version_of(report, cand_vllm_spec, cand_fi_spec)}: "
                                + "; ".join(h["where"] for h in item["failed_hunks"]))
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no patches"
        reporter.say(f"    {report['package']}: {summary} ({report['note']})")
    reporter.step_done()

    step += 1
    reporter.step_at(step, total_steps, f"write the candidate stack {stack_out}")
    py_ok = python_supported(cand_vllm.requires_python, stack.python)
    if py_ok is False:
        blockers.append(f"vllm {request.vllm} requires Python {cand_vllm.requires_python}; the "
                        f"stack builds for {stack.python}")
    externals, ext_warnings = compare.diff_externals(list(current["vllm"].externals),
                                                     list(cand_vllm.externals),
                                                     vllm_spec.externals)
    warnings += ext_warnings
    declared = {e.name for e in cand_vllm.externals if e.device == "cuda"}
    kept_overrides = {k: v for k, v in vllm_spec.externals.items() if k in declared}
    toolkit, toolkit_note, cand_floor, unknown, toolkit_blockers = candidate_toolkit(
        stack, decision)
    blockers += toolkit_blockers
    # The arch branch each release's CMake takes depends on the nvcc it is built with: the
    # candidate's toolkit has moved with torch's CUDA major, when it moved (nvcc >= 13.0
    # for torch 2.11's CUDA 13.0, >= 12.8 for 2.9's 12.8), and is unknown when it is.
    floor = toolkit_floor(stack.cuda_toolkit.version, stack.cuda_toolkit.pip_version)
    archs = compare.arch_support(
        stack, floor, current["vllm"], cand_vllm, cand_floor,
        candidate_nvcc_unknown=unknown.get(("cuda_toolkit", "version"), ""))
    if archs["candidate_drops"]:
        where = archs["candidate"]["branch"]["where"] if archs["candidate"]["branch"] else "?"
        blockers.append(f"vllm {request.vllm} does not accept "
                        f"{', '.join(archs['candidate_drops'])} with nvcc {cand_floor} "
                        f"(CUDA_SUPPORTED_ARCHS, {where})")
    if not archs["found"] and not unknown:
        warnings.append(f"no CUDA_SUPPORTED_ARCHS found in vllm {request.vllm}'s CMakeLists.txt: "
                        "the arch list is unverified")

    patches_by_pkg = {r["package"]: r for r in patch_reports}
    new_packages = []
    for spec in stack.packages:
        if spec is vllm_spec:
            new = dataclasses.replace(cand_vllm_spec,
                                      patches=patches_by_pkg["vllm"]["series_dir"],
                                      externals=kept_overrides)
        elif spec is fi_spec and cand_fi_spec is not None:
            new = dataclasses.replace(cand_fi_spec,
                                      patches=patches_by_pkg[fi_spec.name]["series_dir"])
        else:
            new = spec
        new_packages.append(new)
    # A placeholder where the CUDA is unknown: write_stack proves the file with it, then
    # leaves the key out (`unknown`).
    torch_pin = TorchPin(version=decision.chosen, cuda=decision.cuda_chosen or stack.torch.cuda,
                         simple_url=stack.torch.simple_url,
                         sha256=None if decision.moves else stack.torch.sha256,
                         companions=dict(decision.companions_chosen))
    if decision.moves and stack.torch.sha256:
        warnings.append(f"[torch] sha256 dropped: it was the hash of torch {stack.torch.version}")
    replacements = [(f"vLLM {vllm_spec.source.version}", f"vLLM {request.vllm}"),
                    (f"FlashInfer {fi_spec.source.version if fi_spec else ''}",
                     f"FlashInfer {fi_version or ''}"),
                    (f"torch {stack.torch.local_version}",
                     f"torch {torch_pin.local_version if decision.cuda_chosen else decision.chosen}")]
    candidate_stack = dataclasses.replace(
        stack, name=request.name, path=stack_out, description=_describe(stack, replacements),
        torch=torch_pin, cuda_toolkit=toolkit, packages=tuple(new_packages))
    # Lines starting "trial: " are dropped by the promotion commands; the last one stays.
    header = [f"trial: written by `vllm-wheels trial vllm=={request.vllm}` from "
              f"{_rel(stack.path, repo_root)}; every pin was "
              "read from the candidate's own source.",
              f"trial: {decision.message}"[:400],
              f"From the upgrade trial vllm {vllm_spec.source.version} -> {request.vllm}; report: "
              f"{_rel(default_report_path(repo_root, request), repo_root)}"]
    notes: dict[str, list[str]] = {}
    for report in patch_reports:
        if report["carried_over"]:
            notes[report["package"]] = [f"trial: {report['note']}"]
    written = write_stack(candidate_stack, stack_out, header=header, notes=notes,
                          unknown=unknown)
    if unknown:
        reporter.say(f"    wrote {stack_out} WITHOUT "
                     + ", ".join(f"[{t}] {k}" for t, k in unknown)
                     + ": could not be read (see the blockers); set them before building")
    else:
        reporter.say(f"    wrote {stack_out} (read back with load_stack: digest "
                     f"{written.digest()[:12]})")
    reporter.step_done()

    rebuild = []
    for spec, new in zip(stack.packages, written.packages, strict=True):
        reasons = []
        if decision.moves:
            reasons.append(f"torch {decision.current} -> {decision.chosen}")
        if spec.source != new.source:
            reasons.append(f"source {spec.source.version} -> {new.source.version}")
        if not reasons and any(s.source != n.source for s, n in
                               zip(stack.packages, written.packages, strict=True)):
            reasons.append("rebuilt with the rest of the stack (same source)")
        rebuild.append({"package": spec.name, "reasons": reasons})

    moves, drops = [], []
    for report in patch_reports:
        has_patches = bool(report["patches"])
        directory = report["series_dir"]
        if report["carried_over"] and has_patches:
            moves.append((directory, report["default_dir"]))
            directory = report["default_dir"]
        for item in report["patches"]:
            if item["status"] == "already-applied":
                drops.append((directory, item["name"]))
    commands = promotion_commands(repo_root=repo_root, trial_stack=stack_out,
                                  default_stack=default_stack, default_name=stack.name,
                                  trial_name=request.name, moves=moves, drop=drops)

    pins = [
        compare.row("vllm", vllm_spec.source.version, request.vllm),
        compare.row("flashinfer-python", fi_spec.source.version if fi_spec else None,
                    fi_version, fi_note),
        compare.row("torch", stack.torch.version, decision.chosen,
                    {"stays": "", "moves": "the whole stack moves",
                     "forced": f"forced; the release expects {decision.expected}"}
                    [decision.verdict]),
        compare.row("torch CUDA (torch.version.cuda)", stack.torch.cuda,
                    decision.cuda_chosen or "?", decision.cuda_note),
    ]
    for name in sorted(set(decision.companions_current) | set(decision.companions_chosen)):
        pins.append(compare.row(name, decision.companions_current.get(name),
                                decision.companions_chosen.get(name), decision.companions_note))
    pins.append(compare.row("cuda_toolkit (nvcc)", stack.cuda_toolkit.version,
                            "?" if unknown else toolkit.version, toolkit_note))
    cur_v, cand_v = current["vllm"], cand_vllm
    pins.append(compare.row("vLLM requires-python", cur_v.requires_python,
                            cand_v.requires_python,
                            f"stack python {stack.python}: "
                            + {True: "ok", False: "NOT SUPPORTED", None: "unknown"}[py_ok]))
    pins.append(compare.row("vLLM default CUDA (VLLM_MAIN_CUDA_VERSION)",
                            cur_v.default_cuda[0] if cur_v.default_cuda else None,
                            cand_v.default_cuda[0] if cand_v.default_cuda else None,
                            cand_v.default_cuda[1] if cand_v.default_cuda else ""))
    pins.append(compare.row("vLLM Dockerfile CUDA_VERSION",
                            cur_v.docker_cuda[0] if cur_v.docker_cuda else None,
                            cand_v.docker_cuda[0] if cand_v.docker_cuda else None,
                            cand_v.docker_cuda[1] if cand_v.docker_cuda else ""))
    if fi_spec is not None and cand_fi is not None:
        cur_fi = current[fi_spec.name]
        pins.append(compare.row("FlashInfer build-system requires",
                                ", ".join(cur_fi.build_requires), ", ".join(cand_fi.build_requires)))
    switches = {"vllm": compare.diff_switches(list(current["vllm"].switches),
                                              list(cand_vllm.switches))}
    if fi_spec is not None and cand_fi is not None:
        switches[fi_spec.name] = compare.diff_switches(list(current[fi_spec.name].switches),
                                                       list(cand_fi.switches))
    releases = {"current": {k: v.to_dict() for k, v in current.items()},
                "candidate": {"vllm": cand_vllm.to_dict(),
                              **({fi_spec.name: cand_fi.to_dict()} if fi_spec and cand_fi
                                 else {})}}
    return {
        "request": request.to_dict(),
        "current_stack": {"file": _shown(stack.path, repo_root), "name": stack.name,
                          "digest": stack.digest(), "description": stack.description},
        # digest None: the file leaves out what could not be read, so it does not load.
        "candidate_stack": {"file": _shown(stack_out, repo_root), "name": written.name,
                            "digest": None if unknown else written.digest(),
                            "description": written.description,
                            "left_out": [f"[{t}] {k}" for t, k in unknown]},
        "torch": decision.to_dict(),
        "pins": [r.to_dict() for r in pins],
        "externals": externals,
        "archs": archs,
        "switches": switches,
        "patches": patch_reports,
        "rebuild": rebuild,
        "warnings": warnings,
        "blockers": blockers,
        "promotion": {"ready": not blockers, "commands": commands},
        "releases": releases,
        "seconds": round(time.monotonic() - started, 1),
    }


def candidate_toolkit(stack: Stack, decision: compare.TorchDecision
                      ) -> tuple[CudaToolkit, str, Version | None, dict[tuple[str, str], str],
                                 list[str]]:
    """The candidate's [cuda_toolkit], why, the oldest nvcc it accepts (which picks the
    CUDA_SUPPORTED_ARCHS branch), what the candidate stack must leave out ((table, key) ->
    the blocker) and the blockers. nvcc follows torch's CUDA major: torch 2.11's CUDA 13.0
    takes nvcc >= 13.0; a CUDA that could not be read is left out, never guessed."""
    toolkit = stack.cuda_toolkit
    if decision.cuda_chosen is None:
        unknown = {("torch", "cuda"): decision.cuda_note,
                   ("cuda_toolkit", "version"): "nvcc's major must equal torch's CUDA major, "
                                                "which could not be read (see [torch] cuda)"}
        return (toolkit, "unknown: torch's CUDA could not be read", None, unknown,
                [decision.cuda_note])
    blockers = []
    version, note = compare.toolkit_for(stack, decision.cuda_chosen)
    if version == toolkit.version:
        return toolkit, note, toolkit_floor(toolkit.version, toolkit.pip_version), {}, []
    if toolkit.source == "pip":
        blockers.append(f"torch's CUDA moves to {decision.cuda_chosen}: set [cuda_toolkit] "
                        "pip_version to a cuda-toolkit wheel of that major")
    # The moved toolkit's own floor (a pip_version of the old major says nothing).
    return (dataclasses.replace(toolkit, version=version), note, toolkit_floor(version, None),
            {}, blockers)


def _version_of(report: dict[str, Any], vllm: PackageSpec, fi: PackageSpec | None) -> str:
    spec = vllm if report["package"] == vllm.name else fi
    return (spec.source.version or "") if spec else ""


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def default_report_path(repo_root: Path, request: TrialRequest) -> Path:
    return layout.trials_dir(repo_root) / f"{request.name}.md"


def default_stack_path(repo_root: Path, request: TrialRequest) -> Path:
    return repo_root / "build" / "stacks" / f"{request.name}.toml"

