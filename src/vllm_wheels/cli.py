"""Command line: `python -m vllm_wheels COMMAND [...]` (what the nox sessions run).
Parses arguments, sets up the log, maps errors to exit codes; no logic of its own.

Each stage other than the build registers itself in COMMANDS as (module, help): the
module provides `add_arguments(parser)` and `run(args) -> int`, and is imported only
when its command runs, so `build-wheels` never pays for the others' imports.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import signal
import sys
import time
from pathlib import Path

from . import bundle, pipeline
from .cache import Cache, default_cache_root, write_atomic
from .errors import ConfigError, DiskFullError, InterruptedError_, PipelineError
from .log import Reporter
from .stack import DEFAULT_STACK, load_stack


def repo_root() -> Path:
    here = Path.cwd()
    for candidate in (here, *here.parents):
        if (candidate / "noxfile.py").exists() and (candidate / "build").is_dir():
            return candidate
    return here


# command -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "runtime-image": ("vllm_wheels.images.cli_runtime",
                      "build the runtime image (our wheels + exact torch, ABI-checked, vllm serve)"),
    "update-images": ("vllm_wheels.images.cli_update",
                      "look up and record base image digests; sync Dockerfile ARG defaults"),
    "check-images": ("vllm_wheels.images.cli_check",
                     "fail when docker/ and the stack disagree"),
    "verify-abi": ("vllm_wheels.verify.cli_abi",
                   "check built wheels against a runtime environment before import"),
    "verify-throughput": ("vllm_wheels.verify.cli_throughput",
                          "A/B the custom wheels against the vllm/vllm-openai nightly image"),
    "trial": ("vllm_wheels.trial.cli_trial",
              "upgrade trial: what moving to another vLLM means, then build/abi/throughput"),
    "publish": ("vllm_wheels.index.cli_publish",
                "add verified wheels to the internal wheel index (wheels/index/)"),
    "serve-index": ("vllm_wheels.index.cli_serve",
                    "serve the wheel index over HTTP (PEP 503/691) for pip and uv"),
    "index-list": ("vllm_wheels.index.cli_list",
                   "what the wheel index holds: versions, labels, torch/CUDA/arch, yanked"),
    "index-yank": ("vllm_wheels.index.cli_yank",
                   "yank (PEP 592) or un-yank files of the wheel index, with a reason"),
    "index-mirror": ("vllm_wheels.index.cli_mirror",
                     "copy companion wheels (e.g. the torch CUDA build) into the index by hash"),
}


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-wheels")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        # Parsers of the other stages are built only for their own command (or --help),
        # keeping the import cost off the build.
        command_parser = sub.add_parser(name, help=help_text)
        if not argv or argv[0] in (name, "-h", "--help"):
            importlib.import_module(module).add_arguments(command_parser)
    b = sub.add_parser("build-wheels", help="build the stack's wheels into wheels/<stack>/")
    b.add_argument("--stack", type=Path, default=None,
                   help="stack file (default: build/stack.toml)")
    b.add_argument("--dry-run", action="store_true",
                   help="print the plan (sources are downloaded and patched; nothing compiles)")
    b.add_argument("--json", type=Path, default=None, help="also write the plan as JSON")
    b.add_argument("--cache-dir", type=Path, default=None,
                   help="cache root (default: $VLLM_WHEELS_CACHE or ~/.cache/vllm-wheels)")
    b.add_argument("--output-dir", type=Path, default=None,
                   help="where wheels go (default: wheels/<stack-name>/)")
    b.add_argument("--max-jobs", type=int, default=None,
                   help="concurrent compile jobs, >= 0 (default or 0: from cores and memory)")
    b.add_argument("--nvcc-threads", type=int, default=None,
                   help="threads per nvcc, >= 0 (default or 0: 1)")
    b.add_argument("--build-venv", type=Path, default=None,
                   help="use this existing venv (must hold exactly the pinned torch)")
    b.add_argument("--compile-cache-remote", default=None, metavar="URL",
                   help="shared sccache backend for this machine: redis://HOST:PORT, "
                        "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or 'none' (default: "
                        "$VLLM_WHEELS_COMPILE_CACHE_REMOTE, then the stack's [build] "
                        "compile_cache_remote); no password here: use the variable")
    b.add_argument("--unit-costs", type=Path, default=None, metavar="FILE",
                   help="choose parallelism and order from these measured unit costs: a "
                        "build-telemetry.json (e.g. another machine's) or a record from "
                        "CACHE/unit-costs/ (default: $VLLM_WHEELS_UNIT_COSTS, then this "
                        "cache's record of the same version and arch list, then the rule)")
    b.add_argument("--only", nargs="+", default=None, help="build only these packages")
    b.add_argument("--no-fetch", action="store_true",
                   help="never clone external sources (fail if one is not in the cache)")
    b.add_argument("--export-bundle", type=Path, default=None, metavar="DIR",
                   help="write every source the build reads (sdists, externals at their "
                        "pinned refs, patches, the stack) with a sha256 lock into DIR; "
                        "builds nothing")
    b.add_argument("--bundle-part-size", default=None, metavar="SIZE",
                   help="with --export-bundle: split into part-NN/ directories of at most "
                        "SIZE (e.g. 60M)")
    b.add_argument("--bundle", type=Path, default=None, metavar="DIR",
                   help="build from an exported bundle, with no network: its stack, "
                        "patches and sources, every file checked against the lock")
    b.add_argument("--verify-reproducible", action="store_true",
                   help="after the build, build again from clean source trees in a second "
                        "cache directory (CACHE/reproduce: other paths, empty compile cache; "
                        "build venv and downloads shared) and compare the wheels byte for "
                        "byte; exit 14 naming the differing files if they differ")
    b.add_argument("--in-docker", action="store_true",
                   help="build inside docker/Dockerfile.build (the stack's CUDA image); "
                        "with --dry-run, print the docker build command")
    return parser


def build_wheels(args: argparse.Namespace) -> int:
    root = repo_root()
    # A negative --max-jobs/--nvcc-threads (or MAX_JOBS/NVCC_THREADS) is exit 2 at once,
    # here and before the docker build it would be forwarded to.
    pipeline.parallelism_overrides(args.max_jobs, args.nvcc_threads)
    if args.in_docker:
        from .images.commands import build_in_docker

        return build_in_docker(args, root)
    cache = Cache((args.cache_dir or default_cache_root()).resolve())
    source_bundle = None
    if args.bundle_part_size and not args.export_bundle:
        raise ConfigError("--bundle-part-size needs --export-bundle DIR")
    part_size = bundle.parse_size(args.bundle_part_size) if args.bundle_part_size else None
    if args.bundle and args.export_bundle:
        raise ConfigError("--bundle and --export-bundle exclude each other",
                          fix="export from a stack (with network), build from the bundle")
    if args.export_bundle:
        # Before the source step (minutes): a directory the export would wipe is refused.
        bundle.check_export_dest(args.export_bundle.resolve())
    if args.bundle:
        # Checked before anything else runs: a changed bundle is exit 4 with nothing built.
        check_reporter = Reporter(cache.logs / f"bundle-check-{time.strftime('%Y%m%d-%H%M%S')}.log")
        try:
            source_bundle = bundle.load(args.bundle, cache, check_reporter)
        finally:
            check_reporter.close()
        if args.stack and load_stack(args.stack).digest() != \
                load_stack(source_bundle.stack_path).digest():
            raise ConfigError(f"--stack {args.stack} is not the stack of the bundle "
                              f"({source_bundle.lock['stack']['file']})",
                              fix="leave out --stack: a bundle build uses the bundle's stack")
        stack_path = source_bundle.stack_path
    else:
        stack_path = args.stack or root / DEFAULT_STACK
    stack = load_stack(stack_path)
    output = (args.output_dir or root / "wheels" / stack.name).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = cache.logs / f"{'plan' if args.dry_run else 'build'}-{stack.name}-{stamp}.log"
    reporter = Reporter(log_path)
    try:
        reporter.say(f"vllm-wheels: stack {stack.name} ({stack_path}); full log: {log_path}")
        total = pipeline.total_steps(len(args.only) if args.only else len(stack.packages))
        reporter.step(1, total, "sources: download, verify sha256, unpack, patch, strip "
                                "torch pins; discover external sources")
        plan = pipeline.make_plan(stack, repo_root=root, cache=cache, output_dir=output,
                                  log_path=log_path, reporter=reporter,
                                  fetch_externals=bool(args.export_bundle),
                                  max_jobs=args.max_jobs, nvcc_threads=args.nvcc_threads,
                                  build_venv=args.build_venv, only=args.only,
                                  source_bundle=source_bundle,
                                  compile_cache_remote=args.compile_cache_remote,
                                  unit_costs=args.unit_costs)
        reporter.step_done()
        if args.export_bundle:
            summary = bundle.export(plan, args.export_bundle.resolve(), reporter, part_size)
            reporter.say(bundle.render_summary(summary))
            return 0
        reporter.step(2, total, "plan")
        text = pipeline.render_plan(plan)
        if args.json:
            write_atomic(args.json, json.dumps(plan.to_dict(), indent=2, default=str) + "\n")
        if args.dry_run:
            print(text, flush=True)
            reporter.log(text)
            if args.json:
                reporter.say(f"plan written to {args.json}")
            # The whole plan is printed first; then the dry run fails as the build would
            # (exit 3), so a script can gate on `--dry-run` alone.
            try:
                pipeline.raise_on_failed_checks(plan)
            except PipelineError:
                reporter.say("dry run: the plan above is complete, but a real build would stop "
                             "at these toolchain checks before compiling (FAIL lines above)")
                raise
            return 0
        reporter.log(text)
        reporter.step_done()
        results = pipeline.build(plan, reporter, build_venv=args.build_venv,
                                 fetch_externals=not args.no_fetch and source_bundle is None)
        if args.verify_reproducible:
            from . import reproduce

            reproduce.verify(plan, results, reporter,
                             fetch_externals=not args.no_fetch and source_bundle is None)
        return 0
    finally:
        reporter.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _build_parser(argv)
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if args.command == "build-wheels":
            return build_wheels(args)
        module, _help = COMMANDS[args.command]
        code: int = importlib.import_module(module).run(args)
        return code
    except KeyboardInterrupt:
        err = InterruptedError_("interrupted", fix="re-run; finished steps are reused")
        print(err.render(), file=sys.stderr)
        return err.exit_code
    except PipelineError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # The stages turn ENOSPC into exit 7 where they write (and remove what they left);
        # this is the net for a write no stage expected to fail, so a full disk is never a
        # traceback.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        full = DiskFullError(f"disk full: {exc}",
                             why="a write failed for lack of space (or over a quota)",
                             fix=f"free space on the filesystem of {exc.filename or 'the cache'}"
                                 " and run the command again; finished steps are reused")
        print(full.render(), file=sys.stderr)
        return full.exit_code


if __name__ == "__main__":
    sys.exit(main())
