"""Launcher in front of nvcc (and of a compile cache wrapping it): tells nvcc the source
file's path as the prefix maps name it.

nvcc names internal-linkage device entities (anonymous namespaces, statics) with a hash of
the source file's absolute real path (`_GLOBAL__N__<hash>`, `_INTERNAL_<hash>`), so the same
source compiled under two cache directories gives different objects, and no
-ffile-prefix-map reaches that hash. nvcc takes the path from `--orig_src_path_name` of its
front ends (cudafe++ and cicc); this passes the mapped path there, per source file.

Usage: nvcc_source_path.py COMMAND... (e.g. `sccache /cuda/bin/nvcc -c x.cu ...`), with
VLLM_WHEELS_PREFIX_MAP = a JSON list of [path, name] pairs (longest path last).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def mapped(path: str, pairs: list[list[str]]) -> str:
    for prefix, name in sorted(pairs, key=lambda pair: -len(pair[0])):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return name + path[len(prefix.rstrip("/")):]
    return path


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: nvcc_source_path.py COMMAND...", file=sys.stderr)
        return 2
    pairs = json.loads(os.environ.get("VLLM_WHEELS_PREFIX_MAP") or "[]")
    sources = [a for a in argv[1:] if a.endswith(".cu") and Path(a).is_file()]
    extra: list[str] = []
    if len(sources) == 1:  # one translation unit per compile, as every build system here
        real = str(Path(sources[0]).resolve())
        name = mapped(real, pairs)
        if name != real:
            extra = [f"-Xcudafe=--orig_src_path_name={name}",
                     f"-Xcicc=--orig_src_path_name={name}"]
    os.execvp(argv[0], [*argv, *extra])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
