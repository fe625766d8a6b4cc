"""`python -m vllm_wheels index-yank` (what `nox -s index_yank` runs)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..log import Reporter
from .cli_common import add_index_argument, index_dir
from .yank import set_yanked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="FILE",
                        help="wheel filename(s) in the index, or PROJECT==VERSION for all "
                             "files of that exact version")
    parser.add_argument("--reason", default=None, help="why (required to yank; shown by "
                                                       "pip and uv)")
    parser.add_argument("--undo", action="store_true", help="un-yank instead")
    add_index_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.undo == (args.reason is not None):
        raise ConfigError("give either --reason TEXT (yank) or --undo (un-yank)")
    set_yanked(index_dir(args), args.targets, None if args.undo else args.reason,
               Reporter(None))
    return 0
