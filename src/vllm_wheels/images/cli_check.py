"""`python -m vllm_wheels check-images`: fail (exit 2) when docker/ and the stack disagree
(a Dockerfile ARG default edited by hand, an ARG the pipeline does not pass, a digest
recorded for another tag)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import layout
from ..errors import ConfigError
from .commands import check_consistency


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", type=Path, default=None,
                        help="the stack the Dockerfile defaults mirror (default: build/stack.toml)")


def run(args: argparse.Namespace) -> int:
    root = layout.repo_root()
    problems = check_consistency(root, args.stack)
    if problems:
        raise ConfigError("docker/ disagrees with the stack:\n  " + "\n  ".join(problems),
                          why="the stack (and the versions file it names) is the one place "
                              "these values are edited",
                          fix="run `nox -s update_images -- --no-resolve` to rewrite the "
                              "Dockerfile ARG defaults from the stack")
    print("docker/ agrees with the stack and docker/versions.toml", flush=True)
    return 0
