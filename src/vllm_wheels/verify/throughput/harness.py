"""The A/B method: both arms, one server at a time, in a balanced order.

For each round r = 1..runs, both arms in the round's order:
    start the arm's server (fresh: caches and compiled state start equal), wait for
    /health, send the warm-up prompts and discard them (CUDA graphs, torch.compile,
    allocator), then run the measured prompts once per concurrency level, stop it.
The order within a round alternates (ABBA: baseline first in odd rounds, candidate first
in even ones; `order = "alternate"`, the default) or is a balanced random permutation
drawn from the workload's seed (`order = "random"`, the seed recorded), so an order
effect (warm-up, clocks, caches: whichever arm runs second is slower) falls on both
arms equally instead of biasing one; `order = "fixed"` (baseline always first) is the
old method, kept to show the difference. An odd number of runs is rounded up to even, so
each arm goes first equally often. The report measures the order effect itself (second
position vs first, both arms together).

A warm-up that is itself invalid (failed requests, short outputs) stops the A/B at once:
that arm cannot produce a valid run, and GPU time is better not spent on the rest.
A measured run that is invalid is recorded and left out of the statistics; a cell with
fewer than MIN_RUNS valid runs in an arm cannot be decided ("could not run").

`--runs auto` (AutoRuns): the first MIN_RUNS rounds (rounded to even) are the pilot;
from their CVs (the worst gated metric of every cell) and the time a round took, the
runs needed for the target detectable change (stats.runs_needed) are added, as far as
the time budget allows; the report states the detectable change reached.

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
from . import client, servermetrics, stats
from .arms import Arm, ImageArm, UrlArm
from .workload import MIN_RUNS, Workload

Outcome = Literal["pass", "regression", "inconclusive", "could-not-run"]


@dataclass
class ArmRun:
    arm: str  # "baseline" | "candidate"
    round: int  # 1-based
    concurrency: int
    metrics: client.RunMetrics
    position: int = 1  # 1: this arm ran first in its round, 2: second
    ttfts: list[float] = field(default_factory=list)  # seconds, per request
    itls: list[float] = field(default_factory=list)
    e2els: list[float] = field(default_factory=list)
    # vLLM's own means over this run's requests, ms (servermetrics: ttft, queue, prefill);
    # None when the server has no /metrics.
    server_ms: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "round": self.round, "position": self.position,
                **self.metrics.to_dict(),
                "ttfts_s": self.ttfts, "e2els_s": self.e2els, "server_ms": self.server_ms}


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
    orders: list[tuple[str, str]] = field(default_factory=list)  # per round, first first
    order_seed: int | None = None  # the seed of order = "random"
    auto: dict[str, Any] | None = None  # what --runs auto decided, and why
    # Each burn-in (workload burn_in_s): arm, round, seconds, requests per concurrency.
    burn_ins: list[dict[str, Any]] = field(default_factory=list)
    burned_urls: set[str] = field(default_factory=set)  # url: servers already burnt in
    cross_checks: list[dict[str, Any]] = field(default_factory=list)

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


@dataclass(frozen=True)
class AutoRuns:
    """--runs auto: enough runs for `target` (the smallest change the CI resolves with
    80 % power), at most `max_runs` per arm, within `budget_s` seconds of A/B."""

    target: float = 0.03
    budget_s: float = 1800.0
    max_runs: int = 40


def round_orders(rounds: int, mode: str, seed: int) -> list[tuple[str, str]]:
    """Which arm runs first in each round (see the module docstring)."""
    ab, ba = ("baseline", "candidate"), ("candidate", "baseline")
    if mode == "fixed":
        return [ab] * rounds
    if mode == "random":
        import numpy as np

        firsts = [ab] * (rounds // 2) + [ba] * (rounds - rounds // 2)
        rng = np.random.default_rng(seed)
        return [firsts[i] for i in rng.permutation(rounds)]
    return [ab if r % 2 == 0 else ba for r in range(rounds)]


def run_ab(workload: Workload, candidate: Arm, baseline: Arm, *, reporter: Reporter,
           server_logs: Path, auto: AutoRuns | None = None,
           cross_check: Any = None) -> AbResult:
    """`cross_check`: called as cross_check(result, arms) after the last round, while
    url: arms still serve (crosscheck.run_cross_check)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = AbResult(workload=workload, candidate=candidate, baseline=baseline,
                      started=started)
    result.notes += check_settings(candidate, baseline)
    t0 = time.monotonic()
    c = workload.client
    arms = {"baseline": baseline, "candidate": candidate}
    rounds = c.runs
    if c.order != "fixed" and rounds % 2:
        rounds += 1
        result.notes.append(f"runs rounded up from {c.runs} to {rounds}, so each arm runs "
                            "first in half the rounds")
    if auto is not None:
        rounds = MIN_RUNS + MIN_RUNS % 2  # the pilot
    result.orders = round_orders(rounds, c.order, c.seed)
    if c.order == "random":
        result.order_seed = c.seed
    progress = _Progress(reporter, rounds * 2 * len(c.concurrency))
    try:
        prepare_arms((baseline, candidate), reporter)
        if candidate.served_model != baseline.served_model:
            result.notes.append(f"the arms serve different model names: candidate "
                                f"'{candidate.served_model}', baseline '{baseline.served_model}'")
        prompts = client.make_prompts(workload.model,
                                      max(c.prompts_at(conc) for conc in c.concurrency),
                                      c.input_len, c.seed)
        # Different prompts for the warm-up, so it never pre-fills a prefix cache for
        # the measured ones.
        warmup = client.make_prompts(workload.model, c.warmup_prompts, c.input_len,
                                     c.seed + 1) if c.warmup_prompts else []
        lengths = sorted({p.tokens for p in prompts})
        if lengths != [c.input_len]:
            result.notes.append(f"prompt lengths under the tokenizer: {lengths} (target "
                                f"{c.input_len}); total_input_tokens counts these "
                                "client-side lengths, as vLLM's bench does")
        round_no = 0
        while round_no < len(result.orders):
            round_no += 1
            for position, label in enumerate(result.orders[round_no - 1], start=1):
                _one_round(result, arms[label], round_no, position, len(result.orders),
                           prompts, warmup, reporter, progress, server_logs)
                if result.problems:
                    return _finish(result, t0)
            if auto is not None and round_no == len(result.orders) and result.auto is None:
                _plan_auto(result, auto, time.monotonic() - t0, reporter)
                progress.total_units = len(result.orders) * 2 * len(c.concurrency)
        if cross_check is not None:
            cross_check(result, arms)
    except CouldNotRunError as exc:
        result.problems.append(exc.what + (f" (why: {exc.why})" if exc.why else "")
                               + (f" (fix: {exc.fix})" if exc.fix else ""))
        return _finish(result, t0)
    finally:
        for arm in (baseline, candidate):
            arm.stop(reporter)
    _decide(result)
    return _finish(result, t0)


