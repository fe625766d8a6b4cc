"""`python -m vllm_wheels publish` (what `nox -s publish` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import layout
from ..build.stack import load_stack
from ..log import Reporter
from ..verify.report import REPORT_FILENAME
from . import publish, upload
from .cli_common import add_index_argument, index_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wheels", type=Path, nargs="+", default=None,
                        help="wheel files or directories (default: wheels/<stack-name>/)")
    add_index_argument(parser)
    parser.add_argument("--report", type=Path, default=None,
                        help=f"verify_abi report (default: {REPORT_FILENAME} beside each wheel)")
    parser.add_argument("--allow-unverified", metavar="REASON", default=None,
                        help="publish wheels without a passing verify_abi result; the reason "
                             "is recorded in the index and shown by index_list")
    parser.add_argument("--stack", type=Path, default=None,
                        help="stack file naming the default wheel folder "
                             "(default: build/stack.toml)")
    parser.add_argument("--upload", action="store_true",
                        help="also upload the published wheels to the remote index of "
                             "--index-config (credentials from the environment)")
    parser.add_argument("--index-config", type=Path, default=None,
                        help="index config with an [upload] table (default: build/index.toml)")
    parser.add_argument("--regenerate", action="store_true",
                        help="publish nothing: rewrite every page from the files and the "
                             "state (with --check-hashes: re-hash every file first)")
    parser.add_argument("--check-hashes", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    root = layout.repo_root()
    index = index_dir(args)
    reporter = Reporter(None)
    if args.regenerate:
        generation = publish.regenerate(index, reporter, check_hashes=args.check_hashes)
        reporter.say(f"regenerated {index.root} (generation {generation})")
        return 0
    upload_config = None
    if args.upload:  # read before publishing: a bad config should stop before any change
        upload_config = upload.load_upload_config(args.index_config or
                                                  root / "build" / "index.toml")
    if args.wheels:
        paths = list(args.wheels)
    else:
        stack = load_stack(args.stack or layout.default_stack(root))
        paths = [layout.wheels_dir(root, stack.name)]
    wheels = publish.collect_wheels(paths)
    reporter.say(f"publishing {len(wheels)} wheel(s) into {index.root}")
    to_add = publish.built_wheels_to_add(wheels, report=args.report,
                                          allow_unverified=args.allow_unverified,
                                          reporter=reporter)
    result = publish.add_to_index(index, to_add, reporter)
    reporter.say(f"done: {len(result.added)} added, {len(result.unchanged)} unchanged; "
                 f"index generation {result.generation} at {index.root}")
    if upload_config is not None:
        upload.upload(upload_config, [index.file_path(c.facts.project, c.path.name)
                                      for c in to_add], reporter)
    return 0
