"""Comparison of the two arms' runs: median ratio candidate/baseline with a bootstrap
confidence interval, run-to-run spread, and the decision.

Per gated metric (per workload and concurrency), over the valid runs of each arm:
    ratio   median(candidate runs) / median(baseline runs)
    CI      percentile bootstrap: resample each arm's runs with replacement, take the
            ratio of the medians, `resamples` times; the central `confidence` interval
    CV      each arm's run-to-run coefficient of variation (sample std / mean)

Decision over the gated metrics (thresholds and the metric list from the workload's
[gate]; defaults are vLLM's perf gate: a 3 % drop in output or total token throughput,
a 2.5 % rise in median TTFT or median ITL):
    regression    the whole CI lies beyond the threshold (throughput: CI upper bound
                  < 1 - throughput_drop; latency: CI lower bound > 1 + latency_rise).
                  Decided even with noisy arms: a slowdown that clear is not noise.
    inconclusive  otherwise, when an arm's CV exceeds max_cv (too noisy to clear the
                  candidate), or when the CI straddles the threshold
    pass          the whole CI lies on the good side of the threshold
A comparison's verdict is its worst metric's (regression > inconclusive > pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["pass", "regression", "inconclusive"]

# metric key (vLLM's name) -> higher is better? The workload's [gate] metrics choose
# which of them decide (default: the four of vLLM's perf gate); the rest are reported.
GATEABLE: dict[str, bool] = {
    "output_throughput": True,
    "total_token_throughput": True,
    "request_throughput": True,
    "median_ttft_ms": False,
    "median_itl_ms": False,
    "median_tpot_ms": False,
    "median_e2el_ms": False,
    "p99_ttft_ms": False,
    "p99_itl_ms": False,
    "p99_tpot_ms": False,
    "p99_e2el_ms": False,
}
_ORDER: dict[Verdict, int] = {"pass": 0, "inconclusive": 1, "regression": 2}


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    return max(verdicts, key=lambda v: _ORDER[v], default="pass")


def cv(values: Sequence[float]) -> float:
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float("inf")
    mean = float(np.mean(arr))
    if mean == 0:
        return 0.0 if float(np.std(arr)) == 0 else float("inf")
    return float(np.std(arr, ddof=1) / abs(mean))


def bootstrap_ratio(candidate: Sequence[float], baseline: Sequence[float], *, resamples: int,
                    confidence: float, seed: int = 0) -> tuple[float, float, float]:
    """(median ratio, CI low, CI high) of candidate/baseline; seeded, so reproducible."""
    import numpy as np

    cand = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(baseline, dtype=np.float64)
    rng = np.random.default_rng(seed)
    cand_medians = np.median(rng.choice(cand, size=(resamples, len(cand)), replace=True), axis=1)
    base_medians = np.median(rng.choice(base, size=(resamples, len(base)), replace=True), axis=1)
    ratio = float(_ratio(np.median(cand), np.median(base)))
    ratios = _ratio(cand_medians, base_medians)
    tail = (1.0 - confidence) / 2.0
    # inverted_cdf: no interpolation, so an infinite ratio (a zero baseline) stays usable.
    low, high = np.quantile(ratios, [tail, 1.0 - tail], method="inverted_cdf")
    return ratio, float(low), float(high)


def _ratio(cand: Any, base: Any) -> Any:
    """cand / base, with 0/0 = 1 (both arms e.g. batch every token: no gap) and x/0 = inf."""
    import numpy as np

    cand, base = np.asarray(cand, dtype=np.float64), np.asarray(base, dtype=np.float64)
    safe = np.where(base == 0, 1.0, base)
    return np.where(base == 0, np.where(cand == 0, 1.0, np.inf), cand / safe)


@dataclass(frozen=True, kw_only=True)
class MetricComparison:
    metric: str
    higher_is_better: bool
    candidate: tuple[float, ...]
    baseline: tuple[float, ...]
    ratio: float
    ci_low: float
    ci_high: float
    cv_candidate: float
    cv_baseline: float
    threshold: float  # allowed fraction (0.03 = 3 %)
    gated: bool
    verdict: Verdict
    reason: str

    @property
    def change(self) -> float:
        """Relative change candidate vs baseline (-0.05 = 5 % lower)."""
        return self.ratio - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better,
                "gated": self.gated, "candidate_runs": list(self.candidate),
                "baseline_runs": list(self.baseline), "ratio": self.ratio,
                "ci": [self.ci_low, self.ci_high], "change": self.change,
                "cv_candidate": self.cv_candidate, "cv_baseline": self.cv_baseline,
                "threshold": self.threshold, "verdict": self.verdict, "reason": self.reason}


def compare_metric(metric: str, candidate: Sequence[float], baseline: Sequence[float], *,
                   higher_is_better: bool, threshold: float, max_cv: float, confidence: float,
                   resamples: int, gated: bool = True, seed: int = 0) -> MetricComparison:
    ratio, low, high = bootstrap_ratio(candidate, baseline, resamples=resamples,
                                       confidence=confidence, seed=seed)
    cv_c, cv_b = cv(candidate), cv(baseline)
    pct = f"{confidence:.0%} CI [{low - 1:+.1%}, {high - 1:+.1%}]"
    if higher_is_better:
        limit = 1.0 - threshold
        beyond, within = high < limit, low >= limit
        side = f"lower by more than {threshold:.1%}"
    else:
        limit = 1.0 + threshold
        beyond, within = low > limit, high <= limit
        side = f"higher by more than {threshold:.1%}"
    noisy = [f"{name} CV {value:.1%}" for name, value in (("candidate", cv_c), ("baseline", cv_b))
             if value > max_cv]
    verdict: Verdict
    if beyond:
        verdict, reason = "regression", f"{side} with confidence ({pct})"
    elif noisy:
        verdict = "inconclusive"
        reason = f"run-to-run spread too wide ({', '.join(noisy)} > {max_cv:.1%}); {pct}"
    elif within:
        verdict, reason = "pass", f"within {threshold:.1%} ({pct})"
    else:
        verdict, reason = "inconclusive", f"the {pct} straddles the {threshold:.1%} limit"
    if not gated:
        verdict, reason = "pass", "reported, not gated; " + pct
    return MetricComparison(metric=metric, higher_is_better=higher_is_better,
                            candidate=tuple(candidate), baseline=tuple(baseline), ratio=ratio,
                            ci_low=low, ci_high=high, cv_candidate=cv_c, cv_baseline=cv_b,
                            threshold=threshold, gated=gated, verdict=verdict, reason=reason)


def compare_runs(candidate: Sequence[dict[str, float]], baseline: Sequence[dict[str, float]], *,
                 gated: Sequence[str], throughput_drop: float, latency_rise: float,
                 max_cv: float, confidence: float, resamples: int, seed: int = 0
                 ) -> list[MetricComparison]:
    """Every metric of one workload x concurrency cell; those in `gated` decide."""
    order = [*gated, *(m for m in GATEABLE if m not in gated)]
    out = []
    for metric in order:
        higher = GATEABLE[metric]
        out.append(compare_metric(
            metric, [r[metric] for r in candidate], [r[metric] for r in baseline],
            higher_is_better=higher, threshold=throughput_drop if higher else latency_rise,
            max_cv=max_cv, confidence=confidence, resamples=resamples,
            gated=metric in gated, seed=seed))
    return out


# ---------------------------------------------------------------------------- power
#
# How small a change can the gate see with the runs it made? Normal approximation for
# the ratio of two medians of n runs each (what the bootstrap estimates):
#     var(median of n runs) ~= (pi / 2) * sigma^2 / n         (the median of a normal
#                                                              sample; efficiency 2/pi)
#     SE(log ratio)         ~= sqrt(pi / 2 * (cv_c^2 / n_c + cv_b^2 / n_b))
#     resolution (MDE)      = (z_{1 - alpha/2} + z_{power}) * SE
# A true change of the MDE has its confidence interval clear of "no change" with the
# given power (80 % by default). The gate adds its threshold on top: it flags a
# regression only when the whole CI lies beyond the threshold, so the smallest drop it
# flags with that power is threshold + MDE, and a build equal to the baseline passes
# with that power only while MDE < threshold.

POWER = 0.8


def _z(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def standard_error(cv_candidate: float, cv_baseline: float, n_candidate: int,
                   n_baseline: int) -> float:
    """SE of log(median ratio) from the arms' CVs and run counts (see above)."""
    import math

    return math.sqrt(math.pi / 2 * (cv_candidate ** 2 / n_candidate
                                    + cv_baseline ** 2 / n_baseline))


