"""Arguments and defaults shared by the index commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from .store import IndexDir

DEFAULT_INDEX = Path("wheels") / "index"  # repo-relative, like wheels/<stack>/


def add_index_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=Path, default=None,
                        help=f"index directory (default: {DEFAULT_INDEX}/ in the repository)")


def index_dir(args: argparse.Namespace) -> IndexDir:
    from ..cli import repo_root  # the CLI module is loaded whenever a command runs

    return IndexDir((args.index or repo_root() / DEFAULT_INDEX).resolve())
