#!/usr/bin/env python3
"""The figures of an ab_official.sh lease as Markdown tables, from its result.json files.

    python3 verify/gpu/ab_table.py EVIDENCE_DIR      (the unpacked ab-official.tar.gz)

Reads EVIDENCE_DIR/results/<step>/<stamp>/result.json (schema_version 1, written by
verify-throughput) and prints, per step: the verdict, each concurrency's output tok/s of
both arms with the ratio, its 95 % CI and both CVs, the smallest change the gate detects
(the power), TTFT and ITL ratios, then the backend parity, the order effect, the anchor
and the client cross-check. Only what the reports hold: no time stamps, no paths.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f} %"


def metric(cell: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in cell.get("metrics", []) if m.get("metric") == name), None)


def ratio_of(m: dict[str, Any] | None) -> str:
    return "-" if m is None else f"{m['ratio']:.3f}"


def mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def load(evidence: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    # the unpacked tarball (results/<step>/<stamp>/) or a committed lease directory
    # (results/<step>/, verify/gpu/ab_evidence.py)
    for path in sorted([*evidence.glob("results/*/*/result.json"),
                        *evidence.glob("results/*/result.json")]):
        step = path.parent.name if path.parent.parent.name == "results" else \
            path.parent.parent.name
        out.append((step, json.loads(path.read_text())))
    return out


def figures(reports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["| step | conc | verdict | candidate tok/s | baseline tok/s | ratio [95 % CI] "
             "| CV cand / base | detects (tok/s) | TTFT ratio | ITL ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for step, r in reports:
        power = r.get("power") or {}
        for cell in r.get("cells", []):
            conc = cell["concurrency"]
            m = metric(cell, "output_throughput")
            if m is None:
                continue
            lo, hi = (m.get("ci") or [None, None])[:2]
            mde = next((p.get("mde") for p in power.get(str(conc), [])
                        if p.get("metric") == "output_throughput"), None)
            ttft, itl = metric(cell, "median_ttft_ms"), metric(cell, "median_itl_ms")
            cand, base = mean(m.get("candidate_runs", [])), mean(m.get("baseline_runs", []))
            lines.append(
                f"| {step} | {conc} | {cell.get('verdict')} | "
                f"{cand:.1f} | {base:.1f} | {m['ratio']:.4f} [{lo:.4f}, {hi:.4f}] | "
                f"{m['cv_candidate'] * 100:.2f} % / {m['cv_baseline'] * 100:.2f} % | "
                f"{'-' if mde is None else f'{mde * 100:.1f} %'} | "
                f"{ratio_of(ttft)} | {ratio_of(itl)} |"
                if cand is not None and base is not None and lo is not None else
                f"| {step} | {conc} | {cell.get('verdict')} | - | - | - | - | - | - | - |")
    return lines


def parity(reports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    keys = ["attention_backend", "moe_backend", "gemm_kernel", "flashinfer", "cuda_graphs",
            "compile", "archs", "gpu_coverage", "build_type", "quantization"]
    lines = ["| step | arm | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for step, r in reports:
        p = r.get("parity") or {}
        for arm in ("candidate", "baseline"):
            facts = p.get(arm) or {}
            lines.append(f"| {step} | {arm} | " + " | ".join(
                str(facts.get(k, "-")).replace("|", "/") for k in keys) + " |")
    for step, r in reports:
        for d in (r.get("parity") or {}).get("differences", []):
            lines.append(f"- {step}: {d.get('text')} (likely cost: {d.get('cost')})")
    return lines


def extras(reports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = []
    for step, r in reports:
        head = f"- {step}: verdict **{r.get('verdict')}**"
        order = (r.get("order") or {})
        if order:
            head += f"; order {order.get('mode')}, second-vs-first " + ", ".join(
                f"c{c} {pct(e)}" for c, e in (order.get("effect") or {}).items())
        lines.append(head)
        for a in r.get("anchor") or []:
            if a.get("share") is not None:
                lines.append(f"  - anchor {a['arm']}: {a['measured_output_tok_s']:.1f} tok/s = "
                             f"{a['share'] * 100:.1f} % of {a['ceiling_tok_s']:.1f} tok/s "
                             f"({a.get('gpu')}, {a['bytes_per_token'] / 1e9:.2f} GB/token)")
        for c in r.get("cross_check") or []:
            lines.append(f"  - cross-check {c.get('arm')} c{c.get('concurrency')}: harness "
                         f"{c.get('harness_output_throughput')}, vllm bench serve "
                         f"{c.get('bench_output_throughput')}, difference "
                         f"{pct(c.get('difference'))}, agree {c.get('agree')}")
        for p in r.get("problems") or []:
            lines.append(f"  - problem: {p}")
    return lines


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    reports = load(Path(sys.argv[1]))
    if not reports:
        print(f"no results/*/*/result.json under {sys.argv[1]}", file=sys.stderr)
        return 1
    print("\n".join(figures(reports) + [""] + parity(reports) + [""] + extras(reports)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
