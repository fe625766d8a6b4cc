"""The builders: how one package of the stack becomes a wheel. A stack's package names its
builder (`builder = "vllm"`; by default vllm for vllm, flashinfer for flashinfer-python,
setuptools for the rest), and the pipeline asks that builder, through the `Builder`
protocol below, for everything that differs between packages. The pipeline itself never
names a builder.

  base.py        BuildContext (the prepared tree, venv, CUDA home, parallelism and compile
                 cache of one package), Step, the build environment, the PEP 517 wheel
                 step, and `parse_options` (a builder's typed options from the stack)
  setuptools.py  any PEP 517 package, `python -m build --no-isolation` (torch extensions)
  flashinfer.py  flashinfer-python with AOT kernels for the stack's arch list
  vllm.py        vLLM: CMake configure as setup.py does it, disconnected, then the wheel

Adding a builder: write `builders/NAME.py` with the members of `Builder` (copy
setuptools.py, the smallest) and add `tests/unit/test_builder_NAME.py` checking its steps
on a small fixture tree. Nothing else changes: the registry finds the module, the stack
schema accepts its NAME and reads its Options, docs/stack-reference.md documents them once
regenerated, and the plan, the build and the manifest reach it through the protocol.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

from packaging.utils import canonicalize_name

from ..fetchcontent import ExternalSource
from ..stack import PackageSpec
from . import setuptools
from .base import (
    DEFAULT_SOURCE_DATE_EPOCH,
    HELPERS,
    BuildContext,
    ExternalDir,
    Step,
    WheelExtras,
    hold_specs,
    prefix_specs_path,
)

__all__ = [
    "BUILDERS",
    "DEFAULT_SOURCE_DATE_EPOCH",
    "HELPERS",
    "DEFAULT_BUILDERS",
    "BuildContext",
    "Builder",
    "ExternalDir",
    "Step",
    "WheelExtras",
    "builder_for",
    "default_builder",
    "hold_specs",
    "makes_wheel",
    "prefix_specs_path",
    "steps_for",
]


class Builder(Protocol):
    """What the pipeline asks a builder (each builder is a module of this package)."""

    NAME: str  # the stack's `builder = "NAME"`
    # The packages (distribution names) built with this builder when their stack table
    # names no builder.
    PACKAGES: tuple[str, ...]
    @property
    def Options(self) -> type:  # noqa: N802 - the builder module's class
        """The frozen dataclass of [packages.P.options]: its fields (type, default, "doc"
        in the field metadata) are the one definition of the builder's options; the stack
        schema and docs/stack-reference.md read them from here."""
        ...

    def parse(self, options: Mapping[str, Any], where: str) -> object:
        """The builder's frozen options dataclass from [packages.P.options] (defaults in
        the dataclass; an unknown key is a ConfigError)."""
        ...

    def build_requirements(self, tree: Path, spec: PackageSpec) -> list[str]:
        """What building needs besides PEP 518 build-system.requires, read from the source
        (torch pins are stripped by the caller)."""
        ...

    def runtime_requirements(self, tree: Path, spec: PackageSpec) -> list[str]:
        """What the built wheel will require (its Requires-Dist) besides PEP 621
        [project] dependencies, read from the source before it is built: the build venv
        is constrained to its exact pins (toolchain.venv_constraints)."""
        ...

    def discover_externals(self, tree: Path) -> list[ExternalSource] | None:
        """The external sources the build would download (the plan resolves them: cache,
        stack override, bundle); None for a builder whose builds download nothing (its
        package's externals table is then not read)."""
        ...

    def steps(self, ctx: BuildContext) -> list[Step]:
        """The commands that build the package, in order, with their environment."""
        ...

    def makes_wheel(self, spec: PackageSpec) -> bool:
        """False when the package's options build without making a wheel."""
        ...

    def plan_notes(self, spec: PackageSpec) -> list[str]:
        """Lines the printed plan adds after the package's steps."""
        ...

    def wheel_extras(self, ctx: BuildContext) -> WheelExtras:
        """Post-processing of the raw wheel: files to add, platform tag, runtime pins and
        manifest fields of this builder (after the build, in the build venv)."""
        ...

    def manifest_cmake_args(self, ctx: BuildContext) -> list[str] | None:
        """The CMake arguments the manifest records (None: not a CMake build)."""
        ...


def _discover() -> dict[str, Builder]:
    """Every module of this package but base.py is a builder, registered by its NAME (sorted
    by module name, so the order is the same everywhere): a new builder is a new module,
    nothing to register by hand. Whether each module answers the whole protocol is checked
    by tests/unit/test_builders.py (a registry built at run time is beyond mypy)."""
    found: dict[str, Builder] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = cast("Builder", importlib.import_module(f"{__name__}.{info.name}"))
        found[module.NAME] = module
    return found


# builder name (the stack's `builder = ...`) -> the module implementing it
BUILDERS: dict[str, Builder] = _discover()

# The builder of a package whose stack table names none (canonical name -> builder), from
# each builder's PACKAGES; every other package is built with setuptools.
DEFAULT_BUILDERS = {canonicalize_name(package): name for name, module in BUILDERS.items()
                    for package in module.PACKAGES}


def default_builder(package: str) -> str:
    return DEFAULT_BUILDERS.get(canonicalize_name(package), setuptools.NAME)


def builder_for(spec: PackageSpec) -> Builder:
    return BUILDERS[spec.builder]


def steps_for(ctx: BuildContext) -> list[Step]:
    return builder_for(ctx.spec).steps(ctx)


def makes_wheel(spec: PackageSpec) -> bool:
    return builder_for(spec).makes_wheel(spec)
