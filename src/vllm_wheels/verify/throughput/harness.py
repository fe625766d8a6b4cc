"""The A/B method: both arms, one server at a time, interleaved A B A B.

For each round r = 1..runs, for each arm in turn (baseline, then candidate):
    start the arm's server (fresh: caches and compiled state start equal), wait for
    /health, send the warm-up prompts and discard them (CUDA graphs, torch.compile,
    allocator), then run the measured prompts once per concurrency level, stop it.
A warm-up that is itself invalid (failed requests, short outputs) stops the A/B at once:
that arm cannot produce a valid run, and GPU time is better not spent on the rest.
A measured run that is invalid is recorded and left out of the statistics; a cell with
fewer than MIN_RUNS valid runs in an arm cannot be decided ("could not run").

The overall verdict is the worst cell by regression > could-not-run > inconclusive >
pass: a regression proven at one concurrency is the most important news even when
another concurrency could not run (the report lists both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...errors import ConfigError, CouldNotRunError
from ...log import Reporter, format_duration
from . import client, stats
from .arms import Arm, ImageArm
from .workload import MIN_RUNS, Workload

Outcome = Literal["pass", "regression", "inconclusive", "could-not-run"]


@dataclass
class ArmRun:
    arm: str  # "baseline" | "candidate"
    round: int  # 1-based
    concurrency: int
    metrics: client.RunMetrics
    ttfts: list[float] = field(default_factory=list)  # seconds, per request
    itls: list[float] = field(default_factory=list)
    e2els: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "round": self.round, **self.metrics.to_dict(),
                "ttfts_s": self.ttfts, "e2els_s": self.e2els}


@dataclass
class AbResult:
    workload: Workload
    candidate: Arm
    baseline: Arm
    started: str
    runs: list[ArmRun] = field(default_factory=list)
    warmups: list[ArmRun] = field(default_factory=list)
    comparisons: dict[int, list[stats.MetricComparison]] = field(default_factory=dict)
    cell_verdicts: dict[int, Outcome] = field(default_factory=dict)
    verdict: Outcome = "could-not-run"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def valid_runs(self, arm: str, concurrency: int) -> list[ArmRun]:
        return [r for r in self.runs
                if r.arm == arm and r.concurrency == concurrency and r.metrics.valid]


def check_settings(candidate: Arm, baseline: Arm) -> list[str]:
    """Refuse arms whose given settings differ; notes about what cannot be checked."""
    a, b = candidate.given_settings(), baseline.given_settings()
    if a is not None and b is not None and a != b:
        differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigError(
            f"refusing to compare: the arms' workload settings differ in {differing}",
            why="an A/B is only meaningful when model, engine arguments, attention backend, "
                "seed, prefix caching and client are the same for both arms",
            fix="run both arms from one workload file")
    notes = []
    for arm in (candidate, baseline):
        if arm.given_settings() is None:
            notes.append(f"{arm.label} ({arm.spec}) is someone else's server: its engine "
                         "settings are not controlled here; only the client side is identical")
    return notes


class _Progress:
    """Console progress: arm, run, request count and an ETA for the whole A/B."""

    def __init__(self, reporter: Reporter, total_units: int, interval_s: float = 5.0) -> None:
        self.reporter = reporter
        self.total_units = total_units  # measured runs, all arms and concurrencies
        self.done_units = 0
        self.started = time.monotonic()
        self.interval_s = interval_s
        self._last = 0.0
        self.label = ""

    def eta(self) -> str:
        if self.done_units == 0:
            return "?"
        per_unit = (time.monotonic() - self.started) / self.done_units
        return format_duration(per_unit * (self.total_units - self.done_units))

    def requests(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last >= self.interval_s:
            self._last = now
            self.reporter.say(f"    {self.label}: {done}/{total} requests, "
                              f"A/B ETA {self.eta()}")


def run_ab(workload: Workload, candidate: Arm, baseline: Arm, *, reporter: Reporter,
           server_logs: Path) -> AbResult:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = AbResult(workload=workload, candidate=candidate, baseline=baseline,
                      started=started)
    result.notes += check_settings(candidate, baseline)
    t0 = time.monotonic()
    c = workload.client
    order = (baseline, candidate)
    progress = _Progress(reporter, c.runs * len(order) * len(c.concurrency))
    try:
        prepare_arms(order, reporter)
        if candidate.served_model != baseline.served_model:
            result.notes.append(f"the arms serve different model names: candidate "
                                f"'{candidate.served_model}', baseline '{baseline.served_model}'")
        prompts = client.make_prompts(workload.model, c.num_prompts, c.input_len, c.seed)
        # Different prompts for the warm-up, so it never pre-fills a prefix cache for
        # the measured ones.
        warmup = client.make_prompts(workload.model, c.warmup_prompts, c.input_len,
                                     c.seed + 1) if c.warmup_prompts else []
        lengths = sorted({p.tokens for p in prompts})
        if lengths != [c.input_len]:
            result.notes.append(f"prompt lengths under the tokenizer: {lengths} (target "
                                f"{c.input_len}); total_input_tokens counts these "
                                "client-side lengths, as vLLM's bench does")
        for round_no in range(1, c.runs + 1):
            for arm in order:
                _one_round(result, arm, round_no, prompts, warmup, reporter, progress,
                           server_logs)
                if result.problems:
                    return _finish(result, t0)
    except CouldNotRunError as exc:
        result.problems.append(exc.what + (f" (fix: {exc.fix})" if exc.fix else ""))
        return _finish(result, t0)
    finally:
        for arm in order:
            arm.stop(reporter)
    _decide(result)
    return _finish(result, t0)


def prepare_arms(order: tuple[Arm, ...], reporter: Reporter) -> None:
    """Check each arm, pin image arms to the digest the registry gives (so every round
    runs repo@digest and the report names the image that ran), then record the facts."""
    for arm in order:
        arm.check()
        if isinstance(arm, ImageArm):
            arm.resolve_digest(reporter)
        arm.collect_facts()


def _one_round(result: AbResult, arm: Arm, round_no: int, prompts: list[client.Prompt],
               warmup: list[client.Prompt], reporter: Reporter, progress: _Progress,
               server_logs: Path) -> None:
    w = result.workload
    c = w.client
    reporter.say(f"==> round {round_no}/{c.runs}: {arm.label} ({arm.spec}); "
                 f"A/B ETA {progress.eta()}")
    base_url = arm.start(reporter, server_logs / f"{arm.label}-round{round_no}.log")
    try:
        if warmup:
            progress.label = f"{arm.label} round {round_no} warm-up"
            metrics, run = client.measure(base_url, arm.served_model, warmup,
                                          output_len=c.output_len, input_len=c.input_len,
                                          concurrency=max(c.concurrency),
                                          ignore_eos=c.ignore_eos, seed=c.seed,
                                          on_progress=progress.requests)
            result.warmups.append(_arm_run(arm.label, round_no, metrics, run))
            if not metrics.valid:
                result.problems.append(
                    f"{arm.label} ({arm.spec}): the warm-up was invalid: "
                    + "; ".join(metrics.problems))
                return
        for conc in c.concurrency:
            progress.label = f"{arm.label} run {round_no}/{c.runs} concurrency {conc}"
            metrics, run = client.measure(base_url, arm.served_model, prompts,
                                          output_len=c.output_len, input_len=c.input_len,
                                          concurrency=conc, ignore_eos=c.ignore_eos,
                                          seed=c.seed, on_progress=progress.requests)
            result.runs.append(_arm_run(arm.label, round_no, metrics, run))
            progress.done_units += 1
            state = "valid" if metrics.valid else "INVALID: " + "; ".join(metrics.problems)
            reporter.say(f"    {arm.label} run {round_no} c={conc}: "
                         f"{metrics['output_throughput']:.1f} output tok/s, median TTFT "
                         f"{metrics['median_ttft_ms']:.1f} ms, median ITL "
                         f"{metrics['median_itl_ms']:.2f} ms ({state})")
    finally:
        arm.stop(reporter)


def _arm_run(label: str, round_no: int, metrics: client.RunMetrics,
             run: client.BenchmarkRun) -> ArmRun:
    done = [r for r in run.records if r.success]
    return ArmRun(arm=label, round=round_no, concurrency=metrics.concurrency, metrics=metrics,
                  ttfts=[r.ttft for r in done], itls=[g for r in done for g in r.itl],
                  e2els=[r.latency for r in done])


def _decide(result: AbResult) -> None:
    w = result.workload
    g = w.gate
    verdicts: list[Outcome] = []
    for conc in w.client.concurrency:
        cand = result.valid_runs("candidate", conc)
        base = result.valid_runs("baseline", conc)
        short = [f"{name} has {len(runs)} valid runs of {w.client.runs}"
                 for name, runs in (("candidate", cand), ("baseline", base))
                 if len(runs) < MIN_RUNS]
        if short:
            invalid = [f"{r.arm} round {r.round}: {'; '.join(r.metrics.problems)}"
                       for r in result.runs if r.concurrency == conc and not r.metrics.valid]
            result.problems.append(f"concurrency {conc}: " + ", ".join(short)
                                   + (" (" + " | ".join(invalid[:4]) + ")" if invalid else ""))
            result.cell_verdicts[conc] = "could-not-run"
            verdicts.append("could-not-run")
            continue
        comparisons = stats.compare_runs(
            [r.metrics.metrics for r in cand], [r.metrics.metrics for r in base],
            gated=g.metrics, throughput_drop=g.throughput_drop, latency_rise=g.latency_rise, max_cv=g.max_cv,
            confidence=g.confidence, resamples=g.bootstrap_resamples, seed=w.client.seed)
        result.comparisons[conc] = comparisons
        verdict = stats.worst([m.verdict for m in comparisons if m.gated])
        result.cell_verdicts[conc] = verdict
        verdicts.append(verdict)
    result.verdict = overall_verdict(verdicts)


_PRECEDENCE: tuple[Outcome, ...] = ("regression", "could-not-run", "inconclusive", "pass")


def overall_verdict(cell_verdicts: list[Outcome]) -> Outcome:
    """The worst cell, by regression > could-not-run > inconclusive > pass."""
    for outcome in _PRECEDENCE:
        if outcome in cell_verdicts:
            return outcome
    return "could-not-run"  # no cell at all: nothing was decided


def _finish(result: AbResult, t0: float) -> AbResult:
    result.elapsed_s = time.monotonic() - t0
    # Problems without a proven regression (an aborted A/B, or cells short of valid runs)
    # leave nothing decided; a regression stays the verdict, its problems are reported.
    if result.problems and result.verdict != "regression":
        result.verdict = "could-not-run"
    return result
