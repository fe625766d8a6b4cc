"""verify_throughput outputs, under verify/results/<stamp>-<workload>/:

    result.json   schema_version 1 (below); every run of both arms, the arms' facts
    report.md     the verdict, then every backend difference between the arms with its
                  likely cost, then one table per workload x concurrency, backend parity,
                  the gate's power, the order effect, the anchor, the client cross-check
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
     "parity": {"candidate": {attention_backend, moe_backend, gemm_kernel, cuda_graphs,
                              compile, flashinfer, archs, gpu_coverage, vllm_version,
                              build_type, quantization}, "baseline": {...},
                "differences": [{key, text, cost}], "unknown": [...]},
     "power": {"<concurrency>": [{metric, runs, cv, mde, flags_regression_from,
                                  threshold, power}]},
     "order": {mode, seed, rounds: [["baseline", "candidate"], ...],
               effect: {"<concurrency>": second-vs-first change or null}},
     "runs_auto": null | {target, budget_s, pilot_runs, runs_needed, runs_planned, ...},
     "burn_in": [{arm, round, seconds, requests: {"<concurrency>": n}}],
     "spread": [{concurrency, ttft_cv: [cand, base], itl_cv: [cand, base],
                 within_run_ttft_std_ms, median_ttft_ms,
                 server: {candidate|baseline: {client_ttft|ttft|queue|prefill:
                          {mean_ms, cv}}}}]   (median TTFT spreads while the decode is
                 steady: the time before the first token; server: vLLM's own /metrics)
     runs[].server_ms: {ttft, queue, prefill} vLLM's means over the run's requests, or null
     "cross_check": [{arm, concurrency, command, bench{...}, harness_output_throughput,
                      bench_output_throughput, difference, agree, tolerance}],
     "anchor": [{arm, gpu, measured_output_tok_s, bytes_per_token, ceiling_tok_s, share,
                 bandwidth_bytes_s, bandwidth_source, total_params, active_params}],
     "runs": [{arm, round, position, concurrency, valid, problems, <vLLM metric keys>,
               ttfts_s: [...], e2els_s: [...]}],
     "warmups": [...same shape...]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...cache import publish_dir, remove, temp_sibling
from . import anchor, crosscheck, parity, servermetrics, stats
from .harness import AbResult, order_effect

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
        "parity": parity_json(result),
        "power": {str(conc): [stats.power_of(m, result.workload.gate.confidence).to_dict()
                              for m in result.comparisons.get(conc, []) if m.gated]
                  for conc in result.workload.client.concurrency},
        "order": {"mode": result.workload.client.order, "seed": result.order_seed,
                  "rounds": [list(o) for o in result.orders],
                  "effect": {str(conc): order_effect(result, conc)
                             for conc in result.workload.client.concurrency}},
        "runs_auto": result.auto,
        "burn_in": result.burn_ins,
        "spread": spread_diagnosis(result),
        "cross_check": result.cross_checks,
        "anchor": anchors(result),
        "runs": [r.to_dict() for r in result.runs],
        "warmups": [r.to_dict() for r in result.warmups],
    }


def parity_json(result: AbResult) -> dict[str, Any]:
    cand = parity.arm_parity(result.candidate.facts())
    base = parity.arm_parity(result.baseline.facts())
    return {"candidate": cand, "baseline": base,
            "differences": [{"key": d.key, "text": d.text, "cost": d.cost}
                            for d in parity.differences(cand, base)],
            "unknown": parity.unknown_fields(cand, base)}


def parity_lines(result: AbResult) -> list[str]:
    """The report's first lines: every difference between the arms, with its cost."""
    doc = parity_json(result)
    diffs = doc["differences"]
    if diffs:
        lines = [f"**{len(diffs)} difference(s) between the arms** (from their server logs, "
                 "packages and compiled archs):", ""]
        lines += [f"- {d['text']} — likely cost: {d['cost']}" for d in diffs]
    else:
        lines = ["No backend, kernel-path, graph, compile or arch difference found between "
                 "the arms (from their server logs, packages and compiled archs)."]
    if doc["unknown"]:
        lines += ["", "Not known for both arms (no log line, venv or GPU to read it from): "
                  + ", ".join(doc["unknown"]) + "."]
    return lines


