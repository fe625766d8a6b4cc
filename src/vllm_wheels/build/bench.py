"""The build benchmark (`nox -s bench_build`, tools/bench_build.py): four scenarios of one
stack, each a real `build-wheels` run, and per scenario the figures of issue 12: wall time,
compile units, compile-cache hits/misses/hit rate, Σ CPU-s, parallel efficiency, critical
path and peak unit memory.

  1. cold          checkout A, a fresh pipeline cache, an empty local compile cache and an
                   empty remote (the bench's own redis-server)
  2. warm-local    checkout A, another fresh pipeline cache (new source trees) that takes
                   over the cold run's local compile cache; no remote, so every hit is local
  3. warm-remote   a second builder: checkout B (another directory), another fresh pipeline
                   cache, an empty local compile cache, the same remote
  4. one-file-patch  checkout A with one .cu file changed, rebuilt in the warm-local
                   pipeline cache (warm trees, warm local compile cache, the remote):
                   exactly one unit must miss

Builds with a remote prepare their source trees under the machine-wide build root
(docs/shared-cache.md): the bench gives its runs their own (WORK/build-root) and empties
its trees before warm-remote, so the second builder compiles at the same paths as the
first, from nothing, as on another host.

Every figure is read from what the build wrote (build-summary.json: the compile cache's own
statistics, sccache's or ccache's; the telemetry summary), never inferred from timing.
The checkouts are copies of this repository's files (`git ls-files`, tracked and untracked
but not ignored), so a patch never touches the working tree.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layout, runner
from ..cache import BUILD_ROOT_ENV, default_cache_root, remove, write_atomic
from ..errors import ConfigError, InterruptedError_, PipelineError, ToolchainError
from ..log import Reporter, format_duration
from . import remote_cache
from .stack import load_stack

SCHEMA_VERSION = 1
TEST_STACK = "build/stacks/ci-cuda13.toml"
# The test stack's fixture extension: its one .cu file is what the patch scenario changes.
TEST_PATCH_FILE = "tests/fixtures/tiny_cuda_ext/tiny_cuda_ext/kernel.cu"
# A real change (a comment alone may preprocess to the same input and hit the cache).
PATCH_TEXT = "\n// vllm-wheels bench: one-file patch\n__device__ int vllm_wheels_bench_patch = 1;\n"


class BenchBuildError(PipelineError):
    """A scenario's build failed: the bench exits with that build's own exit code."""

    kind = "build failed"

    def __init__(self, what: str, *, why: str = "", fix: str = "", returncode: int) -> None:
        super().__init__(what, why=why, fix=fix, returncode=returncode)
        self.exit_code = returncode


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    checkout: str  # "a" or "b"
    cache: str  # the pipeline cache directory's name under the work dir
    compile_cache: str  # "empty" or "from <cache>" (moved there before the build)
    remote: bool  # whether the build uses the remote
    patch: bool = False
    expect: str = ""


def plan_scenarios(*, remote: bool, patch: bool) -> list[tuple[Scenario, str]]:
    """The four scenarios, each with "" (runs) or why it is skipped."""
    return [
        (Scenario("cold", "cold: empty local and remote caches, fresh pipeline cache", "a",
                  "cache-cold", "empty", remote), ""),
        (Scenario("warm-local", "warm local: fresh pipeline cache, the cold run's local "
                  "compile cache, no remote", "a", "cache-warm-local", "from cache-cold",
                  False), ""),
        (Scenario("warm-remote", "warm remote: second builder (checkout B, fresh pipeline "
                  "cache, empty local compile cache), same remote", "b", "cache-warm-remote",
                  "empty", True),
         "" if remote else "no remote (redis-server missing, see above)"),
        (Scenario("one-file-patch", "one-file patch: one .cu changed, warm caches", "a",
                  "cache-warm-local", "kept", remote, patch=True,
                  expect="exactly one unit missed"),
         "" if patch else "no file to patch (--patch-file REL.cu)"),
    ]


# --------------------------------------------------------------------------- figures


def scenario_figures(summary: Mapping[str, Any], wall_s: float) -> dict[str, Any]:
    """The figures of one scenario from its build-summary.json."""
    packages = summary.get("packages") or []
    hits = misses = 0
    by_language: dict[str, dict[str, int]] = {}
    for pkg in packages:
        stats = pkg.get("compile_cache_stats") or {}
        hits += int(stats.get("hits", 0))
        misses += int(stats.get("misses", 0))
        for lang, counts in (stats.get("by_language") or {}).items():
            slot = by_language.setdefault(lang, {"hits": 0, "misses": 0})
            slot["hits"] += int(counts.get("hits", 0))
            slot["misses"] += int(counts.get("misses", 0))
    tel = (summary.get("telemetry") or {}).get("summary") or {}
    unit_cache = tel.get("cache") or {}
    build = summary.get("build") or {}
    peak_kb = int(tel.get("peak_rss_kb", 0))
    return {
        "wall_s": round(wall_s, 1),
        "pipeline_s": summary.get("seconds"),
        "compile_wall_s": tel.get("compile_wall_s"),
        "jobs": build.get("jobs"),
        "packages_built": [p.get("package") for p in packages],
        "units": int(tel.get("units", 0)),
        "unit_cache": {"hits": int(unit_cache.get("hits", 0)),
                       "misses": int(unit_cache.get("misses", 0)),
                       "unknown": int(unit_cache.get("unknown", 0)),
                       "hit_rate": unit_cache.get("hit_rate")},
        "compile_cache": {"tool": build.get("compile_cache"),
                          "backend": build.get("compile_cache_backend"),
                          "hits": hits, "misses": misses,
                          "hit_rate": round(hits / (hits + misses), 3) if hits + misses
                          else None,
                          "by_language": by_language},
        "cpu_seconds": tel.get("cpu_seconds"),
        "parallel_efficiency": tel.get("parallel_efficiency"),
        "critical_path_s": tel.get("critical_path_s"),
        "peak_unit_rss_mb": round(peak_kb / 1024) if peak_kb else None,
        "peak_unit": tel.get("peak_rss_unit"),
    }


def patch_check(figures: Mapping[str, Any]) -> dict[str, Any]:
    """One-file patch: exactly one compile unit missed (telemetry, per unit). `ok` is None
    when a unit's result is unknown (sccache units that overlapped)."""
    cache = figures["unit_cache"]
    ok: bool | None = cache["misses"] == 1
    if cache["unknown"]:
        ok = None
    return {"expect": "exactly one unit missed", "units_missed": cache["misses"],
            "units_unknown": cache["unknown"], "ok": ok}


