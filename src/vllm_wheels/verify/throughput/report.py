"""verify_throughput outputs, under verify/results/<stamp>-<workload>/:

    result.json   schema_version 1 (below); every run of both arms, the arms' facts
    report.md     the verdict first, then one table per workload x concurrency
    plot.png      per-run output throughput of both arms; TTFT and ITL distributions
    servers/      the server logs of arms the harness started (moved in by cli.run once
                  the directory is published, with verify-throughput.log)

result.json, schema_version 1:
    {"schema_version": 1, "tool": "vllm-wheels verify-throughput",
     "started": "...Z", "elapsed_s": 812.4,
     "verdict": "pass" | "regression" | "inconclusive" | "could-not-run",
     "problems": [...], "notes": [...],
     "workload": {name, path, fingerprint, model, served_model_name, client{...},
                  engine{...}, gate{...}, reference},
     "arms": {"candidate": {spec, kind, served_model, versions{vllm, torch, torch_git,
                            flashinfer, ...}, digest, gpu[...], command}, "baseline": {...}},
     "cells": [{"concurrency": 1, "verdict": "pass",
                "metrics": [{metric, gated, ratio, ci: [lo, hi], change, cv_candidate,
                             cv_baseline, threshold, verdict, reason,
                             candidate_runs: [...], baseline_runs: [...]}]}],
     "runs": [{arm, round, concurrency, valid, problems, <vLLM metric keys>,
               ttfts_s: [...], e2els_s: [...]}],
     "warmups": [...same shape...]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...cache import publish_dir, remove, temp_sibling
from .harness import AbResult

SCHEMA_VERSION = 1

_LABELS = {
    "output_throughput": ("Output token throughput", "tok/s"),
    "total_token_throughput": ("Total token throughput", "tok/s"),
    "request_throughput": ("Request throughput", "req/s"),
    "median_ttft_ms": ("Median TTFT", "ms"),
    "median_itl_ms": ("Median ITL", "ms"),
    "median_tpot_ms": ("Median TPOT", "ms"),
    "median_e2el_ms": ("Median E2EL", "ms"),
    "p99_ttft_ms": ("P99 TTFT", "ms"),
    "p99_itl_ms": ("P99 ITL", "ms"),
    "p99_tpot_ms": ("P99 TPOT", "ms"),
    "p99_e2el_ms": ("P99 E2EL", "ms"),
}


def to_json(result: AbResult) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "vllm-wheels verify-throughput",
        "started": result.started,
        "elapsed_s": result.elapsed_s,
        "verdict": result.verdict,
        "problems": result.problems,
        "notes": result.notes,
        "workload": result.workload.to_dict(),
        "arms": {"candidate": result.candidate.facts(), "baseline": result.baseline.facts()},
        "cells": [{"concurrency": conc, "verdict": result.cell_verdicts.get(conc),
                   "metrics": [m.to_dict() for m in result.comparisons.get(conc, [])]}
                  for conc in result.workload.client.concurrency],
        "runs": [r.to_dict() for r in result.runs],
        "warmups": [r.to_dict() for r in result.warmups],
    }


def _arm_line(facts: dict[str, Any]) -> str:
    v = facts.get("versions") or {}
    parts = [f"`{facts.get('spec')}`"]
    if v.get("vllm") or v.get("torch"):
        parts.append(f"vLLM {v.get('vllm')}, torch {v.get('torch')} (git "
                     f"{str(v.get('torch_git'))[:12]}), FlashInfer {v.get('flashinfer')}")
    if facts.get("kind") == "image":
        parts.append(f"digest {facts.get('digest') or 'unresolved (tag only)'}")
    if facts.get("version"):
        parts.append(f"server version {facts['version']}")
    gpu = facts.get("gpu")
    if gpu:
        parts.append("GPU " + "; ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in gpu))
    parts.append(f"served model `{facts.get('served_model')}`")
    return ", ".join(parts)


def verdict_lines(result: AbResult) -> list[str]:
    """One line per concurrency: its verdict and the gated metrics that did not pass."""
    lines = []
    for conc, verdict in result.cell_verdicts.items():
        bad = [m for m in result.comparisons.get(conc, []) if m.gated and m.verdict != "pass"]
        lines.append(f"- concurrency {conc}: **{verdict}**"
                     + ("".join(f"; {_LABELS[m.metric][0]} {m.change:+.1%}: {m.reason}"
                                for m in bad)))
    return lines


def markdown(result: AbResult) -> str:
    import numpy as np

    w = result.workload
    c = w.client
    lines = [f"# Throughput A/B: {w.name} — **{result.verdict.upper()}**", ""]
    if result.problems:
        lines += ["Could not run or decide:", ""] + [f"- {p}" for p in result.problems] + [""]
    lines += verdict_lines(result)
    lines += ["", f"- candidate: {_arm_line(result.candidate.facts())}",
              f"- baseline: {_arm_line(result.baseline.facts())}",
              f"- workload `{w.path.name}` (fingerprint {w.fingerprint()}): model `{w.model}`, "
              f"input {c.input_len} / output {c.output_len} tokens, {c.num_prompts} prompts, "
              f"seed {c.seed}, warm-up {c.warmup_prompts} prompts, {c.runs} runs per arm "
              f"interleaved, ignore_eos {c.ignore_eos}, temperature 0",
              f"- gate on {', '.join(w.gate.metrics)}: throughput drop > "
              f"{w.gate.throughput_drop:.1%} or latency rise > {w.gate.latency_rise:.1%} with "
              f"{w.gate.confidence:.0%} confidence; "
              f"inconclusive when an arm's CV > {w.gate.max_cv:.1%}",
              f"- took {result.elapsed_s / 60:.1f} min, started {result.started}"]
    if w.reference:
        lines.append(f"- reference: {w.reference}")
    lines += [f"- note: {n}" for n in result.notes]
    for conc in c.concurrency:
        comparisons = result.comparisons.get(conc)
        if not comparisons:
            continue
        lines += ["", f"## {w.name}, concurrency {conc}: {result.cell_verdicts[conc]}", "",
                  "| metric | baseline (median) | candidate (median) | change | "
                  f"{w.gate.confidence:.0%} CI | CV base / cand | verdict |",
                  "|---|---:|---:|---:|---|---|---|"]
        for m in comparisons:
            name, unit = _LABELS[m.metric]
            lines.append(
                f"| {name} ({unit}){'' if m.gated else ' *'} | {float(np.median(m.baseline)):.2f} | "
                f"{float(np.median(m.candidate)):.2f} | {m.change:+.2%} | "
                f"[{m.ci_low - 1:+.2%}, {m.ci_high - 1:+.2%}] | "
                f"{m.cv_baseline:.1%} / {m.cv_candidate:.1%} | {m.verdict if m.gated else '(not gated)'} |")
        lines.append("")
        lines.append("\\* reported, not gated. Change = median(candidate) / median(baseline) - 1 "
                     "over the valid runs; CI by bootstrap over runs.")
    invalid = [r for r in result.runs if not r.metrics.valid]
    if invalid:
        lines += ["", "## Invalid runs (left out)", ""]
        lines += [f"- {r.arm} round {r.round}, concurrency {r.concurrency}: "
                  + "; ".join(r.metrics.problems) for r in invalid]
    lines += ["", "Per-run numbers: result.json; plot: plot.png.", ""]
    return "\n".join(lines)


def plot(result: AbResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; must come before pyplot
    import matplotlib.pyplot as plt

    levels = result.workload.client.concurrency
    fig, axes = plt.subplots(len(levels), 3, figsize=(15, 3.6 * len(levels)), squeeze=False)
    colors = {"baseline": "tab:blue", "candidate": "tab:orange"}
    for row, conc in enumerate(levels):
        ax_tp, ax_ttft, ax_itl = axes[row]
        for arm in ("baseline", "candidate"):
            runs = [r for r in result.runs if r.arm == arm and r.concurrency == conc]
            ok = [r for r in runs if r.metrics.valid]
            bad = [r for r in runs if not r.metrics.valid]
            ax_tp.plot([r.round for r in ok], [r.metrics["output_throughput"] for r in ok],
                       "o-", color=colors[arm], label=f"{arm} ({len(ok)} valid)")
            if bad:
                ax_tp.plot([r.round for r in bad], [r.metrics["output_throughput"] for r in bad],
                           "x", color=colors[arm], label=f"{arm} invalid")
            ttfts = [t * 1000 for r in ok for t in r.ttfts]
            itls = [t * 1000 for r in ok for t in r.itls]
            if ttfts:
                ax_ttft.hist(ttfts, bins=40, alpha=0.5, color=colors[arm], label=arm)
            if itls:
                ax_itl.hist(itls, bins=60, alpha=0.5, color=colors[arm], label=arm)
        ax_tp.set_title(f"concurrency {conc}: output throughput per run")
        ax_tp.set_xlabel("round (interleaved A B A B)")
        ax_tp.set_ylabel("tok/s")
        ax_ttft.set_title("TTFT per request (valid runs)")
        ax_ttft.set_xlabel("ms")
        ax_itl.set_title("ITL per token gap (valid runs)")
        ax_itl.set_xlabel("ms")
        for ax in (ax_tp, ax_ttft, ax_itl):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
    fig.suptitle(f"{result.workload.name}: {result.verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(result: AbResult, out_dir: Path) -> Path:
    """Write the three files into out_dir (atomically: all or nothing). Server logs are
    not touched here: a failed write must not take them with its temporary directory."""
    tmp = temp_sibling(out_dir)
    remove(tmp)
    tmp.mkdir(parents=True)
    try:
        (tmp / "result.json").write_text(json.dumps(to_json(result), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(result))
        plot(result, tmp / "plot.png")
        publish_dir(tmp, out_dir)
    except BaseException:
        remove(tmp)
        raise
    return out_dir
