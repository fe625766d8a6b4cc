"""The repository layout (vllm_wheels.layout): one place names wheels/<stack>/, the index
and the marker files, and a stack named like a reserved directory is refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tiny_stacks import TINY_CUDA_EXT, stack_toml

from vllm_wheels import cli, layout
from vllm_wheels.build.stack import load_stack
from vllm_wheels.errors import ConfigError
from vllm_wheels.log import Reporter


def test_wheels_dir_and_index_dir_are_siblings_under_wheels(tmp_path: Path) -> None:
    assert layout.wheels_dir(tmp_path, "rtx5090") == tmp_path / "wheels" / "rtx5090"
    assert layout.index_dir(tmp_path) == tmp_path / "wheels" / "index"
    assert layout.default_stack(tmp_path) == tmp_path / "build" / "stack.toml"
    assert layout.index_dir(tmp_path).name in layout.RESERVED_STACK_NAMES


def test_a_stack_named_like_the_index_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "index.toml"
    path.write_text(stack_toml("index", TINY_CUDA_EXT))
    with pytest.raises(ConfigError) as info:
        load_stack(path)
    err = info.value
    assert err.exit_code == 2
    assert "the stack name 'index' is reserved" in err.render()
    assert "wheels/index/" in err.render()  # why: it is the wheel index
    assert 'name = "index-stack"' in err.render()  # fix: a name that is not reserved
    # A name that merely starts like it is a stack like any other.
    path.write_text(stack_toml("index2", TINY_CUDA_EXT))
    assert load_stack(path).name == "index2"


def test_wheels_dir_refuses_a_reserved_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reserved"):
        layout.wheels_dir(tmp_path, "index")


def test_build_wheels_exits_2_for_a_reserved_stack_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "index.toml"
    path.write_text(stack_toml("index", TINY_CUDA_EXT))
    assert cli.main(["build-wheels", "--dry-run", "--stack", str(path),
                     "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "reserved" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "logs").exists()  # refused before anything ran


def test_repo_root_is_the_checkout_above_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "noxfile.py").write_text("")
    (tmp_path / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "src" / "deep")
    assert layout.repo_root() == tmp_path
    elsewhere = tmp_path / "src"
    (elsewhere / "build").mkdir()
    monkeypatch.chdir(elsewhere)
    assert layout.repo_root() == tmp_path  # build/ alone is not a checkout


def test_helpers_are_real_files_of_the_package() -> None:
    for name in ("measure_compile.py", "nvcc_source_path.py", "import_smoke.py",
                 "flashinfer_aot.py", "check_requirements.py"):
        assert layout.helper(name).is_file(), name


def test_reporter_numbers_its_own_steps() -> None:
    out = io.StringIO()
    reporter = Reporter(stream=out)
    reporter.plan_steps(3)
    reporter.step("sources")
    reporter.step("plan")
    reporter.step("build")
    # A second run of the later steps (the reproducibility rebuild) numbers them again.
    reporter.plan_steps(3, done=2)
    reporter.step("build")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("==>")]
    assert lines == ["==> [1/3] sources", "==> [2/3] plan", "==> [3/3] build",
                     "==> [3/3] build"]
