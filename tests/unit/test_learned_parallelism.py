"""A build that learns its own cost (issue 12, item 3): the unit cost record (telemetry.py),
the launcher's memory admission (helpers/measure_compile.py) with real launcher processes,
the plan's parallelism source, and the longest-first order pass with the real ninja."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_stacks import TINY_CUDA_EXT, copy_tiny_cuda_ext, stack_toml

from vllm_wheels.build import parallelism, telemetry
from vllm_wheels.build import plan as build_plan
from vllm_wheels.build.builders import vllm
from vllm_wheels.build.render import render_plan
from vllm_wheels.build.stack import load_stack
from vllm_wheels.cache import Cache
from vllm_wheels.errors import ConfigError
from vllm_wheels.helpers.measure_compile import Ledger
from vllm_wheels.log import Reporter

GB = 1024 * 1024  # in kB


# ------------------------------------------------------------ admission, real launchers


def _launch(tmp_path: Path, source: str, seconds: float, *, budget_kb: int | None,
            peaks: dict[str, int], default_kb: int = 0) -> subprocess.Popen[bytes]:
    """One real launcher around a real command named like a compile of `source`
    (`sh -c 'sleep S' SOURCE`: the launcher takes the positional .c argument as the unit)."""
    (tmp_path / "peaks.json").write_text(json.dumps(
        {"roots": [[str(tmp_path), ""]], "peaks": peaks, "default_kb": default_kb}))
    env = dict(os.environ, VLLM_WHEELS_TELEMETRY=str(tmp_path / "units.jsonl"))
    if budget_kb is not None:
        env.update(VLLM_WHEELS_MEMORY_BUDGET_KB=str(budget_kb),
                   VLLM_WHEELS_MEMORY_LEDGER=str(tmp_path / "ledger"),
                   VLLM_WHEELS_UNIT_PEAKS=str(tmp_path / "peaks.json"))
    return subprocess.Popen([sys.executable, "-S", str(telemetry.LAUNCHER), "sh", "-c",
                             f"sleep {seconds}", source], cwd=tmp_path, env=env)


def _windows(tmp_path: Path) -> dict[str, tuple[float, float, int]]:
    return {u["source"]: (u["start"], u["start"] + u["wall_s"], u.get("reserved_kb", 0))
            for u in telemetry.read_units(tmp_path / "units.jsonl")}


def _max_reserved(windows: dict[str, tuple[float, float, int]]) -> int:
    """The largest sum of reservations of units running at one instant (at each start)."""
    return max(sum(kb for s, e, kb in windows.values() if s <= start < e)
               for start, _, _ in windows.values())


def _overlap(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _wait_held(tmp_path: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until the launcher's reservation is in the ledger."""
    deadline = time.monotonic() + 20
    ledger = tmp_path / "ledger"
    while not ledger.exists() or f"{proc.pid} " not in ledger.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)


PEAKS = {"a.c": 600_000, "b.c": 600_000, "c.c": 600_000, "huge.c": 5_000_000}


def test_units_never_reserve_more_than_the_budget_and_an_oversize_unit_runs_alone(
        tmp_path: Path) -> None:
    # d.c lasts longer than the others, so that "it ran beside a 600 MB unit" does not hang
    # on how soon a polling launcher wakes on a loaded machine (once seen under CI load).
    procs = [_launch(tmp_path, s, 2.5 if s == "d.c" else 1.0, budget_kb=GB, peaks=PEAKS,
                     default_kb=400_000)
             for s in ("a.c", "b.c", "c.c", "d.c", "huge.c")]
    assert [p.wait(timeout=60) for p in procs] == [0] * 5
    w = _windows(tmp_path)
    assert set(w) == {"a.c", "b.c", "c.c", "d.c", "huge.c"}
    assert w["d.c"][2] == 400_000 and w["a.c"][2] == 600_000  # unrecorded: the default
    # 600 MB units pairwise exceed 1 GB: never two at once; the 5 GB unit ran, alone.
    assert _max_reserved({k: v for k, v in w.items() if k != "huge.c"}) <= GB
    assert not any(_overlap(w["huge.c"], v) for k, v in w.items() if k != "huge.c")
    for x, y in (("a.c", "b.c"), ("a.c", "c.c"), ("b.c", "c.c")):
        assert not _overlap(w[x], w[y])
    # ...and memory that allows it is used: d.c (400 MB) ran beside a 600 MB unit.
    assert any(_overlap(w["d.c"], w[k]) for k in ("a.c", "b.c", "c.c"))
    assert (tmp_path / "ledger").read_text() == ""  # every reservation released


