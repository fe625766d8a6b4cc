"""The build's output: each raw wheel post-processed (local label, runtime pins, the
manifest of what it was built from, what its builder adds), then the set verified with
verify_abi against the build venv and published into wheels/<stack>/ beside
build-summary.json (what varied in this build, left out of the wheels so that they are
reproducible).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from .. import layout
from ..cache import remove, temp_sibling, write_atomic
from ..errors import AbiMismatchError, BuildError, ConfigError, DiskFullError
from ..log import Reporter
from ..verify import abi
from ..verify.report import record_results
from . import builders, bundle, sources, wheelmeta
from .builders.base import dist_version
from .plan import Plan
from .prepare import PreparedPackage

# 2: build facts that left the wheel's manifest (host, jobs, compile cache, per-package
# seconds and cache statistics) are recorded here.
SUMMARY_SCHEMA_VERSION = 2


@dataclass
class BuiltWheel:
    package: str
    path: Path
    sha256: str
    size: int
    seconds: float


def postprocess_wheel(plan: Plan, ctx: builders.BuildContext, prep: PreparedPackage,
                      built: dict[str, BuiltWheel], seconds: float,
                      cache_stats: dict[str, Any] | None) -> Path | None:
    """The package's raw wheel, relabelled, pinned and given its manifest and what its
    builder adds (None when the package makes no wheel)."""
    if not builders.makes_wheel(prep.spec):
        return None
    raw = sorted(ctx.staging.glob("*.whl"), key=lambda p: p.stat().st_mtime)
    if not raw:
        raise BuildError(f"{prep.spec.name}: the build produced no wheel in {ctx.staging}")
    wheel = raw[-1]
    assert plan.torch is not None
    torch_dist_version = dist_version(ctx.python, "torch")
    always = {"torch": f"=={torch_dist_version}"}
    always.update({name: f"=={v}" for name, v in plan.stack.torch.companions.items()})
    # Packages built earlier are pinned only where this wheel already requires them (vLLM ->
    # FlashInfer), as its own Requires-Dist says; the others are no runtime dependency.
    pin_map = wheelmeta.select_pins(
        wheelmeta.requires_dist(wheel), always,
        {name: f"=={wheelmeta.wheel_info(other.path).version}" for name, other in built.items()})
    extras = builders.builder_for(prep.spec).wheel_extras(ctx)
    pin_map.update(extras.pins)
    manifest = wheel_manifest(plan, ctx, prep, built, seconds, cache_stats, pin_map,
                              dict(extras.manifest))
    out = layout.staging_dir(plan.cache.staging, plan.stack.name, plan.stack.gpu_target) / "final"
    return wheelmeta.rewrite_wheel(wheel, out, label=plan.stack.local_label(), pins=pin_map,
                                   manifest=manifest, add_files=dict(extras.add_files),
                                   platform_tag=extras.platform_tag)


def wheel_manifest(plan: Plan, ctx: builders.BuildContext, prep: PreparedPackage,
                   built: dict[str, BuiltWheel], seconds: float,
                   cache_stats: dict[str, Any] | None, pin_map: dict[str, str],
                   extra: dict[str, Any]) -> dict[str, Any]:
    """What the wheel was built from, and nothing else: the same inputs give the same
    manifest, so a rebuild gives the same wheel bytes. What varies per build (seconds,
    cache_stats, jobs, host, paths) goes to build-summary.json (`write_summary`); the two
    are still passed here so that the callers' signature stays as it was."""
    del seconds, cache_stats
    assert plan.torch is not None and plan.nvcc is not None
    torch = {k: v for k, v in plan.torch.to_dict().items() if k != "location"}
    cmake_args = builders.builder_for(prep.spec).manifest_cmake_args(ctx)
    # A GPU target's build names its target (a stack without targets: no key, the manifest
    # as it has always been). Not "target": that key is the platform the wheel is for.
    gpu_target = {"gpu_target": plan.stack.gpu_target} if plan.stack.gpu_target else {}
    return {
        "package": prep.spec.name,
        "local_label": plan.stack.local_label(),
        "stack": {"name": plan.stack.name, "digest": plan.stack.digest(),
                  "file": _repo_relative(plan.stack.path, plan.repo_root)},
        "torch": {**torch, "pin": pin_map.get("torch")},
        # Which toolkit compiled: its version, and whether it was the machine's own or the
        # one assembled from PyPI's cuda-toolkit wheels (a machine may override the stack).
        "nvcc": {"version": plan.nvcc.full_version, "release": plan.nvcc.release,
                 "toolkit": plan.stack.cuda_toolkit.source},
        "cuda_arch_list": list(plan.stack.cuda_arch_list),
        **gpu_target,
        "build": {"type": plan.stack.build.build_type, "builder": prep.spec.builder,
                  "options": dict(prep.spec.options), "cmake_args": cmake_args},
        # Where the source comes from as the stack says it (the index of a pypi source, the
        # repository of a git one), never where this builder happened to get it (a download
        # URL, or none when the cache had it): a cold and a warm cache give one manifest.
        "source": {"kind": prep.spec.source.kind, "version": prep.spec.source.version,
                   "sha256": prep.fetched.sha256, "url": prep.fetched.url,
                   "index": prep.spec.source.simple_url
                   if prep.spec.source.kind == "pypi" else None,
                   "commit": prep.fetched.commit},
        "patches": [{"name": p.name, "sha256": p.sha256} for p in prep.patches],
        "stripped_torch_pins": [f"{s.file}: {s.line}" for s in prep.stripped_pins],
        # The tree hash names exactly the files the build read from each external (the same
        # digest a bundle's lock records), wherever they lay on the builder.
        "externals": [{"name": e.source.name, "url": e.source.url, "ref": e.source.ref,
                       "commit": e.commit, "origin": e.origin,
                       "tree_sha256": bundle.tree_digest(e.directory,
                                                         bundle.USED_PATHS.get(e.source.name))
                       if e.directory is not None and e.directory.is_dir() else None}
                      for e in prep.externals],
        "runtime_pins": pin_map,
        "built_with": {name: wheelmeta.wheel_info(w.path).version for name, w in built.items()},
        "target": {"machine": platform.machine(), "system": platform.system()},
        **extra,
    }


