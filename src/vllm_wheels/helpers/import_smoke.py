"""verify_abi's import test, run by the runtime's own interpreter (never by the pipeline's):
`python import_smoke.py PLAN_JSON`.

Each extension module is imported by its dotted name through the normal import system, over
the wheels' files laid out as they will be installed, so the answer is the one `import`
will give after `pip install`: a file whose name ends in a suffix this interpreter does
not look for (importlib.machinery.EXTENSION_SUFFIXES, e.g. a .cpython-312 file under
Python 3.11) is not found, exactly as in production.

Only the packages are stood in for: each package of the plan becomes an empty module whose
__path__ lists its directories in the unpacked wheels, so its __init__ (whose Python
dependencies are not ABI questions) does not run. The modules themselves are found by
importlib.machinery.PathFinder, i.e. by FileFinder with this interpreter's own loaders and
suffixes, and loaded by ExtensionFileLoader.

The plan (JSON): {"torch": bool, "gpu_op": bool, "packages": {name: [dir, ...]},
"roots": [dir, ...] (where top-level modules lie), "modules": [name, ...]}. One line per
result on stdout: `VLLM_WHEELS_SMOKE {"module": ..., "ok": ..., "found": ..., "origin": ...,
"detail": ...}`.

Stdlib only, and no syntax newer than Python 3.8: the runtime may be any CPython.
"""

# ruff: noqa: PTH100, PTH118, PTH120
# (plain os.path, as in the rest of this stdlib-only file; the annotations are never
# evaluated, `from __future__ import annotations`, so older Pythons run it too)

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

# Run as a script, Python puts this file's directory first on sys.path: take it off, so
# nothing of the pipeline's package can shadow a module of the runtime.
if sys.path and os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
    del sys.path[0]


def emit(**fields: Any) -> None:
    print("VLLM_WHEELS_SMOKE " + json.dumps(fields), flush=True)


class _EmptyPackage(importlib.abc.Loader):
    """Creates a package without running its __init__.py."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class WheelTreeFinder(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: the plan's packages resolve to their directories in the
    unpacked wheels; the plan's top-level modules are searched for in the wheels' roots.
    Everything else (torch, the stdlib) is left to the runtime's own finders."""

    def __init__(self, packages: dict[str, list[str]], roots: list[str],
                 top_level: Sequence[str]) -> None:
        self.packages = packages
        self.roots = roots
        self.top_level = set(top_level)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.packages:
            spec = importlib.machinery.ModuleSpec(fullname, _EmptyPackage(), is_package=True)
            spec.submodule_search_locations = list(self.packages[fullname])
            return spec
        if fullname in self.top_level:
            # Exactly what the path-based finder does for a sys.path entry.
            return importlib.machinery.PathFinder.find_spec(fullname, self.roots)
        # Submodules of the plan's packages: the runtime's PathFinder searches the
        # package's __path__ (our directories) with its own FileFinder and suffixes.
        return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def import_modules(plan: dict[str, Any]) -> None:
    finder = WheelTreeFinder(plan["packages"], plan["roots"],
                             [m for m in plan["modules"] if "." not in m])
    sys.meta_path.insert(0, finder)
    for name in plan["modules"]:
        try:
            spec = importlib.util.find_spec(name)
        except BaseException as exc:  # a package on the way could not be set up
            emit(module=name, ok=False, found=False, origin=None, detail=_describe(exc))
            continue
        if spec is None:
            emit(module=name, ok=False, found=False, origin=None,
                 detail=f"ModuleNotFoundError: No module named {name!r}")
            continue
        try:
            importlib.import_module(name)
            emit(module=name, ok=True, found=True, origin=spec.origin, detail="imported")
        except BaseException as exc:
            emit(module=name, ok=False, found=True, origin=spec.origin, detail=_describe(exc))


def gpu_op(torch: Any) -> None:
    try:
        x = torch.ones(8, device="cuda")
        detail = f"torch op on {torch.cuda.get_device_name(0)}: sum={float(x.sum())}"
        if hasattr(torch.ops, "_C") and hasattr(torch.ops._C, "silu_and_mul"):
            out = torch.empty(4, 4, device="cuda", dtype=torch.float16)
            torch.ops._C.silu_and_mul(out, torch.ones(4, 8, device="cuda", dtype=torch.float16))
            torch.cuda.synchronize()
            detail += f"; vLLM silu_and_mul ran ({float(out[0, 0]):.4f})"
        emit(module="<gpu-op>", ok=True, detail=detail)
    except BaseException as exc:
        emit(module="<gpu-op>", ok=False, detail=_describe(exc))


def main() -> int:
    plan = json.loads(sys.argv[1])
    torch: Any = None
    if plan["torch"]:
        # Before the finder goes in: torch is the runtime's, never a wheel's file.
        try:
            import torch as runtime_torch  # type: ignore[import-not-found, unused-ignore]
            torch = runtime_torch
            emit(module="torch", ok=True, detail=torch.__version__)
        except BaseException as exc:
            emit(module="torch", ok=False, detail=_describe(exc))
            return 0
    import_modules(plan)
    if torch is not None and plan["gpu_op"] and torch.cuda.is_available():
        gpu_op(torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
