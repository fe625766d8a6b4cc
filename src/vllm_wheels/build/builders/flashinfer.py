"""The flashinfer builder: the flashinfer-python wheel plus AOT-compiled kernels for the
stack's arch list, placed in flashinfer/data/aot/ where the installed package loads them
(the wheel then gets a platform tag), pinned to the apache-tvm-ffi it was built with.
With `aot = false` the wheel is pure Python and its kernels compile on first use (JIT):
the manifest says what the runtime host then needs.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from ...errors import BuildError
from .. import pins
from ..stack import PackageSpec, Stack
from .base import (
    HELPERS,
    BuildContext,
    Step,
    WheelExtras,
    dist_version,
    parse_options,
    wheel_step,
)

NAME = "flashinfer"
PACKAGES: tuple[str, ...] = ("flashinfer-python",)  # built with this builder by default


@dataclass(frozen=True, kw_only=True)
class Options:
    """[packages.flashinfer-python.options]"""

    aot: bool = field(default=True, metadata={"doc": (
        "Compile FlashInfer's kernels ahead of time into the wheel. false = a JIT-only "
        "wheel; its manifest then says the runtime host needs a CUDA toolkit.")})
    aot_modules: tuple[str, ...] = field(default=("*",), metadata={"doc": (
        "Globs over FlashInfer's AOT module names; [\"*\"] = everything flashinfer.aot "
        "builds.")})
    aot_arch_list: str = field(default="", metadata={"doc": (
        "FLASHINFER_CUDA_ARCH_LIST; \"\" = derived from the stack's cuda_arch_list, "
        "arch-specific suffix added (e.g. 12.0a with nvcc 12.8, 12.0f with nvcc >= 12.9).")})


def parse(options: Mapping[str, Any], where: str) -> Options:
    return parse_options(Options, options, where)


def options_of(spec: PackageSpec) -> Options:
    return parse(spec.options, f"packages.{spec.name}.options")


def build_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    """With AOT, FlashInfer's runtime requirements: the AOT driver imports flashinfer."""
    return pins.read_requirements(tree / "requirements.txt") if options_of(spec).aot else []


def runtime_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    """None beyond PEP 621 [project] dependencies: FlashInfer declares them there
    (setuptools' dynamic `dependencies = {file = ["requirements.txt"]}`, read by
    prepare.py); its apache-tvm-ffi pin is the build venv's (wheel_extras)."""
    return []


def makes_wheel(spec: PackageSpec) -> bool:
    return True


def discover_externals(tree: Path) -> None:
    """None: the build downloads nothing (a stack's externals table is not read)."""
    return


def plan_notes(spec: PackageSpec) -> list[str]:
    return []


def manifest_cmake_args(ctx: BuildContext) -> list[str] | None:
    return None


def wheel_extras(ctx: BuildContext) -> WheelExtras:
    """The AOT kernels (and the platform tag they need), or the note that kernels
    compile at runtime; the apache-tvm-ffi pin of the build venv."""
    add_files = flashinfer_aot_files(ctx)
    manifest: dict[str, Any] = {}
    platform_tag = None
    if add_files:
        platform_tag = f"linux_{platform.machine()}"
        manifest["aot"] = {"modules": sorted({Path(a).parent.name for a in add_files}),
                           "arch_list": flashinfer_arch_list(
                               ctx.stack, ctx.nvcc_release, options_of(ctx.spec).aot_arch_list)}
    else:
        manifest["aot"] = None
        manifest["jit_at_runtime"] = ("AOT is off: kernels compile on first use; the runtime "
                                      "host needs nvcc of CUDA "
                                      f"{ctx.stack.torch.cuda_major}.x and CUDA_HOME")
    pins_: dict[str, str] = {}
    tvm = dist_version(ctx.python, "apache-tvm-ffi", missing_ok=True)
    if tvm:
        pins_["apache-tvm-ffi"] = f"=={tvm}"
        manifest["apache_tvm_ffi"] = tvm
    return WheelExtras(add_files=add_files, platform_tag=platform_tag, pins=pins_,
                       manifest=manifest)


def flashinfer_arch_list(stack: Stack, nvcc_release: str, option: str) -> str:
    """FLASHINFER_CUDA_ARCH_LIST (space separated). Arch-specific kernels need a suffix:
    `f` (family) with nvcc >= 12.9, else `a`, as FlashInfer's own later releases do."""
    if option:
        return option
    family = Version(nvcc_release) >= Version("12.9")
    out = []
    for arch in stack.cuda_arch_list:
        arch = arch.replace("+PTX", "")
        if arch[-1] in "af":
            out.append(arch)
        elif Version(arch) >= Version("9.0"):
            out.append(arch + ("f" if family and Version(arch) >= Version("10.0") else "a"))
        else:
            out.append(arch)
    return " ".join(out)


def aot_out_dir(ctx: BuildContext) -> Path:
    return ctx.tree / "build" / "vllm-wheels-aot"


def steps(ctx: BuildContext) -> list[Step]:
    env = ctx.base_env()
    planned = [Step("label the version (flashinfer/_build_meta.py)",
                    (str(ctx.python), str(HELPERS / "set_flashinfer_version.py"), str(ctx.tree),
                     ctx.target_version()),
                    {}, ctx.tree)]
    options = options_of(ctx.spec)
    if options.aot:
        arch = flashinfer_arch_list(ctx.stack, ctx.nvcc_release, options.aot_arch_list)
        aot_env = dict(env)
        # FlashInfer's ninja files link with $cxx or nvcc: -Xlinker is understood by both.
        aot_env["FLASHINFER_EXTRA_LDFLAGS"] = "-Xlinker --discard-all"
        aot_env.update({"FLASHINFER_CUDA_ARCH_LIST": arch,
                        "FLASHINFER_WORKSPACE_BASE": str(ctx.tree / "build" / "workspace")})
        aot_env["FLASHINFER_NVCC"] = ctx.nvcc_command()
        # FlashInfer's JIT writes CXX verbatim into its build.ninja (host units, links).
        aot_env["CXX"] = " ".join([*ctx.launcher(), env.get("CXX") or "c++"])
        planned.append(Step(
            f"AOT-compile FlashInfer kernels for {arch}",
            (str(ctx.python), str(HELPERS / "flashinfer_aot.py"), "--source-root", str(ctx.tree),
             "--out-dir", str(aot_out_dir(ctx)), "--build-dir", str(ctx.tree / "build" / "aot"),
             "--arch", arch, "-v", *options.aot_modules),
            aot_env, ctx.tree, progress=True))
    planned.append(wheel_step(ctx, env))
    return planned


def flashinfer_aot_files(ctx: BuildContext) -> dict[str, Path]:
    out = aot_out_dir(ctx)
    if not options_of(ctx.spec).aot:
        return {}
    files = {f"flashinfer/data/aot/{p.relative_to(out).as_posix()}": p
             for p in sorted(out.rglob("*.so"))}
    if not files:
        raise BuildError(f"FlashInfer AOT produced no kernels in {out}",
                         fix="check aot_modules in the stack (the globs must match module names)")
    return files
