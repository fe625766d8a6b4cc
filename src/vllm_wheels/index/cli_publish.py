"""`python -m vllm_wheels publish` (what `nox -s publish` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import layout
from ..build.stack import load_stack
from ..errors import ConfigError
from ..log import Reporter
from ..verify.report import REPORT_FILENAME
from . import publish, upload
from .cli_common import add_index_argument, index_dir
from .store import IndexDir


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
    parser.add_argument("--targets", default=None, metavar="all|T1,T2",
                        help="publish the stack's GPU targets, each into its own index root "
                             "INDEX/<target>/ (clients read INDEX/<target>/simple/), from "
                             "wheels/<stack-name>/<target>/ (or DIR/<target>/ under the one "
                             "--wheels DIR); every target's wheels pass the gate and every root "
                             "is checked before any root changes")


def run(args: argparse.Namespace) -> int:
    if args.targets is not None:
        return run_targets(args)
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


def run_targets(args: argparse.Namespace) -> int:
    """`publish --targets`: each target's folder into its own root, one publish."""
    root = layout.repo_root()
    stack = load_stack(args.stack or layout.default_stack(root))
    targets = stack.select_targets(args.targets)
    if args.upload:
        raise ConfigError("--targets and --upload exclude each other",
                          why="the remote index of --index-config is one root; the targets' "
                              "wheels would be mixed in it",
                          fix="upload each target's root with its own --index-config, from "
                              "`publish --wheels wheels/<stack>/<target> --upload`")
    if args.wheels is not None and (len(args.wheels) != 1 or not args.wheels[0].is_dir()):
        raise ConfigError("--targets takes one --wheels DIR: the folder holding a "
                          "sub-folder per target",
                          fix="e.g. --wheels wheels/<stack> (DIR/<target>/ is read for each "
                              "target)")
    base = args.wheels[0] if args.wheels else layout.wheels_dir(root, stack.name)
    index_root = index_dir(args).root
    roots = {name: IndexDir(layout.target_index_dir(index_root, name)) for name in targets}
    reporter = Reporter(None)
    if args.regenerate:
        for name, index in roots.items():
            generation = publish.regenerate(index, reporter, check_hashes=args.check_hashes)
            reporter.say(f"regenerated {index.root} (target {name}, generation {generation})")
        return 0
    batches = []
    # Every target's wheels through the gate first: one refused wheel refuses them all.
    for name, index in roots.items():
        wheels = publish.collect_wheels([layout.target_dir(base, name)])
        reporter.say(f"target {name}: {len(wheels)} wheel(s) from "
                     f"{layout.target_dir(base, name)} into {index.root}")
        batches.append((index, publish.built_wheels_to_add(
            wheels, report=args.report, allow_unverified=args.allow_unverified,
            reporter=reporter)))
    results = publish.add_to_roots(batches, reporter)
    for (name, index), result in zip(roots.items(), results, strict=True):
        reporter.say(f"target {name}: {len(result.added)} added, {len(result.unchanged)} "
                     f"unchanged; generation {result.generation}; clients read "
                     f"{index.root}/simple/ (served as <base>/{name}/simple/)")
    return 0
