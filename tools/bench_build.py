"""Benchmark of the build path on the CUDA 13 test stack (prints numbers; no asserts).

Runs `build-wheels` three times against one cache:
  1. as-is (cold the first time; warm if the cache already has the trees),
  2. again with nothing changed (expect: no compile at all),
  3. after changing one source file of the fixture extension (a new source tree: the
     compile cache must serve every unchanged translation unit),
and prints wall time and compile-cache hits/misses per package for each run.

    python tools/bench_build.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(stack: Path, cache: Path, out: Path) -> tuple[float, dict[str, object]]:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack", str(stack),
                    "--cache-dir", str(cache), "--output-dir", str(out)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    stats = {}
    for wheel in sorted(out.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if n.endswith("vllm_wheels_build.json"))
            manifest = json.loads(zf.read(name))
        stats[manifest["package"]] = {"seconds": manifest["build"]["seconds"],
                                      "cache": manifest["build"]["compile_cache_stats"]}
    return seconds, stats


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vw-bench-"))
    fixture = work / "tiny_cuda_ext"
    shutil.copytree(REPO / "tests/fixtures/tiny_cuda_ext", fixture)
    text = (REPO / "build/stacks/ci-cuda13.toml").read_text().replace(
        'path = "tests/fixtures/tiny_cuda_ext"', f'path = "{fixture}"')
    stack = work / "bench.toml"
    stack.write_text(text)
    runs = []
    runs.append(("first run", *build(stack, args.cache_dir, work / "out1")))
    runs.append(("nothing changed", *build(stack, args.cache_dir, work / "out1")))
    binding = fixture / "tiny_cuda_ext" / "binding.cpp"
    binding.write_text(binding.read_text() + "\n// bench: one-line change\n")
    runs.append(("one file changed (fresh tree)", *build(stack, args.cache_dir, work / "out2")))
    print(f"{'run':32} {'wall':>8}  per package: seconds, compile-cache hits/misses")
    for label, seconds, stats in runs:
        parts = [f"{p}: {s['seconds']}s {s['cache']['hits']}/{s['cache']['misses']}"  # type: ignore[index]
                 for p, s in stats.items()]
        print(f"{label:32} {seconds:7.1f}s  " + "; ".join(parts))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
