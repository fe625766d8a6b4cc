"""build_wheels: stack -> sources -> patches -> externals -> toolchain -> build ->
post-process -> wheels/<stack>/. `plan.make_plan` does everything that needs no compiler
and is what `--dry-run` prints; `build` (here) executes exactly that plan: it creates the
toolchain, runs each package's steps (its builder's), records the telemetry and hands
the wheels to output.py. The step titles and their count are defined here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from ..cache import remove, write_atomic
from ..errors import PipelineError, SourceError
from ..log import NinjaProgress, Reporter, format_duration
from ..runner import capture, run
from . import builders, remote_cache, sources, telemetry, toolchain
from .externals import resolve_externals
from .output import BuiltWheel, postprocess_wheel, verify_and_publish, write_summary
from .plan import Plan, ensure_toolchain, raise_on_failed_checks
from .prepare import ExternalOrigin, PreparedPackage, ensure_prepared


def _execute_steps(ctx: builders.BuildContext, reporter: Reporter) -> None:
    for index, step in enumerate(builders.steps_for(ctx), 1):
        reporter.say(f"  -> {ctx.spec.name} step {index}: {step.title}")
        step.cwd.mkdir(parents=True, exist_ok=True)
        argv = step.resolve() if step.resolve else step.argv
        progress = NinjaProgress(reporter, f"{ctx.spec.name}") if step.progress else None
        try:
            run(argv, reporter=reporter, env_changes=step.env, cwd=step.cwd,
                on_line=progress.feed if progress else None,
                what=f"{ctx.spec.name}: {step.title}",
                fix="read the compiler errors above; the full log has everything")
        except PipelineError:
            if step.after:
                step.after(False)  # a clearer cause (e.g. an unplanned external) wins
            raise
        if step.after:
            step.after(True)


@contextlib.contextmanager
def _hidden_environ(values: dict[str, str]) -> Iterator[None]:
    """Credentials for the compilers (the sccache server they start inherits them), set in
    this process's environment for the build: the runner logs only the changes it is
    given, so they reach no log, plan or manifest."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# The steps of build_wheels, in order; the Reporter numbers them (plan_steps, then step).
# The first two are the planning (build/cli_build_wheels.py), the rest are `build`'s.
SOURCES_STEP = ("sources: download, verify sha256, unpack, patch, strip torch pins; "
                "discover external sources")
PLAN_STEP = "plan"
PLANNING_STEPS = 2
TOOLCHAIN_STEP = "toolchain: build venv, nvcc, torch checks"


def _remote_guard(cc: toolchain.CompileCache, tree: Path) -> remote_cache.RemoteGuard:
    """sccache stalls 60 s per lookup in a dead Redis: the guard switches the server to the
    local cache when the remote stops answering during the package build."""
    def switch() -> dict[str, Any] | None:
        return toolchain.switch_to_local_compile_cache(cc, tree)
    return remote_cache.RemoteGuard(cc.remote if cc.uses_remote else None, switch)


def total_steps(packages: int) -> int:
    """sources, plan, toolchain, one per package, publish."""
    return PLANNING_STEPS + 1 + packages + 1


