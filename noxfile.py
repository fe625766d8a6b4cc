#!/usr/bin/env -S uv run --script
# /// script
# dependencies = ["nox>=2025.2.9"]
# ///
"""Sessions of the vLLM wheel pipeline. Each one is a thin wrapper over the importable
package in src/vllm_wheels (run `nox -l` to list them):

  build_wheels  the main job: build the stack's wheels into wheels/<stack>/
  publish       add verified wheels to the internal index wheels/index/ (also: serve_index,
                index_list, index_yank, index_mirror, index_root)
  verify_throughput  A/B throughput of our wheels vs the vllm/vllm-openai nightly (GPU)
  trial         upgrade trial: `-- vllm==0.12.0` compares, writes the candidate stack, and
                runs the stages this machine can (build, abi; throughput on a GPU)
  tests         unit + integration tests (real sdists, real nvcc; minutes on 2 cores)
  lint          ruff, mypy, hadolint over docker/, docker/ vs stack check
  runtime_image the serving image from wheels/<stack>/ (our wheels + exact torch, ABI-checked)
  update_images look up base image digests, record them in docker/versions.toml (tag: update)
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
from pathlib import Path

import nox
import nox.command

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests"]


@nox.session(python=False)
def build_wheels(session: nox.Session) -> None:
    """Build vLLM and FlashInfer against the stack's one pinned torch (`-- --help`)."""
    # python=False: the pipeline creates its own build venv from the stack; this session
    # only needs the package importable, which an editable install in a small venv gives.
    _run_cli(session, "build-wheels")


@nox.session(python=False)
def verify_abi(session: nox.Session) -> None:
    """Check wheels against a runtime before import (`-- --wheels D --python P --json F`)."""
    _run_cli(session, "verify-abi")


@nox.session(python=False, default=False)
def verify_throughput(session: nox.Session) -> None:
    """A/B the custom wheels against the vLLM nightly image on a GPU (`-- --help`)."""
    _run_cli(session, "verify-throughput", extras=("throughput",))


@nox.session(python=False, default=False)
def trial(session: nox.Session) -> None:
    """Upgrade trial: what moving to another vLLM means, then build/abi (`-- vllm==0.12.0`)."""
    _run_cli(session, "trial")


@nox.session(python=False)
def publish(session: nox.Session) -> None:
    """Add verified wheels (default wheels/<stack>/) to the wheel index wheels/index/."""
    _run_cli(session, "publish")


@nox.session(python=False)
def serve_index(session: nox.Session) -> None:
    """Serve the wheel index over HTTP; prints the pip and uv install commands."""
    _run_cli(session, "serve-index")


@nox.session(python=False)
def index_list(session: nox.Session) -> None:
    """List the wheel index: versions, local labels, torch/CUDA/arch needed, yanked."""
    _run_cli(session, "index-list")


@nox.session(python=False)
def index_yank(session: nox.Session) -> None:
    """Yank (`-- FILE --reason TEXT`) or un-yank (`-- FILE --undo`) index files."""
    _run_cli(session, "index-yank")


@nox.session(python=False)
def index_root(session: nox.Session) -> None:
    """Print the index root for this machine's GPU (`-- --base-url URL [--stack F]`)."""
    _run_cli(session, "index-root")


@nox.session(python=False)
def index_mirror(session: nox.Session) -> None:
    """Copy companion wheels (e.g. torch's CUDA build) into the index by pinned sha256."""
    _run_cli(session, "index-mirror")


@nox.session(python=False)
def index_server_config(session: nox.Session) -> None:
    """Write nginx and object-storage configuration for the index (`-- --out DIR`)."""
    _run_cli(session, "index-server-config")


PIPELINE_VENV = Path(".nox/_pipeline")
# What the editable install in PIPELINE_VENV was made from. The package itself is
# editable, so only pyproject.toml (dependencies, entry points) and the extras matter.
INSTALL_MARKER = PIPELINE_VENV / ".vllm-wheels-install.json"


