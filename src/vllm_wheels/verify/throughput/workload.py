"""Throughput workloads: verify/workloads/<name>.toml -> a frozen `Workload`.

Everything that both arms must share lives in the workload (model directory, engine
arguments, attention backend, seed, prefix caching, the client's lengths and
concurrency), so an A/B can only differ in the arms themselves. Unknown keys are
rejected with a suggestion: a typo must not silently fall back to a default.

    name = "single-stream"
    model = "../models/gpt-oss-20b"     # config.json + tokenizer files; relative to this file
    [client]   input_len, output_len, num_prompts, concurrency = [1, 8], seed,
               warmup_prompts, runs, ignore_eos, order = "alternate" | "random" | "fixed",
               burn_in_s, prompts_per_concurrency
    [engine]   args = [...], load_format = "dummy", seed, prefix_caching,
               attention_backend, env = {...}
    [gate]     throughput_drop, latency_rise, max_cv, confidence, bootstrap_resamples
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import Table, read_toml
from ...errors import ConfigError

ORDERS = ("alternate", "random", "fixed")
MIN_RUNS = 5  # fewer independent runs per arm give no usable confidence interval


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """What the client sends; identical for both arms by construction."""

    input_len: int
    output_len: int
    num_prompts: int
    concurrency: tuple[int, ...]
    seed: int = 0
    warmup_prompts: int = 8
    runs: int = MIN_RUNS
    # vLLM needs ignore_eos with random (dummy) weights to produce exactly output_len
    # tokens; then a run is valid only if every request returned exactly output_len
    # tokens. Without it (servers that refuse the field: transformers serve answers 422),
    # a request may end early at EOS and is measured as `vllm bench serve` measures it
    # (its real output tokens); only a request longer than output_len is invalid.
    ignore_eos: bool = True
    # Which arm runs first in each round (harness.round_orders): "alternate" (ABBA),
    # "random" (balanced, from `seed`) or "fixed" (baseline first: biased by any order
    # effect, kept to show it).
    order: str = "alternate"
    # Seconds of warm-up load after each server start, before its first measured run:
    # the warm-up prompts at every measured concurrency in turn, until this much time has
    # passed. An H100 A/A measured a fresh vLLM server's median TTFT 5-20 % higher for
    # about its first minute of load, with output tok/s unchanged
    # (verify/results/2026-12-07-ab-official/); the per-round warm-up did not cover it.
    # 0: none (the per-round warm-up only).
    burn_in_s: float = 0.0
    # Prompts a run sends per unit of concurrency, at least (0: num_prompts at every
    # level). With num_prompts = concurrency every request arrives at once and a run is one
    # burst: its median TTFT depends on how the scheduler splits that one prefill, and
    # spread 4-9 % run to run at concurrency 16 on every H100 lease, the quiet host's too
    # (verify/results/2026-12-07-ab-official/). With more prompts than slots, requests enter
    # as others finish and the median is the steady state's.
    prompts_per_concurrency: int = 0

    def prompts_at(self, concurrency: int) -> int:
        """The prompts a run at this concurrency sends."""
        return max(self.num_prompts, concurrency * self.prompts_per_concurrency)


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """What a server we start (venv: and image: arms) is given."""

    args: tuple[str, ...] = ()
    load_format: str = "dummy"  # random weights: nothing to download, config + tokenizer suffice
    seed: int = 0
    prefix_caching: bool = False
    # Sets VLLM_ATTENTION_BACKEND in both arms ("" = let vLLM choose, which is exactly
    # what can differ between two builds, so name it for a fair comparison).
    attention_backend: str = ""
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Gate:
    """The decision's thresholds (defaults: vLLM's own perf gate, see stats.py)."""

    throughput_drop: float = 0.03  # fail if throughput lower by more than this, with confidence
    latency_rise: float = 0.025  # fail if median TTFT or ITL higher by more than this
    max_cv: float = 0.02  # an arm noisier than this run to run is "inconclusive"
    confidence: float = 0.95
    bootstrap_resamples: int = 5000
    # Which metrics decide (the rest are reported). A server that sends tokens in bursts
    # has a degenerate ITL (many zero gaps) and may leave median_itl_ms out.
    metrics: tuple[str, ...] = ("output_throughput", "total_token_throughput",
                                "median_ttft_ms", "median_itl_ms")


@dataclass(frozen=True, kw_only=True)
class Workload:
    name: str
    path: Path
    model: Path
    description: str = ""
    reference: str = ""  # a known figure to read the result against (e.g. the seed's tok/s)
    served_model_name: str = ""  # what the client asks for; "" = the model directory's name
    client: ClientSettings
    engine: EngineSettings = field(default_factory=EngineSettings)
    gate: Gate = field(default_factory=Gate)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.name

    def settings(self) -> dict[str, Any]:
        """Everything that must be equal between the arms (not the file's location)."""
        return {"model": str(self.model), "served_model_name": self.model_name,
                "client": dataclasses.asdict(self.client),
                "engine": dataclasses.asdict(self.engine)}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "description": self.description,
                "reference": self.reference, "fingerprint": self.fingerprint(),
                **self.settings(), "gate": dataclasses.asdict(self.gate)}

    def with_overrides(self, *, model: Path | None = None, runs: int | None = None,
                       burn_in_s: float | None = None) -> Workload:
        new = self
        if burn_in_s is not None:
            if burn_in_s < 0:
                raise ConfigError(f"--burn-in {burn_in_s}: must be >= 0 seconds",
                                  why="it is the seconds of warm-up load after each server "
                                      "start",
                                  fix="pass 0 (no burn-in) or a number of seconds, e.g. 60")
            new = dataclasses.replace(new, client=dataclasses.replace(new.client,
                                                                      burn_in_s=burn_in_s))
        if model is not None:
            new = dataclasses.replace(new, model=model.resolve())
        if runs is not None:
            _check_runs(runs, f"--runs {runs}")
            new = dataclasses.replace(new, client=dataclasses.replace(new.client, runs=runs))
        return new