def parity_table(result: AbResult) -> list[str]:
    doc = parity_json(result)
    lines = ["| backend parity | candidate | baseline |", "|---|---|---|"]
    for key, label in parity.FIELDS:
        a, b = doc["candidate"].get(key), doc["baseline"].get(key)
        lines.append(f"| {label} | {a if a is not None else '?'} | "
                     f"{b if b is not None else '?'} |")
    return lines


def _gpu_name(result: AbResult) -> str:
    for arm in (result.candidate, result.baseline):
        for gpu in arm.facts().get("gpu") or []:
            if gpu.get("name"):
                return str(gpu["name"])
    return ""


def anchors(result: AbResult) -> list[dict[str, Any]]:
    """Single-stream (concurrency 1) output tok/s of each arm against the bandwidth
    ceiling; empty without a concurrency-1 cell or a known GPU name."""
    import numpy as np

    if 1 not in result.workload.client.concurrency:
        return []
    gpu = _gpu_name(result)
    out = []
    for arm in ("candidate", "baseline"):
        runs = result.valid_runs(arm, 1)
        if not runs:
            continue
        tps = float(np.median([r.metrics["output_throughput"] for r in runs]))
        if not gpu:
            out.append({"arm": arm, "measured_output_tok_s": tps,
                        "error": "no GPU name (nvidia-smi) to read the bandwidth for"})
            continue
        out.append({"arm": arm, **anchor.anchor(result.workload.model,
                                                 result.workload.engine.args, gpu, tps)})
    return out


def anchor_lines(result: AbResult) -> list[str]:
    lines = []
    for a in anchors(result):
        if "error" in a:
            lines.append(f"- {a['arm']}: {a['measured_output_tok_s']:.1f} output tok/s at "
                         f"concurrency 1; no anchor: {a['error']}")
            continue
        lines.append(
            f"- {a['arm']}: {a['measured_output_tok_s']:.1f} output tok/s at concurrency 1 = "
            f"**{a['share']:.0%}** of the {a['gpu']} bandwidth ceiling "
            f"{a['ceiling_tok_s']:.0f} tok/s ({a['bandwidth_bytes_s'] / 1e12:.2f} TB/s "
            f"[{a['bandwidth_source']}] / {a['bytes_per_token'] / 1e9:.2f} GB of weights read "
            f"per token; {a['active_params'] / 1e9:.2f} B active of "
            f"{a['total_params'] / 1e9:.2f} B params)")
    return lines


def power_lines(result: AbResult) -> list[str]:
    g = result.workload.gate
    lines = [f"| concurrency | metric | valid runs cand / base | CV cand / base | resolves "
             f"(80 % power, {g.confidence:.0%} CI) | flags a regression from |",
             "|---|---|---|---|---|---|"]
    for conc in result.workload.client.concurrency:
        for m in result.comparisons.get(conc, []):
            if not m.gated:
                continue
            pw = stats.power_of(m, g.confidence)
            lines.append(f"| {conc} | {_LABELS[m.metric][0]} | {pw.runs[0]} / {pw.runs[1]} | "
                         f"{pw.cv[0]:.2%} / {pw.cv[1]:.2%} | ±{pw.mde:.2%} | "
                         f"{pw.flags_from:.2%} (threshold {pw.threshold:.1%} + "
                         f"{pw.mde:.2%}) |")
    return lines


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


