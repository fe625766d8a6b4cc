"""Arguments and defaults shared by the index commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import layout
from .store import IndexDir


def add_index_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=Path, default=None,
                        help=f"index directory (default: {layout.INDEX_DIR}/ in the repository)")


def index_dir(args: argparse.Namespace) -> IndexDir:
    return IndexDir((args.index or layout.index_dir(layout.repo_root())).resolve())
