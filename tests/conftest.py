from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    """One pipeline cache for the whole test run (sdists, build venv, compile cache), so
    the expensive things happen once. Override with VLLM_WHEELS_TEST_CACHE."""
    root = _test_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _test_cache_root() -> Path:
    return Path(os.environ.get("VLLM_WHEELS_TEST_CACHE", REPO / ".cache" / "test")).resolve()


@pytest.fixture(scope="session", autouse=True)
def session_build_root() -> Iterator[Path]:
    """The machine-wide build root (cache.build_root: trees of builds with a remote compile
    cache, prefix-map spec files) of the session-wide fixtures' builds, e.g. ci_build: in
    the test cache (made only when a build writes there), never /var/tmp; the same path in
    every session, so the test cache's compile cache keys (the spec file's path) and the
    CMake caches of its reused trees stay valid from one session to the next."""
    root = _test_cache_root() / "build-root"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_WHEELS_BUILD_ROOT", str(root))
        yield root


@pytest.fixture(autouse=True)
def own_build_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test its own build root, inherited by the CLI runs it starts: tests never
    share it, nor leave anything in /var/tmp."""
    root = tmp_path / "build-root"
    monkeypatch.setenv("VLLM_WHEELS_BUILD_ROOT", str(root))
    return root