def spread_diagnosis(result: AbResult) -> list[dict[str, Any]]:
    """Where a spread of median TTFT comes from, per concurrency, when the decode is steady:
    then it is the time before the first token, which the kernels of neither build set
    (two H100 leases: per-request TTFT std 3-7 ms with ITL flat to 0.01 ms, where an
    earlier host had 0.2-0.4 ms; verify/results/2026-12-07-ab-official/)."""
    import numpy as np

    g = result.workload.gate
    out = []
    for conc, comparisons in result.comparisons.items():
        by = {m.metric: m for m in comparisons}
        ttft, itl = by.get("median_ttft_ms"), by.get("median_itl_ms")
        if ttft is None or itl is None:
            continue
        if max(ttft.cv_candidate, ttft.cv_baseline) <= g.max_cv:
            continue  # TTFT is not what spreads
        if max(itl.cv_candidate, itl.cv_baseline) > g.max_cv / 4:
            continue  # the decode spreads too: no single place to name
        runs = [r for r in result.runs if r.concurrency == conc and r.metrics.valid
                and len(r.ttfts) > 1]
        if not runs:
            continue
        within = float(np.mean([np.std(r.ttfts, ddof=1) for r in runs])) * 1e3
        median = float(np.median([r.metrics["median_ttft_ms"] for r in runs]))
        entry: dict[str, Any] = {"concurrency": conc,
                                 "ttft_cv": [ttft.cv_candidate, ttft.cv_baseline],
                                 "itl_cv": [itl.cv_candidate, itl.cv_baseline],
                                 "within_run_ttft_std_ms": within, "median_ttft_ms": median}
        server = _server_side(result, conc)
        if server:
            entry["server"] = server
        out.append(entry)
    return out


def _server_side(result: AbResult, conc: int) -> dict[str, Any] | None:
    """vLLM's own per-run means (its /metrics) beside the client's mean TTFT, per arm: the
    CV of each over the runs, and the means' medians in ms."""
    import numpy as np

    out: dict[str, Any] = {}
    for arm in ("candidate", "baseline"):
        runs = [r for r in result.valid_runs(arm, conc) if r.server_ms and "ttft" in r.server_ms]
        if len(runs) < 2:
            return None
        series = {"client_ttft": [r.metrics["mean_ttft_ms"] for r in runs],
                  **{key: [r.server_ms[key] for r in runs if r.server_ms and key in r.server_ms]
                     for key in servermetrics.HISTOGRAMS}}
        out[arm] = {key: {"mean_ms": float(np.median(xs)), "cv": stats.cv(xs)}
                    for key, xs in series.items() if len(xs) >= 2}
    return out


def _server_text(d: dict[str, Any], max_cv: float) -> str:
    s = d.get("server")
    if not s:
        return ""

    def cvs(key: str) -> str:
        return " / ".join(f"{s[arm][key]['cv']:.1%}" if key in s[arm] else "-"
                          for arm in ("candidate", "baseline"))

    inside = any(s[arm].get("ttft", {}).get("cv", 0.0) > max_cv
                 for arm in ("candidate", "baseline"))
    where = ("inside the server: vLLM's own TTFT spreads as well" if inside else
             "outside vLLM's engine and output path (HTTP, tokenization, the client): "
             "vLLM's own TTFT is steady")
    parts = [f" vLLM's /metrics for the same runs (run means, CV cand / base): client TTFT "
             f"{cvs('client_ttft')}, vLLM TTFT {cvs('ttft')}"]
    if "queue" in s["candidate"] or "queue" in s["baseline"]:
        parts.append(f", engine queue {cvs('queue')}, prefill {cvs('prefill')}")
    text = "".join(parts) + f": the spread is {where}."
    if inside and any(s[arm].get("prefill", {}).get("cv", 0.0) > max_cv
                      for arm in ("candidate", "baseline")):
        # measured on an H100 (verify/results/2026-12-07-ab-official/, lease 5): vLLM 0.20.0
        # captures CUDA graphs up to twice --max-num-seqs tokens and runs prefill batches
        # PIECEWISE, so a short prefill is host work; a long one is the GPU's
        text += (" It is in the engine's prefill step (scheduled to first token): a prefill "
                 "that runs outside CUDA graphs (more tokens than the largest captured size, "
                 "or PIECEWISE with attention outside them) is bound by the host's CPU; "
                 "longer prompts make it GPU-bound (on an H100, 256 tokens spread 3.3 ms a "
                 "request and 1,024 tokens 0.98 ms: verify/workloads/llama-8b-long.toml).")
    return text


