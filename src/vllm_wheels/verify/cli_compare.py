"""`python -m vllm_wheels compare-wheels` (a console-script command; no nox session): a built
wheel against the official wheel of the same release, per extension module and per arch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cache import write_atomic
from ..errors import ConfigError
from .compare import compare, render_markdown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ours", type=Path, help="the wheel this pipeline built")
    parser.add_argument("official", type=Path, help="the official wheel of the same release")
    parser.add_argument("--arch", required=True,
                        help="the target GPU's compute capability, e.g. 12.0 (RTX 5090)")
    parser.add_argument("--json", type=Path, default=None, help="write the comparison as JSON")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the comparison table as Markdown")


def run(args: argparse.Namespace) -> int:
    for wheel in (args.ours, args.official):
        if not wheel.is_file():
            raise ConfigError(f"{wheel} does not exist", fix="pass two .whl files")
    result = compare(args.ours, args.official, args.arch)
    text = render_markdown(result)
    print(text)
    if args.json:
        write_atomic(args.json, json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    if args.markdown:
        write_atomic(args.markdown, text)
    # The comparison is evidence, not a gate: a wheel built for fewer kernels is a choice.
    # Exit 0 either way; `missing_code` in the JSON is what a script reads.
    return 0
