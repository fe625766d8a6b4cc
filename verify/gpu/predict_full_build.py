"""The full production builds of vLLM 0.20.0 predicted from measured unit costs.

    python verify/gpu/predict_full_build.py MEASURED [--json OUT]

MEASURED is what the verification variant's build on the H200 measured (everything vLLM's
core builds at 9.0a except the families the variant leaves out): its build-telemetry.json
(per unit: wall time and the measured peak RSS of the compiler's process tree), or, for
builds from before the per-unit launcher, its .ninja_log (wall times only; memory then
2.1 GB per unit, the machine peak over the jobs). The
families left out, and the parts a 12.0 build swaps in, are added from the per-family
costs measured on the same H200 model of machine by a plain cmake + ninja probe of the
full 9.0a build (shared facts of the project, copied here in FAMILIES so this file stands
alone). Each configuration is then scheduled with vllm_wheels.build.telemetry.simulate: longest
unit first, a unit starts when a job slot is free and the running units' memory plus its
own fits the budget (the pipeline's rule: jobs = min(cores, (memory_gb - 2) / gb_per_job)).

Model and its limits (said again in the output):
- a unit's wall time is its measured wall time at -j16 on the H200 (contention included);
  one nvcc thread per unit; links, configure and setup.py's Python steps are not in it
  (measured: ~60 s of the 291 s+ of the variant's build);
- memory per unit: the measured peak for the core units (build-telemetry.json: 0.07-2.9 GB,
  median 2.5 GB; from a .ninja_log, 2.1 GB = 33.2 GiB machine peak / 16 jobs), 6 GB for
  the CUTLASS-heavy families and flash-attention (the probe's ~100 GB at -j16);
- 12.0: the core and Marlin units cost what they cost at 9.0a (same sources, one arch);
  FA3 (sm90 only), Machete and the sm90 CUTLASS kernels drop out; CUTLASS sm120 kernels
  and FA2 for 12.0 come in at the 9.0a per-unit averages. These 12.0 numbers are an
  extrapolation, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from vllm_wheels.build.telemetry import simulate  # noqa: E402

GB = 1024 * 1024  # kB per GB

# family: (units, total seconds at 9.0a on the H200, GB per unit, built at 9.0a, at 12.0)
FAMILIES = {
    "marlin": (18, 2349.0, 6.0, True, True),
    "marlin_moe": (15, 2559.0, 6.0, True, True),
    "machete": (11, 2091.0, 6.0, True, False),
    "cutlass_w8a8_w4a8_sm90": (15, 1224.0, 6.0, True, False),
    "scaled_mm_c2x": (1, 540.0, 6.0, True, True),
    "cutlass_sm120": (10, 816.0, 6.0, False, True),  # 10 sm_120f units at the w8a8 average
    "flash_attn_fa2": (60, 9590.0, 6.0, True, True),  # 39,000 s / 244 units, 60 FA2 units
    "flash_attn_fa3": (184, 29410.0, 6.0, True, False),
}


def measured_units(measured: Path) -> list[tuple[str, float, int]]:
    if measured.suffix == ".json":
        data = json.loads(measured.read_text())
        return [(u["source"], float(u["wall_s"]), int(u["peak_rss_kb"])) for u in data["units"]]
    units = []
    for line in measured.read_text().splitlines():
        if line.startswith("#"):
            continue
        start, end, _mtime, output, _hash = line.split("\t")
        units.append((output, (int(end) - int(start)) / 1000, int(2.1 * GB)))
    return units


def configuration(measured: Path, arch: str) -> list[tuple[str, float, int]]:
    units = measured_units(measured)
    for family, (count, seconds, gb, at_90, at_120) in FAMILIES.items():
        if (arch == "9.0a" and at_90) or (arch == "12.0" and at_120):
            units += [(f"{family}#{i}", seconds / count, int(gb * GB)) for i in range(count)]
    return units


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measured", type=Path, help="build-telemetry.json or .ninja_log")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for arch in ("9.0a", "12.0"):
        units = configuration(args.measured, arch)
        total = sum(u[1] for u in units)
        for cores, memory_gb in ((16, 128), (32, 256), (64, 512)):
            budget = memory_gb - 2
            jobs = cores  # the rule's memory term never binds first at 6 GB/job here
            result = simulate(units, jobs, int(budget * GB))
            rows.append({"arch": arch, "cores": cores, "memory_gb": memory_gb, "jobs": jobs,
                         "units": len(units), "unit_seconds": round(total),
                         "predicted_wall_s": round(result.wall_s),
                         "predicted_peak_gb": round(result.peak_kb / GB, 1),
                         "lower_bound_s": round(max(total / jobs, max(u[1] for u in units)))})
    print(f"{'arch':<5} {'cores':>5} {'mem GB':>6} {'units':>5} {'Σ unit-s':>9} "
          f"{'wall':>9} {'peak GB':>7}  (bound)")
    for r in rows:
        print(f"{r['arch']:<5} {r['cores']:>5} {r['memory_gb']:>6} {r['units']:>5} "
              f"{r['unit_seconds']:>9} {r['predicted_wall_s'] / 60:>7.1f} m {r['predicted_peak_gb']:>7}"
              f"  ({r['lower_bound_s'] / 60:.1f} m)")
    if args.json:
        args.json.write_text(json.dumps({"schema_version": 1, "model": __doc__,
                                         "families": FAMILIES, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
