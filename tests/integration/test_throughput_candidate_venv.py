"""The default candidate arm of verify_throughput: a venv made from a stack's wheels,
for real (python -m venv, pip with the stack's torch pin, the wheels, verify_abi), with a
stack whose torch is this machine's local 2.13.0 CPU wheel so that nothing large is
downloaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ci_support import CiBuild, make_wheel

from vllm_wheels.build.stack import load_stack
from vllm_wheels.errors import AbiMismatchError
from vllm_wheels.log import Reporter
from vllm_wheels.verify.throughput.candidate import MARKER, ensure_candidate_venv

pytestmark = [pytest.mark.network, pytest.mark.timeout(900)]


def test_candidate_venv_from_the_stacks_wheels(repo_root: Path, tmp_path: Path) -> None:
    text = (repo_root / "build" / "stacks" / "ci-cuda13.toml").read_text()
    text = text.replace('version = "2.14.1"', 'version = "2.13.0"', 1)
    stack_file = tmp_path / "stack.toml"
    stack_file.write_text(text)
    stack = load_stack(stack_file)
    assert stack.torch.version == "2.13.0" and stack.python == "3.11"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "servedpkg", "1.0", "py3-none-any",
               {"servedpkg/__init__.py": b"VALUE = 42\n"}, requires=("packaging>=20",))
    venv = ensure_candidate_venv(stack, wheels, Reporter(None))
    python = venv / "bin" / "python"
    out = subprocess.run([str(python), "-c", "import torch, servedpkg, packaging; "
                          "print(torch.__version__, servedpkg.VALUE)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2.13.0+cpu", "42"]
    # Built beside its final path and renamed: scripts must point at the final venv.
    pip = subprocess.run([str(venv / "bin" / "pip"), "--version"], capture_output=True,
                         text=True, check=False)
    assert pip.returncode == 0 and str(venv) in pip.stdout
    assert json.loads((venv / "verify-abi.json").read_text())["passed"] is True
    assert not list(wheels.glob(".venv.tmp-*"))
    marker = json.loads((venv / MARKER).read_text())
    assert list(marker["wheels"]) == ["servedpkg-1.0-py3-none-any.whl"]
    assert marker["verify_abi"] == "pass"
    # Same wheels: reused as is (a passed venv is not checked again).
    before = (venv / MARKER).stat().st_mtime_ns
    assert ensure_candidate_venv(stack, wheels, Reporter(None)) == venv
    assert (venv / MARKER).stat().st_mtime_ns == before

    def prepare() -> subprocess.CompletedProcess[str]:
        # What the trial runs: --stack and --wheels name the venv (--wheels DIR -> DIR/venv).
        proc = subprocess.run([sys.executable, "-m", "vllm_wheels", "verify-throughput",
                               "--prepare-candidate", "--stack", str(stack_file),
                               "--wheels", str(wheels)], cwd=repo_root, capture_output=True,
                              text=True, timeout=600, check=False)
        print(proc.stderr[-4000:])
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip() == f"venv:{venv}"
        return proc

    proc = prepare()
    assert "reused (same wheels)" in proc.stderr and "checking again" not in proc.stderr
    assert (venv / MARKER).stat().st_mtime_ns == before

    # A changed wheel set: rebuilt. The second wheel requires torch without a version, so
    # verify_abi cannot tell which torch it needs: "unknown", kept with a warning...
    make_wheel(wheels, "torchuser", "1.0", "py3-none-any",
               {"torchuser/__init__.py": b"import torch\n"}, requires=("torch",))
    proc = prepare()
    assert "creating" in proc.stderr
    marker = json.loads((venv / MARKER).read_text())
    assert sorted(marker["wheels"]) == ["servedpkg-1.0-py3-none-any.whl",
                                        "torchuser-1.0-py3-none-any.whl"]
    assert marker["verify_abi"] == "unknown"
    assert "WARNING: verify_abi could not check everything" in proc.stderr
    subprocess.run([str(python), "-c", "import torchuser"], check=True)
    # ... and checked again each time it is reused.
    proc = prepare()
    assert "reused (same wheels)" in proc.stderr
    assert "verify_abi was unknown; checking again" in proc.stderr
    assert "WARNING: verify_abi could not check everything" in proc.stderr


def test_candidate_venv_refused_when_its_wheels_fail_verify_abi(
        ci_build: CiBuild, repo_root: Path, shared_cache: Path, tmp_path: Path) -> None:
    """The test stack's extension as the raw wheel setuptools made (no pins, no manifest),
    built against torch 2.14.1+cu130, in a venv whose stack pins the 2.13.0 CPU build: it
    installs, but verify_abi finds c10::cuda missing, so the venv is not kept."""
    raw = next((shared_cache / "staging" / "ci-cuda13" / "tiny-cuda-ext").glob("*.whl"))
    text = (repo_root / "build" / "stacks" / "ci-cuda13.toml").read_text()
    stack_file = tmp_path / "stack.toml"
    stack_file.write_text(text.replace('version = "2.14.1"', 'version = "2.13.0"', 1))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / raw.name).write_bytes(raw.read_bytes())
    with pytest.raises(AbiMismatchError) as caught:
        ensure_candidate_venv(load_stack(stack_file), wheels, Reporter(None))
    assert "c10::cuda::getCurrentCUDAStream" in caught.value.what
    assert not (wheels / "venv").exists()
