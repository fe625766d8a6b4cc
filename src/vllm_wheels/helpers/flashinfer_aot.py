#!/usr/bin/env python
"""Build a subset of FlashInfer (0.5.2) AOT modules, selected by glob patterns.

Enumerates exactly the modules `python -m flashinfer.aot` would build with the
default config (flashinfer.aot.get_default_config()) except add_comm=False, then
builds only those whose name matches one of the fnmatch globs, using
flashinfer's own build_jit_specs() (ninja + nvcc), and copies each result to
<out-dir>/<name>/<name>.so  (the layout flashinfer.jit.env.FLASHINFER_AOT_DIR expects).

Works against either
  * an unpacked sdist / source tree  (--source-root DIR: csrc/, include/, 3rdparty/ used), or
  * an installed flashinfer wheel    (default: flashinfer/data/{csrc,include,cutlass,spdlog} used).

Env: CUDA_HOME (nvcc at $CUDA_HOME/bin/nvcc), MAX_JOBS (ninja -j),
     FLASHINFER_CUDA_ARCH_LIST (or --arch; must be set before flashinfer import).
"""
import argparse
import fnmatch
import os
import shutil
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, required=True,
                   help="where <name>/<name>.so are placed (merged, not wiped)")
    p.add_argument("--build-dir", type=Path, required=True,
                   help="ninja workspace (cached_ops/, generated/)")
    p.add_argument("--source-root", type=Path, default=None,
                   help="unpacked sdist root (parent of flashinfer/); default: installed package")
    p.add_argument("--arch", default=os.environ.get("FLASHINFER_CUDA_ARCH_LIST", "12.0f"),
                   help='FLASHINFER_CUDA_ARCH_LIST value, e.g. "12.0f" (default: env or 12.0f)')
    p.add_argument("--list", action="store_true", help="only list matching modules")
    p.add_argument("-v", "--verbose", action="store_true", help="show ninja/nvcc output")
    p.add_argument("patterns", nargs="*", default=["*"],
                   help="fnmatch globs on module names, e.g. silu_and_mul norm 'batch_prefill_*'")
    args = p.parse_args()

    # Must be set before flashinfer is imported: jit/core.py and jit/env.py
    # build a CompilationContext from it at import time.
    os.environ["FLASHINFER_CUDA_ARCH_LIST"] = args.arch
    if args.source_root is not None:
        sys.path.insert(0, str(args.source_root.resolve()))

    import flashinfer
    from flashinfer import aot
    from flashinfer.jit import build_jit_specs
    from flashinfer.jit import env as jit_env

    print(f"flashinfer {flashinfer.__version__} from {Path(flashinfer.__file__).parent}")
    print(f"FLASHINFER_CUDA_ARCH_LIST={args.arch}  CUDA_HOME={os.environ.get('CUDA_HOME')}"
          f"  MAX_JOBS={os.environ.get('MAX_JOBS')}")

    # Same overrides as aot.compile_and_package_modules() (aot.py:614-628), but
    # only for a source tree; an installed wheel already points at flashinfer/data/*.
    root = Path(flashinfer.__file__).resolve().parents[1]
    if (root / "csrc").is_dir() and (root / "3rdparty" / "cutlass").is_dir():
        jit_env.FLASHINFER_CSRC_DIR = root / "csrc"
        jit_env.FLASHINFER_INCLUDE_DIR = root / "include"
        jit_env.CUTLASS_INCLUDE_DIRS = [
            root / "3rdparty" / "cutlass" / "include",
            root / "3rdparty" / "cutlass" / "tools" / "util" / "include",
        ]
        jit_env.SPDLOG_INCLUDE_DIR = root / "3rdparty" / "spdlog" / "include"
    print(f"sources: {jit_env.FLASHINFER_CSRC_DIR}")

    build_dir = args.build_dir.resolve()
    jit_env.FLASHINFER_WORKSPACE_DIR = build_dir
    jit_env.FLASHINFER_JIT_DIR = build_dir / "cached_ops"
    jit_env.FLASHINFER_GEN_SRC_DIR = build_dir / "generated"
    jit_env.FLASHINFER_JIT_DIR.mkdir(parents=True, exist_ok=True)
    jit_env.FLASHINFER_GEN_SRC_DIR.mkdir(parents=True, exist_ok=True)

    # Enumerate the default `python -m flashinfer.aot` module set, minus comm.
    config = aot.get_default_config()
    config["add_comm"] = False
    sm_caps = aot.detect_sm_capabilities()
    print("SM capabilities:", {k: v for k, v in sm_caps.items() if v})
    t0 = time.time()
    all_specs = aot.gen_all_modules(
        config["f16_dtype"], config["f8_dtype"],
        config["fa2_head_dim"], config["fa3_head_dim"],
        config["use_sliding_window"], config["use_logits_soft_cap"],
        sm_caps,
        config["add_comm"], config["add_gemma"], config["add_oai_oss"],
        config["add_moe"], config["add_act"], config["add_misc"], config["add_xqa"],
    )
    print(f"default module set: {len(all_specs)} modules (enumerated in {time.time() - t0:.1f}s)")

    selected = [s for s in all_specs
                if any(fnmatch.fnmatchcase(s.name, pat) for pat in args.patterns)]
    unmatched = [pat for pat in args.patterns
                 if not any(fnmatch.fnmatchcase(s.name, pat) for s in all_specs)]
    for s in selected:
        print("  module:", s.name)
    if unmatched:
        print("WARNING: patterns matching nothing:", unmatched)
    if not selected:
        print("nothing selected")
        return 1
    if args.list:
        return 0

    t0 = time.time()
    # skip_prebuilt=False: don't skip specs already present in FLASHINFER_AOT_DIR
    build_jit_specs(selected, verbose=args.verbose, skip_prebuilt=False)
    print(f"built {len(selected)} module(s) in {time.time() - t0:.1f}s")

    out_dir = args.out_dir.resolve()
    for s in selected:
        src = jit_env.FLASHINFER_JIT_DIR / s.name / f"{s.name}.so"
        dst = out_dir / s.name / f"{s.name}.so"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        print(f"  {dst}  ({dst.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