def _ensure_pipeline_venv(session: nox.Session, extras: tuple[str, ...]) -> Path:
    """The venv the pipeline sessions share, created and installed into only when
    pyproject.toml or the extras asked for changed (a fresh venv + `pip install -e .`
    costs 4-15 s per call; a no-op session should not)."""
    python = PIPELINE_VENV / "bin" / "python"
    digest = hashlib.sha256(Path("pyproject.toml").read_bytes()).hexdigest()
    try:
        marker = json.loads(INSTALL_MARKER.read_text())
    except (OSError, ValueError):
        marker = {}
    have = set(marker.get("extras", [])) if marker.get("pyproject_sha256") == digest else None
    if python.exists() and have is not None and set(extras) <= have:
        return python
    if not python.exists():
        session.run("python3", "-m", "venv", str(PIPELINE_VENV), external=True, silent=True)
    # Keep the extras installed before, so sessions that need different ones do not take
    # turns reinstalling.
    wanted = sorted(set(extras) | (have or set()))
    target = f".[{','.join(wanted)}]" if wanted else "."
    session.run(str(python), "-m", "pip", "install", "-q", "-e", target, external=True,
                silent=True)
    tmp = INSTALL_MARKER.with_name(INSTALL_MARKER.name + ".tmp")
    tmp.write_text(json.dumps({"pyproject_sha256": digest, "extras": wanted}) + "\n")
    os.replace(tmp, INSTALL_MARKER)  # atomic: a killed install leaves no marker
    return python


def _run_cli(session: nox.Session, command: str, extras: tuple[str, ...] = ()) -> None:
    python = _ensure_pipeline_venv(session, extras)
    try:
        session.run(str(python), "-m", "vllm_wheels", command, *session.posargs, external=True)
    except nox.command.CommandFailed as exc:
        # nox exits 1 for every failed session; name the pipeline's own code, and where a
        # script gets it.
        code = getattr(exc, "return_code", None)
        if code is None:
            raise
        kinds = {c: k for k, c in runpy.run_path("src/vllm_wheels/errors.py")["EXIT_CODES"].items()}
        session.error(f"vllm-wheels {command} exited with code {code}"
                      f"{f' ({kinds[code]})' if code in kinds else ''}; nox exits 1 for any "
                      f"failure: scripts get the code from `vllm-wheels {command} ...` "
                      "(docs/cli.md: 'For CI and automation')")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Unit tests, then integration tests (pass pytest arguments after --)."""
    session.install("-e", ".[test]")
    args = session.posargs or []
    # The unit tier is independent tests: one worker per core (pytest-xdist) keeps it fast.
    session.run("pytest", "tests/unit", "-n", "auto", *args)
    session.run("pytest", "tests/integration", "--timeout=3000", *args)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict, hadolint on every Dockerfile, docker/ vs the stack."""
    session.install("-e", ".[lint,throughput]")  # throughput: its typed deps for mypy
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("mypy")
    dockerfiles = sorted(str(p) for p in Path("docker").glob("*Dockerfile*")
                         if not p.name.endswith(".dockerignore"))
    session.run("hadolint", "--config", ".hadolint.yaml", *dockerfiles)
    session.run("python", "-m", "vllm_wheels", "check-images")


@nox.session(python=False)
def runtime_image(session: nox.Session) -> None:
    """Build the runtime image from wheels/<stack>/ (`-- --stack F`, `--index URL`, `--dry-run`)."""
    _run_cli(session, "runtime-image")


@nox.session(python=False, default=False, tags=["update"])
def update_images(session: nox.Session) -> None:
    """Record base image digests from the registry; sync Dockerfile ARG defaults."""
    _run_cli(session, "update-images")


@nox.session(python="3.11", default=False, tags=["bench"])
def bench_build(session: nox.Session) -> None:
    """Cold, warm local, warm remote, one-file patch builds: hit rates, wall, CPU (`-- --help`)."""
    session.install("-e", ".")
    session.run("python", "tools/bench_build.py", *session.posargs)


@nox.session(python="3.11", default=False, tags=["bench"])
def bench_verify(session: nox.Session) -> None:
    """Time verify_abi (cold, warm, static only): `-- --wheels DIR --python PY`."""
    session.install("-e", ".")
    session.run("python", "tools/bench_verify.py", *session.posargs)


@nox.session(python="3.11", default=False, tags=["bench"])
def bench_index(session: nox.Session) -> None:
    """Publish timings, then serve-index vs nginx under wrk (`-- --part serve`, `--rounds`)."""
    # Serving needs Debian's wrk (and nginx for the comparison): apt-get install -y wrk nginx.
    session.install("-e", ".")
    session.run("python", "tools/bench_index.py", *session.posargs)
