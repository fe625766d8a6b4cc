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
