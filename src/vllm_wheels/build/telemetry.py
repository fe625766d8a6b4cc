"""Build telemetry: per translation unit wall/CPU/peak memory/cache result (written by the
helpers/measure_compile.py launcher, one JSON line per unit), ninja's own timings
(.ninja_log), and the build-level numbers derived from them:

- Σ CPU-seconds over all units, and parallel efficiency = Σ CPU-s / (compile wall × jobs),
  where the compile wall is the time spent in the package builds (they run one after
  another) and jobs the pipeline's concurrent compiler processes. nvcc's --threads can push
  it above 1 (one job then uses several cores).
- the critical path per ninja build: the longest chain through the build graph, an edge
  being "output needs input" as ninja reports it (`ninja -t query`) restricted to the
  outputs built in this run, each weighted by its .ninja_log duration. Ninja builds of one
  package run in sequence and packages run in sequence, so the build's critical path is the
  sum over the ninja builds.
- cache hit rate = hits / (hits + misses) over units whose result is known.

`simulate` predicts a build's wall time from measured units (tools/predict_build.py).

Unit cost record: after each build the per-unit costs (wall, CPU, peak memory; cache hits
and failed compiles left out, they say nothing of the compile's cost) are merged into
CACHE/unit-costs/<package>-<version>-<arch list digest>.json, keyed by the unit's source
path relative to the package's tree (`cache:` + the path below the cache root for sources
outside it, e.g. bundled externals), so the record holds across cache directories and
machines. The next build's parallelism reads it (parallelism.choose_parallelism); a
build-telemetry.json from another machine is accepted too (--unit-costs).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import layout

SCHEMA_VERSION = 1
RECORD_SCHEMA_VERSION = 1
FILENAME = layout.TELEMETRY_FILENAME
# The order pass's stamps (builders.vllm.longest_first_manifest): in .ninja_log, not in
# build.ninja, so not build outputs for the critical path.
ORDER_DIR = layout.ORDER_DIR
UNITS_FILENAME = "compile-units.jsonl"
LAUNCHER = layout.helper("measure_compile.py")
ENV = "VLLM_WHEELS_TELEMETRY"

MEASURED = {
    "wall_s": "wall time of the compiler command (launcher's monotonic clock)",
    "cpu_s": "user+sys of all waited-for descendants (wait4 rusage of the command), plus for "
             "sccache units the sampled CPU of the sccache server's processes naming the unit",
    "peak_rss_kb": "max(sampled peak of the summed RSS of the unit's process tree every 0.2 s, "
                   "largest single descendant's ru_maxrss from wait4)",
    "cache": "ccache: per-invocation stats log (exact); sccache: server counters before/after, "
             "'unknown' when another sccache unit ran at the same time",
}


# ------------------------------------------------------------------------- reading


def read_units(path: Path) -> list[dict[str, Any]]:
    """The launcher's JSON lines; a torn last line (a killed build) is skipped."""
    if not path.exists():
        return []
    units = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            units.append(json.loads(line))
        except ValueError:
            continue
    return units


@dataclass(frozen=True)
class NinjaEntry:
    start_ms: int
    end_ms: int
    output: str

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


def parse_ninja_log(text: str) -> list[NinjaEntry]:
    """`.ninja_log` (v5/v6/v7: start, end, mtime, output, hash, tab separated). A later line
    for the same output replaces the earlier one, as in ninja itself."""
    entries: dict[str, NinjaEntry] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 4:
            continue
        try:
            entries[fields[3]] = NinjaEntry(int(fields[0]), int(fields[1]), fields[3])
        except ValueError:
            continue
    return list(entries.values())


def parse_ninja_query(text: str) -> dict[str, list[str]]:
    """`ninja -t query OUT...`: {output: its inputs (explicit, implicit and order-only)}."""
    graph: dict[str, list[str]] = {}
    current: str | None = None
    section = ""
    for line in text.splitlines():
        if not line.startswith(" "):
            current = line.rstrip(":").strip()
            graph[current] = []
            section = ""
        elif line.startswith("  ") and not line.startswith("    "):
            section = line.strip()
        elif current is not None and section.startswith("input"):
            graph[current].append(line.strip().removeprefix("| ").removeprefix("|| "))
    return graph


