"""Real sdists from PyPI: download, sha256, unpack, patch, FetchContent discovery.
Needs the package index (PyPI); no compiler."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_wheels.build.externals import resolve_externals
from vllm_wheels.build.patches import check_patch, read_series
from vllm_wheels.build.prepare import prepare_package
from vllm_wheels.build.stack import load_stack
from vllm_wheels.cache import Cache
from vllm_wheels.log import Reporter

pytestmark = pytest.mark.network

# The stack these tests know the sources of: vLLM 0.11.2 and FlashInfer 0.5.2 (the former
# default, build/stacks/rtx5090-cu128.toml), whose sdists the CI cache already holds.
CU128 = "build/stacks/rtx5090-cu128.toml"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_wheels", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, check=False)


@pytest.fixture
def reporter(tmp_path: Path):  # type: ignore[no-untyped-def]
    rep = Reporter(tmp_path / "log", stream=io.StringIO())
    yield rep
    rep.close()


def test_cu128_stack_sources_prepare_and_discover_externals(
        repo_root: Path, shared_cache: Path, reporter: Reporter) -> None:
    stack = load_stack(repo_root / CU128)
    cache = Cache(shared_cache)
    fi = prepare_package(stack.package("flashinfer-python"), cache, repo_root, reporter)  # type: ignore[arg-type]
    vllm = prepare_package(stack.package("vllm"), cache, repo_root, reporter)  # type: ignore[arg-type]
    assert fi.fetched.sha256 == stack.package("flashinfer-python").source.sha256  # type: ignore[union-attr]
    assert (vllm.tree / "setup.py").is_file() and (fi.tree / "flashinfer").is_dir()
    # The source's own torch pins are gone, everything else stays.
    cuda_txt = (vllm.tree / "requirements" / "cuda.txt").read_text()
    assert "\ntorch==2.9.0" not in cuda_txt and "flashinfer-python==0.5.2" in cuda_txt
    assert 'torch == 2.9.0' not in (vllm.tree / "pyproject.toml").read_text()
    assert not any("torch" in r.split("=")[0] for r in vllm.build_requirements)
    # External sources come from the unpacked source's CMake files.
    resolved = resolve_externals(vllm, cache, repo_root, reporter, fetch=False, others=[fi])
    ext = {e.source.name: e for e in resolved.externals}
    assert set(ext) == {"cutlass", "vllm-flash-attn", "flashmla", "qutlass"}
    assert ext["cutlass"].source.ref == "v4.2.1"
    assert ext["vllm-flash-attn"].source.ref.startswith("58e0626a")
    assert ext["vllm-flash-attn"].source.override_env == "VLLM_FLASH_ATTN_SRC_DIR"
    assert all(e.origin == "to fetch" for e in ext.values())


def test_patch_already_upstream_and_conflicting_patch(repo_root: Path, shared_cache: Path,
                                                      reporter: Reporter) -> None:
    stack = load_stack(repo_root / CU128)
    vllm = prepare_package(stack.package("vllm"), Cache(shared_cache), repo_root, reporter)  # type: ignore[arg-type]
    upstream = read_series(repo_root / "tests/fixtures/patches/already-upstream")
    assert check_patch(vllm.tree, upstream[0]).status == "already-applied"  # fixed in 0.11.2
    conflict = check_patch(vllm.tree, read_series(repo_root / "tests/fixtures/patches/conflicts")[0])
    assert conflict.status == "conflicts"
    assert conflict.failed_hunks == ("CMakeLists.txt: hunk #1 at line 13",)


def _stack_variant(repo_root: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = (repo_root / CU128).read_text()
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new))
    return path


def test_wrong_sha256_is_refused_and_leaves_nothing(repo_root: Path, tmp_path: Path) -> None:
    stack = _stack_variant(repo_root, tmp_path, "99d097a28be1e98c", "00d097a28be1e98c")
    cache = tmp_path / "cache"
    result = cli("build-wheels", "--stack", str(stack), "--cache-dir", str(cache), "--dry-run",
                 cwd=repo_root)
    assert result.returncode == 4, result.stderr
    assert "sha256 mismatch" in result.stderr and "expected: 00d097a28be1e98c" in result.stderr
    assert "actual:   99d097a28be1e98c" in result.stderr
    # Nothing half-written or unverified stays in the cache (no file, no temp file).
    assert not [p for p in cache.rglob("*") if p.is_file() and "downloads" in p.parts]


def test_patch_that_does_not_apply_exits_5(repo_root: Path, tmp_path: Path) -> None:
    stack = _stack_variant(repo_root, tmp_path, 'source = { pypi = "0.11.2"',
                           'patches = "tests/fixtures/patches/conflicts"\nsource = { pypi = "0.11.2"')
    result = cli("build-wheels", "--stack", str(stack), "--cache-dir", str(tmp_path / "c"),
                 "--dry-run", cwd=repo_root)
    assert result.returncode == 5, result.stderr
    assert "0001-context-moved.patch does not apply" in result.stderr
    assert "CMakeLists.txt: hunk #1 at line 13" in result.stderr
    assert not [p for p in (tmp_path / "c" / "src").iterdir() if p.name.startswith("vllm")]


def test_dry_run_prints_the_full_plan_and_json(repo_root: Path, shared_cache: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = cli("build-wheels", "--stack", CU128, "--dry-run", "--json", str(out),
                 "--cache-dir", str(shared_cache), cwd=repo_root)
    for needle in ("torch==2.9.0", "sha256 496d15bb64ca0fe7", "VLLM_FLASH_ATTN_SRC_DIR",
                   "58e0626a692f09241182582659e3bf8f16472659", "TORCH_CUDA_ARCH_LIST=12.0",
                   "-DCMAKE_BUILD_TYPE=Release", "nvcc major == torch CUDA major"):
        assert needle in result.stdout, needle
    import json

    plan = json.loads(out.read_text())
    assert plan["schema_version"] == 1
    # Whole plan first; then a failing toolchain check (here: no CUDA 12 nvcc) gives the
    # exit code the real build would (3), so a script can gate on the dry run.
    failing = [c for c in plan["toolchain"]["checks"] if c["status"] == "fail"]
    assert result.returncode == (3 if failing else 0), result.stderr
    assert [p["name"] for p in plan["packages"]] == ["flashinfer-python", "vllm"]


# ------------------------------------------------- a source is what the stack says


@pytest.fixture
def warm_flashinfer(repo_root: Path, shared_cache: Path, reporter: Reporter) -> Path:
    """The real FlashInfer 0.5.2 sdist in the shared cache (downloaded once)."""
    from vllm_wheels.build import sources

    spec = load_stack(repo_root / CU128).package("flashinfer-python")
    assert spec is not None
    fetched = sources.fetch(spec, Cache(shared_cache), repo_root, reporter)
    assert fetched.archive is not None and fetched.archive.name == "flashinfer_python-0.5.2.tar.gz"
    return fetched.archive


def test_version_the_cached_sdist_is_not_is_refused(repo_root: Path, shared_cache: Path,
                                                    tmp_path: Path, warm_flashinfer: Path
                                                    ) -> None:
    """Stack says 0.5.99 with 0.5.2's sha256: the warm cache has a file with that hash, but
    it is 0.5.2's sdist, so nothing is built and labelled 0.5.99; exit 4 naming both. An
    empty cache gives exit 4 as well (the index has no 0.5.99)."""
    stack = _stack_variant(repo_root, tmp_path, 'pypi = "0.5.2"', 'pypi = "0.5.99"')
    result = cli("build-wheels", "--stack", str(stack), "--cache-dir", str(shared_cache),
                 "--dry-run", cwd=repo_root)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr
    assert "the stack says flashinfer-python 0.5.99" in result.stderr
    assert "flashinfer_python-0.5.2.tar.gz (flashinfer-python 0.5.2)" in result.stderr
    assert not list((shared_cache / "src").glob("flashinfer-python-0.5.99-*"))
    empty = cli("build-wheels", "--stack", str(stack), "--cache-dir", str(tmp_path / "empty"),
                "--dry-run", cwd=repo_root)
    assert empty.returncode == 4, empty.stderr


def test_sha256_of_another_package_is_refused(repo_root: Path, shared_cache: Path,
                                              tmp_path: Path, reporter: Reporter) -> None:
    """flashinfer-python 0.5.2 pinned to vLLM 0.11.2's sha256 (cached): exit 4, not a
    FlashInfer wheel built from vLLM's source."""
    from vllm_wheels.build import sources

    stack = load_stack(repo_root / CU128)
    vllm = stack.package("vllm")
    assert vllm is not None and vllm.source.sha256 is not None
    sources.fetch(vllm, Cache(shared_cache), repo_root, reporter)  # warm
    variant = _stack_variant(repo_root, tmp_path, "99d097a28be1e98c7f85e4a767e9e9a4794374f9318c27"
                             "db14d21e367149063f", vllm.source.sha256)
    result = cli("build-wheels", "--stack", str(variant), "--cache-dir", str(shared_cache),
                 "--dry-run", cwd=repo_root)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr
    assert "the stack says flashinfer-python 0.5.2" in result.stderr
    assert "vllm-0.11.2.tar.gz (vllm 0.11.2)" in result.stderr


