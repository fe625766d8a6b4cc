"""Patches apply exactly or not at all (GNU patch --fuzz=0), in builds and in trials:
real GNU patch on the real tiny_cuda_ext fixture, with patches that apply exactly, at an
offset (applied, offset reported), or only with fuzz (refused, exit 5, hunk named).
Fixtures: tests/fixtures/patches/tiny-cuda-ext/README.md."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import pytest
from tiny_stacks import TINY_CUDA_EXT, TINY_CUDA_EXT_FIXTURE, copy_tiny_cuda_ext, stack_toml

from vllm_wheels.build import plan as build_plan
from vllm_wheels.build.patches import read_series
from vllm_wheels.build.render import render_plan
from vllm_wheels.build.stack import Source, load_stack
from vllm_wheels.cache import Cache
from vllm_wheels.errors import ConfigError, PatchError
from vllm_wheels.log import Reporter
from vllm_wheels.trial.plan import _patch_report, check_series

PATCHES = Path(__file__).resolve().parents[1] / "fixtures" / "patches" / "tiny-cuda-ext"
KERNEL = "tiny_cuda_ext/kernel.cu"
NEEDS_FUZZ = f"{KERNEL}: hunk #1 at line 6 (needs fuzz 1: its context lines differ from the source)"


def _repo(root: Path, *patches: str) -> Path:
    """A repository with a one-package stack (the fixture as a path source) whose series
    is `patches`, in that order."""
    copy_tiny_cuda_ext(root)
    series = root / "patches" / "tiny-cuda-ext"
    series.mkdir(parents=True)
    for name in patches:
        shutil.copy2(PATCHES / name, series / name)
    (series / "series").write_text("".join(f"{n}\n" for n in patches))
    (root / "build" / "stacks").mkdir(parents=True)
    (root / "build" / "stacks" / "tiny.toml").write_text(stack_toml("tiny-patches",
                                                                    TINY_CUDA_EXT))
    return root


def _plan(repo: Path, cache: Cache) -> build_plan.Plan:
    stack = load_stack(repo / "build" / "stacks" / "tiny.toml")
    return build_plan.make_plan(stack, repo_root=repo, cache=cache, output_dir=repo / "out",
                                log_path=repo / "plan.log", fetch_externals=False,
                                reporter=Reporter(None, stream=io.StringIO()))


def test_build_applies_exact_and_offset_patches_and_says_where(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", "exact.patch", "offset.patch")
    plan = _plan(repo, Cache(tmp_path / "cache"))
    assert plan.packages[0].tree.is_relative_to(tmp_path / "cache")
    kernel = (plan.packages[0].tree / KERNEL).read_text()
    assert "// element-wise" in kernel and "// rounded up" in kernel and "// patched" in kernel
    text = render_plan(plan)
    assert (f"patches: exact.patch (applied); offset.patch (applied, {KERNEL}: hunk #2 at "
            "offset +3)") in text
    patches = plan.to_dict()["packages"][0]["patches"]
    assert [p["applied"] for p in patches] == ["applied", f"applied, {KERNEL}: hunk #2 at offset +3"]


def test_build_refuses_a_patch_that_needs_fuzz(tmp_path: Path) -> None:
    """GNU patch's default (fuzz 2) applies fuzz.patch "with fuzz 1"; the build refuses it,
    naming the patch and the hunk, and leaves no prepared tree."""
    repo = _repo(tmp_path / "repo", "exact.patch", "fuzz.patch")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(PatchError) as info:
        _plan(repo, cache)
    assert info.value.exit_code == 5
    assert "patch 2/2 fuzz.patch does not apply exactly" in info.value.what
    assert NEEDS_FUZZ in info.value.what and "without fuzz" in info.value.why
    assert not [p for p in cache.sources.glob("tiny-cuda-ext-*") if p.is_dir()
                and (p / KERNEL).is_file()]


def test_trial_check_reports_offsets_and_a_fuzz_needing_patch_as_a_conflict(
        tmp_path: Path) -> None:
    """The trial's re-check of a series (the same check_patch): exact and offset patches
    apply (the offset is in the report), the fuzz-needing one conflicts at its hunk, whose
    text the report shows."""
    repo = _repo(tmp_path / "repo", "exact.patch", "fuzz.patch", "offset.patch")
    checks = check_series(TINY_CUDA_EXT_FIXTURE, read_series(repo / "patches" / "tiny-cuda-ext"))
    assert [(c.status, c.offsets, c.failed_hunks) for c in checks] == [
        ("applies", (), ()), ("conflicts", (), (NEEDS_FUZZ,)),
        ("applies", (f"{KERNEL}: hunk #2 at offset +3",), ())]

    alone = _repo(tmp_path / "alone", "fuzz.patch", "offset.patch")
    spec = load_stack(alone / "build" / "stacks" / "tiny.toml").packages[0]
    candidate = dataclasses.replace(spec, source=Source(kind="path", version="0.1.0",
                                                        path=str(TINY_CUDA_EXT_FIXTURE)))
    report = _patch_report(spec, candidate, TINY_CUDA_EXT_FIXTURE, alone)
    fuzz, offset = report["patches"]
    assert offset["status"] == "applies" and offset["offsets"] == [
        f"{KERNEL}: hunk #2 at offset +3"]
    assert fuzz["status"] == "conflicts"
    assert [h["where"] for h in fuzz["failed_hunks"]] == [NEEDS_FUZZ]
    assert "}  // add_kernel" in fuzz["failed_hunks"][0]["text"]


def test_a_patch_directory_the_stack_names_must_exist(tmp_path: Path) -> None:
    """`patches = "DIR"` naming no directory is exit 2 in a build and in a trial, not a
    build without patches; the default directory may be absent (no patches)."""
    repo = _repo(tmp_path / "repo")
    stack_file = repo / "build" / "stacks" / "tiny.toml"
    default = load_stack(stack_file)
    shutil.rmtree(repo / "patches")
    stack_file.write_text(stack_toml("tiny-patches", TINY_CUDA_EXT.replace(
        'patches = "patches/tiny-cuda-ext"', "")))
    plan = _plan(repo, Cache(tmp_path / "cache"))  # default patches/tiny-cuda-ext/0.1.0: absent
    assert plan.packages[0].patches == ()

    stack_file.write_text(stack_toml("tiny-patches", TINY_CUDA_EXT))  # names a missing DIR
    cache = Cache(tmp_path / "cache2")
    with pytest.raises(ConfigError) as info:
        _plan(repo, cache)
    assert info.value.exit_code == 2
    assert 'patches = "patches/tiny-cuda-ext", does not exist' in info.value.what
    assert "no patches at all" in info.value.why and "remove the `patches` key" in info.value.fix
    assert not cache.sources.is_dir() or not any(cache.sources.glob("tiny-cuda-ext-*"))

    spec = default.packages[0]
    candidate = dataclasses.replace(spec, source=Source(kind="path", version="0.1.0",
                                                        path=str(TINY_CUDA_EXT_FIXTURE)))
    with pytest.raises(ConfigError, match="does not exist"):
        _patch_report(spec, candidate, TINY_CUDA_EXT_FIXTURE, repo)
