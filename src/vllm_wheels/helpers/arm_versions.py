"""verify_throughput's version report of an arm, run with the arm's own Python (its venv,
or `python3` inside its image): one JSON line with the Python version, the versions of
vllm and flashinfer from their metadata, torch's version, git version and CUDA variant read
from torch/version.py as text (torch is never imported), and the vllm wheel's build
manifest (vllm_wheels_build.json) when it has one.

Stdlib only, and no syntax newer than Python 3.8: the image may carry any CPython.
"""

# ruff: noqa: PTH100, PTH118, PTH120, PTH123, UP015, UP031
# (plain os.path, open() and %-formatting, as in the other stdlib-only helpers; the
# annotations are never evaluated, so older Pythons run it too)

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import sys


def version(*names: str) -> str | None:
    for name in names:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            pass
    return None


def main() -> None:
    out: dict[str, object] = {"python": sys.version.split()[0], "vllm": version("vllm"),
           "flashinfer": version("flashinfer-python", "flashinfer"),
           # FlashInfer's AOT kernels: present, it runs them; absent, it compiles (JIT).
           "flashinfer_jit_cache": version("flashinfer-jit-cache"),
           "flashinfer_cubin": version("flashinfer-cubin"),
           "torch": None, "torch_git": None, "torch_cuda": None, "vllm_wheels_build": None}
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.origin:
        with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as f:
            text = f.read()
        for key, field in (("torch", "__version__"), ("torch_git", "git_version"),
                           ("torch_cuda", "cuda")):
            m = re.search(r"^%s\s*(?::\s*\S+\s*)?=\s*['\"]([^'\"]*)['\"]" % field, text, re.M)
            out[key] = m.group(1) if m else None
    try:
        dist = md.distribution("vllm")
        manifest = dist.read_text("vllm_wheels_build.json")
        out["vllm_wheels_build"] = json.loads(manifest) if manifest else None
    except md.PackageNotFoundError:
        pass
    print(json.dumps(out))


if __name__ == "__main__":
    # Run as a file, its directory is sys.path[0], no part of the arm's path; an image
    # runs the text with `python3 -c`, where there is no __file__.
    here = globals().get("__file__")
    if here and sys.path and sys.path[0] == os.path.dirname(os.path.abspath(here)):
        del sys.path[0]
    main()
