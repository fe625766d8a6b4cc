"""Benchmark of verify_abi (prints numbers; no asserts).

Times `verify` of a wheel set against a runtime interpreter, three ways:
  1. cold: a fresh work dir (every wheel unpacked, every ELF read),
  2. warm: the same again (unpacked trees reused; runtime libraries re-read),
  3. static only (--no-import): without the import subprocess,
and prints the per-phase picture: wheels, shared objects, runtime objects read.

    python tools/bench_verify.py --wheels wheels/ci-cuda13 --python PATH/bin/python [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vllm_wheels.verify import abi


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheels", type=Path, nargs="+", required=True)
    parser.add_argument("--python", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        report = abi.verify(args.wheels, args.python, work_dir=work)
        cold = time.perf_counter() - started
        elfs = sum(len(w.facts.elfs) for w in report.wheels)
        print(f"wheels: {len(report.wheels)}, shared objects: {elfs}, verdict: {report.status}")
        print(f"cold (unpack + read + import):  {cold:6.2f} s")
        warm, static = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            abi.verify(args.wheels, args.python, work_dir=work)
            warm.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            abi.verify(args.wheels, args.python, work_dir=work, import_test=False)
            static.append(time.perf_counter() - t0)
        print(f"warm (unpacked reused):          {statistics.median(warm):6.2f} s "
              f"(median of {args.repeat})")
        print(f"warm, static checks only:        {statistics.median(static):6.2f} s "
              f"(median of {args.repeat})")


if __name__ == "__main__":
    main()
