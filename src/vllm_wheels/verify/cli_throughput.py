"""`python -m vllm_wheels verify-throughput` (what `nox -s verify_throughput` runs).

Exit codes: 0 pass, 11 regression, 12 inconclusive, 13 could not run (2 for a bad
workload or command line). The report is written in every case where runs happened.
While it runs, the full log and the server logs live hidden in the results directory
(`.<stamp>-<workload>.log`, `.<stamp>-<workload>.servers/`); they move into the report
directory once it is published and are removed when the A/B stops without a report
(an error or Ctrl-C). Only when writing the report itself fails are they kept, and
their paths printed: they are then the only record of the runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import time
from pathlib import Path

from .. import layout
from ..cache import remove
from ..errors import (
    ConfigError,
    CouldNotRunError,
    ThroughputInconclusiveError,
    ThroughputRegressionError,
)
from ..log import Reporter


def _repo_root() -> Path:
    return layout.repo_root()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="single-stream",
                        help="a name in verify/workloads/ or a TOML file (default: single-stream)")
    parser.add_argument("--candidate", default=None,
                        help="arm SPEC: venv:PATH | image:REF | url:http://HOST:PORT "
                             "(default: venv:wheels/<stack>/venv, the stack's wheels installed)")
    parser.add_argument("--baseline", default=None,
                        help="arm SPEC (default: image: the nightly named in verify/baseline.toml)")
    parser.add_argument("--runs", default=None,
                        help="measured runs per arm (>= 5; default: the workload's), or "
                             "'auto': a pilot, then the runs needed for --target-change "
                             "within --time-budget")
    parser.add_argument("--burn-in", type=float, default=None, metavar="SECONDS",
                        help="warm-up load after each server start before its first measured "
                             "run (default: the workload's burn_in_s); 0 for url: servers "
                             "that an earlier A/B has already warmed")
    parser.add_argument("--target-change", type=float, default=0.03,
                        help="--runs auto: the smallest change (fraction) the A/B must "
                             "resolve with 80%% power (default 0.03)")
    parser.add_argument("--time-budget", type=float, default=1800.0,
                        help="--runs auto: seconds the whole A/B may take (default 1800)")
    for label in ("candidate", "baseline"):
        parser.add_argument(f"--{label}-log", type=Path, default=None,
                            help=f"a url: {label}'s server log, read for the parity report")
        parser.add_argument(f"--{label}-venv", type=Path, default=None,
                            help=f"the venv a url: {label}'s server runs from (versions, "
                                 "compiled archs)")
    parser.add_argument("--cross-check-venv", type=Path, default=None,
                        help="a venv with vLLM: after the A/B, run its `vllm bench serve` "
                             "against each url: arm with the workload's lengths and compare "
                             "its output tok/s with the harness's")
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (overrides the workload's model)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where <stamp>-<workload>/ goes (default: verify/results)")
    parser.add_argument("--json", type=Path, default=None, help="also copy result.json here")
    parser.add_argument("--report", type=Path, default=None, help="also copy report.md here")
    parser.add_argument("--stack", type=Path, default=None,
                        help="stack whose wheels make the default candidate (default: "
                             "build/stack.toml)")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="directory of the wheels that make the default candidate venv "
                             "DIR/venv (default: wheels/<stack name>/)")
    parser.add_argument("--prepare-candidate", action="store_true",
                        help="only make (or check) the default candidate venv "
                             "(--wheels DIR)/venv from those wheels, then exit")


# The `throughput` extra: the client (numpy, tokenizers, aiohttp) and the plot (matplotlib).
EXTRA_MODULES = ("numpy", "tokenizers", "aiohttp", "matplotlib")


def check_extra() -> None:
    """Fail before any work when the optional `throughput` extra is not installed."""
    missing = []
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CouldNotRunError(f"the throughput A/B needs {', '.join(missing)} (not "
                               "installed)",
                               why="the benchmark client, its statistics and the plot use "
                                   "the optional `throughput` extra",
                               fix="pip install 'vllm-wheels[throughput]'")


def _default_candidate(root: Path, stack_file: Path | None, wheels_dir: Path | None,
                       reporter: Reporter) -> str:
    """venv:DIR/venv (DIR: --wheels, else wheels/<stack>/), made from DIR's wheels if
    missing or stale."""
    from ..build.stack import load_stack
    from .throughput.candidate import ensure_candidate_venv

    stack = load_stack(stack_file or layout.default_stack(root))
    wheels = (wheels_dir or layout.wheels_dir(root, stack.name)).resolve()
    return f"venv:{ensure_candidate_venv(stack, wheels, reporter)}"


def run(args: argparse.Namespace) -> int:
    from .throughput import arms, harness, report
    from .throughput.workload import load_workload, resolve_workload_path

    root = _repo_root()
    verify_dir = root / "verify"
    if args.prepare_candidate:
        print(_default_candidate(root, args.stack, args.wheels, Reporter(None)))
        return 0
    # Once, before anything starts: the client would otherwise fail with a bare
    # ModuleNotFoundError deep inside the first round.
    check_extra()
    workload = load_workload(resolve_workload_path(args.workload, verify_dir / "workloads"))
    auto = None
    runs: int | None = None
    if args.runs == "auto":
        auto = harness.AutoRuns(target=args.target_change, budget_s=args.time_budget)
    elif args.runs is not None:
        try:
            runs = int(args.runs)
        except ValueError:
            raise ConfigError(f"--runs {args.runs}: not a number or 'auto'") from None
    workload = workload.with_overrides(model=args.model, runs=runs, burn_in_s=args.burn_in)
    if not (workload.model / "config.json").is_file():
        raise ConfigError(f"model directory {workload.model} has no config.json",
                          why="vLLM needs the model's config.json and tokenizer files even "
                              "with random (dummy) weights",
                          fix="download them (see docs/throughput.md) or pass --model DIR")
    candidate_spec = arms.parse_arm_spec(
        args.candidate or _default_candidate(root, args.stack, args.wheels, Reporter(None)))
    baseline_spec = arms.parse_arm_spec(
        args.baseline or "image:" + arms.load_baseline_image(verify_dir / "baseline.toml"))
    candidate = arms.make_arm("candidate", candidate_spec, workload,
                              server_log=args.candidate_log, venv=args.candidate_venv)
    baseline = arms.make_arm("baseline", baseline_spec, workload,
                             server_log=args.baseline_log, venv=args.baseline_venv)
    cross_check = None
    if args.cross_check_venv is not None:
        from .throughput import crosscheck

        cross_check = crosscheck.CrossCheck(args.cross_check_venv.resolve(), reporter=None)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_root = (args.results_dir or verify_dir / "results").resolve()
    out_dir = results_root / f"{stamp}-{workload.name}"
    server_logs = results_root / f".{stamp}-{workload.name}.servers"
    log_path = results_root / f".{stamp}-{workload.name}.log"
    reporter = Reporter(log_path)
    keep_logs = False
    try:
        c = workload.client
        reporter.say(f"verify-throughput: workload {workload.name}; candidate {candidate_spec}; "
                     f"baseline {baseline_spec}; {c.runs} runs per arm x concurrency "
                     f"{list(c.concurrency)}; full log: {log_path}")
        if cross_check is not None:
            cross_check.reporter = reporter
            cross_check.work_dir = server_logs / "cross-check"
        result = harness.run_ab(workload, candidate, baseline, reporter=reporter,
                                server_logs=server_logs, auto=auto, cross_check=cross_check)
        try:
            report.write(result, out_dir)
        except BaseException:
            keep_logs = True
            reporter.warn(f"the report could not be written; kept the full log {log_path}"
                          + (f" and the server logs {server_logs}" if server_logs.is_dir()
                             else ""))
            raise
        # Only now that the report directory exists: a failed write must not take them.
        if server_logs.is_dir() and any(server_logs.iterdir()):
            os.replace(server_logs, out_dir / "servers")
        shutil.copy2(log_path, out_dir / "verify-throughput.log")
        for extra, name in ((args.json, "result.json"), (args.report, "report.md")):
            if extra is not None:
                extra.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(out_dir / name, extra)
        reporter.say(f"verdict: {result.verdict}; report: {out_dir / 'report.md'}")
    finally:
        reporter.close()
        if not keep_logs:
            # Moved into the report above; what is left belongs to an A/B that stopped
            # without one (an error, Ctrl-C): nothing half-written stays behind.
            remove(server_logs)
            log_path.unlink(missing_ok=True)
    summary = "\n".join(report.verdict_lines(result))
    where = f"see {out_dir / 'report.md'}"
    if result.verdict == "regression":
        raise ThroughputRegressionError(f"the candidate is slower than the baseline\n{summary}"
                                        + "".join(f"\n  also could not run: {p}"
                                                  for p in result.problems),
                                        why=where, fix="compare the arms' facts in the report "
                                        "(arch list, build type, FlashInfer, attention backend)")
    if result.verdict == "inconclusive":
        raise ThroughputInconclusiveError(f"cannot decide\n{summary}", why=where,
                                          fix="keep the GPU idle, lock clocks where allowed, "
                                              "or raise --runs")
    if result.verdict == "could-not-run":
        raise CouldNotRunError("; ".join(result.problems) or "no valid runs", why=where)
    return 0