def build(plan: Plan, reporter: Reporter, build_venv: Path | None = None,
          fetch_externals: bool = True) -> list[BuiltWheel]:
    """Execute the plan: the toolchain step, one step per package, then verify and
    publish (the steps after PLANNING_STEPS of total_steps, numbered by the reporter)."""
    started = time.monotonic()
    reporter.step(TOOLCHAIN_STEP)
    # Checks that need nothing installed come first: a wrong nvcc is refused before
    # anything is cloned or installed.
    raise_on_failed_checks(plan)
    if any(e.origin == ExternalOrigin.TO_FETCH for p in plan.packages for e in p.externals):
        if not fetch_externals:
            names = [e.source.name for p in plan.packages for e in p.externals
                     if e.origin == ExternalOrigin.TO_FETCH]
            raise SourceError(f"external sources not in the cache: {', '.join(names)}",
                                fix="run without --no-fetch, or set externals.<name>.path")
        refreshed: list[PreparedPackage] = []
        for prep in plan.packages:
            refreshed.append(resolve_externals(prep, plan.cache, plan.repo_root, reporter,
                                               fetch=True, others=plan.source_only + refreshed))
        plan = dataclasses.replace(plan, packages=refreshed)
    plan = ensure_toolchain(plan, reporter, build_venv)
    for check in plan.checks:
        reporter.log(f"check {check.status}: {check.name}: {check.detail}")
    assert plan.torch is not None and plan.nvcc is not None
    reporter.say(f"    torch {plan.torch.version} (git {plan.torch.git_version[:12]}), nvcc "
                 f"{plan.nvcc.full_version}, {plan.parallelism.reason}")
    reporter.step_done()
    built: dict[str, BuiltWheel] = {}
    # Per package, what varied in this build (for build-summary.json, not the wheel).
    facts: list[dict[str, Any]] = []
    cc = plan.compile_cache
    measured: list[tuple[builders.BuildContext, float, list[dict[str, Any]]]] = []
    for prep, ctx in zip(plan.packages, plan.contexts, strict=True):
        reporter.step(f"build {prep.spec.name} {prep.spec.source.version or ''}")
        remove(ctx.staging)
        ctx.staging.mkdir(parents=True)
        cc_env = cc.env(ctx.tree)
        stats = None
        start_warning = ""
        guard = remote_cache.RemoteGuard(None, lambda: None)  # replaced when a remote is used
        ctx.write_unit_peaks()
        # ninja logs accumulate across builds: remember where this run's entries start.
        ninja_logs = telemetry.ninja_log_sizes(ctx.tree / "build")
        t0 = time.monotonic()
        try:
            # One build at a time in a tree (a shared tree is used by builds of other cache
            # dirs too); the prefix-map spec file held for the whole package build.
            with plan.cache.tree_lock(prep.tree), builders.hold_specs(ctx) as (run_ctx, warn), \
                    _hidden_environ(cc.secret_env()):
                # Another build may have prepared its own content at this path since the plan.
                ensure_prepared(prep)
                if warn:
                    reporter.warn(warn)
                start_warning = toolchain.start_compile_cache_server(cc, ctx.tree)
                if start_warning:
                    reporter.warn(start_warning)
                else:
                    guard = _remote_guard(cc, ctx.tree)
                toolchain.zero_compile_cache_stats(cc, cc_env)
                with guard:
                    _execute_steps(run_ctx, reporter)
                stats = toolchain.compile_cache_stats(cc, cc_env)
                if guard.fallback is not None:
                    stats = toolchain.add_compile_cache_stats(guard.fallback.stats_before,
                                                              stats)
        finally:
            if cc.tool == "sccache" and cc.path and cc.path.exists():
                try:
                    capture([cc.path, "--stop-server"], env_changes=cc_env)
                except PipelineError:
                    pass
        seconds = time.monotonic() - t0
        # A remote that stopped working during the build: the compiles went on with the
        # local cache (sccache's write policy l0), so the build succeeds; say so.
        remote_warning = ""
        if cc.remote is not None and cc.tool == "sccache":
            # No ping when the guard already saw the remote go (it would only wait for it).
            remote_warning = start_warning or remote_cache.after_build(
                cc.remote, stats, remote_cache.ping(cc.remote) if guard.fallback is None
                else None, guard.fallback)
            if guard.error:
                remote_warning += f" (restarting sccache without the remote: {guard.error})"
            if remote_warning:
                reporter.warn(remote_warning)
        measured.append((ctx, seconds, _ninja_builds(ctx, ninja_logs)))
        _record_unit_costs(plan, ctx, reporter)
        path = postprocess_wheel(plan, ctx, prep, built, seconds, stats)
        facts.append({"package": prep.spec.name, "seconds": round(seconds, 1),
                      "compile_cache_stats": stats, "tree": str(prep.tree),
                      "compile_cache_remote_warning": remote_warning or None,
                      "compile_cache_remote_fallback_after_s":
                          guard.fallback.after_s if guard.fallback else None,
                      "wheel": path.name if path is not None else None})
        detail = f"compile cache: {stats['hits']} hits / {stats['misses']} misses" if stats else ""
        if stats and stats.get("by_language"):
            detail += " (" + ", ".join(f"{lang} {n['hits']}/{n['misses']}" for lang, n in
                                       stats["by_language"].items()) + ")"
        reporter.step_done(detail)
        if path is not None:
            built[canonicalize_name(prep.spec.name)] = BuiltWheel(
                prep.spec.name, path, sources.sha256_file(path), path.stat().st_size, seconds)
    reporter.step(f"verify_abi against the build venv, publish into {plan.output_dir}")
    # The build host's GPU (if any) is not the target: the stack's arch list is. A
    # target's wheels are checked for the target's archs by name (verify_abi --arch), not
    # only for what their manifests say they were built for.
    results, kept = verify_and_publish(plan.output_dir, plan.stack.digest(),
                                       plan.venv_path / "bin" / "python",
                                       plan.cache.root / "verify", built, reporter,
                                       arch_targets=plan.stack.cuda_arch_list
                                       if plan.stack.gpu_target else ())
    table, build_telemetry = _write_telemetry(plan, measured)
    write_summary(plan, results, kept, time.monotonic() - started, facts, build_telemetry)
    reporter.step_done()
    reporter.say(table)
    reporter.say("Summary:")
    for item in results:
        reporter.say(f"  {item.path.name}  {item.size / 1e6:.1f} MB  sha256 {item.sha256}  "
                     f"built in {format_duration(item.seconds)}")
    if not results:
        reporter.say("  no wheels (compile_only packages only)")
    reporter.say(f"Total {format_duration(time.monotonic() - started)}. Log: {plan.log_path}")
    return results


