"""`python -m vllm_wheels verify-throughput` (what `nox -s verify_throughput` runs).

Exit codes: 0 pass, 11 regression, 12 inconclusive, 13 could not run (2 for a bad
workload or command line). The report is written in every case where runs happened.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from ...errors import (
    ConfigError,
    CouldNotRunError,
    ThroughputInconclusiveError,
    ThroughputRegressionError,
)
from ...log import Reporter


def _repo_root() -> Path:
    from ...cli import repo_root

    return repo_root()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="single-stream",
                        help="a name in verify/workloads/ or a TOML file (default: single-stream)")
    parser.add_argument("--candidate", default=None,
                        help="arm SPEC: venv:PATH | image:REF | url:http://HOST:PORT "
                             "(default: venv:wheels/<stack>/venv, the stack's wheels installed)")
    parser.add_argument("--baseline", default=None,
                        help="arm SPEC (default: image: the nightly named in verify/baseline.toml)")
    parser.add_argument("--runs", type=int, default=None,
                        help="measured runs per arm (>= 5; default: the workload's)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (overrides the workload's model)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where <stamp>-<workload>/ goes (default: verify/results)")
    parser.add_argument("--json", type=Path, default=None, help="also copy result.json here")
    parser.add_argument("--report", type=Path, default=None, help="also copy report.md here")
    parser.add_argument("--stack", type=Path, default=None,
                        help="stack whose wheels make the default candidate (default: "
                             "build/stack.toml)")
    parser.add_argument("--prepare-candidate", action="store_true",
                        help="only make (or check) the default candidate venv "
                             "wheels/<stack>/venv from the stack's wheels, then exit")


def _default_candidate(root: Path, stack_file: Path | None, reporter: Reporter) -> str:
    """venv:wheels/<stack>/venv, made from the stack's wheels if missing or stale."""
    from ...stack import load_stack
    from .candidate import ensure_candidate_venv

    stack = load_stack(stack_file or root / "build" / "stack.toml")
    return f"venv:{ensure_candidate_venv(stack, root / 'wheels' / stack.name, reporter)}"


def run(args: argparse.Namespace) -> int:
    from . import arms, harness, report
    from .workload import load_workload, resolve_workload_path

    root = _repo_root()
    verify_dir = root / "verify"
    if args.prepare_candidate:
        print(_default_candidate(root, args.stack, Reporter(None)))
        return 0
    workload = load_workload(resolve_workload_path(args.workload, verify_dir / "workloads"))
    workload = workload.with_overrides(model=args.model, runs=args.runs)
    if not (workload.model / "config.json").is_file():
        raise ConfigError(f"model directory {workload.model} has no config.json",
                          why="vLLM needs the model's config.json and tokenizer files even "
                              "with random (dummy) weights",
                          fix="download them (see README, 'Throughput A/B') or pass --model DIR")
    candidate_spec = arms.parse_arm_spec(
        args.candidate or _default_candidate(root, args.stack, Reporter(None)))
    baseline_spec = arms.parse_arm_spec(
        args.baseline or "image:" + arms.load_baseline_image(verify_dir / "baseline.toml"))
    candidate = arms.make_arm("candidate", candidate_spec, workload)
    baseline = arms.make_arm("baseline", baseline_spec, workload)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_root = (args.results_dir or verify_dir / "results").resolve()
    out_dir = results_root / f"{stamp}-{workload.name}"
    server_logs = results_root / f".{stamp}-{workload.name}.servers"
    log_path = results_root / f".{stamp}-{workload.name}.log"
    reporter = Reporter(log_path)
    try:
        c = workload.client
        reporter.say(f"verify-throughput: workload {workload.name}; candidate {candidate_spec}; "
                     f"baseline {baseline_spec}; {c.runs} runs per arm x concurrency "
                     f"{list(c.concurrency)}; full log: {log_path}")
        result = harness.run_ab(workload, candidate, baseline, reporter=reporter,
                                server_logs=server_logs)
        report.write(result, out_dir, server_logs=server_logs)
        shutil.copy2(log_path, out_dir / "verify-throughput.log")
        for extra, name in ((args.json, "result.json"), (args.report, "report.md")):
            if extra is not None:
                extra.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(out_dir / name, extra)
        reporter.say(f"verdict: {result.verdict}; report: {out_dir / 'report.md'}")
    finally:
        reporter.close()
    log_path.unlink(missing_ok=True)
    summary = report.markdown(result).split("\n\n", 2)[1] if result.cell_verdicts else ""
    where = f"see {out_dir / 'report.md'}"
    if result.verdict == "regression":
        raise ThroughputRegressionError(f"the candidate is slower than the baseline\n{summary}",
                                        why=where, fix="compare the arms' facts in the report "
                                        "(arch list, build type, FlashInfer, attention backend)")
    if result.verdict == "inconclusive":
        raise ThroughputInconclusiveError(f"cannot decide\n{summary}", why=where,
                                          fix="keep the GPU idle, lock clocks where allowed, "
                                              "or raise --runs")
    if result.verdict == "could-not-run":
        raise CouldNotRunError("; ".join(result.problems) or "no valid runs", why=where)
    return 0