def test_without_a_budget_units_run_as_ninja_starts_them(tmp_path: Path) -> None:
    """The control: no record, no admission (the rule's behaviour, unchanged)."""
    procs = [_launch(tmp_path, s, 1.0, budget_kb=None, peaks=PEAKS) for s in ("a.c", "b.c")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    w = _windows(tmp_path)
    assert _overlap(w["a.c"], w["b.c"]) and "reserved_kb" not in \
        telemetry.read_units(tmp_path / "units.jsonl")[0]
    assert not (tmp_path / "ledger").exists()


def test_a_killed_holder_does_not_block_and_a_dead_pid_is_dropped(tmp_path: Path) -> None:
    # A dead launcher's line (its pid no longer runs with that start time)...
    (tmp_path / "ledger").write_text(f"{2**22 + 7} 1 {50 * GB}\n")
    # ...and a live holder of the whole budget, then killed outright (no release).
    holder = _launch(tmp_path, "a.c", 60, budget_kb=GB, peaks=PEAKS)
    waiter: subprocess.Popen[bytes] | None = None
    compiler: list[int] = []
    try:
        _wait_held(tmp_path, holder)
        waiter = _launch(tmp_path, "b.c", 0.1, budget_kb=GB, peaks=PEAKS)
        time.sleep(1.0)
        assert waiter.poll() is None  # waits: a.c + b.c > budget
        compiler = [int(pid) for pid in
                    Path(f"/proc/{holder.pid}/task/{holder.pid}/children").read_text().split()]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert waiter.wait(timeout=20) == 0
        assert (tmp_path / "ledger").read_text() == ""
    finally:
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in compiler:  # the killed launcher's command, orphaned: end it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_releases_the_reservation(tmp_path: Path) -> None:
    proc = _launch(tmp_path, "a.c", 60, budget_kb=GB, peaks=PEAKS)
    try:
        _wait_held(tmp_path, proc)
        compiler = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM
        assert (tmp_path / "ledger").read_text() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in compiler if "compiler" in locals() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_ledger_admits_the_first_unit_even_above_the_budget(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger"), budget_kb=10)
    assert ledger.reserve(1000) < 1.0 and ledger.held == 1000
    ledger.release()
    assert (tmp_path / "ledger").read_text() == ""


# ---------------------------------------------------------------------------- record


def test_unit_costs_are_keyed_relative_to_the_tree_and_skip_hits_and_failures() -> None:
    units = [
        {"source": "/c/src/vllm-1/csrc/a.cu", "cwd": "/c/src/vllm-1/build/t", "wall_s": 9,
         "cpu_s": 8, "peak_rss_kb": 100, "exit": 0, "cache": "miss"},
        {"source": "../../csrc/b.cu", "cwd": "/c/src/vllm-1/build/t", "wall_s": 5,
         "cpu_s": 5, "peak_rss_kb": 50, "exit": 0},
        {"source": "/c/externals/bundled/h/x.cpp", "cwd": "/c/src/vllm-1/build/t",
         "wall_s": 3, "cpu_s": 3, "peak_rss_kb": 30, "exit": 0},
        {"source": "/c/src/vllm-1/csrc/hit.cu", "cwd": "/", "wall_s": 0.1, "cpu_s": 0.1,
         "peak_rss_kb": 20, "exit": 0, "cache": "hit"},
        {"source": "/c/src/vllm-1/csrc/bad.cu", "cwd": "/", "wall_s": 1, "cpu_s": 1,
         "peak_rss_kb": 20, "exit": 1},
        # the same source compiled for a second target: one key, the larger cost
        {"source": "/c/src/vllm-1/csrc/a.cu", "cwd": "/", "wall_s": 7, "cpu_s": 7,
         "peak_rss_kb": 300, "exit": 0},
    ]
    costs = telemetry.unit_costs(units, "/c/src/vllm-1", "/c")
    assert set(costs) == {"csrc/a.cu", "csrc/b.cu", "cache:externals/bundled/h/x.cpp"}
    assert costs["csrc/a.cu"] == {"wall_s": 9.0, "cpu_s": 8.0, "peak_rss_kb": 300}
    # ...whose objects (one per target) are both compiled in the order pass.
    assert vllm.recorded_objects(costs, "A.dir/csrc/a.cu.o: CUDA\nB.dir/csrc/a.cu.o: CUDA\n"
                                     "A.dir/csrc/b.cu.o: CUDA\nlib.so: LINK\n") == \
        ["A.dir/csrc/a.cu.o", "B.dir/csrc/a.cu.o", "A.dir/csrc/b.cu.o"]


def test_merge_keeps_the_largest_peak_and_the_latest_wall(tmp_path: Path) -> None:
    path = telemetry.record_path(tmp_path, "vllm", "0.20.0", ["9.0a"])
    common = {"package": "vllm", "version": "0.20.0", "arch_list": ["9.0a"], "nvcc_threads": 1}
    telemetry.merge_record(path, **common, costs={"a.cu": {"wall_s": 10, "cpu_s": 10,
                                                           "peak_rss_kb": 900}})
    record = telemetry.merge_record(path, **common, costs={
        "a.cu": {"wall_s": 12, "cpu_s": 11, "peak_rss_kb": 700},
        "b.cu": {"wall_s": 1, "cpu_s": 1, "peak_rss_kb": 10}})
    assert record["units"]["a.cu"] == {"wall_s": 12, "cpu_s": 11, "peak_rss_kb": 900, "builds": 2}
    assert json.loads(path.read_text()) == record
    assert telemetry.load_costs(path, "vllm")["b.cu"]["peak_rss_kb"] == 10
    assert telemetry.load_costs(path, "flashinfer-python") == {}
    # Another version or arch list: another record, never this one.
    assert len({path, telemetry.record_path(tmp_path, "vllm", "0.20.1", ["9.0a"]),
                telemetry.record_path(tmp_path, "vllm", "0.20.0", ["9.0a", "12.0a"])}) == 3


def test_another_machines_build_telemetry_is_a_record(tmp_path: Path) -> None:
    """Old build-telemetry.json files (no tree recorded) name the tree by the units' cwd."""
    data = {"schema_version": 1, "packages": [{"package": "vllm"}], "units": [
        {"package": "vllm", "source": "/tmp/e2e/cache/src/vllm-0.20.0-74e4/csrc/a.cu",
         "cwd": "/tmp/e2e/cache/src/vllm-0.20.0-74e4/build/temp.linux-x86_64-cpython-312",
         "wall_s": 300, "cpu_s": 290, "peak_rss_kb": 2_900_000, "exit": 0},
        {"package": "vllm", "source": "/tmp/e2e/cache/externals/bundled/1a/csrc/api.cpp",
         "cwd": "/tmp/e2e/cache/src/vllm-0.20.0-74e4/build/temp.linux-x86_64-cpython-312",
         "wall_s": 58, "cpu_s": 58, "peak_rss_kb": 1_700_000, "exit": 0},
        {"package": "other", "source": "/x/y.cu", "cwd": "/x", "wall_s": 1, "cpu_s": 1,
         "peak_rss_kb": 1, "exit": 0},
        # a.cu compiled a second time for another target, smaller: the larger cost stays.
        {"package": "vllm", "source": "/tmp/e2e/cache/src/vllm-0.20.0-74e4/csrc/a.cu",
         "cwd": "/tmp/e2e/cache/src/vllm-0.20.0-74e4/build/temp.linux-x86_64-cpython-312",
         "wall_s": 100, "cpu_s": 99, "peak_rss_kb": 1_000_000, "exit": 0}]}
    (tmp_path / "t.json").write_text(json.dumps(data))
    costs = telemetry.load_costs(tmp_path / "t.json", "vllm")
    assert set(costs) == {"csrc/a.cu", "cache:externals/bundled/1a/csrc/api.cpp"}
    assert costs["csrc/a.cu"] == {"wall_s": 300, "cpu_s": 290, "peak_rss_kb": 2_900_000}


# ------------------------------------------------------------------------ plan source


TINY_STACK = stack_toml("tiny-learned", TINY_CUDA_EXT)


def _tiny_repo(root: Path) -> Path:
    """A repository with a one-package stack of the real tiny_cuda_ext fixture (a path
    source: no download)."""
    copy_tiny_cuda_ext(root)
    (root / "patches" / "tiny-cuda-ext").mkdir(parents=True)
    (root / "patches" / "tiny-cuda-ext" / "series").write_text("")
    (root / "build" / "stacks").mkdir(parents=True)
    (root / "build" / "stacks" / "tiny.toml").write_text(TINY_STACK)
    return root


def _plan(repo: Path, cache: Cache, **kw: object) -> build_plan.Plan:
    stack = load_stack(repo / "build" / "stacks" / "tiny.toml")
    return build_plan.make_plan(stack, repo_root=repo, cache=cache, output_dir=repo / "out",
                              log_path=repo / "plan.log", fetch_externals=False,
                              reporter=Reporter(None, stream=io.StringIO()), **kw)  # type: ignore[arg-type]


def test_plan_says_where_parallelism_came_from(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    cache = Cache(tmp_path / "cache")
    rule = _plan(repo, cache)
    par = rule.to_dict()["toolchain"]["parallelism"]
    assert par["source"] == "rule" and par["memory_budget_kb"] == 0
    assert "no unit cost record" in render_plan(rule)
    assert rule.contexts[0].admission_env() == {}
    assert "VLLM_WHEELS_MEMORY_BUDGET_KB" not in rule.contexts[0].base_env()

    # The record the last build of this version and arch list wrote.
    path = telemetry.record_path(cache.root, "tiny-cuda-ext", "0.1.0", rule.stack.cuda_arch_list)
    telemetry.merge_record(path, package="tiny-cuda-ext", version="0.1.0",
                           arch_list=rule.stack.cuda_arch_list, nvcc_threads=1,
                           costs={"tiny.cu": {"wall_s": 90, "cpu_s": 88, "peak_rss_kb": 3 * GB}})
    learned = _plan(repo, cache)
    par = learned.to_dict()["toolchain"]["parallelism"]
    assert par["source"] == "record" and par["unit_costs"] == str(path)
    assert par["recorded_units"] == {"tiny-cuda-ext": 1}
    assert par["jobs"] == par["cores"] // par["nvcc_threads"]
    assert par["memory_budget_kb"] == int((par["available_gb"] - 2) * GB) or \
        abs(par["memory_budget_kb"] - (par["available_gb"] - 2) * GB) < 0.1 * GB
    text = render_plan(learned)
    assert f"from a unit cost record: {path}" in text and "memory budget" in text
    env = learned.contexts[0].base_env()
    assert env["VLLM_WHEELS_MEMORY_BUDGET_KB"] == str(par["memory_budget_kb"])
    ctx = learned.contexts[0]
    ctx.staging.mkdir(parents=True, exist_ok=True)
    ctx.write_unit_peaks()
    peaks = json.loads(ctx.unit_peaks.read_text())
    assert peaks["peaks"] == {"tiny.cu": 3 * GB} and peaks["roots"][0] == [str(ctx.tree), ""]

    # A named record wins over the cache's; one for another package means the rule.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema_version": 1, "units": []}))
    assert _plan(repo, cache, unit_costs=other).to_dict()["toolchain"]["parallelism"]["source"] == "rule"
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="--unit-costs"):
        _plan(repo, cache, unit_costs=tmp_path / "bad.json")


def test_record_width_and_budget_against_the_rule() -> None:
    stack = load_stack(Path(__file__).parents[2] / "build" / "stacks" / "ci-cuda13.toml")
    rule = parallelism.choose_parallelism(stack, None, None, cores=64, available_gb=128)
    assert (rule.source, rule.jobs, rule.memory_budget_kb) == ("rule", 21, 0)
    learned = parallelism.choose_parallelism(stack, None, None, "r.json", cores=64,
                                          available_gb=128)
    assert (learned.source, learned.jobs) == ("record", 64)
    assert learned.memory_budget_kb == 126 * GB and learned.default_unit_kb == 6 * GB
    # Unrecorded units reserve the rule's share: floor(budget / default) == the rule's jobs.
    assert learned.memory_budget_kb // learned.default_unit_kb == rule.jobs
    user = parallelism.choose_parallelism(stack, 3, None, "r.json", cores=64, available_gb=128)
    assert user.jobs == 3 and user.memory_budget_kb == 126 * GB


# ---------------------------------------------------------------- longest first, ninja


# Objects named as CMake names them: <target>.dir/<source path>.o.
NINJA = """\
rule cc
  command = sleep 0.2 && echo $out >> started.txt && mkdir -p $$(dirname $out) && touch $out
rule link
  command = touch $out
""" + "".join(f"build t.dir/src/{x}.c.o: cc\n" for x in "abcd") + \
    "build lib.so: link " + " ".join(f"t.dir/src/{x}.c.o" for x in "abcd") + "\n"


def _started(tmp_path: Path) -> list[str]:
    return [Path(line).name.removesuffix(".c.o")
            for line in (tmp_path / "started.txt").read_text().split()]


def _clean(ninja: str, tmp_path: Path) -> None:
    subprocess.run([ninja, "-t", "clean"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "started.txt").unlink()


def test_longest_first_manifest_reorders_ninja_and_the_build_reuses_the_objects(
        tmp_path: Path) -> None:
    ninja = shutil.which("ninja", path=str(Path(sys.executable).parent)) or shutil.which("ninja")
    assert ninja
    version = subprocess.run([ninja, "--version"], text=True, capture_output=True,
                             check=True).stdout
    if tuple(int(x) for x in version.split(".")[:2]) < (1, 12):
        pytest.skip(f"ninja {version.strip()}: no critical-path scheduling before 1.12")
    (tmp_path / "build.ninja").write_text(NINJA)
    costs = {"src/a.c": {"wall_s": 1}, "src/c.c": {"wall_s": 50}, "src/d.c": {"wall_s": 20},
             "src/gone.c": {"wall_s": 99}}  # not in this configuration: left out
    targets = subprocess.run([ninja, "-t", "targets", "all"], cwd=tmp_path, text=True,
                             capture_output=True, check=True).stdout
    objects = vllm.recorded_objects(costs, targets)
    assert objects == ["t.dir/src/c.c.o", "t.dir/src/d.c.o", "t.dir/src/a.c.o"]
    manifest = tmp_path / telemetry.ORDER_DIR / "order.ninja"
    manifest.parent.mkdir()
    manifest.write_text(vllm.longest_first_manifest(tmp_path, objects))
    order = [ninja, "-f", str(manifest), f"{telemetry.ORDER_DIR}/3"]
    subprocess.run([*order, "-j1"], cwd=tmp_path, check=True, capture_output=True)
    assert _started(tmp_path) == ["c", "d", "a"]
    # The control: the same targets asked for directly start in manifest order.
    _clean(ninja, tmp_path)
    subprocess.run([ninja, "-j1", *objects], cwd=tmp_path, check=True, capture_output=True)
    assert _started(tmp_path) == ["a", "c", "d"]
    # The order pass again, then the normal build compiles only what the pass left.
    _clean(ninja, tmp_path)
    subprocess.run([*order, "-j2"], cwd=tmp_path, check=True, capture_output=True)
    subprocess.run([ninja, "-j2"], cwd=tmp_path, check=True, capture_output=True)
    assert sorted(_started(tmp_path)) == ["a", "b", "c", "d"]
    # The stamps are in the log, not build outputs: telemetry leaves them out.
    assert telemetry.ninja_build(tmp_path / ".ninja_log", 0, None)["outputs"] == 5


def test_cmake_objects_compiled_longest_first_stay_up_to_date_after_a_reconfigure(
        tmp_path: Path) -> None:
    """The vLLM path with the real cmake, ninja and gcc: CMake's objects found from the
    record's keys, compiled longest first through the order manifest, then the configure
    again with the same arguments (as setup.py does) and the normal build: it compiles
    only the unit the record did not list, and links."""
    bindir = Path(sys.executable).parent
    cmake = shutil.which("cmake", path=str(bindir)) or shutil.which("cmake")
    ninja = shutil.which("ninja", path=str(bindir)) or shutil.which("ninja")
    if not (cmake and ninja and shutil.which("gcc")):
        pytest.skip("needs cmake, ninja (the test extra) and gcc")
    version = subprocess.run([ninja, "--version"], text=True, capture_output=True,
                             check=True).stdout
    if tuple(int(x) for x in version.split(".")[:2]) < (1, 12):
        pytest.skip(f"ninja {version.strip()}: no critical-path scheduling before 1.12")
    src, build = tmp_path / "src", tmp_path / "build"
    (src / "k").mkdir(parents=True)
    for name in "abcd":
        (src / "k" / f"{name}.c").write_text(f"int f_{name}(int x) {{ return x + 1; }}\n")
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\nproject(t C)\n"
        "add_library(t SHARED k/a.c k/b.c k/c.c k/d.c)\n")
    configure = [cmake, "-S", str(src), "-B", str(build), "-G", "Ninja",
                 f"-DCMAKE_MAKE_PROGRAM={ninja}", "-DCMAKE_BUILD_TYPE=Release",
                 "-DCMAKE_JOB_POOL_COMPILE:STRING=compile", "-DCMAKE_JOB_POOLS:STRING=compile=2"]
    subprocess.run(configure, check=True, capture_output=True)
    costs = {"k/a.c": {"wall_s": 3}, "k/c.c": {"wall_s": 300}, "k/d.c": {"wall_s": 60}}
    targets = subprocess.run([ninja, "-C", str(build), "-t", "targets", "all"], text=True,
                             capture_output=True, check=True).stdout
    objects = vllm.recorded_objects(costs, targets)
    assert [Path(o).name for o in objects] == ["c.c.o", "d.c.o", "a.c.o"]
    manifest = build / telemetry.ORDER_DIR / "order.ninja"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(vllm.longest_first_manifest(build, objects))
    subprocess.run([ninja, "-C", str(build), "-f", str(manifest), "-j1",
                    f"{telemetry.ORDER_DIR}/3"], check=True, capture_output=True)
    log = build / ".ninja_log"
    first = sorted(telemetry.parse_ninja_log(log.read_text()), key=lambda e: e.start_ms)
    assert [Path(e.output).name for e in first if e.output.endswith(".o")] == \
        ["c.c.o", "d.c.o", "a.c.o"]
    offset = log.stat().st_size
    subprocess.run(configure, check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build)], check=True, capture_output=True)
    again = [Path(e.output).name
             for e in telemetry.parse_ninja_log(log.read_bytes()[offset:].decode())]
    assert "b.c.o" in again and "libt.so" in again
    assert not {"a.c.o", "c.c.o", "d.c.o"} & set(again), again


