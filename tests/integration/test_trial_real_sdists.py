"""Upgrade trials with real sdists from PyPI (plan stage, no compiler): the cu128 stack
(vLLM 0.11.2, the former default) to 0.12.0, a trial across a torch change (0.17.0,
torch 2.10), a forced torch, fixture patches that conflict / are already upstream, the build stage's
orchestration through the real build-wheels CLI (which stops at the patch check, before
any compile), resuming a saved trial, and the errors for missing versions and sdists."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vllm_wheels.build.stack import load_stack

pytestmark = pytest.mark.network

VLLM_0120_SHA = "dc2863be80260f378f1e72f9b82b4009610e434d05fdd7067383b231b89c4f4a"
FI_053_SHA = "100d59b0ede47878d2808cd3a1b9039d7a952d66338bc9f68dac192ae1b2e3f1"
# The stack the trials start from: vLLM 0.11.2 on torch 2.9.0+cu128 (the former default),
# so that 0.12.0 keeps torch and 0.17.0 moves it.
CU128 = "build/stacks/rtx5090-cu128.toml"


def trial(repo_root: Path, cache: Path, out: Path, *args: str, stack: Path | None = None
          ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "vllm_wheels", "trial", *args, "--cache-dir", str(cache),
            "--stack-out", str(out / "trial.toml"), "--report", str(out / "trial.md"),
            "--wheels-dir", str(out / "wheels")]
    if stack is not None:
        argv += ["--stack", str(stack)]
    done = subprocess.run(argv, cwd=repo_root, text=True, capture_output=True, check=False,
                          env={**os.environ})
    report = out / "trial.json"
    return done, json.loads(report.read_text()) if report.is_file() else None


def fixture_stack(repo_root: Path, tmp_path: Path) -> Path:
    """The cu128 stack with the trial fixture series as vLLM's patches."""
    text = (repo_root / CU128).read_text()
    anchor = 'source = { pypi = "0.11.2"'
    assert anchor in text
    path = tmp_path / "stack-with-patches.toml"
    path.write_text(text.replace(anchor, 'patches = "tests/fixtures/trial/vllm-patches"\n'
                                         + anchor))
    return path


def by_name(items: list[dict[str, Any]], key: str = "name") -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


