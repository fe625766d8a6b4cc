"""Benchmark of the build path: cold, warm local, warm remote (a second builder) and a
one-file patch of a stack (default: the CUDA 13 test stack), with hit rates, wall times,
Σ CPU-s, parallel efficiency, critical path and peak unit memory per scenario. The work is
in src/vllm_wheels/build/bench.py; this is its command line.

    python tools/bench_build.py [--stack FILE] [--remote URL] [--only PKG...] [--json PATH]
                                [--keep] [--dry-run]
"""

from __future__ import annotations

import sys
from pathlib import Path

from vllm_wheels.build.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], repo=Path(__file__).resolve().parents[1]))