def test_predict_build_compares_learned_rule_and_dockerfile(tmp_path: Path) -> None:
    """tools/predict_build.py --compare on made-up units measured longest last."""
    units = [{"package": "p", "source": f"{n}.cu", "wall_s": s, "peak_rss_kb": GB,
              "start": start} for n, s, start in
             [("a", 100.0, 3), ("b", 80.0, 2), ("c", 40.0, 1), ("d", 30.0, 0)]]
    path = tmp_path / "build-telemetry.json"
    path.write_text(json.dumps({"schema_version": telemetry.SCHEMA_VERSION, "units": units,
                                "jobs": 2, "summary": {}}))
    tool = Path(__file__).resolve().parents[2] / "tools" / "predict_build.py"
    out = subprocess.run([sys.executable, str(tool), str(path), "--compare", "4,14"],
                         text=True, capture_output=True, check=True).stdout
    rows = {line[2:27].strip(): line for line in out.splitlines() if line.startswith("  ")}
    # 4 cores, 12 GiB budget: all four at once. The rule: (14 - 2) // 6 = 2 jobs, measured
    # order d, c, b, a: a starts at 40 s. Dockerfile defaults: one job, 250 s.
    assert " 100.0s" in rows["learned (record)"]
    assert " 140.0s" in rows["rule (no record)"] and "(x1.40)" in rows["rule (no record)"]
    assert " 250.0s" in rows["dockerfile 2/8"]


