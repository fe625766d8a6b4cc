"""`vllm-wheels build-wheels` (nox -s build_wheels): the command of the build stage. It
reads the options, makes the plan (plan.py), prints it (render.py) and builds it
(pipeline.py); --export-bundle/--bundle (bundle.py), --verify-reproducible
(reproduce.py) and --in-docker (images) hang off the same plan. --targets runs the same
build once per GPU target of the stack (Stack.for_target), each into its own folder.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import layout
from ..cache import Cache, default_cache_root, write_atomic
from ..errors import ConfigError, PipelineError
from ..log import Reporter, new_log_path
from . import bundle, pipeline
from .output import check_output_dir
from .parallelism import parallelism_overrides
from .plan import make_plan, raise_on_failed_checks
from .render import render_plan
from .stack import TOOLKIT_OVERRIDE_ENV, Stack, load_stack, with_toolkit_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", type=Path, default=None,
                        help="stack file (default: build/stack.toml)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (sources are downloaded and patched; nothing compiles)")
    parser.add_argument("--json", type=Path, default=None, help="also write the plan as JSON")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: $VLLM_WHEELS_CACHE or ~/.cache/vllm-wheels)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where wheels go (default: wheels/<stack-name>/)")
    parser.add_argument("--max-jobs", type=int, default=None,
                        help="concurrent compile jobs, >= 0 (default or 0: from cores and memory)")
    parser.add_argument("--nvcc-threads", type=int, default=None,
                        help="threads per nvcc, >= 0 (default or 0: 1)")
    parser.add_argument("--build-venv", type=Path, default=None,
                        help="use this existing venv (must hold exactly the pinned torch)")
    parser.add_argument("--compile-cache-remote", default=None, metavar="URL",
                        help="shared sccache backend for this machine: redis://HOST:PORT, "
                             "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or 'none' (default: "
                             "$VLLM_WHEELS_COMPILE_CACHE_REMOTE, then the stack's [build] "
                             "compile_cache_remote); no password here: use the variable")
    parser.add_argument("--unit-costs", type=Path, default=None, metavar="FILE",
                        help="choose parallelism and order from these measured unit costs: a "
                             "build-telemetry.json (e.g. another machine's) or a record from "
                             "CACHE/unit-costs/ (default: $VLLM_WHEELS_UNIT_COSTS, then this "
                             "cache's record of the same version and arch list, then the rule)")
    parser.add_argument("--cuda-toolkit", choices=("system", "pip"), default=None,
                        help="where nvcc comes from on this machine, over the stack's "
                             "[cuda_toolkit] source (default: $VLLM_WHEELS_CUDA_TOOLKIT, then "
                             "the stack); the version requirement still applies")
    parser.add_argument("--only", nargs="+", default=None, help="build only these packages")
    parser.add_argument("--no-fetch", action="store_true",
                        help="never clone external sources (fail if one is not in the cache)")
    parser.add_argument("--export-bundle", type=Path, default=None, metavar="DIR",
                        help="write every source the build reads (sdists, externals at their "
                             "pinned refs, patches, the stack) with a sha256 lock into DIR; "
                             "builds nothing")
    parser.add_argument("--bundle-part-size", default=None, metavar="SIZE",
                        help="with --export-bundle: split into part-NN/ directories of at most "
                             "SIZE (e.g. 60M)")
    parser.add_argument("--bundle", type=Path, default=None, metavar="DIR",
                        help="build from an exported bundle, with no network: its stack, "
                             "patches and sources, every file checked against the lock")
    parser.add_argument("--verify-reproducible", action="store_true",
                        help="after the build, build again from clean source trees in a second "
                             "cache directory (CACHE/reproduce: other paths, empty compile cache; "
                             "build venv and downloads shared) and compare the wheels byte for "
                             "byte; exit 14 naming the differing files if they differ")
    parser.add_argument("--targets", default=None, metavar="all|T1,T2",
                        help="build the stack's GPU targets ([targets.T] in the stack), one "
                             "after the other, each into OUTPUT/<target>/ (default OUTPUT: "
                             "wheels/<stack-name>/) with its own arch list and label; they "
                             "share the sources, the build venv and the compile cache. With "
                             "--json F, each target's plan goes to F.<target>.json")
    parser.add_argument("--in-docker", action="store_true",
                        help="build inside docker/Dockerfile.build (the stack's CUDA image); "
                             "with --dry-run, print the docker build command")


def run(args: argparse.Namespace) -> int:
    # A stack's relative paths (path sources, patches, externals) are relative to the
    # checkout that holds it, from whatever directory the command runs in.
    root = layout.repo_root(args.stack.parent if args.stack else None)
    # A negative --max-jobs/--nvcc-threads (or MAX_JOBS/NVCC_THREADS) is exit 2 at once,
    # here and before the docker build it would be forwarded to.
    parallelism_overrides(args.max_jobs, args.nvcc_threads)
    if args.targets is not None:
        for option, given in (("--in-docker", args.in_docker),
                              ("--export-bundle", args.export_bundle)):
            if given:
                raise ConfigError(f"--targets and {option} exclude each other",
                                  why="--export-bundle writes the sources, which every target "
                                      "shares; --in-docker builds one arch list per image run"
                                  if option == "--export-bundle" else
                                  "the build image exports one wheel folder per run",
                                  fix="export the bundle without --targets (it serves every "
                                      "target)" if option == "--export-bundle" else
                                  "run --in-docker once per target's stack, or build the "
                                  "targets without --in-docker")
    if args.in_docker:
        from ..images.commands import build_in_docker

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
        check_reporter = Reporter(new_log_path(cache.logs, "bundle-check"))
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
        stack_path = args.stack or layout.default_stack(root)
    stack = load_stack(stack_path)
    if args.cuda_toolkit:
        stack = with_toolkit_source(stack, args.cuda_toolkit, "--cuda-toolkit")
    else:
        stack = with_toolkit_source(stack, os.environ.get(TOOLKIT_OVERRIDE_ENV),
                                    TOOLKIT_OVERRIDE_ENV)
    output = (args.output_dir or layout.wheels_dir(root, stack.name)).resolve()
    if args.targets is None:
        return _build(args, root, cache, stack, stack_path, output, source_bundle, part_size)
    # The matrix: one build per target, one after the other. Each is the whole pipeline
    # (plan, toolchain, build, verify_abi --arch, publish into its own folder); what does
    # not depend on the arch list is found ready by the second: the prepared trees (keyed
    # by package, version and patch series), the build venv (keyed by Python, torch,
    # toolkit and requirements) and the compile cache.
    targets = stack.select_targets(args.targets)
    for name in targets:
        _build(args, root, cache, stack.for_target(name), stack_path,
               layout.target_dir(output, name), source_bundle, part_size)
    if not args.dry_run:
        print(f"vllm-wheels: {len(targets)} target(s) built: " + ", ".join(
            f"{name} -> {layout.target_dir(output, name)}" for name in targets), flush=True)
    return 0


def _build(args: argparse.Namespace, root: Path, cache: Cache, stack: Stack, stack_path: Path,
           output: Path, source_bundle: bundle.Bundle | None, part_size: int | None) -> int:
    """One build of `stack` (the stack, or one of its targets) into `output`."""
    what = stack.name if stack.gpu_target is None else f"{stack.name}-{stack.gpu_target}"
    if not args.export_bundle:
        # Before the source step (minutes): wheels someone else put there are refused.
        check_output_dir(output)
    log_path = new_log_path(cache.logs, f"{'plan' if args.dry_run else 'build'}-{what}")
    json_path = args.json
    if json_path is not None and stack.gpu_target is not None:
        json_path = json_path.with_name(f"{json_path.stem}.{stack.gpu_target}{json_path.suffix}")
    reporter = Reporter(log_path)
    try:
        target = f", target {stack.gpu_target} ({stack.arch_list_env}, +{stack.local_label()})" \
            if stack.gpu_target else ""
        reporter.say(f"vllm-wheels: stack {stack.name}{target} ({stack_path}); full log: "
                     f"{log_path}")
        reporter.plan_steps(pipeline.total_steps(len(args.only) if args.only
                                                 else len(stack.packages)))
        reporter.step(pipeline.SOURCES_STEP)
        plan = make_plan(stack, repo_root=root, cache=cache, output_dir=output,
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
        reporter.step(pipeline.PLAN_STEP)
        text = render_plan(plan)
        if json_path:
            write_atomic(json_path, json.dumps(plan.to_dict(), indent=2, default=str) + "\n")
        if args.dry_run:
            reporter.result(text)
            if json_path:
                reporter.say(f"plan written to {json_path}")
            # The whole plan is printed first; then the dry run fails as the build would
            # (exit 3), so a script can gate on `--dry-run` alone.
            try:
                raise_on_failed_checks(plan)
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