def _repo_relative(path: Path, repo_root: Path) -> str:
    """A path inside the checkout as the checkout names it (two builders' checkouts
    live in different places); others as given."""
    try:
        return path.resolve().relative_to(repo_root.resolve()).as_posix()
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Earlier:
    """Wheels an earlier build left in the output dir: those that stay beside the new ones
    (same stack definition, a package not rebuilt now; verified again with the new wheels)
    and those removed, each with why."""

    keep: list[Path]
    drop: list[tuple[Path, str]]


def foreign_wheels(out: Path) -> list[tuple[Path, str]]:
    """The wheels in `out` this pipeline did not build (no build manifest, or not a wheel
    it can read), each with why. They are never removed: a folder holding any is refused
    (check_output_dir)."""
    foreign: list[tuple[Path, str]] = []
    if not out.is_dir():
        return foreign
    for wheel in sorted(p for p in out.glob("*.whl") if not p.name.startswith(".")):
        try:
            parse_wheel_filename(wheel.name)
            manifest = wheelmeta.read_manifest(wheel)
        except (InvalidWheelFilename, OSError, ValueError, zipfile.BadZipFile) as exc:
            foreign.append((wheel, f"not a wheel this pipeline can read ({exc})"))
            continue
        stack = manifest.get("stack") if isinstance(manifest, dict) else None
        if not isinstance(stack, dict) or stack.get("digest") is None:
            foreign.append((wheel, "no build manifest: not built by this pipeline"))
    return foreign


def check_output_dir(out: Path) -> None:
    """ConfigError (exit 2) naming every wheel in `out` that this pipeline did not build.
    The output dir holds one coherent set, and earlier wheels that do not belong to it are
    removed; a wheel someone else put there (a torch wheel, another project's) is not ours
    to remove, so the build is refused before it starts, and again before publishing."""
    foreign = foreign_wheels(out)
    if foreign:
        raise ConfigError(
            f"the output dir {out} holds {len(foreign)} wheel(s) this pipeline did not "
            "build:\n" + "\n".join(f"    {w.name}: {why}" for w, why in foreign),
            why="the output dir holds exactly one coherent set of this stack's wheels; "
                "anything else there would be replaced, published with it or removed, and "
                "files the pipeline did not make are never removed",
            fix="move those files elsewhere, or pass --output-dir with a directory of its "
                "own (default wheels/<stack>/)")