def spread_lines(result: AbResult) -> list[str]:
    return [f"- concurrency {d['concurrency']}: median TTFT spreads from run to run (CV "
            f"{d['ttft_cv'][0]:.1%} / {d['ttft_cv'][1]:.1%}) while the decode is steady "
            f"(median ITL CV {d['itl_cv'][0]:.2%} / {d['itl_cv'][1]:.2%}): the spread is in "
            f"the time before the first token, which varies from request to request by "
            f"{d['within_run_ttft_std_ms']:.1f} ms (std within a run; median TTFT "
            f"{d['median_ttft_ms']:.1f} ms). That is the host and the server's request path "
            "(API server, scheduling, a thread's wake-up), not either build's kernels; more "
            "prompts per run narrow it as 1/sqrt(prompts), a quieter host removes it "
            "(verify/gpu/host_jitter.py measures the host)."
            + _server_text(d, result.workload.gate.max_cv)
            for d in spread_diagnosis(result)]


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
    lines += parity_lines(result) + [""]
    if result.problems:
        lines += ["Could not run or decide:", ""] + [f"- {p}" for p in result.problems] + [""]
    lines += verdict_lines(result)
    spread = spread_lines(result)
    if spread:
        lines += ["", "Why the runs spread:", ""] + spread
    lines += ["", f"- candidate: {_arm_line(result.candidate.facts())}",
              f"- baseline: {_arm_line(result.baseline.facts())}",
              f"- workload `{w.path.name}` (fingerprint {w.fingerprint()}): model `{w.model}`, "
              f"input {c.input_len} / output {c.output_len} tokens, {c.num_prompts} prompts"
              + "".join(f" ({c.prompts_at(conc)} at concurrency {conc})"
                        for conc in c.concurrency if c.prompts_at(conc) != c.num_prompts)
              + ", "
              f"seed {c.seed}, warm-up {c.warmup_prompts} prompts, {len(result.orders)} runs "
              f"per arm, order {c.order}"
              + (f" (seed {result.order_seed})" if result.order_seed is not None else "")
              + f" ({' '.join(''.join(a[0].upper() for a in o) for o in result.orders)}), "
              f"ignore_eos {c.ignore_eos}, temperature 0"
              + (f", burn-in {c.burn_in_s:.0f} s after each server start ("
                 + "; ".join(f"{b['arm']} round {b['round']}: "
                             f"{sum(b['requests'].values())} requests in {b['seconds']:.0f} s"
                             for b in result.burn_ins) + ")" if c.burn_in_s else ""),
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
    lines += ["", "## Backend parity", ""] + parity_table(result)
    if result.comparisons:
        lines += ["", "## The gate's power", "",
                  "The smallest change the runs resolve (normal approximation for the ratio "
                  "of medians; see stats.py) and the smallest regression the gate flags, "
                  "each with 80 % power:", ""] + power_lines(result)
    if result.auto:
        a = result.auto
        lines += ["", f"--runs auto: target ±{a['target']:.1%}; the pilot ({a['pilot_runs']} "
                  f"runs per arm, {a['s_per_round']:.0f} s a round; noisiest {a['noisiest']}) "
                  f"needed {a['runs_needed']} runs per arm; ran {a['runs_planned']} "
                  f"({a['limited_by']}; budget {a['budget_s']:.0f} s)."]
    effects = [(conc, order_effect(result, conc)) for conc in c.concurrency]
    effects = [(conc, e) for conc, e in effects if e is not None]
    if effects:
        lines += ["", "Order effect (output tok/s of the arm running second in its round vs "
                  "first, both arms; balanced order keeps it out of the comparison): "
                  + ", ".join(f"concurrency {conc} {e:+.2%}" for conc, e in effects) + "."]
    anchor_text = anchor_lines(result)
    if anchor_text:
        lines += ["", "## Absolute anchor (single stream vs the GPU's memory bandwidth)", ""]
        lines += anchor_text
    if result.cross_checks:
        lines += ["", "## Client cross-check (vllm bench serve, same server and lengths)", ""]
        lines += crosscheck.lines(result.cross_checks)
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
        ax_tp.set_xlabel("round (order alternates: see report.md)")
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
