"""`python -m vllm_wheels index-root` (what `nox -s index_root` runs): the index root
for this machine's GPU, printed alone on stdout so that a provisioning script can write
`pip install --index-url "$(vllm-wheels index-root --base-url URL)" ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import layout
from ..build.stack import load_stack
from . import roots


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", required=True, metavar="URL",
                        help="where the index directory (wheels/index/) is served, e.g. "
                             "https://wheels.internal/ (its roots are URL/<target>/simple/)")
    parser.add_argument("--stack", type=Path, default=None,
                        help="stack file naming the targets (default: build/stack.toml)")
    parser.add_argument("--json", action="store_true",
                        help="print the choice as JSON (schema_version 1: target, root, arch "
                             "list, each GPU with its compute capability and fit) instead of "
                             "the URL alone")


def run(args: argparse.Namespace) -> int:
    stack = load_stack(args.stack or layout.default_stack(layout.repo_root()))
    gpus = roots.detect_gpus()
    choice = roots.choose(stack, args.base_url, gpus)
    for gpu, fit in zip(choice.gpus, choice.fits, strict=True):
        print(f"GPU {gpu.index}: {gpu.name}, compute capability {gpu.capability} (from "
              f"{gpu.source}): target {choice.target or stack.name} "
              f"({' '.join(choice.arch_list)}), {roots.FIT_NAMES[fit]}", file=sys.stderr)
    if args.json:
        print(json.dumps(choice.to_dict(), indent=2), flush=True)
    else:
        print(choice.root, flush=True)
    return 0
