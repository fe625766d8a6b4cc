"""Cross-check of the built-in client against vLLM's own: `vllm bench serve` (from a venv
with vLLM, e.g. the official wheel's) against the same url: server with the same lengths,
its output tok/s next to the harness's median, agreeing within 2 % or not.

The command (vLLM 0.20.0's `vllm/benchmarks/serve.py` and `benchmarks/datasets`):
    vllm bench serve --backend openai --base-url URL --endpoint /v1/completions
        --model MODEL_DIR --served-model-name NAME --tokenizer MODEL_DIR
        --dataset-name random --random-input-len IN --random-output-len OUT
        --random-range-ratio 0 --num-prompts N --max-concurrency C --request-rate inf
        --temperature 0 --seed SEED [--ignore-eos] --num-warmups W --disable-tqdm
        --save-result --result-dir DIR --result-filename FILE
Its result JSON (`--save-result`) has vLLM's BenchmarkMetrics keys: duration, completed,
failed, total_input_tokens, total_output_tokens, request_throughput, output_throughput,
total_token_throughput, {mean,median,std,p99}_{ttft,tpot,itl,e2el}_ms, plus num_prompts,
max_concurrency and per-request lists (input_lens, output_lens, ttfts, itls, ...).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import CouldNotRunError
from ...log import Reporter
from ...runner import query
from .workload import Workload

AGREE = 0.02  # the harness and vLLM's bench agree when within 2 % of each other
KEYS = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
        "request_throughput", "output_throughput", "total_token_throughput",
        "median_ttft_ms", "median_itl_ms", "num_prompts", "max_concurrency")


def bench_command(venv: Path, base_url: str, served_model: str, workload: Workload,
                  concurrency: int, result_dir: Path, filename: str) -> list[str]:
    c = workload.client
    argv = [str(venv / "bin" / "vllm"), "bench", "serve", "--backend", "openai",
            "--base-url", base_url, "--endpoint", "/v1/completions",
            "--model", str(workload.model), "--served-model-name", served_model,
            "--tokenizer", str(workload.model), "--dataset-name", "random",
            "--random-input-len", str(c.input_len), "--random-output-len", str(c.output_len),
            "--random-range-ratio", "0", "--num-prompts", str(c.prompts_at(concurrency)),
            "--max-concurrency", str(concurrency), "--request-rate", "inf",
            "--temperature", "0", "--seed", str(c.seed)]
    if c.ignore_eos:
        argv.append("--ignore-eos")
    argv += ["--num-warmups", str(c.warmup_prompts), "--disable-tqdm", "--save-result",
             "--result-dir", str(result_dir), "--result-filename", filename]
    return argv


def parse_result(path: Path) -> dict[str, Any]:
    """The keys of KEYS from `vllm bench serve --save-result`'s JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CouldNotRunError(f"unreadable vllm bench serve result {path}: {exc}") from exc
    if not isinstance(data, dict) or "output_throughput" not in data:
        raise CouldNotRunError(f"{path} is not a vllm bench serve result (no "
                               "output_throughput)")
    return {k: data.get(k) for k in KEYS}


def compare(harness_tps: float, bench_tps: float, tolerance: float = AGREE) -> dict[str, Any]:
    """bench / harness - 1 and whether that is within the tolerance."""
    diff = bench_tps / harness_tps - 1.0 if harness_tps else float("inf")
    return {"harness_output_throughput": harness_tps, "bench_output_throughput": bench_tps,
            "difference": diff, "agree": abs(diff) <= tolerance, "tolerance": tolerance}


@dataclass
class CrossCheck:
    """harness.run_ab's cross_check hook: one bench run per url: arm and concurrency."""

    venv: Path
    reporter: Reporter | None
    work_dir: Path = field(default_factory=lambda: Path("cross-check"))
    timeout_s: float = 900.0

    def __call__(self, result: Any, arms: dict[str, Any]) -> None:
        reporter = self.reporter or Reporter(None)
        w: Workload = result.workload
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for label, arm in sorted(arms.items()):
            if arm.spec.kind != "url":
                result.cross_checks.append({"arm": label, "skipped": "only url: arms still "
                                            "serve after the rounds"})
                continue
            for conc in w.client.concurrency:
                name = f"{label}-c{conc}.json"
                argv = bench_command(self.venv, arm.base_url, arm.served_model, w, conc,
                                     self.work_dir, name)
                reporter.say(f"==> cross-check: vllm bench serve against {label}, "
                             f"concurrency {conc}")
                # The bench runs what the venv holds (not this tool's PYTHONPATH), offline.
                done = query(argv, timeout=self.timeout_s,
                             env_changes={"PYTHONPATH": None, "HF_HUB_OFFLINE": "1"})
                (self.work_dir / f"{label}-c{conc}.log").write_text(
                    done.stdout + done.stderr)
                entry: dict[str, Any] = {"arm": label, "concurrency": conc,
                                         "command": argv}
                if not done.ok:
                    entry["error"] = done.describe(400)
                    result.cross_checks.append(entry)
                    continue
                try:
                    bench = parse_result(self.work_dir / name)
                except CouldNotRunError as exc:
                    entry["error"] = exc.what
                    result.cross_checks.append(entry)
                    continue
                runs = result.valid_runs(label, conc)
                if not runs:
                    entry.update(bench=bench, error="no valid harness run to compare with")
                else:
                    ours = statistics.median(r.metrics["output_throughput"] for r in runs)
                    entry.update(bench=bench,
                                 **compare(ours, float(bench["output_throughput"])))
                result.cross_checks.append(entry)


def lines(cross_checks: list[dict[str, Any]]) -> list[str]:
    """The report's lines: per arm and concurrency, both figures and the agreement."""
    out = []
    for e in cross_checks:
        if "skipped" in e:
            out.append(f"- {e['arm']}: not cross-checked ({e['skipped']})")
        elif "error" in e and "difference" not in e:
            out.append(f"- {e['arm']} concurrency {e.get('concurrency')}: vllm bench serve "
                       f"gave no result: {e['error']}")
        else:
            verdict = "agree" if e["agree"] else "DISAGREE"
            out.append(f"- {e['arm']} concurrency {e['concurrency']}: harness "
                       f"{e['harness_output_throughput']:.1f} output tok/s (median), vllm bench "
                       f"serve {e['bench_output_throughput']:.1f} ({e['difference']:+.2%}): "
                       f"{verdict} within {e['tolerance']:.0%}")
    return out