def critical_path(entries: Sequence[NinjaEntry], inputs: Mapping[str, Sequence[str]]
                  ) -> tuple[float, list[str]]:
    """Longest chain (seconds, outputs from first to last) through the outputs built, where
    `inputs[out]` lists what `out` needs; inputs not built in this run weigh nothing."""
    weight = {e.output: e.seconds for e in entries}
    best: dict[str, tuple[float, list[str]]] = {}

    def longest(out: str, seen: frozenset[str]) -> tuple[float, list[str]]:
        if out in best:
            return best[out]
        prev: tuple[float, list[str]] = (0.0, [])
        for dep in inputs.get(out, ()):
            if dep in weight and dep not in seen:
                cand = longest(dep, seen | {out})
                if cand[0] > prev[0]:
                    prev = cand
        best[out] = (prev[0] + weight[out], [*prev[1], out])
        return best[out]

    result: tuple[float, list[str]] = (0.0, [])
    for e in sorted(entries, key=lambda e: e.output):
        cand = longest(e.output, frozenset())
        if cand[0] > result[0]:
            result = cand
    return round(result[0], 3), result[1]


def ninja_build(log: Path, offset: int, ninja: Path | None) -> dict[str, Any]:
    """What one ninja build directory did in this run: entries appended after `offset`
    (the log's size before; a log that shrank was recompacted by ninja: read it all)."""
    data = log.read_bytes()
    if len(data) < offset:
        offset = 0
    entries = [e for e in parse_ninja_log(data[offset:].decode("utf-8", "replace"))
               if not e.output.startswith(ORDER_DIR + "/")]
    inputs: dict[str, list[str]] = {}
    if ninja is not None and entries:
        # Objects' inputs are sources (not built); the graph is in the link steps.
        targets = [e.output for e in entries if not e.output.endswith(".o")]
        # The build file: build.ninja, or (FlashInfer runs `ninja -f tmp/flashinfer_jit.ninja`)
        # the first .ninja file below the log's directory that knows every target.
        default = log.parent / "build.ninja"
        files = [default] if default.exists() else sorted(log.parent.rglob("*.ninja"))
        for file in files if targets else []:
            proc = subprocess.run([str(ninja), "-C", str(log.parent), "-f", str(file), "-t",
                                   "query", *targets], text=True, capture_output=True,
                                  check=False)
            if proc.returncode == 0:
                inputs = parse_ninja_query(proc.stdout)
                break
    seconds, chain = critical_path(entries, inputs)
    span = (max(e.end_ms for e in entries) - min(e.start_ms for e in entries)) / 1000 \
        if entries else 0.0
    return {"log": str(log), "outputs": len(entries), "span_s": round(span, 3),
            "critical_path_s": seconds, "critical_path": chain,
            "graph": "ninja -t query" if inputs else "none (each output alone)"}


def ninja_log_sizes(root: Path) -> dict[Path, int]:
    """Sizes of the .ninja_log files under a package's build directory, before a build."""
    return {p: p.stat().st_size for p in sorted(root.rglob(".ninja_log"))} if root.is_dir() \
        else {}


# ------------------------------------------------------------------------- summary


def mark_overlapping_sccache(units: list[dict[str, Any]]) -> None:
    """sccache's counters are server-wide: a unit's before/after delta is its own only when
    no other sccache unit ran inside its window."""
    windows = [(u["start"], u["start"] + u["wall_s"], i) for i, u in enumerate(units)
               if u.get("cache_tool") == "sccache"]
    for start, end, i in windows:
        if any(j != i and s < end and start < e for s, e, j in windows):
            units[i]["cache"] = "unknown"


def hit_rate(units: Iterable[Mapping[str, Any]]) -> float | None:
    results = [u.get("cache") for u in units]
    hits, misses = results.count("hit"), results.count("miss")
    return round(hits / (hits + misses), 3) if hits + misses else None


def parallel_efficiency(cpu_seconds: float, wall_seconds: float, jobs: int) -> float | None:
    return round(cpu_seconds / (wall_seconds * jobs), 3) if wall_seconds > 0 and jobs else None


