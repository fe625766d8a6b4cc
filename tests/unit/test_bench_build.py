"""The build benchmark without building: the scenario plan, the figures read from a
build-summary.json, the patch check, the table and the JSON, and the dry run of the command
line (inputs checked, plan printed, JSON written; no network, no compiler)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vllm_wheels.build import bench
from vllm_wheels.errors import ConfigError


def summary(*, units: int, hits: int, misses: int, unknown: int = 0,
            stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """A build-summary.json as the pipeline writes it (the fields the bench reads)."""
    return {
        "schema_version": 1, "seconds": 93.4,
        "build": {"jobs": 2, "compile_cache": "sccache", "compile_cache_backend": "redis"},
        "packages": [{"package": "tiny-cuda-ext", "compile_cache_stats": stats or {
            "hits": 1, "misses": 4,
            "by_language": {"CUBIN": {"hits": 1, "misses": 0},
                            "PTX": {"hits": 0, "misses": 1},
                            "C/C++": {"hits": 0, "misses": 1},
                            "CUDA": {"hits": 0, "misses": 1},
                            "CUDA (Device code)": {"hits": 0, "misses": 1}}}},
                     {"package": "flashinfer-python", "compile_cache_stats": {
                         "hits": 3, "misses": 0,
                         "by_language": {"CUBIN": {"hits": 3, "misses": 0}}}}],
        "telemetry": {"file": "build-telemetry.json", "schema_version": 1, "summary": {
            "units": units, "cpu_seconds": 150.25, "compile_wall_s": 80.0, "jobs": 2,
            "parallel_efficiency": 0.939, "critical_path_s": 75.5,
            "peak_rss_kb": 1536 * 1024, "peak_rss_unit": "tiny_cuda_ext/kernel.cu",
            "cache": {"hits": hits, "misses": misses, "unknown": unknown,
                      "hit_rate": round(hits / (hits + misses), 3) if hits + misses
                      else None}}},
    }


def test_the_plan_has_four_scenarios_in_order_and_says_why_one_is_skipped() -> None:
    plan = bench.plan_scenarios(remote=True, patch=True)
    assert [s.name for s, _ in plan] == ["cold", "warm-local", "warm-remote", "one-file-patch"]
    assert all(skip == "" for _, skip in plan)
    cold, local, remote, patch = (s for s, _ in plan)
    # warm local: new pipeline cache, the cold compile cache, and no remote (hits are local)
    assert local.cache != cold.cache and local.compile_cache == f"from {cold.cache}"
    assert not local.remote and local.checkout == cold.checkout
    # warm remote: the second builder, another checkout, an empty local compile cache
    assert remote.checkout != cold.checkout and remote.compile_cache == "empty"
    assert remote.remote and remote.cache not in (cold.cache, local.cache)
    # the patch rebuilds with warm caches: the warm-local pipeline cache
    assert patch.patch and patch.cache == local.cache and patch.expect
    skipped = dict((s.name, skip) for s, skip in bench.plan_scenarios(remote=False,
                                                                       patch=False))
    assert skipped["cold"] == skipped["warm-local"] == ""
    assert "redis-server" in skipped["warm-remote"] and "--patch-file" in \
        skipped["one-file-patch"]


def test_figures_come_from_the_caches_own_statistics_and_the_telemetry() -> None:
    figures = bench.scenario_figures(summary(units=3, hits=1, misses=2), wall_s=101.26)
    assert figures["wall_s"] == 101.3 and figures["pipeline_s"] == 93.4
    assert figures["units"] == 3
    assert figures["unit_cache"] == {"hits": 1, "misses": 2, "unknown": 0, "hit_rate": 0.333}
    cc = figures["compile_cache"]
    assert (cc["tool"], cc["backend"], cc["hits"], cc["misses"]) == ("sccache", "redis", 4, 4)
    assert cc["hit_rate"] == 0.5 and cc["by_language"]["CUBIN"] == {"hits": 4, "misses": 0}
    assert figures["cpu_seconds"] == 150.25 and figures["parallel_efficiency"] == 0.939
    assert figures["critical_path_s"] == 75.5 and figures["peak_unit_rss_mb"] == 1536
    assert figures["packages_built"] == ["tiny-cuda-ext", "flashinfer-python"]


def test_a_build_that_compiled_nothing_has_no_hit_rate() -> None:
    empty = {"seconds": 4.0, "build": {}, "packages": [],
             "telemetry": {"summary": {"units": 0, "cache": {}}}}
    figures = bench.scenario_figures(empty, wall_s=5.0)
    assert figures["units"] == 0 and figures["compile_cache"]["hit_rate"] is None
    assert figures["peak_unit_rss_mb"] is None


@pytest.mark.parametrize(("hits", "misses", "unknown", "ok"), [
    (0, 1, 0, True), (2, 1, 0, True), (0, 2, 0, False), (0, 0, 0, False), (0, 1, 1, None)])
def test_the_patch_check_wants_exactly_one_missed_unit(hits: int, misses: int, unknown: int,
                                                       ok: bool | None) -> None:
    figures = bench.scenario_figures(summary(units=hits + misses + unknown, hits=hits,
                                             misses=misses, unknown=unknown), wall_s=1)
    assert bench.patch_check(figures)["ok"] is ok


def test_table_and_json() -> None:
    ran = bench.scenario_figures(summary(units=1, hits=0, misses=1), wall_s=125)
    results = [{"name": "cold", "title": "cold", "figures": ran},
               {"name": "warm-remote", "title": "warm remote", "skipped": "no remote"},
               {"name": "one-file-patch", "title": "patch", "figures": ran,
                "check": bench.patch_check(ran)}]
    table = bench.render_table(results).splitlines()
    assert table[0].split()[:3] == ["scenario", "wall", "units"]
    cold = table[2].split()
    assert cold[:4] == ["cold", "2m05s", "1", "0/1/0"] and "4/4" in cold and "50%" in cold
    assert cold[-2:] == ["1536", "MB"] and "75.5s" in cold and "0.94" in cold
    assert table[3] == "warm-remote     skipped: no remote"
    assert table[5].strip() == "exactly one unit missed: yes (1 missed, 0 unknown)"
    data = bench.report(stack="build/stacks/ci-cuda13.toml", only=["tiny-cuda-ext"],
                        remote={"url": "redis://127.0.0.1:1"}, results=results,
                        host={"cores": 2}, log="/x.log")
    again = json.loads(json.dumps(data))
    assert again["schema_version"] == bench.SCHEMA_VERSION == 1
    assert [s["name"] for s in again["scenarios"]] == ["cold", "warm-remote",
                                                       "one-file-patch"]
    assert again["only"] == ["tiny-cuda-ext"] and again["dry_run"] is False


def test_dry_run_checks_the_inputs_prints_the_plan_and_builds_nothing(
        repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VLLM_WHEELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VLLM_WHEELS_COMPILE_CACHE_REMOTE", raising=False)
    out = tmp_path / "plan.json"
    work = tmp_path / "work"
    code = bench.main(["--dry-run", "--only", "tiny-cuda-ext", "--json", str(out),
                       "--work-dir", str(work)], repo=repo_root)
    assert code == 0
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["dry_run"] is True
    assert [s["name"] for s in data["scenarios"]] == ["cold", "warm-local", "warm-remote",
                                                      "one-file-patch"]
    err = capsys.readouterr().err
    assert "full log:" in err and "--compile-cache-remote none" in err
    assert bench.TEST_PATCH_FILE in err and not work.exists()


def test_without_redis_server_the_remote_scenario_is_skipped_with_the_fix(
        repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VLLM_WHEELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VLLM_WHEELS_COMPILE_CACHE_REMOTE", raising=False)
    real_which = bench.shutil.which
    monkeypatch.setattr(bench.shutil, "which",
                        lambda name, **kw: None if name == "redis-server"
                        else real_which(name, **kw))
    out = tmp_path / "plan.json"
    assert bench.main(["--dry-run", "--json", str(out)], repo=repo_root) == 0
    assert "apt-get install -y redis-server" in capsys.readouterr().err
    scenarios = {s["name"]: s for s in json.loads(out.read_text())["scenarios"]}
    assert "skipped" in scenarios["warm-remote"] and "skipped" not in scenarios["cold"]


@pytest.mark.parametrize(("args", "says"), [
    (["--patch-file", "README.md"], "not a .cu file"),
    (["--remote", "redis://:secret@127.0.0.1:6379"], "password"),
    (["--stack", "no/such/stack.toml"], "no such file"),
])
def test_what_the_user_gave_wrong_is_exit_2_with_a_fix(
        args: list[str], says: str, repo_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VLLM_WHEELS_CACHE", str(tmp_path / "cache"))
    assert bench.main(["--dry-run", *args], repo=repo_root) == ConfigError.exit_code == 2
    err = capsys.readouterr().err
    assert says in err and "fix:" in err and "secret" not in err


def test_a_real_stack_without_a_patch_file_skips_only_the_patch(
        repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_WHEELS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "plan.json"
    assert bench.main(["--dry-run", "--stack", str(repo_root / "build/stacks/h200-cu130.toml"),
                       "--remote", "redis://127.0.0.1:6379", "--json", str(out)],
                      repo=repo_root) == 0
    scenarios = {s["name"]: s for s in json.loads(out.read_text())["scenarios"]}
    assert [n for n, s in scenarios.items() if "skipped" in s] == ["one-file-patch"]


def test_a_failed_scenario_exits_with_the_builds_own_code() -> None:
    err = bench.BenchBuildError("scenario cold: build-wheels failed (exit 6)", returncode=6)
    assert err.exit_code == 6 and "exit 6" in err.render()
