"""Helpers shared by the integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CI_STACK = "build/stacks/ci-cuda13.toml"


@dataclass(frozen=True)
class CiBuild:
    out: Path  # wheels/<stack> of this test run
    result: subprocess.CompletedProcess[str]
    build_python: Path  # the build venv's interpreter (torch 2.14.1+cu130)


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """`python -m vllm_wheels ARGS` in cwd; env: changes to this process's environment."""
    return subprocess.run([sys.executable, "-m", "vllm_wheels", *args], cwd=cwd, text=True,
                          capture_output=True, check=False,
                          env={**os.environ, **env} if env else None)


def make_wheel(dest: Path, name: str, version: str, tag: str, files: dict[str, bytes],
               requires: tuple[str, ...] = ()) -> Path:
    """Package real files (e.g. a freshly compiled .so) as a wheel in the standard layout
    (METADATA, WHEEL, RECORD): a wheel 'someone else built', with no build manifest."""
    import base64
    import hashlib
    import zipfile

    dist_info = f"{name}-{version}.dist-info"
    members = dict(files)
    members[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    members[f"{dist_info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: "
                                     f"false\nTag: {tag}\n").encode()
    record = []
    for arcname, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arcname},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    members[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = dest / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in members.items():
            info = zipfile.ZipInfo(arcname)
            info.external_attr = 0o755 << 16 if arcname.endswith(".so") else 0o644 << 16
            zf.writestr(info, data)
    return path


def compile_extension(source: str, module: str, out_dir: Path, *, cxx: bool = False,
                      extra: tuple[str, ...] = ()) -> Path:
    """Compile a CPython extension module with the system compiler (gcc/g++)."""
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    src = out_dir / f"{module}.{'cpp' if cxx else 'c'}"
    src.write_text(source)
    target = out_dir / f"{module}{suffix}"
    compiler = "g++" if cxx else "gcc"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}",
                    str(src), "-o", str(target), *extra], check=True)
    return target


def pypi_wheel(cache: Path, requirement: str, pattern: str, sha256: str | None = None) -> Path:
    """One real wheel from PyPI (`pip download --no-deps`), kept in the test cache so a
    rerun downloads nothing; `pattern` is its file-name glob. With `sha256`, pip takes only
    the file with that hash (--require-hashes), and a cached copy is checked against it."""
    from vllm_wheels.build.sources import sha256_file

    dl = cache / "test-downloads"
    dl.mkdir(parents=True, exist_ok=True)
    if not list(dl.glob(pattern)):
        source = [requirement]
        if sha256 is not None:
            pinned = dl / f".{pattern.replace('*', '_')}.requirements.txt"
            pinned.write_text(f"{requirement} --hash=sha256:{sha256}\n")
            source = ["--require-hashes", "-r", str(pinned)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--disable-pip-version-check", *source, "-d", str(dl)], check=True)
    wheel = next(dl.glob(pattern))
    if sha256 is not None:
        assert sha256_file(wheel) == sha256, f"{wheel} is not the file pinned by sha256 {sha256}"
    return wheel
