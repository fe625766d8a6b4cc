"""Benchmark of the wheel index (prints numbers; no asserts).

Makes N small wheels (default 200: 20 projects x 10 versions, 64 KiB each), then times
  1. publishing all of them in one call (hash, copy, .metadata, pages, switch),
  2. publishing one more wheel into the full index (the usual incremental case),
  3. an identical re-publish of all N (the no-op path: hashes only),
  4. page generation alone (`regenerate`: every HTML + JSON page from files + state),
  5. a yank (one state change = one new generation),
and the size of the generated pages; then (`--part serve`, in tools/bench_serve.py)
serving that tree: serve-index against nginx with the generated configuration, under wrk.

    python tools/bench_index.py [--wheels 200] [--size-kib 64] [--part all|publish|serve]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import bench_serve

from vllm_wheels.index import layout, publish, yank
from vllm_wheels.index.store import IndexDir
from vllm_wheels.log import Reporter


def make_wheel(folder: Path, name: str, version: str, payload: bytes) -> Path:
    info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}/data.bin", payload)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                                        f"Version: {version}\nRequires-Python: >=3.10\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                     "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    path.write_bytes(buf.getvalue())
    return path


def to_add(wheels: list[Path]) -> list[publish.WheelToAdd]:
    """As the publish command builds them, minus the verify report lookup."""
    out = []
    for w in wheels:
        out.append(publish.WheelToAdd(
            path=w, facts=layout.inspect_wheel(w), size=w.stat().st_size,
            sha256=hashlib.sha256(w.read_bytes()).hexdigest(), origin="built",
            verification="unverified", verification_detail="benchmark"))
    return out


def timed(label: str, fn: object, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    best = min(times)
    extra = f" (best of {repeat}, median {statistics.median(times):.3f}s)" if repeat > 1 else ""
    print(f"{label:<52} {best:8.3f}s{extra}", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheels", type=int, default=200)
    parser.add_argument("--size-kib", type=int, default=64)
    parser.add_argument("--part", choices=("all", "publish", "serve"), default="all",
                        help="publish timings, serving under load (bench_serve.py), or both")
    bench_serve.add_arguments(parser)
    args = parser.parse_args()
    reporter = Reporter(None, stream=io.StringIO())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "wheels"
        src.mkdir()
        projects = max(1, args.wheels // 10)
        wheels = [make_wheel(src, f"proj{i % projects:03d}",
                             f"1.{i // projects}+cu128.torch290.sm120",
                             os.urandom(args.size_kib * 1024))
                  for i in range(args.wheels)]
        extra = make_wheel(src, "late", "1.0", os.urandom(args.size_kib * 1024))
        index = IndexDir(root / "index")
        print(f"{args.wheels} wheels of {args.size_kib} KiB in {projects} projects", flush=True)
        if args.part == "serve":
            publish.add_to_index(index, to_add(wheels), reporter)
            bench_serve.run(index, root, args)
            return
        timed(f"publish {args.wheels} wheels (one call)",
              lambda: publish.add_to_index(index, to_add(wheels), reporter))
        timed("publish 1 more wheel into the full index",
              lambda: publish.add_to_index(index, to_add([extra]), reporter))
        timed(f"identical re-publish of {args.wheels} (no-op)",
              lambda: publish.add_to_index(index, to_add(wheels), reporter), repeat=3)
        timed("page generation (regenerate all pages)",
              lambda: publish.regenerate(index, reporter), repeat=5)
        timed("yank one file (new generation)",
              lambda: yank.set_yanked(index, [extra.name], "bench", reporter))
        pages = [p for p in index.simple.resolve().rglob("*") if p.is_file()]
        print(f"generated pages: {len(pages)} files, "
              f"{sum(p.stat().st_size for p in pages) / 1024:.0f} KiB", flush=True)
        if args.part == "all":
            bench_serve.run(index, root, args)


if __name__ == "__main__":
    main()