def detectable_change(cv_candidate: float, cv_baseline: float, n_candidate: int,
                      n_baseline: int, *, confidence: float, power: float = POWER) -> float:
    """The smallest true relative change the CI resolves with `power` (the MDE)."""
    z = _z(1 - (1 - confidence) / 2) + _z(power)
    return z * standard_error(cv_candidate, cv_baseline, n_candidate, n_baseline)


def runs_needed(cv_candidate: float, cv_baseline: float, target: float, *,
                confidence: float, power: float = POWER) -> int:
    """Runs per arm (equal for both) so that the MDE is at most `target`."""
    import math

    z = _z(1 - (1 - confidence) / 2) + _z(power)
    n = math.pi / 2 * z ** 2 * (cv_candidate ** 2 + cv_baseline ** 2) / target ** 2
    return max(2, math.ceil(n - 1e-9))


@dataclass(frozen=True, kw_only=True)
class Power:
    """What one gated metric's runs can tell."""

    metric: str
    runs: tuple[int, int]  # valid runs (candidate, baseline)
    cv: tuple[float, float]
    mde: float  # smallest change the CI resolves with POWER
    flags_from: float  # smallest regression the gate flags with POWER (threshold + mde)
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "runs": list(self.runs), "cv": list(self.cv),
                "mde": self.mde, "flags_regression_from": self.flags_from,
                "threshold": self.threshold, "power": POWER}


def power_of(comparison: MetricComparison, confidence: float) -> Power:
    n_c, n_b = len(comparison.candidate), len(comparison.baseline)
    mde = detectable_change(comparison.cv_candidate, comparison.cv_baseline, n_c, n_b,
                            confidence=confidence)
    return Power(metric=comparison.metric, runs=(n_c, n_b),
                 cv=(comparison.cv_candidate, comparison.cv_baseline), mde=mde,
                 flags_from=comparison.threshold + mde, threshold=comparison.threshold)