def test_cu128_stack_to_0_12_0(repo_root: Path, shared_cache: Path, tmp_path: Path) -> None:
    done, report = trial(repo_root, shared_cache, tmp_path / "t", "vllm==0.12.0",
                         "--stages", "plan", stack=repo_root / CU128)
    assert done.returncode == 0, done.stderr
    assert report is not None and report["schema_version"] == 2
    # torch stays, read from the release itself (several places say so).
    assert report["torch"]["verdict"] == "stays" and report["torch"]["chosen"] == "2.9.0"
    assert "requirements/cuda.txt:8" in report["torch"]["expected_where"]
    pins = by_name(report["pins"], "item")
    assert (pins["flashinfer-python"]["current"], pins["flashinfer-python"]["candidate"]) == \
        ("0.5.2", "0.5.3")
    assert pins["torchvision"]["candidate"] == "0.24.0"
    assert pins["vLLM default CUDA (VLLM_MAIN_CUDA_VERSION)"]["candidate"] == "12.9"
    ext = by_name(report["externals"])
    fa = ext["vllm-flash-attn"]
    assert fa["change"] == "moved"
    assert (fa["current"]["short"], fa["candidate"]["short"]) == ("58e0626a", "86f8f157")
    assert ext["triton_kernels"]["change"] == "added"
    assert ext["triton_kernels"]["candidate"]["override_env"] == "TRITON_KERNELS_SRC_DIR"
    assert ext["cutlass"]["change"] == "same"
    assert report["archs"]["candidate"]["branch"]["min_nvcc"] == "12.8"
    assert report["archs"]["candidate_drops"] == []
    appeared = {s["name"] for s in report["switches"]["vllm"]["appeared"]}
    assert "TRITON_KERNELS_SRC_DIR" in appeared
    # Each package's patch series is reported (the cu128 stack carries none).
    patches = by_name(report["patches"], "package")
    assert set(patches) == {"vllm", "flashinfer-python"}
    assert "patches/vllm/0.12.0 does not exist" in patches["vllm"]["note"]
    stages = by_name(report["stages"])
    assert stages["plan"]["status"] == "passed"
    assert stages["build"]["status"] == "not-requested"
    if shutil.which("nvidia-smi") is None:
        assert stages["throughput"]["detail"] == "not run here: needs a GPU (and the " \
            "verify_throughput session)"
    # The candidate stack is a stack file load_stack accepts, with the index's hashes.
    stack = load_stack(tmp_path / "t" / "trial.toml")
    assert stack.name == "trial-vllm-0.12.0" and stack.torch.version == "2.9.0"
    assert stack.package("vllm").source.sha256 == VLLM_0120_SHA  # type: ignore[union-attr]
    assert stack.package("flashinfer-python").source.sha256 == FI_053_SHA  # type: ignore[union-attr]
    markdown = (tmp_path / "t" / "trial.md").read_text()
    for needle in ("| vllm-flash-attn | 58e0626a | 86f8f157 | moved", "triton_kernels",
                   "## Promote the candidate to the default stack", "torch stays 2.9.0"):
        assert needle in markdown, needle
    assert str(tmp_path / "t" / "trial.md") in done.stderr  # says where the report is

    # The promotion commands work: run them in a copy of the repository's stack files.
    repo = tmp_path / "repo"
    shutil.copytree(repo_root / "build", repo / "build")
    shutil.copytree(repo_root / "patches", repo / "patches")
    script = "\n".join(c for c in report["promotion"]["commands"]
                       if not c.startswith(("nox ", "git ")))
    subprocess.run(["bash", "-euc", script], cwd=repo, check=True)
    promoted = load_stack(repo / "build" / "stack.toml")
    # The promotion writes the default stack under the name of the stack the trial began from.
    assert promoted.name == "rtx5090-cu128"
    assert promoted.package("vllm").source.version == "0.12.0"  # type: ignore[union-attr]
    assert promoted.digest() != load_stack(repo_root / CU128).digest()


def test_fixture_patches_build_stage_and_resume(repo_root: Path, shared_cache: Path,
                                                tmp_path: Path) -> None:
    stack = fixture_stack(repo_root, tmp_path)
    out = tmp_path / "t"
    done, report = trial(repo_root, shared_cache, out, "vllm==0.12.0", "--stages",
                         "plan,build", stack=stack)
    assert report is not None, done.stderr
    checks = by_name(report["patches"][0]["patches"])
    assert checks["0001-cmake-fail-on-unsupported-archs.patch"]["status"] == "applies"
    assert checks["0002-cutlass-revision-not-cached.patch"]["status"] == "already-applied"
    conflict = checks["0003-flash-attn-from-fork.patch"]
    assert conflict["status"] == "conflicts"
    assert [h["where"] for h in conflict["failed_hunks"]] == \
        ["cmake/external_projects/vllm_flash_attn.cmake: hunk #1 at line 37"]
    assert "-          GIT_TAG 58e0626a692f09241182582659e3bf8f16472659" in \
        conflict["failed_hunks"][0]["text"]
    assert report["promotion"]["ready"] is False
    assert any("0003-flash-attn-from-fork.patch conflicts" in b for b in report["blockers"])
    assert any("sed -i '/^0002-cutlass-revision-not-cached\\.patch$/d'" in c
               for c in report["promotion"]["commands"])
    markdown = (out / "trial.md").read_text()
    assert "already upstream (reverse-applies)" in markdown and "CONFLICTS" in markdown

    # The build stage runs the real build-wheels on the trial stack; it refuses the
    # already-upstream patch before compiling anything (exit 5), and the trial records
    # that with the stage's own log and returns the stage's exit code.
    build = by_name(report["stages"])["build"]
    assert build["status"] == "failed" and build["exit_code"] == 5, build
    assert build["exit_meaning"] == "patch"
    run = json.loads((out / "trial.run.json").read_text())  # this run's logs and times
    build_log = by_name(run["stages"])["build"]["log"]
    assert "0002-cutlass-revision-not-cached.patch is already in the source" in \
        Path(build_log).read_text()
    assert done.returncode == 5
    assert by_name(report["stages"])["abi"]["status"] == "not-requested"

    # Run again: the saved plan is reused (not redone), the failed build runs again.
    again, report2 = trial(repo_root, shared_cache, out, "vllm==0.12.0", "--stages",
                           "plan,build", stack=stack)
    assert report2 is not None and again.returncode == 5
    stages2 = by_name(report2["stages"])
    assert "plan: reused" in again.stderr
    run2 = json.loads((out / "trial.run.json").read_text())
    state = json.loads(Path(run2["state_file"]).read_text())
    assert state["results"]["build"]["log"] != build_log  # a new attempt, with a new log
    assert by_name(run2["stages"])["build"]["log"] == state["results"]["build"]["log"]
    # It failed the same way: the report says nothing new and is left as it was (a trial
    # of unchanged inputs leaves the tracked reports unchanged; the run is in the state).
    assert report2 == report and stages2["build"]["exit_code"] == 5
    # Changed inputs (another request) start over instead of reusing the plan.
    third, report3 = trial(repo_root, shared_cache, out, "vllm==0.12.0",
                           "flashinfer-python==0.5.2", "--stages", "plan", stack=stack)
    assert report3 is not None and third.returncode == 0, third.stderr
    assert "starting over" in third.stderr
    assert by_name(report3["pins"], "item")["flashinfer-python"]["candidate"] == "0.5.2"
    assert any("forced flashinfer-python==0.5.2" in w for w in report3["warnings"])


