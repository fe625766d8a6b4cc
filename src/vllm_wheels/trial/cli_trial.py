"""`python -m vllm_wheels trial vllm==VERSION [flashinfer-python==V] [torch==V]
[--stages plan,build,abi,throughput] [--json FILE] [--report FILE] [--stack FILE]`.

Argument handling and wiring only: the plan is in plan.py, the stages in stages.py, the
report in report.py.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

from .. import layout
from ..build.stack import load_stack
from ..cache import Cache, default_cache_root
from ..errors import ConfigError
from ..log import Reporter, format_duration
from . import stages
from .plan import (
    PLAN_STEPS,
    default_report_path,
    default_stack_path,
    parse_request,
    plan_trial,
)
from .report import build_report, run_path, write_report

# Bump when the plan's content changes shape: saved trials are then planned again.
PLAN_LAYOUT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Upgrade trial: what moving the stack to another vLLM means (pins, "
                          "external sources, arch lists, patches, build switches), then the "
                          "stages this machine can run. Writes build/stacks/trial-vllm-VERSION"
                          ".toml and verify/trials/trial-vllm-VERSION.{md,json}.")
    parser.add_argument("requirements", nargs="+", metavar="PACKAGE==VERSION",
                        help="vllm==VERSION (required), optionally flashinfer-python==V and "
                             "torch==V to force those instead of the release's own pins")
    parser.add_argument("--stages", default=None,
                        help="comma-separated subset of plan,build,abi,throughput (default: "
                             "everything this machine can run; throughput needs a GPU). "
                             "`--stages plan` compiles nothing")
    parser.add_argument("--stack", type=Path, default=None,
                        help="the current stack (default: build/stack.toml)")
    parser.add_argument("--stack-out", type=Path, default=None,
                        help="where the candidate stack goes "
                             "(default: build/stacks/trial-vllm-VERSION.toml)")
    parser.add_argument("--report", type=Path, default=None,
                        help="markdown report (default: verify/trials/trial-vllm-VERSION.md)")
    parser.add_argument("--json", type=Path, default=None,
                        help="JSON report (default: the markdown path with .json)")
    parser.add_argument("--wheels-dir", type=Path, default=None,
                        help="where the build stage puts wheels (default: wheels/trial-vllm-"
                             "VERSION/)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: $VLLM_WHEELS_CACHE or ~/.cache/vllm-wheels)")
    parser.add_argument("--abi-python", default=None,
                        help="runtime interpreter for the abi stage (verify-abi --python)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore a saved trial and start over")


def run(args: argparse.Namespace) -> int:
    root = layout.repo_root()
    request = parse_request(args.requirements)
    gpu = stages.gpu_present()
    wanted = stages.parse_stages(args.stages, gpu)
    stack_path = (args.stack or layout.default_stack(root)).resolve()
    stack = load_stack(stack_path)
    cache = Cache((args.cache_dir or default_cache_root()).resolve())
    stack_out = (args.stack_out or default_stack_path(root, request)).resolve()
    report_md = (args.report or default_report_path(root, request)).resolve()
    report_json = (args.json or report_md.with_suffix(".json")).resolve()
    # The state is transient (absolute paths, per machine): it lives in the cache, one per
    # trial output, so verify/trials/ holds only the reports.
    output_id = hashlib.sha256(str(report_json).encode()).hexdigest()[:12]
    state_path = cache.root / "trials" / f"{request.name}-{output_id}.state.json"
    wheels = (args.wheels_dir or layout.wheels_dir(root, request.name)).resolve()
    patch_roots = [root / Path(spec.patches).parent for spec in stack.packages]
    key = stages.trial_key({"layout": PLAN_LAYOUT, "stack": str(stack_path),
                            "digest": stack.digest(), "request": request.to_dict(),
                            "stack_out": str(stack_out), "wheels": str(wheels),
                            "abi_python": str(args.abi_python or "")}, patch_roots)
    state = stages.TrialState.load(state_path, key, fresh=args.fresh)
    paths = stages.StagePaths(stack=stack_out, wheels=wheels,
                              abi_json=report_json.with_name(report_json.stem + ".abi.json"),
                              throughput_json=report_json.with_name(
                                  report_json.stem + ".throughput.json"),
                              logs=cache.logs, cache=cache.root)
    later = [s for s in wanted if s != "plan"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = cache.logs / f"trial-{request.name}-{stamp}.log"
    reporter = Reporter(log_path)
    try:
        reporter.say(f"vllm-wheels trial: stack {stack.name} ({stack_path}) -> vllm "
                     f"{request.vllm}; stages: {', '.join(wanted)}"
                     + ("" if gpu else " (no GPU here: throughput is not run)"))
        reporter.say(f"    {state.note}; state file: {state_path}")
        reporter.say(f"    full log: {log_path}")
        # A plan whose stack left out what it could not read (digest None) is made again:
        # the index may answer now.
        reuse = (state.plan is not None and state.passed("plan") and stack_out.is_file()
                 and state.plan["candidate_stack"]["digest"] is not None
                 and _digest_or_none(stack_out) == state.plan["candidate_stack"]["digest"])
        total = (1 if reuse else PLAN_STEPS) + len(later) + 1
        if reuse:
            reporter.step_at(1, total, "plan: reused from the saved trial")
            state.results["plan"].reused = True
            reporter.step_done(f"candidate stack {stack_out}")
        else:
            # A new plan makes every later result stale, and so are wheels a previous plan
            # of this trial left in its own output dir (they would be verified and installed
            # with the new ones).
            for later_stage in ("build", "abi", "throughput"):
                state.results.pop(later_stage, None)
            if wheels.is_dir() and wheels == (layout.wheels_dir(root, request.name)).resolve():
                for stale in [*wheels.glob("*.whl"), wheels / layout.VERIFY_REPORT_FILENAME]:
                    stale.unlink(missing_ok=True)
            started = time.monotonic()
            state.plan = plan_trial(stack, request, repo_root=root, cache=cache,
                                    reporter=reporter, stack_out=stack_out,
                                    default_stack=layout.default_stack(root),
                                    total_steps=total)
            blockers = state.plan["blockers"]
            state.record(stages.StageResult(
                "plan", stages.StageStatus.PASSED,
                seconds=round(time.monotonic() - started, 1), exit_code=0,
                detail=(f"{len(blockers)} blocker(s) for promotion" if blockers
                        else "no blockers"), log=str(log_path),
                outputs={"stack": str(stack_out)}))
        step = 2 if reuse else PLAN_STEPS + 1

        def write() -> None:
            assert state.plan is not None
            report, run_facts = build_report(
                state.plan, state.results, requested=wanted, gpu=gpu, repo_root=root,
                cache_root=cache.root, state_file=state_path, state_note=state.note,
                report_md=report_md, report_json=report_json)
            write_report(report, run_facts, report_md, report_json)

        write()
        commands = stages.stage_commands(paths, abi_python=args.abi_python)
        from ..commands import COMMANDS

        results = stages.run_stages(
            state, wanted, commands=commands, paths=paths, reporter=reporter, gpu=gpu,
            throughput_available=stages.THROUGHPUT_COMMAND in COMMANDS, first_step=step,
            total_steps=total, on_result=write)
        reporter.step_at(total, total, "report")
        write()
        reporter.step_done()
        assert state.plan is not None
        torch = state.plan["torch"]
        reporter.say(torch["message"])
        for blocker in state.plan["blockers"]:
            reporter.say(f"BLOCKER: {blocker}")
        for result in [state.results["plan"], *results]:
            took = format_duration(result.seconds) if result.seconds is not None else "-"
            reporter.say(f"  stage {result.name}: {result.status}"
                         + (" (reused)" if result.reused else f" in {took}")
                         + (f": {result.detail}" if result.detail else ""))
        reporter.say(f"Candidate stack: {stack_out}")
        reporter.say(f"Report: {report_md}")
        reporter.say(f"JSON:   {report_json}")
        reporter.say(f"Run:    {run_path(report_json)} (times, durations, logs; not committed)")
        failed = [r for r in results if r.status == stages.StageStatus.FAILED and not r.reused]
        return (failed[0].exit_code or 1) if failed else 0
    finally:
        reporter.close()


def _digest_or_none(stack_file: Path) -> str | None:
    """The saved trial stack's digest; None when it no longer loads (edited by hand):
    the trial then plans again instead of stopping."""
    try:
        return load_stack(stack_file).digest()
    except ConfigError:
        return None
