"""`python -m vllm_wheels runtime-image`: build docker/Dockerfile.runtime from the stack's
wheels (wheels/<stack>/ or the internal index); the image verifies its own ABI while it
builds, so a mismatched image never exists."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import layout
from .commands import build_runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", type=Path, default=None,
                        help="stack file (default: build/stack.toml)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheels", type=Path, default=None,
                        help="directory of the stack's wheels (default: wheels/<stack-name>/)")
    source.add_argument("--index", default=None,
                        help="take the wheels from this internal index (PEP 503 simple URL)")
    parser.add_argument("--repository", default="vllm-wheels",
                        help="image name prefix (tag: <prefix>-runtime:<stack>-<label>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the docker build and docker run commands; run nothing")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the commands as JSON (schema_version 1)")


def run(args: argparse.Namespace) -> int:
    return build_runtime(args, layout.repo_root())
