"""A one-package stack with sccache and `build-wheels --dry-run` on it through the
console script: what the remote compile cache tests (unit: URLs, credentials, an
unreachable port; integration: a real redis-server) run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tiny_stacks import stack_toml

from vllm_wheels.build import remote_cache

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
SECRET = "hunter2-not-for-logs"


def project(root: Path, build_extra: str = "") -> Path:
    (root / "pkg").mkdir()
    (root / "pkg" / "setup.py").write_text(
        'from setuptools import setup\nsetup(name="pkg", version="0.1.0")\n')
    stack = root / "stack.toml"
    stack.write_text(stack_toml("rc", """
[packages.pkg]
source = { path = "pkg", version = "0.1.0" }
""", python=PY, build=f'compile_cache = "sccache"\n{build_extra}\n'))
    return stack


def dry_run(root: Path, stack: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in os.environ.items() if k != remote_cache.ENV_VAR}
    merged.update(env or {})
    return subprocess.run([sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack",
                           str(stack), "--cache-dir", str(root / "cache"), "--dry-run",
                           "--json", str(root / "plan.json"), *args],
                          cwd=root, env=merged, text=True, capture_output=True, timeout=120,
                          check=False)


def logs(root: Path) -> str:
    return "".join(p.read_text() for p in (root / "cache" / "logs").glob("*.log"))
