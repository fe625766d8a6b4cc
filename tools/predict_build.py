"""Predict a build's compile wall time and peak memory from measured units.

Reads build-telemetry.json (written beside the wheels by build-wheels), and simulates the
compile with list scheduling, package by package (the pipeline builds them in turn):
longest unit first, a unit starts when one of `--jobs` slots
is free and the measured peak memory of the running units plus its own fits
`--memory-gb` (the pipeline's memory rule). Each unit takes its measured wall time; links,
configure and Python steps are not in the model (compare with the measured compile wall).

    python tools/predict_build.py wheels/<stack>/build-telemetry.json --jobs 8 --memory-gb 96
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vllm_wheels import telemetry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("telemetry", type=Path, help="build-telemetry.json")
    parser.add_argument("--jobs", type=int, required=True, help="concurrent compiler processes")
    parser.add_argument("--memory-gb", type=float, required=True,
                        help="memory budget for the compilers (GiB)")
    parser.add_argument("--package", action="append", default=[],
                        help="only this package's units (repeatable; default: all)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.memory_gb <= 0:
        parser.error("--jobs must be >= 1 and --memory-gb > 0")
    data = json.loads(args.telemetry.read_text())
    if data.get("schema_version") != telemetry.SCHEMA_VERSION:
        print(f"{args.telemetry}: schema_version {data.get('schema_version')}, this tool reads "
              f"{telemetry.SCHEMA_VERSION}", file=sys.stderr)
        return 2
    units = [u for u in data["units"] if not args.package or u.get("package") in args.package]
    budget_kb = int(args.memory_gb * 1024 * 1024)
    # The pipeline builds packages one after another: each is its own pool of units.
    packages: dict[str, list[tuple[str, float, int]]] = {}
    for i, u in enumerate(units):
        packages.setdefault(str(u.get("package")), []).append(
            (f"{u.get('package')}:{telemetry.unit_name(u)}#{i}", float(u["wall_s"]),
             int(u["peak_rss_kb"])))
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


if __name__ == "__main__":
    sys.exit(main())
