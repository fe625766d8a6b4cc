"""The setuptools builder: any PEP 517 package built with `python -m build --no-isolation`
in the build venv (torch CUDA extensions, e.g. the test fixture). It takes no options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stack import PackageSpec
from .base import BuildContext, Step, WheelExtras, parse_options, wheel_step

NAME = "setuptools"
PACKAGES: tuple[str, ...] = ()  # built with this builder by default


@dataclass(frozen=True, kw_only=True)
class Options:
    """[packages.NAME.options]: none."""


def parse(options: Mapping[str, Any], where: str) -> Options:
    return parse_options(Options, options, where)


def build_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    return []


def runtime_requirements(tree: Path, spec: PackageSpec) -> list[str]:
    """None beyond PEP 621 [project] dependencies (read by prepare.py)."""
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
    return WheelExtras()


def steps(ctx: BuildContext) -> list[Step]:
    env = ctx.base_env()
    # torch.utils.cpp_extension takes its nvcc from PYTORCH_NVCC, the supported way to put
    # launchers (measurement, source path, compile cache) in front of nvcc (the expensive
    # units). Its host C++ units (CXX) are not wrapped: torch checks CXX as one compiler path.
    env["PYTORCH_NVCC"] = ctx.nvcc_command()
    return [wheel_step(ctx, env)]
