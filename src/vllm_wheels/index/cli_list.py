"""`python -m vllm_wheels index-list` (what `nox -s index_list` runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cache import write_atomic
from . import listing
from .cli_common import add_index_argument, index_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_index_argument(parser)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the listing as JSON (schema_version 1); - = stdout "
                             "instead of the table")


def run(args: argparse.Namespace) -> int:
    index = index_dir(args)
    rows = listing.list_index(index)
    data = listing.to_json(rows, index.load().generation)
    if args.json is not None and str(args.json) == "-":
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{index.root} (generation {data['generation']}, {len(rows)} file(s))")
    print(listing.render_table(rows), flush=True)
    if args.json is not None:
        write_atomic(args.json, json.dumps(data, indent=2) + "\n")
    return 0