def _check_runs(runs: int, where: str) -> None:
    if runs < MIN_RUNS:
        raise ConfigError(f"{where}: at least {MIN_RUNS} runs per arm are needed",
                          why="with fewer independent runs the bootstrap interval is meaningless",
                          fix=f"use runs >= {MIN_RUNS}")


def resolve_workload_path(name_or_file: str, workloads_dir: Path) -> Path:
    candidate = Path(name_or_file)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"workload file {candidate} does not exist")
        return candidate
    path = workloads_dir / f"{name_or_file}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in workloads_dir.glob("*.toml"))
        raise ConfigError(f"no workload named '{name_or_file}' in {workloads_dir}",
                          fix="known workloads: " + (", ".join(known) or "(none)"))
    return path


def load_workload(path: Path) -> Workload:
    raw = read_toml(path, missing="workload file not found",
                    fix="pass --workload with a name in verify/workloads/ or a TOML file")
    top = Table(raw, "", path, what=f"workload '{raw.get('name') or path.stem}'",
                doc="docs/throughput.md; every key: verify/workloads/single-stream.toml")
    name = top.get("name", str, default=path.stem)
    model_text = top.get("model", str, required=True)
    model = Path(model_text).expanduser()
    if not model.is_absolute():
        model = (path.parent / model).resolve()
    c = top.sub("client", required=True)
    concurrency = c.get("concurrency", list, required=True)
    if not concurrency or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                  for x in concurrency):
        raise ConfigError(f"{path}: [client] concurrency must be a non-empty list of "
                          f"positive integers, got {concurrency!r}")
    client = ClientSettings(
        input_len=_positive(c.get("input_len", int, required=True), "input_len", path),
        output_len=_positive(c.get("output_len", int, required=True), "output_len", path),
        num_prompts=_positive(c.get("num_prompts", int, required=True), "num_prompts", path),
        concurrency=tuple(concurrency),
        seed=c.get("seed", int, default=0),
        warmup_prompts=c.get("warmup_prompts", int, default=8),
        runs=c.get("runs", int, default=MIN_RUNS),
        ignore_eos=c.get("ignore_eos", bool, default=True),
        order=c.get("order", str, default="alternate"),
        burn_in_s=float(c.get("burn_in_s", (int, float), default=0)),
        prompts_per_concurrency=c.get("prompts_per_concurrency", int, default=0),
    )
    c.finish()
    if client.order not in ORDERS:
        raise ConfigError(f"{path}: [client] order must be one of {list(ORDERS)}, "
                          f"got {client.order!r}")
    _check_runs(client.runs, f"{path}: [client] runs = {client.runs}")
    if client.burn_in_s < 0:
        raise ConfigError(f"{path}: [client] burn_in_s must be >= 0, got {client.burn_in_s}",
                          why="it is the seconds of warm-up load after each server start",
                          fix="set it to 0 (no burn-in) or a number of seconds, e.g. 60")
    if client.prompts_per_concurrency < 0:
        raise ConfigError(f"{path}: [client] prompts_per_concurrency must be >= 0, got "
                          f"{client.prompts_per_concurrency}",
                          why="it is how many prompts a run sends per unit of concurrency",
                          fix="set it to 0 (num_prompts at every level) or e.g. 8")
    if client.output_len < 2:
        raise ConfigError(f"{path}: [client] output_len must be >= 2",
                          why="TPOT and ITL need at least two output tokens")
    e = top.sub("engine")
    args = e.get("args", list, default=[])
    if not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{path}: [engine] args must be a list of strings")
    env = e.get("env", dict, default={})
    if not all(isinstance(v, str) for v in env.values()):
        raise ConfigError(f"{path}: [engine] env values must be strings")
    engine = EngineSettings(
        args=tuple(args), load_format=e.get("load_format", str, default="dummy"),
        seed=e.get("seed", int, default=0),
        prefix_caching=e.get("prefix_caching", bool, default=False),
        attention_backend=e.get("attention_backend", str, default=""),
        env=tuple(sorted(env.items())),
    )
    e.finish()
    _check_engine_args(engine, path)
    g = top.sub("gate")
    gate = Gate(
        throughput_drop=_fraction(g.get("throughput_drop", float, default=0.03), "throughput_drop", path),
        latency_rise=_fraction(g.get("latency_rise", float, default=0.025), "latency_rise", path),
        max_cv=_fraction(g.get("max_cv", float, default=0.02), "max_cv", path),
        confidence=_fraction(g.get("confidence", float, default=0.95), "confidence", path),
        bootstrap_resamples=_positive(g.get("bootstrap_resamples", int, default=5000),
                                      "bootstrap_resamples", path),
        metrics=_gated_metrics(g.get("metrics", list, default=list(Gate().metrics)), path),
    )
    g.finish()
    workload = Workload(
        name=name, path=path.resolve(), model=model,
        description=top.get("description", str, default=""),
        reference=top.get("reference", str, default=""),
        served_model_name=top.get("served_model_name", str, default=""),
        client=client, engine=engine, gate=gate)
    top.finish()
    return workload


