"""verify_abi's probe of the runtime, run by the runtime's own interpreter:
`python runtime_probe.py DIST...` prints one line `VLLM_WHEELS_PROBE {json}` with the
interpreter's facts (executable, version, ABI, platform, sys.path, library paths, glibc,
extension suffixes), the versions of the distributions DIST... that are installed, and
torch's version facts read from torch/version.py without importing torch.
verify.runtime.probe reads the line.

Stdlib only, and no syntax newer than Python 3.8: the runtime may be any CPython.
"""

# ruff: noqa: PTH100, PTH118, PTH120, PTH123, S102, UP015
# (plain os.path and open(), as in the other stdlib-only helpers; exec of torch's own
# version.py, which defines plain constants; the annotations are never evaluated, so
# older Pythons run it too)

from __future__ import annotations

import importlib.machinery
import importlib.metadata as md
import importlib.util
import json
import os
import sys
import sysconfig

# Run as a file, this directory is sys.path[0]: it is no part of the runtime's path.
_HERE = os.path.dirname(os.path.abspath(__file__))


def main(watched: list[str]) -> None:
    paths = sysconfig.get_paths()
    out: dict[str, object] = {"executable": os.path.realpath(sys.executable), "prefix": sys.prefix,
           "version": list(sys.version_info[:3]), "implementation": sys.implementation.name,
           "abiflags": getattr(sys, "abiflags", ""), "soabi": sysconfig.get_config_var("SOABI"),
           "platform": sysconfig.get_platform(),
           "path": [p for p in sys.path if p and p != _HERE],
           "libdir": sysconfig.get_config_var("LIBDIR"),
           "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
           "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
           "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
           "glibc": os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None,
           "purelib": paths["purelib"], "platlib": paths["platlib"],
           "extension_suffixes": list(importlib.machinery.EXTENSION_SUFFIXES)}
    dists: dict[str, str] = {}
    for name in watched:
        try:
            dists[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    out["dists"] = dists
    spec = importlib.util.find_spec("torch")  # finds the package without running it
    torch: dict[str, object] | None = None
    if spec is not None and spec.submodule_search_locations:
        root = list(spec.submodule_search_locations)[0]
        facts: dict[str, object] = {"root": root}
        try:
            with open(os.path.join(root, "version.py")) as f:
                text = f.read()
            ns: dict[str, object] = {}
            exec(compile(text, "torch/version.py", "exec"), ns)
            facts.update(version=ns.get("__version__"), cuda=ns.get("cuda"),
                         git_version=ns.get("git_version"))
        except Exception as exc:  # noqa: BLE001 - reported, the checks say what it means
            facts["error"] = repr(exc)
        torch = facts
    out["torch"] = torch
    print("VLLM_WHEELS_PROBE " + json.dumps(out))


if __name__ == "__main__":
    if sys.path and sys.path[0] == _HERE:
        del sys.path[0]  # so find_spec sees only the runtime's own path
    main(sys.argv[1:])