def _earlier_wheels(out: Path, stack_digest: str, built: dict[str, BuiltWheel]) -> Earlier:
    """Sort the wheels already in `out` (after `--only`, or from a build of another stack
    definition). The output dir holds one coherent set: the wheels of one stack digest,
    one per package, every one verified with the others. A wheel of a package built now
    is replaced; one built from another stack definition (other versions, pins, options,
    torch) does not belong to this set and is removed. A wheel without our manifest is
    never touched: check_output_dir refuses the folder."""
    keep: list[Path] = []
    drop: list[tuple[Path, str]] = []
    new_names = {b.path.name for b in built.values()}
    if not out.is_dir():
        return Earlier(keep, drop)
    check_output_dir(out)
    for wheel in sorted(p for p in out.glob("*.whl") if not p.name.startswith(".")):
        if wheel.name in new_names:
            continue  # overwritten by the new file of the same name
        project = canonicalize_name(parse_wheel_filename(wheel.name)[0])
        manifest = wheelmeta.read_manifest(wheel)
        stack = manifest.get("stack") if isinstance(manifest, dict) else None
        digest = stack.get("digest") if isinstance(stack, dict) else None
        if project in built:
            drop.append((wheel, f"replaced by the new {built[project].path.name}"))
        elif digest != stack_digest:
            drop.append((wheel, f"built from another definition of the stack (digest "
                                f"{str(digest)[:12]}..., now {stack_digest[:12]}...): "
                                "rebuild its package"))
        else:
            keep.append(wheel)
    return Earlier(keep, drop)


def verify_and_publish(out: Path, stack_digest: str, python: Path, work_dir: Path,
                       built: dict[str, BuiltWheel], reporter: Reporter,
                       arch_targets: Sequence[str] = ()
                       ) -> tuple[list[BuiltWheel], list[Path]]:
    """The last build step: verify the new wheels with the earlier ones that stay, move
    them into `out`, record the results. Returns the wheels placed and those kept. A build
    that made no wheel (compile_only packages only) leaves `out` as it was. arch_targets:
    the archs every wheel must have code for (verify_abi's --arch; () = each wheel's
    recorded arch list)."""
    earlier = _earlier_wheels(out, stack_digest, built) if built else Earlier([], [])
    report = _verify_before_publish(python, work_dir, built, earlier.keep, reporter,
                                    arch_targets)
    results = _publish(out, built, earlier, report.to_dict() if report is not None else None,
                       reporter)
    return results, earlier.keep


def _verify_before_publish(python: Path, work_dir: Path, built: dict[str, BuiltWheel],
                           kept: list[Path], reporter: Reporter,
                           arch_targets: Sequence[str] = ()) -> abi.Report | None:
    """The same check as `nox -s verify_abi`, against the build venv (the one runtime
    these wheels are certain to target): a wheel that fails never enters wheels/. The
    earlier wheels that stay beside them are checked with them, as one set (companion
    pins, symbols between the packages)."""
    if not built:
        return None
    report = abi.verify([*(b.path for b in built.values()), *kept], python,
                        work_dir=work_dir, arch_targets=arch_targets, host_gpus=False,
                        reporter=reporter)
    reporter.log(report.render())
    if report.status != "pass":
        reporter.say(report.render())
        bad_kept = [w.facts.filename for w in report.wheels
                    if w.status != "pass" and w.facts.filename in {k.name for k in kept}]
        raise AbiMismatchError(
            "the built wheels fail verify_abi against their own build venv "
            f"{python.parent.parent}; nothing was published"
            + (f" (failing wheels of an earlier build kept beside them: "
               f"{', '.join(bad_kept)})" if bad_kept else ""),
            why="a wheel that does not import beside the torch it was built with would "
                "fail for every user",
            fix="see the FAIL lines above (an unresolved internal symbol is a source bug: "
                "add a patch under patches/)"
                + ("; the earlier wheels no longer fit the new ones: rebuild their packages "
                   "too (drop --only or name them in it)" if bad_kept else ""))
    reporter.log(f"verify_abi: all {len(report.wheels)} wheel(s) pass in "
                 f"{report.seconds:.1f} s")
    return report