def test_a_record_committed_with_the_stacks_serves_a_fresh_cache(tmp_path: Path) -> None:
    """A record measured on a build host and committed under build/unit-costs/ gives a fresh
    machine's first build the learned parallelism; the cache's own record, once this machine
    has built, wins over it."""
    from vllm_wheels import layout

    repo = _tiny_repo(tmp_path / "repo")
    arch = load_stack(repo / "build" / "stacks" / "tiny.toml").cuda_arch_list
    committed = repo / layout.UNIT_COSTS_DIR / telemetry.record_path(
        tmp_path, "tiny-cuda-ext", "0.1.0", arch).name
    telemetry.merge_record(committed, package="tiny-cuda-ext", version="0.1.0", arch_list=arch,
                           nvcc_threads=1, costs={"tiny.cu": {"wall_s": 90, "cpu_s": 88,
                                                              "peak_rss_kb": 3 * GB}})
    cache = Cache(tmp_path / "cache")
    par = _plan(repo, cache).to_dict()["toolchain"]["parallelism"]
    assert par["source"] == "record" and par["unit_costs"] == str(committed)
    own = telemetry.record_path(cache.root, "tiny-cuda-ext", "0.1.0", arch)
    telemetry.merge_record(own, package="tiny-cuda-ext", version="0.1.0", arch_list=arch,
                           nvcc_threads=1, costs={"tiny.cu": {"wall_s": 80, "cpu_s": 79,
                                                              "peak_rss_kb": 2 * GB}})
    assert _plan(repo, cache).to_dict()["toolchain"]["parallelism"]["unit_costs"] == str(own)
    # Without the committed record (another arch list's only), the rule decides.
    committed.unlink()
    shutil.rmtree(cache.root / "unit-costs")
    assert _plan(repo, cache).to_dict()["toolchain"]["parallelism"]["source"] == "rule"