def _pct(rate: object) -> str:
    return "n/a" if rate is None else f"{float(rate):.0%}"  # type: ignore[arg-type]


def _num(value: object, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_table(results: Sequence[Mapping[str, Any]]) -> str:
    """One line per scenario. units h/m/?: the telemetry's per-unit cache result; cache
    h/m: the compile cache's own request counters (sccache counts each nvcc phase)."""
    head = (f"{'scenario':<15} {'wall':>8} {'units':>5} {'unit h/m/?':>10} {'unit rate':>9} "
            f"{'cache h/m':>9} {'cache rate':>10} {'Σ CPU-s':>8} {'eff':>5} {'crit path':>9} "
            f"{'peak unit':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        if r.get("skipped"):
            lines.append(f"{r['name']:<15} skipped: {r['skipped']}")
            continue
        f = r["figures"]
        uc, cc = f["unit_cache"], f["compile_cache"]
        lines.append(
            f"{r['name']:<15} {format_duration(f['wall_s']):>8} {f['units']:>5} "
            f"{str(uc['hits']) + '/' + str(uc['misses']) + '/' + str(uc['unknown']):>10} "
            f"{_pct(uc['hit_rate']):>9} {str(cc['hits']) + '/' + str(cc['misses']):>9} "
            f"{_pct(cc['hit_rate']):>10} {_num(f['cpu_seconds'], '.1f'):>8} "
            f"{_num(f['parallel_efficiency'], '.2f'):>5} "
            f"{_num(f['critical_path_s'], '.1f') + 's':>9} "
            f"{_num(f['peak_unit_rss_mb'], 'd') + ' MB':>9}")
        if r.get("check"):
            c = r["check"]
            verdict = {True: "yes", False: "NO", None: "unknown"}[c["ok"]]
            lines.append(f"{'':<15} {c['expect']}: {verdict} ({c['units_missed']} missed, "
                         f"{c['units_unknown']} unknown)")
    return "\n".join(lines)


def report(*, stack: str, only: Sequence[str] | None, remote: Mapping[str, Any],
           results: Sequence[Mapping[str, Any]], host: Mapping[str, Any], log: str,
           dry_run: bool = False) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": "bench-build", "dry_run": dry_run,
            "stack": stack, "only": list(only) if only else None, "host": host,
            "remote": dict(remote), "log": log,
            "notes": {"units": "telemetry: compile units through the launcher, each hit/miss/"
                               "unknown (sccache units that overlapped are unknown)",
                      "compile_cache": "the compile cache's own counters summed over the "
                                       "packages (sccache counts every nvcc phase)",
                      "wall_s": "the whole build-wheels run, as the bench timed it"},
            "scenarios": list(results)}


def host_facts() -> dict[str, Any]:
    from .toolchain import available_memory_gb, cpu_count

    gpu = runner.query(["nvidia-smi", "-L"], timeout=20)
    return {"name": platform.node(), "cores": cpu_count(),
            "memory_gb": round(_total_memory_gb(), 1),
            "available_gb": round(available_memory_gb(), 1), "machine": platform.machine(),
            "gpu": gpu.stdout.strip() if gpu.ok and gpu.stdout.strip() else None}


def _total_memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


# ------------------------------------------------------------------------ the run


@dataclass
class Options:
    repo: Path
    stack: Path
    work_dir: Path
    log_path: Path
    json_path: Path | None = None
    remote_url: str | None = None  # given by the user; None: start a redis-server
    patch_file: str | None = None  # relative to the checkout
    only: list[str] | None = None
    build_venv: Path | None = None
    max_jobs: int | None = None
    keep: bool = False
    dry_run: bool = False
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def stack_in_checkout(opts: Options) -> str:
    """The stack's path as each checkout sees it: relative when it lives in the repo."""
    stack = opts.stack.resolve()
    try:
        return str(stack.relative_to(opts.repo.resolve()))
    except ValueError:
        return f"build/stacks/bench-{stack.name}"


def build_command(opts: Options, scenario: Scenario, remote_arg: str | None,
                  build_venv: Path | None) -> list[str]:
    work = opts.work_dir
    cmd = [sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack",
           stack_in_checkout(opts), "--cache-dir", str(work / scenario.cache),
           "--output-dir", str(work / f"out-{scenario.name}")]
    if not scenario.remote:
        cmd += [remote_cache.CLI_FLAG, remote_cache.OFF]
    elif remote_arg is not None:
        cmd += [remote_cache.CLI_FLAG, remote_arg]
    if build_venv is not None:
        cmd += ["--build-venv", str(build_venv)]
    if opts.only:
        cmd += ["--only", *opts.only]
    if opts.max_jobs:
        cmd += ["--max-jobs", str(opts.max_jobs)]
    return cmd


def validate(opts: Options) -> None:
    """What the user gave, checked before minutes of work: the stack loads, the patch file
    exists and is a CUDA source, the remote parses (no password on the command line)."""
    if not opts.stack.is_file():
        raise ConfigError(f"--stack {opts.stack}: no such file",
                          fix=f"give a stack file (e.g. {TEST_STACK})")
    load_stack(opts.stack)  # ConfigError (exit 2) names what is wrong
    if opts.patch_file is not None:
        target = opts.repo / opts.patch_file
        if not target.is_file() or target.suffix not in (".cu", ".cuh"):
            raise ConfigError(f"--patch-file {opts.patch_file}: not a .cu file in {opts.repo}",
                              why="the one-file patch scenario changes one CUDA source of a "
                                  "path source of the stack and expects one unit to miss",
                              fix="give a .cu path relative to the repository root, e.g. "
                                  f"{TEST_PATCH_FILE}")
    if opts.remote_url is not None:
        remote_cache.resolve("", opts.remote_url, {})
    if opts.work_dir.exists() and any(opts.work_dir.iterdir()):
        raise ConfigError(f"--work-dir {opts.work_dir} is not empty",
                          why="the bench needs fresh caches and checkouts and removes its "
                              "work dir at the end",
                          fix="give a new or empty directory")


def checkout_files(repo: Path) -> list[str]:
    """The repository's files as a checkout would have them: tracked and untracked, not
    ignored (so uncommitted edits are benchmarked too)."""
    done = runner.query(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                         "--exclude-standard"])
    if not done.ok:
        raise ConfigError(f"{repo} is not a git checkout ({done.describe(300)})",
                          fix="run the bench from a clone of this repository")
    return [f for f in done.stdout.split("\0") if f and (repo / f).is_file()]


