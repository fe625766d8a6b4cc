from __future__ import annotations

import os
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