def _publish(out: Path, built: dict[str, BuiltWheel], earlier: Earlier,
             report: dict[str, Any] | None, reporter: Reporter) -> list[BuiltWheel]:
    """Move every finished wheel into the output dir; nothing lands unless all built.
    Then remove the earlier wheels that are not part of this set and record the build's
    verify_abi results (per sha256, pruned to what the dir holds): the dir and its
    verify-abi.json agree. Until the results are recorded, a new wheel has no passing
    result for its sha256, so an interruption leaves nothing publishable by mistake."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp-*"):
        remove(stale)
    results = []
    try:
        for item in built.values():
            target = out / item.path.name
            tmp = temp_sibling(target)
            shutil.copyfile(item.path, tmp)
            os.replace(tmp, target)
            results.append(BuiltWheel(item.package, target, item.sha256, item.size, item.seconds))
    except OSError as exc:
        for item in results:
            remove(item.path)
        if exc.errno == 28:
            raise DiskFullError(f"disk full while writing wheels into {out}",
                                fix="free space and re-run (builds are reused)") from None
        raise
    for wheel, why in earlier.drop:
        remove(wheel)
        reporter.say(f"    removed {wheel.name} from {out}: {why}")
    for wheel in earlier.keep:
        reporter.say(f"    kept {wheel.name} (same stack, not rebuilt; verified with the "
                     "new wheels)")
    if report is not None:
        record_results(out, report)
    return results


def write_summary(plan: Plan, results: list[BuiltWheel], kept: list[Path], seconds: float,
                  packages: list[dict[str, Any]] | None = None,
                  build_telemetry: dict[str, Any] | None = None) -> None:
    """build-summary.json beside the wheels: `wheels` built by this run, `kept` from an
    earlier build of the same stack (see _earlier_wheels), together what the output dir
    holds; and everything about this particular build that the wheels themselves leave out
    so that they are reproducible (durations, host, parallelism, compile cache statistics,
    paths, telemetry)."""
    par = plan.parallelism
    summary = {"schema_version": SUMMARY_SCHEMA_VERSION, "stack": plan.stack.name,
               **({"gpu_target": plan.stack.gpu_target} if plan.stack.gpu_target else {}),
               "stack_digest": plan.stack.digest(), "local_label": plan.stack.local_label(),
               "seconds": round(seconds, 1), "log": str(plan.log_path),
               "wheels": [{"package": r.package, "file": r.path.name, "size": r.size,
                           "sha256": r.sha256, "seconds": round(r.seconds, 1)} for r in results],
               "kept": [{"file": k.name, "size": k.stat().st_size,
                         "sha256": sources.sha256_file(k)} for k in kept],
               "build": {"jobs": par.jobs, "nvcc_threads": par.nvcc_threads,
                         "parallelism_rule": par.reason,
                         "parallelism_source": par.source,
                         "memory_budget_kb": par.memory_budget_kb,
                         "unit_costs": par.unit_costs or None,
                         "compile_cache": plan.compile_cache.tool,
                         "compile_cache_backend": plan.compile_cache.backend,
                         "compile_cache_dir": str(plan.compile_cache.directory or ""),
                         "cache": str(plan.cache.root), "build_venv": str(plan.venv_path),
                         "torch_location": plan.torch.location if plan.torch else None,
                         "nvcc": {"path": str(plan.nvcc.path), "found_via": plan.nvcc.found_via}
                         if plan.nvcc else None,
                         "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH")
                         or builders.DEFAULT_SOURCE_DATE_EPOCH},
               "host": {"name": platform.node(), "cores": par.cores,
                        "available_gb": round(par.available_gb, 1),
                        "machine": platform.machine(), "system": platform.system()},
               "packages": packages or []}
    if build_telemetry is not None:
        summary["telemetry"] = build_telemetry
    write_atomic(plan.output_dir / layout.SUMMARY_FILENAME, json.dumps(summary, indent=2) + "\n")