def make_checkout(opts: Options, files: Sequence[str], dest: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(opts.repo / rel, target)
    stack_rel = stack_in_checkout(opts)
    if not (dest / stack_rel).exists():
        (dest / stack_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(opts.stack, dest / stack_rel)


class Redis:
    """Debian's redis-server on a free loopback port, no persistence; stopped by close()."""

    def __init__(self, reporter: Reporter, work_dir: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.dir = work_dir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = runner.start(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            reporter=reporter, log_file=self.dir / "redis.log")
        deadline = time.monotonic() + 10
        remote = remote_cache.parse(self.url, "bench")
        while not remote_cache.ping(remote, timeout=1).reachable:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise ToolchainError(f"redis-server did not start on port {self.port}",
                                     why=f"see {self.dir / 'redis.log'}",
                                     fix="run `redis-server --port 6390` by hand to see why")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - a server that ignores SIGTERM is killed
                self.proc.kill()
                self.proc.wait()


def _echo_step(reporter: Reporter, line: str) -> None:
    """The build's own step lines (`==> [N/M] ...`) on the console, indented (runner.run
    already wrote every line to the full log)."""
    if line.startswith("==> "):
        reporter.console(f"    {line}")


def find_venv(cache_dir: Path) -> Path | None:
    made = sorted((cache_dir / "venvs").glob(f"*/{layout.VENV_MARKER}"))
    return made[0].parent if made else None


def describe_plan(opts: Options, plan: Sequence[tuple[Scenario, str]], remote_desc: str
                  ) -> list[str]:
    lines = [f"stack: {opts.stack} (in each checkout: {stack_in_checkout(opts)})",
             f"work dir: {opts.work_dir} ({'kept' if opts.keep else 'removed at the end'})",
             f"checkouts: {opts.work_dir / 'checkout-a'}, {opts.work_dir / 'checkout-b'} "
             f"(copies of {opts.repo}'s files)", f"remote: {remote_desc}"]
    venv = str(opts.build_venv) if opts.build_venv else "made by the cold build, then reused"
    for i, (sc, skip) in enumerate(plan, 1):
        lines.append(f"[{i}/{len(plan)}] {sc.title}" + (f"  SKIPPED: {skip}" if skip else ""))
        if skip:
            continue
        lines.append(f"      checkout {sc.checkout}, pipeline cache {sc.cache}, local compile "
                     f"cache {sc.compile_cache}, remote {'yes' if sc.remote else 'no'}, "
                     f"build venv: {venv}")
        if sc.patch:
            lines.append(f"      patch: append a __device__ variable to {opts.patch_file}; "
                         f"expect {sc.expect}")
        # The cold build makes the build venv (unless given); the others reuse it.
        shown = build_command(opts, sc, "URL" if sc.remote else None,
                              opts.build_venv or (Path("VENV") if i > 1 else None))
        lines.append("      $ " + " ".join(shown[1:]))
    return lines


def run(opts: Options, reporter: Reporter) -> dict[str, Any]:
    validate(opts)
    remote_desc: str
    redis: Redis | None = None
    remote_arg: str | None = None  # what each remote build gets as --compile-cache-remote
    remote_info: dict[str, Any]
    have_redis = shutil.which("redis-server") is not None
    if opts.remote_url is not None:
        remote_arg = opts.remote_url
        remote_info = {"url": remote_cache.parse(opts.remote_url, "--remote").redacted,
                       "started_by_bench": False, "emptied": False}
        remote_desc = f"{remote_info['url']} (given; not emptied, so 'cold' is cold locally)"
    elif opts.environ.get(remote_cache.ENV_VAR, "").strip() not in ("", remote_cache.OFF):
        env_remote = remote_cache.resolve("", None, opts.environ)
        assert env_remote is not None
        remote_info = {"url": env_remote.redacted, "started_by_bench": False, "emptied": False}
        remote_desc = f"{env_remote.redacted} from {remote_cache.ENV_VAR} (not emptied)"
    elif have_redis:
        remote_info = {"url": "redis://127.0.0.1:PORT", "started_by_bench": True,
                       "emptied": True}
        remote_desc = "a redis-server started by the bench on a free loopback port"
    else:
        remote_info = {"url": None, "started_by_bench": False,
                       "missing": "redis-server is not installed"}
        remote_desc = "none"
        reporter.warn("redis-server is not installed: the warm-remote scenario is skipped, "
                      "the others run without a remote. Fix: apt-get install -y "
                      "redis-server (or give --remote redis://HOST:PORT)")
    has_remote = remote_info.get("url") is not None
    plan = plan_scenarios(remote=has_remote, patch=opts.patch_file is not None)
    for line in describe_plan(opts, plan, remote_desc):
        reporter.say(line)
    results: list[dict[str, Any]] = [
        {"name": sc.name, "title": sc.title, **({"skipped": skip} if skip else {})}
        for sc, skip in plan]
    if opts.dry_run:
        return report(stack=str(opts.stack), only=opts.only, remote=remote_info,
                      results=results, host=host_facts(), log=str(opts.log_path),
                      dry_run=True)
    if remote_info.get("url") and not remote_info["started_by_bench"]:
        checked = remote_cache.ping(remote_cache.resolve("", remote_arg, opts.environ)
                                    or remote_cache.parse(remote_info["url"], "--remote"))
        if checked.reachable is False:
            raise ConfigError(f"remote {checked.redacted} is unreachable ({checked.detail})",
                              why="the warm-remote scenario measures hits from it",
                              fix="check the URL and the server, or leave --remote out: the "
                                  "bench then starts its own redis-server")
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        files = checkout_files(opts.repo)
        for name in ("a", "b"):
            make_checkout(opts, files, opts.work_dir / f"checkout-{name}")
        reporter.say(f"checkouts: {len(files)} files each")
        if remote_info["started_by_bench"]:
            redis = Redis(reporter, opts.work_dir)
            remote_arg = redis.url
            remote_info["url"] = redis.url
            reporter.say(f"redis-server on {redis.url}")
        build_venv = opts.build_venv
        runnable = sum(1 for _, skip in plan if not skip)
        walls: list[float] = []
        for index, (sc, skip) in enumerate(plan):
            entry = results[index]
            if skip:
                reporter.say(f"==> [scenario {index + 1}/{len(plan)}] {sc.name}: skipped "
                             f"({skip})")
                continue
            eta = ""
            if walls:
                eta = (f", ETA {format_duration(sum(walls) / len(walls) * (runnable - len(walls)))}"
                       " for the rest (mean of the scenarios so far)")
            reporter.step_at(index + 1, len(plan), f"scenario {sc.title}{eta}")
            if sc.compile_cache.startswith("from "):
                source = opts.work_dir / sc.compile_cache.removeprefix("from ")
                dest = opts.work_dir / sc.cache
                dest.mkdir(parents=True, exist_ok=True)
                for tool in ("sccache", "ccache"):
                    if (source / tool).exists():
                        (source / tool).rename(dest / tool)
            checkout = opts.work_dir / f"checkout-{sc.checkout}"
            if sc.patch and opts.patch_file:
                target = checkout / opts.patch_file
                target.write_text(target.read_text() + PATCH_TEXT)
            cmd = build_command(opts, sc, remote_arg, build_venv)
            # Builds with a remote put their trees under the machine-wide build root (the
            # same real path on every builder): the bench's own, and the second builder
            # starts without the first one's trees, as another host would.
            build_root = opts.work_dir / "build-root"
            if sc.name == "warm-remote":
                remove(build_root / "src")
            started = time.monotonic()
            try:
                runner.run(cmd, reporter=reporter, cwd=checkout, what=f"scenario {sc.name}",
                           on_line=lambda line: _echo_step(reporter, line),
                           env_changes={BUILD_ROOT_ENV: str(build_root)})
            except InterruptedError_:
                raise
            except PipelineError as exc:
                raise BenchBuildError(
                    f"scenario {sc.name}: build-wheels failed (exit {exc.returncode})",
                    why=exc.what.splitlines()[0], fix=f"see the full log {opts.log_path}",
                    returncode=exc.returncode or 1) from None
            wall = time.monotonic() - started
            walls.append(wall)
            summary = json.loads((opts.work_dir / f"out-{sc.name}" /
                                  layout.SUMMARY_FILENAME).read_text())
            figures = scenario_figures(summary, wall)
            entry.update({"figures": figures, "command": cmd[1:], "cwd": str(checkout)})
            if sc.patch:
                entry["check"] = patch_check(figures)
            if build_venv is None:
                build_venv = find_venv(opts.work_dir / sc.cache)
            reporter.step_done(f"{figures['units']} unit(s), cache hit rate "
                               f"{_pct(figures['compile_cache']['hit_rate'])}")
    finally:
        if redis is not None:
            redis.close()
        if not opts.keep:
            remove(opts.work_dir)
        else:
            reporter.say(f"kept: {opts.work_dir}")
    return report(stack=str(opts.stack), only=opts.only, remote=remote_info, results=results,
                  host=host_facts(), log=str(opts.log_path))


def default_log_path() -> Path:
    return default_cache_root() / "logs" / f"bench-build-{time.strftime('%Y%m%d-%H%M%S')}.log"


def main(argv: Sequence[str] | None = None, repo: Path | None = None) -> int:
    import argparse

    root = repo or Path.cwd()
    parser = argparse.ArgumentParser(
        prog="bench_build", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--stack", type=Path, default=None,
                        help=f"the stack to benchmark (default: the test stack {TEST_STACK})")
    parser.add_argument("--patch-file", default=None, metavar="REL.cu",
                        help="the .cu file the one-file patch changes, relative to the repo "
                             f"(default for the test stack: {TEST_PATCH_FILE})")
    parser.add_argument("--remote", default=None, metavar="URL",
                        help="the shared cache to use (redis://HOST:PORT, not emptied); "
                             "default: start a redis-server on loopback for the bench")
    parser.add_argument("--only", nargs="+", default=None, metavar="PKG",
                        help="build only these packages of the stack")
    parser.add_argument("--build-venv", type=Path, default=None,
                        help="use this build venv in every scenario (default: the cold "
                             "build makes one, the others reuse it)")
    parser.add_argument("--max-jobs", type=int, default=None)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="scratch directory (default: a new one under .cache/)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the inputs and print the plan; build nothing")
    args = parser.parse_args(argv)
    stack = args.stack or root / TEST_STACK
    patch = args.patch_file or (TEST_PATCH_FILE if args.stack is None else None)
    log_path = default_log_path()
    work = (args.work_dir or root / ".cache" /
            f"bench-build-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    opts = Options(repo=root.resolve(), stack=stack, work_dir=work, log_path=log_path,
                   json_path=args.json, remote_url=args.remote, patch_file=patch,
                   only=args.only, build_venv=args.build_venv.resolve() if args.build_venv
                   else None, max_jobs=args.max_jobs, keep=args.keep, dry_run=args.dry_run)
    reporter = Reporter(log_path)
    reporter.say(f"full log: {log_path}")
    try:
        data = run(opts, reporter)
    except KeyboardInterrupt:
        err = InterruptedError_("interrupted", fix="re-run the bench; it starts from scratch")
        reporter.say(err.render())
        return err.exit_code
    except PipelineError as exc:
        reporter.say(exc.render())
        reporter.say(f"full log: {log_path}")
        return exc.exit_code
    finally:
        reporter.close()
    text = json.dumps(data, indent=2) + "\n"
    json_path = args.json or log_path.with_suffix(".json")
    write_atomic(json_path, text)
    if not args.dry_run:
        reporter.result(render_table(data["scenarios"]))
    reporter.result(f"JSON: {json_path}\nfull log: {log_path}")
    return 0


