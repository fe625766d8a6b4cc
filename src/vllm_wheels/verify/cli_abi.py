"""`python -m vllm_wheels verify-abi` (what `nox -s verify_abi` runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import layout
from ..build.stack import Stack, load_stack
from ..build.toolchain import ensure_build_venv
from ..cache import Cache, default_cache_root, publish_dir, remove, temp_sibling
from ..errors import AbiMismatchError, CannotCheckError
from ..log import Reporter, new_log_path
from ..runner import query
from . import abi
from .checks import FAIL, UNKNOWN
from .report import REPORT_FILENAME, record_results
from .wheelfacts import collect_wheels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wheels", type=Path, nargs="+", default=None,
                        help="wheel files or directories (default: wheels/<stack-name>/)")
    parser.add_argument("--python", type=Path, default=None,
                        help="interpreter of the runtime environment to check against "
                             "(default: a venv made from the stack's pinned torch)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write this run's report here, and nowhere else (without it, a "
                             "run over one directory records its results in "
                             f"DIR/{REPORT_FILENAME}, which publishing reads)")
    parser.add_argument("--stack", type=Path, default=None,
                        help="stack file (default: build/stack.toml)")
    parser.add_argument("--arch", nargs="+", default=None,
                        help="GPU archs to require, e.g. 12.0 (default: the wheel's recorded "
                             "arch list; a GPU present on this host is always checked)")
    parser.add_argument("--no-import", action="store_true",
                        help="static checks only (no import smoke test)")
    parser.add_argument("--ignore-host-gpu", action="store_true",
                        help="this host's GPU is not the target (e.g. checking RTX 5090 wheels "
                             "on an H100 box): no GPU arch check or GPU op for it")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: $VLLM_WHEELS_CACHE or ~/.cache/vllm-wheels)")


def runtime_venv(stack: Stack, cache: Cache, reporter: Reporter) -> Path:
    """A venv made from the stack: its Python with exactly the pinned torch. If a build
    venv of this stack exists, the runtime venv layers over its site-packages through a
    .pth file (seconds, no second multi-GB torch install); else torch is installed."""
    prefix = f"py{stack.python}-torch{stack.torch.version}-cu{stack.torch.cuda.replace('.', '')}-"
    builds = sorted(p for p in cache.venvs.glob(prefix + "*")
                    if (p / layout.VENV_MARKER).exists()) if cache.venvs.is_dir() else []
    if not builds:
        reporter.say(f"creating a runtime venv with torch {stack.torch.version} (first use)")
        return ensure_build_venv(stack, cache, reporter, []).python
    base = builds[0]
    target = cache.venvs / f"runtime-{base.name}"
    python = target / "bin" / "python"
    if python.exists():
        return python
    tmp = temp_sibling(target)
    remove(tmp)
    try:
        base_python = (base / "bin" / "python").resolve()
        made = query([base_python, "-m", "venv", "--without-pip", tmp], timeout=300)
        if not made.ok:
            raise OSError(made.describe(400))
        site = next((tmp / "lib").glob("python3*/site-packages"))
        base_site = next((base / "lib").glob("python3*/site-packages"))
        (site / "_vllm_wheels_stack_torch.pth").write_text(str(base_site) + "\n")
    except (OSError, StopIteration) as exc:
        remove(tmp)
        raise CannotCheckError(f"could not create the runtime venv {target}: {exc}",
                               fix="pass --python with an existing runtime") from None
    # A --without-pip venv embeds its own path only in bin/activate*, never used here.
    publish_dir(tmp, target)
    return python


def run(args: argparse.Namespace) -> int:
    root = layout.repo_root()
    cache = Cache((args.cache_dir or default_cache_root()).resolve())
    stack = None
    if args.wheels is None or args.python is None or args.stack is not None:
        stack = load_stack(args.stack or layout.default_stack(root))
    wheels = args.wheels or [layout.wheels_dir(root, stack.name)]  # type: ignore[union-attr]
    log_path = new_log_path(cache.logs, "verify-abi")
    reporter = Reporter(log_path)
    try:
        reporter.say(f"verify_abi: full log: {log_path}")
        collect_wheels(wheels)  # no wheels: say so before creating a runtime venv
        python = args.python
        if python is None:
            assert stack is not None
            python = runtime_venv(stack, cache, reporter)
        targets = args.arch or []
        report = abi.verify(wheels, python.absolute(), work_dir=cache.root / "verify",
                            arch_targets=targets, import_test=not args.no_import,
                            host_gpus=not args.ignore_host_gpu,
                            reporter=reporter)
        text = report.render()
        print(text, flush=True)
        reporter.log(text)
        _write(report, args.json, wheels, reporter)
        reporter.log(json.dumps(report.to_dict(), indent=2))
        if report.status == FAIL:
            bad = [w.facts.filename for w in report.wheels if w.status == FAIL]
            raise AbiMismatchError(f"{len(bad)} wheel(s) do not match the runtime {python}: "
                                   f"{', '.join(bad)}",
                                   why="importing them there fails or misbehaves",
                                   fix="see the FAIL lines and their fix above")
        if report.status == UNKNOWN:
            raise CannotCheckError("some checks could not be completed (?? lines above)",
                                   fix="see the fix under each ?? line")
        return 0
    finally:
        reporter.close()


def _write(report: abi.Report, json_path: Path | None, wheels: list[Path],
           reporter: Reporter) -> None:
    """--json F: this run's report goes to F only (checking against another runtime must
    not touch what publishing reads). Else a run over one directory records its verdicts
    in DIR/verify-abi.json, per sha256 (report.record_results). A run that could not
    check (exit 9) replaces neither: its report is in the log."""
    could_not_check = report.status == UNKNOWN
    if json_path is not None:
        if could_not_check and json_path.exists():
            reporter.say(f"{json_path} left as it was: this run could not check (its report "
                         "is in the log)")
        else:
            abi.write_json(report, json_path)
            reporter.say(f"report written to {json_path}")
    elif len(wheels) == 1 and wheels[0].is_dir():
        if could_not_check:
            reporter.say(f"{wheels[0] / REPORT_FILENAME} left as it was: this run could not "
                         "check (its report is in the log)")
        else:
            path = record_results(wheels[0], report.to_dict())
            reporter.say(f"results recorded in {path}")
