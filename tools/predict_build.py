"""Predict a build's compile wall time and peak memory from measured units.

Reads build-telemetry.json (written beside the wheels by build-wheels), and simulates the
compile with list scheduling, package by package (the pipeline builds them in turn):
longest unit first, a unit starts when one of `--jobs` slots
is free and the measured peak memory of the running units plus its own fits
`--memory-gb` (the pipeline's memory rule). Each unit takes its measured wall time; links,
configure and Python steps are not in the model (compare with the measured compile wall).

    python tools/predict_build.py wheels/<stack>/build-telemetry.json --jobs 8 --memory-gb 96

--compare CORES,GIB (repeatable) instead prints, per machine, the three ways to run the same
measured units:

  learned     the unit cost record: jobs = cores, each unit admitted by its measured peak
              against (GiB - reserve), longest first (the pipeline with a record)
  rule        jobs = min(cores, (GiB - reserve) / gb_per_job), no memory gating, units
              started in the measured start order (the pipeline without a record; the
              measured order is the one setup.py's ninja build gave)
  dockerfile  vLLM's Dockerfile defaults max_jobs=2, nvcc_threads=8: setup.py makes that
              max(1, 2 // 8) = 1 job. With one arch per unit nvcc's --threads has nothing to
              split (it runs one compilation per -gencode in parallel), so each unit takes
              its measured wall time, one after another

plus `learned, measured order` (the record's width and budget without the reordering) to
separate the two effects, and `rule, longest last` (the order the longest-first pass rules
out: a long unit that the target order starts last, as vLLM 0.20.0's scaled_mm_c2x.cu in a
full build). Walls are as measured in the telemetry's own run (at its jobs);
nothing models contention, so a serial run (dockerfile) may be somewhat faster per unit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vllm_wheels.build import telemetry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("telemetry", type=Path, help="build-telemetry.json")
    parser.add_argument("--jobs", type=int, default=0, help="concurrent compiler processes")
    parser.add_argument("--memory-gb", type=float, default=0,
                        help="memory budget for the compilers (GiB)")
    parser.add_argument("--compare", action="append", default=[], metavar="CORES,GIB",
                        help="compare learned / rule / Dockerfile defaults on a machine of "
                             "CORES cores and GIB GiB available (repeatable)")
    parser.add_argument("--gb-per-job", type=float, default=6.0,
                        help="the rule's GB per job (the stack's [build] gb_per_job)")
    parser.add_argument("--reserve-gb", type=float, default=2.0,
                        help="memory kept free (the pipeline's reserve)")
    parser.add_argument("--package", action="append", default=[],
                        help="only this package's units (repeatable; default: all)")
    args = parser.parse_args(argv)
    if not args.compare and (args.jobs < 1 or args.memory_gb <= 0):
        parser.error("--jobs must be >= 1 and --memory-gb > 0 (or give --compare)")
    data = json.loads(args.telemetry.read_text())
    if data.get("schema_version") != telemetry.SCHEMA_VERSION:
        print(f"{args.telemetry}: schema_version {data.get('schema_version')}, this tool reads "
              f"{telemetry.SCHEMA_VERSION}", file=sys.stderr)
        return 2
    units = [u for u in data["units"] if not args.package or u.get("package") in args.package]
    budget_kb = int(args.memory_gb * 1024 * 1024)
    # The pipeline builds packages one after another: each is its own pool of units, here
    # in the measured start order (the order `rule` keeps).
    units = sorted(units, key=lambda u: float(u.get("start", 0)))
    packages: dict[str, list[tuple[str, float, int]]] = {}
    for i, u in enumerate(units):
        packages.setdefault(str(u.get("package")), []).append(
            (f"{u.get('package')}:{telemetry.unit_name(u)}#{i}", float(u["wall_s"]),
             int(u["peak_rss_kb"])))
    if args.compare:
        return compare(data, packages, args)
    print(f"{len(units)} unit(s), Σ wall {sum(float(u['wall_s']) for u in units):.1f} s, "
          f"jobs {args.jobs}, memory budget {args.memory_gb:g} GiB")
    wall, peak = 0.0, 0
    for package, items in packages.items():
        result = telemetry.simulate(items, args.jobs, budget_kb)
        wall, peak = wall + result.wall_s, max(peak, result.peak_kb)
        print(f"  {package}: {len(items)} unit(s), {result.wall_s:.1f} s, peak "
              f"{result.peak_kb / 1024 / 1024:.2f} GiB")
        for name in result.oversized:
            print(f"  warning: {name} alone needs more than the budget; it ran by itself")
    measured = data["summary"]
    print(f"predicted compile wall: {wall:.1f} s")
    print(f"predicted peak memory: {peak / 1024 / 1024:.2f} GiB")
    print(f"measured (jobs {measured['jobs']}): compile wall {measured['compile_wall_s']:.1f} s,"
          f" critical path {measured['critical_path_s']:.1f} s")
    return 0


def _run(packages: dict[str, list[tuple[str, float, int]]], jobs: int, budget_kb: int,
         longest_first: bool) -> tuple[float, int]:
    wall, peak = 0.0, 0
    for items in packages.values():
        result = telemetry.simulate(items, jobs, budget_kb, longest_first=longest_first)
        wall, peak = wall + result.wall_s, max(peak, result.peak_kb)
    return wall, peak


def compare(data: dict[str, object], packages: dict[str, list[tuple[str, float, int]]],
            args: argparse.Namespace) -> int:
    everything = 1 << 62  # no memory gating
    n = sum(len(v) for v in packages.values())
    total = sum(s for v in packages.values() for _, s, _ in v)
    biggest = max((kb for v in packages.values() for _, _, kb in v), default=0)
    print(f"{n} unit(s) from {args.telemetry}: Σ wall {total:.1f} s, largest peak "
          f"{biggest / 1024 / 1024:.2f} GiB; measured with jobs {data.get('jobs')}")
    for machine in args.compare:
        try:
            cores_text, gib_text = machine.split(",")
            cores, gib = int(cores_text), float(gib_text)
        except ValueError:
            print(f"--compare {machine}: expected CORES,GIB", file=sys.stderr)
            return 2
        budget = int((gib - args.reserve_gb) * 1024 * 1024)
        rule_jobs = max(1, min(cores, int((gib - args.reserve_gb) // args.gb_per_job)))
        docker_jobs = max(1, 2 // 8)
        rows = [
            ("learned (record)", f"{cores} + {gib - args.reserve_gb:g} GiB budget",
             "longest first", *_run(packages, cores, budget, True)),
            ("learned, measured order", f"{cores} + {gib - args.reserve_gb:g} GiB budget",
             "measured", *_run(packages, cores, budget, False)),
            ("rule (no record)", f"{rule_jobs}", "measured",
             *_run(packages, rule_jobs, everything, False)),
            ("rule, longest last", f"{rule_jobs}", "shortest first",
             *_run({k: sorted(v, key=lambda u: (u[1], u[0])) for k, v in packages.items()},
                   rule_jobs, everything, False)),
            ("dockerfile 2/8", f"{docker_jobs} (x 8 threads)", "measured",
             *_run(packages, docker_jobs, everything, False)),
        ]
        print(f"\nmachine: {cores} cores, {gib:g} GiB available (reserve {args.reserve_gb:g}, "
              f"rule gb_per_job {args.gb_per_job:g})")
        print(f"  {'schedule':<25} {'jobs':<24} {'order':<14} {'wall':>8} {'peak GiB':>9}")
        base = rows[0][3]
        for name, jobs, order, wall, peak in rows:
            print(f"  {name:<25} {jobs:<24} {order:<14} {wall:>7.1f}s {peak / 1024 / 1024:>9.2f}"
                  + ("" if wall == base else f"  (x{wall / base:.2f})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
