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
    root = Path(os.environ.get("VLLM_WHEELS_TEST_CACHE", REPO / ".cache" / "test"))
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


@pytest.fixture(scope="session", autouse=True)
def session_build_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The machine-wide build root (cache.build_root: trees of builds with a remote compile
    cache, prefix-map spec files) of the session-wide fixtures' builds, e.g. ci_build:
    under pytest's tmp directory, never /var/tmp."""
    root = tmp_path_factory.mktemp("build-root")
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
