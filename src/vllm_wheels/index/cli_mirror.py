"""`python -m vllm_wheels index-mirror` (what `nox -s index_mirror` runs)."""

from __future__ import annotations

import argparse

from ..log import Reporter
from . import publish
from .cli_common import add_index_argument, index_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="URL_OR_FILE",
                        help="companion wheels to copy into the index, e.g. the torch CUDA "
                             "build's link from the PyTorch index, with its #sha256=HEX")
    parser.add_argument("--sha256", action="append", default=[],
                        help="the pinned sha256 of each source, in order (instead of a "
                             "#sha256= fragment)")
    add_index_argument(parser)


def run(args: argparse.Namespace) -> int:
    index = index_dir(args)
    reporter = Reporter(None)
    result = publish.mirror(index, args.sources, args.sha256, reporter)
    reporter.say(f"done: {len(result.added)} added, {len(result.unchanged)} unchanged; "
                 f"index generation {result.generation} at {index.root}")
    return 0
