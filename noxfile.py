#!/usr/bin/env -S uv run --script
# /// script
# dependencies = ["nox>=2025.2.9"]
# ///
"""Sessions of the vLLM wheel pipeline. Each one is a thin wrapper over the importable
package in src/vllm_wheels (run `nox -l` to list them):

  build_wheels  the main job: build the stack's wheels into wheels/<stack>/
  tests         unit + integration tests (real sdists, real nvcc; minutes on 2 cores)
  lint          ruff and mypy over src/
"""

from __future__ import annotations

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests"]


@nox.session(python=False)
def build_wheels(session: nox.Session) -> None:
    """Build vLLM and FlashInfer against the stack's one pinned torch (`-- --help`)."""
    # python=False: the pipeline creates its own build venv from the stack; this session
    # only needs the package importable, which an editable install in a small venv gives.
    _run_cli(session, "build-wheels")


def _run_cli(session: nox.Session, command: str) -> None:
    venv = ".nox/_pipeline"
    session.run("python3", "-m", "venv", venv, external=True, silent=True)
    session.run(f"{venv}/bin/python", "-m", "pip", "install", "-q", "-e", ".", external=True,
                silent=True)
    session.run(f"{venv}/bin/python", "-m", "vllm_wheels", command, *session.posargs,
                external=True)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Unit tests, then integration tests (pass pytest arguments after --)."""
    session.install("-e", ".[test]")
    args = session.posargs or []
    session.run("pytest", "tests/unit", *args)
    session.run("pytest", "tests/integration", "--timeout=3000", *args)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (style, imports, bugbear) and mypy --strict over the package."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("mypy")


@nox.session(python="3.11", default=False, tags=["bench"])
def bench_build(session: nox.Session) -> None:
    """Time cold, no-change and one-file-change builds of the test stack; cache hit rates."""
    session.install("-e", ".")
    session.run("python", "tools/bench_build.py", *session.posargs)