def test_trial_across_a_torch_change(repo_root: Path, shared_cache: Path,
                                     tmp_path: Path) -> None:
    # vLLM 0.17.0 is the smallest sdist pinning torch 2.10 (0.15.x have no sdist).
    done, report = trial(repo_root, shared_cache, tmp_path / "t", "vllm==0.17.0",
                         "--stages", "plan", stack=repo_root / CU128)
    assert done.returncode == 0, done.stderr
    assert report is not None
    torch = report["torch"]
    assert torch["verdict"] == "moves" and torch["chosen"] == "2.10.0"
    assert "torch must move 2.9.0 -> 2.10.0" in torch["message"]
    assert "FlashInfer and vLLM together" in torch["message"]
    # torch.version.cuda of the new torch comes from the index (its wheel's metadata).
    assert torch["cuda"]["chosen"] == "12.8" and "nvidia-cuda-runtime" in torch["cuda"]["note"]
    assert torch["companions"]["chosen"] == {"torchvision": "0.25.0", "torchaudio": "2.10.0"}
    rebuild = by_name(report["rebuild"], "package")
    for name in ("flashinfer-python", "vllm"):
        assert "torch 2.9.0 -> 2.10.0" in rebuild[name]["reasons"]
    assert by_name(report["pins"], "item")["flashinfer-python"]["candidate"] == "0.6.4"
    stack = load_stack(tmp_path / "t" / "trial.toml")
    assert (stack.torch.version, stack.torch.cuda) == ("2.10.0", "12.8")
    assert dict(stack.torch.companions) == {"torchvision": "0.25.0", "torchaudio": "2.10.0"}
    assert "torch must move" in (tmp_path / "t" / "trial.md").read_text()


def test_forced_torch_says_what_the_release_expects(repo_root: Path, shared_cache: Path,
                                                    tmp_path: Path) -> None:
    done, report = trial(repo_root, shared_cache, tmp_path / "t", "vllm==0.12.0",
                         "torch==2.10.0", "--stages", "plan", stack=repo_root / CU128)
    assert done.returncode == 0, done.stderr
    assert report is not None
    torch = report["torch"]
    assert torch["verdict"] == "forced" and torch["expected"] == "2.9.0"
    assert "expects torch 2.9.0" in torch["message"]
    assert "CMake only warns" in torch["risk"] and "torchvision==0.24.0" in torch["risk"]
    # Companions pinned for 2.9.0 are not carried over to 2.10.0.
    stack = load_stack(tmp_path / "t" / "trial.toml")
    assert stack.torch.version == "2.10.0" and not stack.torch.companions


