"""Helpers for the wheel index tests: tiny but real wheels (built by `python -m build`
with setuptools, then post-processed by the pipeline's own wheelmeta.rewrite_wheel, so
they carry local labels, exact pins on each other and the build manifest), the verify
report stand-in, the CLI and the real server in subprocesses, isolated pip and uv.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from vllm_wheels.build.wheelmeta import rewrite_wheel
from vllm_wheels.verify.report import REPORT_FILENAME, REPORT_SCHEMA_VERSION

# Two builds of the same release for different torch/CUDA stacks, as the pipeline names them.
LABEL_CU128 = "cu128.torch290.sm120"
LABEL_CU130 = "cu130.torch2141.sm120"
VARIANTS = {
    LABEL_CU128: {"torch": {"version": "2.9.0+cu128", "cuda": "12.8"}, "cuda_arch_list": ["12.0"]},
    LABEL_CU130: {"torch": {"version": "2.14.1+cu130", "cuda": "13.0"},
                  "cuda_arch_list": ["12.0"]},
}


@dataclass(frozen=True)
class TinyWheels:
    variants: dict[str, list[Path]]  # label -> [tinyflash, tinyvllm] (tinyvllm pins tinyflash)
    yankme: dict[str, Path]  # "1.0" / "1.1": plain wheels for the yank tests
    spare: Path  # a wheel published by no fixture (concurrency, interrupt tests)

    @property
    def labelled(self) -> list[Path]:
        return [w for ws in self.variants.values() for w in ws]


def _build_project(src: Path, name: str, version: str, out: Path, *,
                   requires_python: str = ">=3.8", module_text: str = "") -> Path:
    project = src / f"{name}-{version}"
    (project / name).mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=77"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"
        requires-python = "{requires_python}"
        """))
    (project / name / "__init__.py").write_text(
        module_text or f'VERSION = "{version}"\n')
    dist = project / "dist"
    # --no-isolation: setuptools is already in the test environment, so nothing is fetched.
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(dist), str(project)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("*.whl")
    out.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(wheel, out / wheel.name))


def build_tiny_wheels(root: Path) -> TinyWheels:
    src, plain = root / "src", root / "plain"
    flash = _build_project(src, "tinyflash", "1.0", plain)
    vllm_ = _build_project(src, "tinyvllm", "1.0", plain)
    variants: dict[str, list[Path]] = {}
    for label, facts in VARIANTS.items():
        out = root / "wheels" / label
        manifest = {"local_label": label, **facts}
        flash_l = rewrite_wheel(flash, out, label=label, pins={}, manifest=manifest)
        vllm_l = rewrite_wheel(vllm_, out, label=label,
                               pins={"tinyflash": f"==1.0+{label}"}, manifest=manifest)
        variants[label] = [flash_l, vllm_l]
    yankme = {v: _build_project(src, "yankme", v, root / "wheels" / "yankme") for v in
              ("1.0", "1.1")}
    spare = _build_project(src, "sparepkg", "2.0", root / "wheels" / "spare")
    return TinyWheels(variants=variants, yankme=yankme, spare=spare)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_verify_report(wheels: Sequence[Path], *, failed: Sequence[Path] = ()) -> Path:
    """STAND-IN for a verify_abi run: writes DIR/verify-abi.json in the documented shape
    (vllm_wheels/verify/report.py, schema_version 1). These tiny wheels carry manifests of
    stacks (torch 2.9.0+cu128, ...) that no runtime here has, so the real verify-abi would
    say "could not check". The real build -> verify_abi -> publish chain is tested in
    test_index_publish.py::test_build_verify_publish_chain_with_the_real_verify_abi."""
    folder = {w.parent for w in wheels}
    assert len(folder) == 1, "one report per wheel folder"
    entries = [{"filename": w.name, "sha256": sha256(w), "passed": w not in failed,
                "facts_from": "manifest",
                "checks": [{"name": "torch-version",
                            "status": "fail" if w in failed else "pass",
                            "summary": "stand-in", "evidence": {}, "fix": ""}]}
               for w in wheels]
    report = folder.pop() / REPORT_FILENAME
    report.write_text(json.dumps({
        "schema_version": REPORT_SCHEMA_VERSION, "tool": "vllm-wheels verify-abi",
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "passed": not failed, "runtime": {"stand_in": True}, "wheels": entries}, indent=2))
    return report


def build_verified_tiny_wheels(where: Path) -> TinyWheels:
    """The tiny wheels, each folder with its (stand-in) passing verify_abi report."""
    built = build_tiny_wheels(where)
    for variant in built.variants.values():
        write_verify_report(variant)
    write_verify_report(list(built.yankme.values()))
    return built


def cli(*args: str | Path, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "vllm_wheels", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"vllm_wheels {args} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str  # .../simple/
    banner: str  # what it printed on start (URL and install commands)
    log: TextIO


def start_server(index: Path, log: Path) -> Server:
    """The real serve-index command on 127.0.0.1, a free port chosen by the kernel."""
    log_handle = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm_wheels", "serve-index", "--index", str(index),
         "--port", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=log_handle, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("  uv pip install"):
            break
    banner = "".join(lines)
    match = re.search(r"index URL: (http://127\.0\.0\.1:\d+/simple/)", banner)
    server = Server(proc, match.group(1) if match else "", banner, log_handle)
    if match is None:
        stop_server(server)
        raise AssertionError(f"serve-index did not start:\n{banner}\n{log.read_text()}")
    return server


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    assert server.proc.stdout is not None
    server.proc.stdout.close()
    server.log.close()


def isolated_env(home: Path) -> dict[str, str]:
    """An environment in which neither pip nor uv reads any configuration or index from
    the machine (this machine's /etc/xdg/pip names extra local indexes)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "PYTHON"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "UV_NO_CONFIG": "1", "HOME": str(home),
                "XDG_CONFIG_HOME": str(home / ".config"), "PIP_NO_CACHE_DIR": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "UV_NO_CACHE": "1"})
    return env


def uv_bin() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


def pip_resolve(python: Path, url: str, requirement: str, env: dict[str, str],
                report: Path) -> dict[str, str]:
    """What pip would install for a requirement: {project: download URL} (pip --report)."""
    subprocess.run([str(python), "-m", "pip", "--isolated", "install", "--dry-run",
                    "--ignore-installed", "--report", str(report), "--index-url", url,
                    requirement], check=True, capture_output=True, text=True, env=env)
    data = json.loads(report.read_text())
    return {item["metadata"]["name"]: item["download_info"]["url"] for item in data["install"]}


def iter_files(root: Path) -> Iterator[Path]:
    yield from sorted(p for p in root.rglob("*") if p.is_file())