def _plan_auto(result: AbResult, auto: AutoRuns, elapsed: float, reporter: Reporter) -> None:
    """After the pilot: the runs the target needs, as far as the budget allows."""
    w = result.workload
    pilot = len(result.orders)
    needed = pilot
    worst: tuple[float, str] = (0.0, "")
    for conc in w.client.concurrency:
        cand = result.valid_runs("candidate", conc)
        base = result.valid_runs("baseline", conc)
        if len(cand) < 2 or len(base) < 2:
            continue
        for metric in w.gate.metrics:
            cv_c = stats.cv([r.metrics[metric] for r in cand])
            cv_b = stats.cv([r.metrics[metric] for r in base])
            n = stats.runs_needed(cv_c, cv_b, auto.target, confidence=w.gate.confidence)
            if n > needed:
                needed = n
            if max(cv_c, cv_b) > worst[0]:
                worst = (max(cv_c, cv_b), f"{metric} at concurrency {conc}")
    per_round = elapsed / pilot
    fit = pilot + int(max(0.0, auto.budget_s - elapsed) // per_round)
    planned = max(pilot, min(needed, fit, auto.max_runs))
    planned += planned % 2
    limited = ("reached" if planned >= needed else
               "the time budget" if fit <= min(needed, auto.max_runs) else "max_runs")
    if w.client.order == "random":  # balanced within each added pair of rounds
        for k in range((planned - pilot) // 2):
            result.orders += round_orders(2, "random", w.client.seed + pilot + k)
    else:
        result.orders += round_orders(planned, w.client.order, w.client.seed)[pilot:]
    result.auto = {"target": auto.target, "budget_s": auto.budget_s, "max_runs": auto.max_runs,
                   "pilot_runs": pilot, "pilot_s": elapsed, "s_per_round": per_round,
                   "runs_needed": needed, "runs_planned": planned, "limited_by": limited,
                   "noisiest": f"{worst[1]} (CV {worst[0]:.2%})" if worst[1] else ""}
    reporter.say(f"==> --runs auto: the pilot ({pilot} runs per arm, {per_round:.0f} s a round) "
                 f"needs {needed} runs per arm for a {auto.target:.1%} detectable change; "
                 f"running {planned} ({limited})")


def prepare_arms(order: tuple[Arm, ...], reporter: Reporter) -> None:
    """Check each arm, pin image arms to the digest the registry gives (so every round
    runs repo@digest and the report names the image that ran), then record the facts."""
    for arm in order:
        arm.check()
        if isinstance(arm, ImageArm):
            arm.resolve_digest(reporter)
        arm.collect_facts()


def _one_round(result: AbResult, arm: Arm, round_no: int, position: int, rounds: int,
               prompts: list[client.Prompt], warmup: list[client.Prompt],
               reporter: Reporter, progress: _Progress, server_logs: Path) -> None:
    w = result.workload
    c = w.client
    reporter.say(f"==> round {round_no}/{rounds}: {arm.label} ({arm.spec}); "
                 f"A/B ETA {progress.eta()}")
    base_url = arm.start(reporter, server_logs / f"{arm.label}-round{round_no}.log")
    try:
        if c.burn_in_s > 0 and warmup and needs_burn_in(result, arm, base_url):
            progress.label = f"{arm.label} round {round_no} burn-in"
            if not _burn_in(result, arm, base_url, round_no, position, warmup, reporter,
                            progress):
                return
        if warmup:
            progress.label = f"{arm.label} round {round_no} warm-up"
            metrics, run = client.measure(base_url, arm.served_model, warmup,
                                          output_len=c.output_len, input_len=c.input_len,
                                          concurrency=max(c.concurrency),
                                          ignore_eos=c.ignore_eos, seed=c.seed,
                                          on_progress=progress.requests)  # warm-up
            result.warmups.append(_arm_run(arm.label, round_no, metrics, run, position))
            if not metrics.valid:
                result.problems.append(
                    f"{arm.label} ({arm.spec}): the warm-up was invalid: "
                    + "; ".join(metrics.problems))
                return
        for conc in c.concurrency:
            progress.label = f"{arm.label} run {round_no}/{rounds} concurrency {conc}"
            before = servermetrics.scrape(base_url)
            metrics, run = client.measure(base_url, arm.served_model,
                                          prompts[:c.prompts_at(conc)],
                                          output_len=c.output_len, input_len=c.input_len,
                                          concurrency=conc, ignore_eos=c.ignore_eos,
                                          seed=c.seed, on_progress=progress.requests)
            # vLLM's own timing of the same requests (an A/A's one server serves only
            # this run between the two scrapes)
            after = servermetrics.scrape(base_url) if before is not None else None
            result.runs.append(_arm_run(arm.label, round_no, metrics, run, position,
                                        server_ms=servermetrics.run_means_ms(before, after)))
            progress.done_units += 1
            state = "valid" if metrics.valid else "INVALID: " + "; ".join(metrics.problems)
            reporter.say(f"    {arm.label} run {round_no} c={conc}: "
                         f"{metrics['output_throughput']:.1f} output tok/s, median TTFT "
                         f"{metrics['median_ttft_ms']:.1f} ms, median ITL "
                         f"{metrics['median_itl_ms']:.2f} ms ({state})")
    finally:
        arm.stop(reporter)


def needs_burn_in(result: AbResult, arm: Arm, base_url: str) -> bool:
    """A server the harness starts is fresh in every round (it is started per round); a
    url: server is burnt in once, however many arms name it (an A/A gives one server
    both labels)."""
    if isinstance(arm, UrlArm):
        return base_url not in result.burned_urls
    return True


def _burn_in(result: AbResult, arm: Arm, base_url: str, round_no: int, position: int,
             warmup: list[client.Prompt], reporter: Reporter, progress: _Progress) -> bool:
    """Warm-up load at every measured concurrency in turn until burn_in_s has passed.
    Its runs are kept with the warm-ups (round_no, never measured). False: a run was
    invalid (a problem is recorded and the A/B stops)."""
    c = result.workload.client
    t0 = time.monotonic()
    requests: dict[int, int] = {conc: 0 for conc in c.concurrency}
    while time.monotonic() - t0 < c.burn_in_s:
        for conc in c.concurrency:
            # At least `conc` prompts, so the measured batch size is reached.
            prompts = (warmup * (conc // len(warmup) + 1))[:max(len(warmup), conc)]
            metrics, run = client.measure(base_url, arm.served_model, prompts,
                                          output_len=c.output_len, input_len=c.input_len,
                                          concurrency=conc, ignore_eos=c.ignore_eos,
                                          seed=c.seed, on_progress=progress.requests)
            result.warmups.append(_arm_run(arm.label, round_no, metrics, run, position))
            requests[conc] += len(prompts)
            if not metrics.valid:
                result.problems.append(f"{arm.label} ({arm.spec}): a burn-in run was "
                                       "invalid: " + "; ".join(metrics.problems))
                return False
    seconds = time.monotonic() - t0
    result.burned_urls.add(base_url)
    result.burn_ins.append({"arm": arm.label, "round": round_no, "seconds": round(seconds, 1),
                            "requests": {str(k): v for k, v in requests.items()}})
    reporter.say(f"    {arm.label} burn-in: {sum(requests.values())} requests in "
                 f"{seconds:.0f} s at concurrency {', '.join(map(str, c.concurrency))}")
    return True


def _arm_run(label: str, round_no: int, metrics: client.RunMetrics,
             run: client.BenchmarkRun, position: int = 1,
             server_ms: dict[str, float] | None = None) -> ArmRun:
    done = [r for r in run.records if r.success]
    return ArmRun(arm=label, round=round_no, concurrency=metrics.concurrency, metrics=metrics,
                  position=position,
                  ttfts=[r.ttft for r in done], itls=[g for r in done for g in r.itl],
                  e2els=[r.latency for r in done], server_ms=server_ms)


def _decide(result: AbResult) -> None:
    w = result.workload
    g = w.gate
    verdicts: list[Outcome] = []
    for conc in w.client.concurrency:
        cand = result.valid_runs("candidate", conc)
        base = result.valid_runs("baseline", conc)
        short = [f"{name} has {len(runs)} valid runs of {len(result.orders) or w.client.runs}"
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


def order_effect(result: AbResult, concurrency: int, metric: str = "output_throughput"
                 ) -> float | None:
    """median(second-position runs) / median(first-position runs) - 1 over both arms,
    each run first divided by its arm's median (so the arms' own difference cancels);
    None without runs in both positions."""
    import numpy as np

    scaled: dict[int, list[float]] = {1: [], 2: []}
    for arm in ("baseline", "candidate"):
        runs = result.valid_runs(arm, concurrency)
        if not runs:
            continue
        centre = float(np.median([r.metrics[metric] for r in runs]))
        if centre == 0:
            continue
        for r in runs:
            scaled[r.position].append(r.metrics[metric] / centre)
    if not scaled[1] or not scaled[2]:
        return None
    return float(np.median(scaled[2]) / np.median(scaled[1]) - 1.0)


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
