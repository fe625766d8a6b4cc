"""Reproducible wheels, for real: the CUDA 13 test stack built by the session fixture is
built once more with `build-wheels --verify-reproducible`, whose second build starts from
clean source trees in another cache directory (other paths, an empty compile cache: every
object recompiled by gcc and nvcc). The wheels must be byte-identical, and publishing the
rebuild where the first build is published must be a no-op."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ci_support import CI_STACK, CiBuild, cli
from tiny_stacks import stack_toml

from vllm_wheels.build.wheelmeta import read_manifest

pytestmark = [pytest.mark.network, pytest.mark.compile]


def test_clean_rebuild_in_another_cache_dir_is_byte_identical(
        ci_build: CiBuild, repo_root: Path, shared_cache: Path, tmp_path: Path) -> None:
    again = cli("build-wheels", "--stack", CI_STACK, "--cache-dir", str(shared_cache),
                "--output-dir", str(tmp_path / "again"), "--verify-reproducible",
                cwd=repo_root)
    print(again.stdout[-4000:], again.stderr[-6000:])
    assert again.returncode == 0, again.stderr[-6000:]
    second = shared_cache / "reproduce" / "wheels"
    first_wheels = sorted(ci_build.out.glob("*.whl"))
    assert [w.name for w in first_wheels] == sorted(w.name for w in second.glob("*.whl"))
    assert len(first_wheels) == 2
    # The session fixture's build against the clean rebuild, byte for byte.
    for wheel in first_wheels:
        assert wheel.read_bytes() == (second / wheel.name).read_bytes(), wheel.name
        assert "reproducible: " + wheel.name in again.stderr  # the progress stream
    # It really was a second builder: other trees, nothing from the compile cache.
    summary = json.loads((second / "build-summary.json").read_text())
    first_summary = json.loads((ci_build.out / "build-summary.json").read_text())
    trees = {p["package"]: p["tree"] for p in first_summary["packages"]}
    for package in summary["packages"]:
        assert package["tree"].startswith(str(shared_cache / "reproduce" / "src"))
        assert package["tree"] != trees[package["package"]]
        stats = package["compile_cache_stats"]
        assert stats["hits"] == 0, (package["package"], stats)
    # The manifest names the inputs and no build path.
    for wheel in first_wheels:
        text = json.dumps(read_manifest(wheel))
        assert str(shared_cache) not in text and str(repo_root) not in text

    index = tmp_path / "index"
    first = cli("publish", "--index", str(index), "--wheels", str(ci_build.out), cwd=repo_root)
    assert first.returncode == 0, first.stderr[-3000:]
    republish = cli("publish", "--index", str(index), "--wheels", str(second), cwd=repo_root)
    assert republish.returncode == 0, republish.stderr[-3000:]
    assert "0 added, 2 unchanged" in republish.stderr


# FlashInfer 0.5.2's real sdist from PyPI, as a JIT-only wheel (`aot = false`): the cheapest
# package of the CI stack with a pypi source (no compile), and the source whose download URL
# used to reach the manifest only when the sdist was not in the cache yet.
JIT_STACK = stack_toml("ci-flashinfer-jit", """
[packages.flashinfer-python]
source = { pypi = "0.5.2", sha256 = "99d097a28be1e98c7f85e4a767e9e9a4794374f9318c27db14d21e367149063f" }
options = { aot = false }
""", build='compile_cache = "none"\n')


def test_dry_run_then_build_equals_a_direct_build_in_another_cache(
        repo_root: Path, shared_cache: Path, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    """README's path (a dry run, then the build) in one fresh cache directory, and a direct
    build in another: the sdist is downloaded by the dry run and found in the cache by the
    build in the first, downloaded by the build itself in the second. The wheels must be
    byte-identical (they were not: the manifest held the download URL in one case only)."""
    made = sorted((shared_cache / "venvs").glob(
        "py3.11-torch2.14.1-cu130-*/vllm-wheels-venv.json"))
    venv = made[0].parent if made else \
        Path(request.getfixturevalue("ci_build").build_python).parent.parent
    stack = tmp_path / "jit.toml"
    stack.write_text(JIT_STACK)

    def build_wheels(cache: str, out: str, *extra: str) -> None:
        result = cli("build-wheels", "--stack", str(stack), "--cache-dir", str(tmp_path / cache),
                     "--output-dir", str(tmp_path / out), "--build-venv", str(venv), *extra,
                     cwd=repo_root)
        print(result.stdout[-2000:], result.stderr[-4000:])
        assert result.returncode == 0, result.stderr[-4000:]

    build_wheels("cache-a", "out-a", "--dry-run")
    build_wheels("cache-a", "out-a")
    build_wheels("cache-b", "out-b")
    (first,) = sorted((tmp_path / "out-a").glob("*.whl"))
    (second,) = sorted((tmp_path / "out-b").glob("*.whl"))
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes(), \
        ((read_manifest(first) or {}).get("source"), (read_manifest(second) or {}).get("source"))
    source = (read_manifest(first) or {})["source"]
    assert source == {"kind": "pypi", "version": "0.5.2", "url": None,
                      "index": "https://pypi.org/simple",
                      "sha256": "99d097a28be1e98c7f85e4a767e9e9a4794374f9318c27db14d21e367149063f",
                      "commit": None}
