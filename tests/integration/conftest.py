"""Session-wide fixtures of the integration tests: the CUDA 13 test stack built once
(its wheels and build venv are what verify_abi and later stages check), and a second,
different real torch (2.13.0 CPU) to check them against."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from ci_support import CI_STACK, CiBuild, cli
from index_support import isolated_env


@pytest.fixture(scope="session")
def ci_build(repo_root: Path, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> CiBuild:
    out = tmp_path_factory.mktemp("wheels")
    result = cli("build-wheels", "--stack", CI_STACK, "--cache-dir", str(shared_cache),
                 "--output-dir", str(out), cwd=repo_root)
    print(result.stdout[-3000:], result.stderr[-6000:])
    assert result.returncode == 0, result.stderr[-4000:]
    python = next((shared_cache / "venvs").glob("py3.11-torch2.14.1-cu130-*/bin/python"))
    return CiBuild(out, result, python)


# One venv serves as "another real torch" for verify_abi (2.13.0 CPU, not the build's
# 2.14.1 CUDA 13) and as the loopback model server of the throughput tests: one copy of
# torch 2.13.0 instead of two saves ~0.9 GB of CI disk.
RUNTIME_REQUIREMENTS = ("torch==2.13.0", "transformers[serving]==5.24.0")


@pytest.fixture(scope="session")
def torch_cpu_213(shared_cache: Path) -> Path:
    """The python of a venv with the real torch 2.13.0 CPU wheel (pip takes it from this
    machine's local file; uv would fetch a CUDA torch from PyPI, see README), cached by its
    requirements."""
    key = hashlib.sha256("\n".join(RUNTIME_REQUIREMENTS).encode()).hexdigest()[:12]
    venv = shared_cache / "test-venvs" / f"torch-2.13.0-cpu-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *RUNTIME_REQUIREMENTS], check=True)
        (venv / ".complete").write_text("\n".join(RUNTIME_REQUIREMENTS) + "\n")
    return python


# The index's install clients (test_index_clients, test_index_nginx): a HOME and pip
# configuration of their own, and a plain venv for pip, per test module.
@pytest.fixture(scope="module")
def client_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return isolated_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def pip_venv(tmp_path_factory: pytest.TempPathFactory, client_env: dict[str, str]) -> Path:
    venv = tmp_path_factory.mktemp("pipvenv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=client_env)
    return venv / "bin" / "python"