@pytest.mark.parametrize(("version", "needle"), [
    ("0.99.0", "vllm 0.99.0 does not exist on https://pypi.org/simple"),
    ("0.15.0", "vllm 0.15.0 has no sdist"),
])
def test_missing_version_or_sdist_is_a_source_error(repo_root: Path, shared_cache: Path,
                                                    tmp_path: Path, version: str,
                                                    needle: str) -> None:
    done, report = trial(repo_root, shared_cache, tmp_path / "t", f"vllm=={version}",
                         "--stages", "plan")
    assert done.returncode == 4, done.stderr
    assert needle in done.stderr
    assert report is None and not (tmp_path / "t" / "trial.toml").exists()
    assert not list((shared_cache / "trials").glob(f"trial-vllm-{version}-*"))


def test_bad_request_is_a_config_error(repo_root: Path, tmp_path: Path) -> None:
    for args in (["vllm"], ["numpy==2.0"], ["torch==2.9.0"], ["vllm==0.12.0", "--stages", "x"]):
        done, _ = trial(repo_root, tmp_path / "cache", tmp_path / "t", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "ERROR (configuration, exit 2)" in done.stderr


def test_promotion_moves_a_carried_over_series(repo_root: Path, shared_cache: Path,
                                               tmp_path: Path) -> None:
    """patches/vllm/0.11.2 holds two patches and patches/vllm/0.12.0 does not exist: the
    trial re-checks the 0.11.2 series, and its promotion commands move the series to 0.12.0,
    drop the patch that is upstream, and give a default stack that plans cleanly. The copy's
    default stack is the cu128 stack (vLLM 0.11.2)."""
    repo = tmp_path / "repo"
    for name in ("build", "patches"):
        shutil.copytree(repo_root / name, repo / name)
    shutil.copy(repo_root / CU128, repo / "build" / "stack.toml")
    shutil.copy(repo_root / "noxfile.py", repo / "noxfile.py")
    series = repo / "patches" / "vllm" / "0.11.2"
    names = ["0001-cmake-fail-on-unsupported-archs.patch", "0002-cutlass-revision-not-cached.patch"]
    for name in names:
        shutil.copy(repo_root / "tests/fixtures/trial/vllm-patches" / name, series / name)
    (series / "series").write_text("\n".join(names) + "\n")
    done = subprocess.run([sys.executable, "-m", "vllm_wheels", "trial", "vllm==0.12.0",
                           "--stages", "plan", "--cache-dir", str(shared_cache)],
                          cwd=repo, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads((repo / "verify/trials/trial-vllm-0.12.0.json").read_text())
    assert load_stack(repo / "build/stacks/trial-vllm-0.12.0.toml").package(
        "vllm").patches == "patches/vllm/0.11.2"  # type: ignore[union-attr]
    assert "patches/vllm/0.12.0 does not exist" in report["patches"][0]["note"]
    commands = report["promotion"]["commands"]
    assert commands[0] == "mv patches/vllm/0.11.2 patches/vllm/0.12.0"
    script = "\n".join(c for c in commands if not c.startswith(("nox ", "git ")))
    subprocess.run(["bash", "-euc", script], cwd=repo, check=True)
    assert (repo / "patches/vllm/0.12.0/series").read_text().split() == [names[0]]
    plan = subprocess.run([sys.executable, "-m", "vllm_wheels", "build-wheels", "--dry-run",
                           "--cache-dir", str(shared_cache)], cwd=repo, text=True,
                          capture_output=True, check=False)
    # Plans cleanly: sources and patches pass. A host without the cu128 stack's CUDA 12
    # nvcc fails the toolchain checks, and a dry run then exits 3 as the build would.
    assert plan.returncode == 0 or (plan.returncode == 3 and "toolchain" in plan.stderr), \
        plan.stderr
    assert f"patches: {names[0]} (applied)" in plan.stdout