# Settings that the workload owns through its own keys: repeating them in args would let
# the two arms' command lines disagree with the recorded settings.
_OWNED_FLAGS = {"--seed": "seed", "--load-format": "load_format",
                "--enable-prefix-caching": "prefix_caching",
                "--no-enable-prefix-caching": "prefix_caching",
                "--served-model-name": "served_model_name (top level)",
                "--port": "(chosen by the harness)", "--host": "(chosen by the harness)",
                "--model": "model (top level)"}


def _check_engine_args(engine: EngineSettings, path: Path) -> None:
    for arg in engine.args:
        flag = arg.split("=", 1)[0]
        if flag in _OWNED_FLAGS:
            raise ConfigError(f"{path}: [engine] args must not contain {flag}",
                              why="the workload sets it for both arms in one place",
                              fix=f"use the workload key {_OWNED_FLAGS[flag]} instead")


def _gated_metrics(values: list[Any], path: Path) -> tuple[str, ...]:
    from .stats import GATEABLE

    bad = [v for v in values if v not in GATEABLE]
    if bad or not values:
        raise ConfigError(f"{path}: [gate] metrics must be a non-empty list out of "
                          f"{sorted(GATEABLE)}, got {values!r}")
    return tuple(values)


def _positive(value: int, key: str, path: Path) -> int:
    if value <= 0:
        raise ConfigError(f"{path}: {key} must be positive, got {value}")
    return value


def _fraction(value: float, key: str, path: Path) -> float:
    if not 0 < value < 1:
        raise ConfigError(f"{path}: [gate] {key} must be between 0 and 1 (a fraction), "
                          f"got {value}")
    return value