def _ninja_builds(ctx: builders.BuildContext, before: dict[Path, int]) -> list[dict[str, Any]]:
    """The ninja builds this package's steps ran (vLLM's CMake dir, torch cpp_extension's
    build/temp.*, FlashInfer's AOT workspace): each with its critical path."""
    ninja = ctx.venv_path / "bin" / "ninja"
    return [telemetry.ninja_build(log, before.get(log, 0), ninja if ninja.exists() else None)
            for log, size in telemetry.ninja_log_sizes(ctx.tree / "build").items()
            if size > before.get(log, 0) or size < before.get(log, size)]


def _record_unit_costs(plan: Plan, ctx: builders.BuildContext, reporter: Reporter) -> None:
    """Merge this build's unit costs into the package's record: the next build of the same
    version and arch list chooses its parallelism and order from them."""
    costs = telemetry.unit_costs(telemetry.read_units(ctx.telemetry_units), str(ctx.tree),
                                 str(ctx.cache_root))
    if not costs:
        return
    path = telemetry.record_path(plan.cache.root, ctx.spec.name, ctx.version,
                                 plan.stack.cuda_arch_list)
    telemetry.merge_record(path, package=ctx.spec.name, version=ctx.version,
                           arch_list=plan.stack.cuda_arch_list,
                           nvcc_threads=plan.parallelism.nvcc_threads, costs=costs)
    reporter.log(f"unit costs of {len(costs)} unit(s) merged into {path}")


def _write_telemetry(plan: Plan, measured: list[tuple[builders.BuildContext, float,
                                                       list[dict[str, Any]]]]
                     ) -> tuple[str, dict[str, Any]]:
    """build-telemetry.json beside the wheels (every unit, every ninja build) and the table
    printed at the end of the build; returns (table, what build-summary.json references)."""
    units: list[dict[str, Any]] = []
    packages = []
    for ctx, seconds, ninja_builds in measured:
        mine = [{"package": ctx.spec.name, **u} for u in telemetry.read_units(ctx.telemetry_units)]
        telemetry.mark_overlapping_sccache(mine)
        units += mine
        packages.append({"package": ctx.spec.name, "seconds": round(seconds, 3),
                         # What unit keys are relative to (telemetry.load_costs).
                         "tree": str(ctx.tree), "cache_root": str(ctx.cache_root),
                         "units": len(mine), "ninja": ninja_builds,
                         "summary": telemetry.summarize(
                             mine, compile_wall_s=seconds, jobs=plan.parallelism.jobs,
                             ninja_builds=ninja_builds)})
    summary = telemetry.summarize(
        units, compile_wall_s=sum(s for _, s, _ in measured), jobs=plan.parallelism.jobs,
        ninja_builds=[b for _, _, builds in measured for b in builds])
    data = {"schema_version": telemetry.SCHEMA_VERSION, "stack": plan.stack.name,
            "jobs": plan.parallelism.jobs, "nvcc_threads": plan.parallelism.nvcc_threads,
            "compile_cache": plan.compile_cache.tool, "measured": telemetry.MEASURED,
            "not_measured": "host C++ units of torch cpp_extension builds (CXX), links, "
                            "and compilers a package's build runs without a launcher",
            "summary": summary, "packages": packages,
            "units": sorted(units, key=lambda u: (u["package"], telemetry.unit_name(u),
                                                  u.get("start", 0)))}
    write_atomic(plan.output_dir / telemetry.FILENAME, json.dumps(data, indent=2) + "\n")
    return (telemetry.render_table(units, summary),
            {"file": telemetry.FILENAME, "schema_version": telemetry.SCHEMA_VERSION,
             "summary": summary})