def summarize(units: Sequence[Mapping[str, Any]], *, compile_wall_s: float, jobs: int,
              ninja_builds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    cpu = sum(float(u.get("cpu_s", 0)) for u in units)
    peak = max(units, key=lambda u: int(u.get("peak_rss_kb", 0)), default=None)
    results = [u.get("cache") for u in units]
    return {
        "units": len(units),
        "cpu_seconds": round(cpu, 3),
        "compile_wall_s": round(compile_wall_s, 3),
        "jobs": jobs,
        "parallel_efficiency": parallel_efficiency(cpu, compile_wall_s, jobs),
        "critical_path_s": round(sum(float(b["critical_path_s"]) for b in ninja_builds), 3),
        "peak_rss_kb": int(peak["peak_rss_kb"]) if peak else 0,
        "peak_rss_unit": unit_name(peak) if peak else None,
        "cache": {"hits": results.count("hit"), "misses": results.count("miss"),
                  "unknown": results.count("unknown"), "hit_rate": hit_rate(units)},
    }


def unit_name(unit: Mapping[str, Any]) -> str:
    return str(unit.get("source") or unit.get("output") or "?")


def render_table(units: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                 top: int = 10) -> str:
    ranked = sorted(units, key=lambda u: (-float(u.get("cpu_s", 0)), -float(u.get("wall_s", 0)),
                                          unit_name(u)))[:top]
    lines = [f"Build telemetry: {len(ranked)} most expensive of {len(units)} compile unit(s) "
             "(by CPU-s)",
             f"  {'wall':>8} {'cpu':>8} {'peak MB':>8}  cache    package: unit"] if units else \
        ["Build telemetry: no unit went through the compiler launcher (everything up to date)"]
    for u in ranked:
        lines.append(f"  {float(u.get('wall_s', 0)):>7.1f}s {float(u.get('cpu_s', 0)):>7.1f}s "
                     f"{int(u.get('peak_rss_kb', 0)) / 1024:>8.0f}  {str(u.get('cache') or '-'):<8} "
                     f"{u.get('package', '?')}: {Path(unit_name(u)).name}")
    eff = summary["parallel_efficiency"]
    rate = summary["cache"]["hit_rate"]
    lines.append(f"  Σ CPU {summary['cpu_seconds']:.1f} s over {summary['compile_wall_s']:.1f} s "
                 f"compile wall x {summary['jobs']} job(s): parallel efficiency "
                 f"{'n/a' if eff is None else f'{eff:.2f}'}; critical path "
                 f"{summary['critical_path_s']:.1f} s")
    lines.append(f"  peak memory {summary['peak_rss_kb'] / 1024:.0f} MB "
                 f"({Path(str(summary['peak_rss_unit'] or '-')).name}); compile cache hit rate "
                 + ("n/a" if rate is None else f"{rate:.0%}")
                 + f" ({summary['cache']['hits']} hit, {summary['cache']['misses']} miss, "
                   f"{summary['cache']['unknown']} unknown)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class Prediction:
    wall_s: float
    peak_kb: int
    schedule: list[tuple[float, float, str]]  # (start, end, unit)
    oversized: list[str]  # units alone above the budget: each ran by itself


def simulate(units: Sequence[tuple[str, float, int]], jobs: int, budget_kb: int,
             longest_first: bool = True) -> Prediction:
    """List scheduling of (name, seconds, peak_kb) units: longest first (or in the order
    given, e.g. the measured start order), a unit starts when a job slot is free and the
    running units' peak memory plus its own fits the budget (the first one in that order
    that fits is taken). A unit larger than the whole budget runs alone, or the build could
    never finish."""
    pending = sorted(units, key=lambda u: (-u[1], u[0])) if longest_first else list(units)
    running: list[tuple[float, int, str]] = []  # heap of (end, kb, name)
    now, used, peak = 0.0, 0, 0
    schedule: list[tuple[float, float, str]] = []
    oversized = [u[0] for u in pending if u[2] > budget_kb]
    while pending or running:
        started = True
        while started and len(running) < jobs:
            started = False
            for i, (name, secs, kb) in enumerate(pending):
                if used + kb <= budget_kb or (not running and kb > budget_kb):
                    heapq.heappush(running, (now + secs, kb, name))
                    schedule.append((round(now, 3), round(now + secs, 3), name))
                    used += kb
                    peak = max(peak, used)
                    del pending[i]
                    started = True
                    break
        end, kb, _ = heapq.heappop(running)
        now, used = end, used - kb
        while running and running[0][0] <= now:
            used -= heapq.heappop(running)[1]
    return Prediction(round(now, 3), peak, schedule, oversized)


# --------------------------------------------------------------- unit cost record


def unit_key(source: str, cwd: str, tree: str, cache_root: str) -> str:
    """The unit's name in a record (the launcher computes the same: measure_compile.unit_key)."""
    from ..helpers.measure_compile import unit_key as key

    return key(source, cwd, [(tree, ""), (cache_root, "cache:")])


def record_path(cache_root: Path, package: str, version: str,
                arch_list: Sequence[str]) -> Path:
    """Where a package's record lives: another version or arch list compiles other units
    at other costs, so it gets its own record, never a misleading one."""
    digest = hashlib.sha256(" ".join(arch_list).encode()).hexdigest()[:12]
    return cache_root / "unit-costs" / f"{package}-{version}-{digest}.json"


def unit_costs(units: Iterable[Mapping[str, Any]], tree: str, cache_root: str
               ) -> dict[str, dict[str, float]]:
    """{unit key: wall_s, cpu_s, peak_rss_kb} of compiles that ran (a cache hit or a failed
    compile costs what it cost, not what compiling costs)."""
    costs: dict[str, dict[str, float]] = {}
    for u in units:
        if not u.get("source") or u.get("exit", 0) != 0 or u.get("cache") == "hit":
            continue
        key = unit_key(str(u["source"]), str(u.get("cwd") or tree), tree, cache_root)
        # One source compiled for two targets (two objects) is one key: its larger cost.
        old = costs.get(key, {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_kb": 0})
        costs[key] = {"wall_s": max(float(u["wall_s"]), old["wall_s"]),
                      "cpu_s": max(float(u.get("cpu_s", 0)), old["cpu_s"]),
                      "peak_rss_kb": max(int(u["peak_rss_kb"]), int(old["peak_rss_kb"]))}
    return costs


def merge_record(path: Path, *, package: str, version: str, arch_list: Sequence[str],
                 nvcc_threads: int, costs: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Merge one build's costs into the record at `path` (written atomically): wall and CPU
    are the latest measurement, peak memory the largest seen (admitting a unit on less than
    it once needed risks the OOM kill the record is there to avoid)."""
    from ..cache import write_atomic

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        units = dict(data["units"]) if data.get("schema_version") == RECORD_SCHEMA_VERSION \
            else {}
    except (OSError, ValueError, KeyError, TypeError):
        units = {}
    for key, cost in costs.items():
        old = units.get(key, {})
        units[key] = {"wall_s": cost["wall_s"], "cpu_s": cost["cpu_s"],
                      "peak_rss_kb": max(int(cost["peak_rss_kb"]),
                                         int(old.get("peak_rss_kb", 0))),
                      "builds": int(old.get("builds", 0)) + 1}
    record = {"schema_version": RECORD_SCHEMA_VERSION, "package": package, "version": version,
              "arch_list": list(arch_list), "nvcc_threads": nvcc_threads,
              "units": dict(sorted(units.items()))}
    write_atomic(path, json.dumps(record, indent=1) + "\n")
    return record


def _tree_of(unit: Mapping[str, Any]) -> str:
    """A foreign build-telemetry.json's package tree, from a unit's working directory: the
    pipeline's trees are CACHE/src/<name>-<version>-<hash>, builds run at or below them
    (vLLM in <tree>/build/temp.*)."""
    parts = Path(str(unit.get("cwd") or "/")).parts
    if "build" in parts:
        parts = parts[:parts.index("build")]
    return str(Path(*parts))


def load_costs(path: Path, package: str) -> dict[str, dict[str, float]]:
    """A package's unit costs from a record or a build-telemetry.json (this machine's or
    another's); {} when the file has none for it. Raises ValueError for an unreadable file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema_version") == RECORD_SCHEMA_VERSION and "package" in data:
        return {k: dict(v) for k, v in data["units"].items()} if data["package"] == package \
            else {}
    if "units" not in data or not isinstance(data["units"], list):
        raise ValueError("neither a unit cost record nor a build-telemetry.json")
    mine = [u for u in data["units"] if u.get("package") == package]
    roots = {p.get("package"): p for p in data.get("packages", [])}.get(package, {})
    # Units grouped by their tree, so that unit_costs sees every object of one source (two
    # targets) together and keeps the larger cost, as for this machine's own builds.
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for u in mine:
        tree = str(roots.get("tree") or _tree_of(u))
        cache_root = str(roots.get("cache_root") or Path(tree).parent.parent)
        groups.setdefault((tree, cache_root), []).append(u)
    costs: dict[str, dict[str, float]] = {}
    for (tree, cache_root), group in groups.items():
        costs.update(unit_costs(group, tree, cache_root))
    return costs
