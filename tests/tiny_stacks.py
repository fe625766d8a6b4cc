"""Small stack files for tests that plan, export or dry-run without a toolchain: the CI
stack's torch 2.14.1 and CUDA 13 pip-toolkit settings under a name of their own, with the
test's packages (e.g. the repository's real tiny_cuda_ext fixture as a path source)."""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_CUDA_EXT_FIXTURE = Path(__file__).parent / "fixtures" / "tiny_cuda_ext"

# The fixture as a path source under pkgs/, with a patch series under patches/.
TINY_CUDA_EXT = """
[packages.tiny-cuda-ext]
source = { path = "pkgs/tiny_cuda_ext", version = "0.1.0" }
patches = "patches/tiny-cuda-ext"
"""


def stack_toml(name: str, packages: str, *, python: str = "3.11", build: str = "") -> str:
    """A stack file's text: the shared header, then [build] (when given), then packages."""
    text = f"""\
schema_version = 1
name = "{name}"
python = "{python}"
cuda_arch_list = "12.0"

[torch]
version = "2.14.1"
cuda = "13.0"

[cuda_toolkit]
version = ">=13.0,<14"
source = "pip"
pip_version = "13.0.3.0"
"""
    if build:
        text += f"\n[build]\n{build}"
    return text + packages


def copy_tiny_cuda_ext(root: Path) -> Path:
    """The fixture copied to root/pkgs/tiny_cuda_ext (where TINY_CUDA_EXT points)."""
    dest = root / "pkgs" / "tiny_cuda_ext"
    shutil.copytree(TINY_CUDA_EXT_FIXTURE, dest)
    return dest