def test_mislabelled_cached_sdist_is_refused_by_its_pkg_info(
        repo_root: Path, tmp_path: Path, warm_flashinfer: Path, reporter: Reporter) -> None:
    """The real 0.5.2 sdist cached under the file name of 0.5.3 (same bytes, same sha256):
    the file name agrees with the stack, the sdist's own PKG-INFO does not."""
    from vllm_wheels.build import sources
    from vllm_wheels.errors import SourceError

    sha = sources.sha256_file(warm_flashinfer)
    cache = Cache(tmp_path / "cache")
    target = cache.download_path(sha, "flashinfer_python-0.5.3.tar.gz")
    target.parent.mkdir(parents=True)
    shutil.copyfile(warm_flashinfer, target)
    variant = _stack_variant(repo_root, tmp_path, 'pypi = "0.5.2"', 'pypi = "0.5.3"')
    spec = load_stack(variant).package("flashinfer-python")
    assert spec is not None and spec.source.sha256 == sha
    with pytest.raises(SourceError) as info:
        prepare_package(spec, cache, repo_root, reporter)
    assert info.value.exit_code == 4
    assert "version: the stack says 0.5.3, PKG-INFO says 0.5.2" in str(info.value)
    assert not list(cache.sources.glob("flashinfer*"))


def test_path_archive_with_a_version_is_checked_against_pkg_info(
        repo_root: Path, tmp_path: Path, warm_flashinfer: Path, reporter: Reporter) -> None:
    """A local sdist (path source) with a stated version: the real 0.5.2 sdist stated as
    0.5.2 prepares; stated as vllm 0.5.2 (another name) it is refused."""
    from vllm_wheels.errors import SourceError

    archive = tmp_path / warm_flashinfer.name
    shutil.copyfile(warm_flashinfer, archive)
    stack = tmp_path / "local.toml"
    base = (repo_root / "build" / "stacks" / "ci-cuda13.toml").read_text().split("[packages.")[0]
    stack.write_text(base + f'[packages.flashinfer-python]\nsource = {{ path = "{archive}", '
                     'version = "0.5.2" }\n[packages.vllm]\nbuilder = "setuptools"\n'
                     f'source = {{ path = "{archive}", version = "0.5.2" }}\n')
    loaded = load_stack(stack)
    cache = Cache(tmp_path / "cache")
    ok = prepare_package(loaded.packages[0], cache, repo_root, reporter)
    assert (ok.tree / "PKG-INFO").is_file()
    with pytest.raises(SourceError) as info:
        prepare_package(loaded.packages[1], cache, repo_root, reporter)
    assert "name: the stack says vllm, PKG-INFO says flashinfer-python" in str(info.value)
