"""The same inputs give the same bytes whether the sdist was downloaded now or found in the
cache: what a pypi source records (FetchedSource, the wheel manifest's `source`) is the
same in both cases. A real sdist (setuptools via `python -m build`) served by a real PEP
503 index on loopback; the end-to-end check on FlashInfer's real sdist is
tests/integration/test_reproducible_build.py::test_dry_run_then_build_equals_a_direct_build_in_another_cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import subprocess
import sys
from pathlib import Path

from loopback import serve_on_loopback
from tiny_stacks import stack_toml

from vllm_wheels.build import sources
from vllm_wheels.build.stack import load_stack
from vllm_wheels.cache import Cache
from vllm_wheels.log import Reporter


def _sdist(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tinysrc"\nversion = "0.1.0"\n')
    (project / "tinysrc.py").write_text("VALUE = 1\n")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir",
                    str(tmp_path / "dist"), str(project)], check=True, capture_output=True)
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    return sdist


def test_a_downloaded_and_a_cached_sdist_record_the_same_source(tmp_path: Path) -> None:
    sdist = _sdist(tmp_path)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    (tmp_path / "simple" / "tinysrc").mkdir(parents=True)
    (tmp_path / "simple" / "tinysrc" / "index.html").write_text(
        f'<a href="../../dist/{sdist.name}#sha256={digest}">{sdist.name}</a>\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with serve_on_loopback(handler) as url:
        stack_file = tmp_path / "stack.toml"
        stack_file.write_text(stack_toml("cs", f"""
[packages.tinysrc]
source = {{ pypi = "0.1.0", sha256 = "{digest}", index = "{url}/simple" }}
"""))
        spec = load_stack(stack_file).packages[0]
        log = Reporter(None, stream=io.StringIO())
        cold = sources.fetch(spec, Cache(tmp_path / "cache-a"), tmp_path, log)  # downloads
        warm = sources.fetch(spec, Cache(tmp_path / "cache-a"), tmp_path, log)  # cache hit
        other = sources.fetch(spec, Cache(tmp_path / "cache-b"), tmp_path, log)  # downloads
    assert cold == warm  # before: url was the download URL cold, None warm
    assert (other.url, other.sha256, other.commit) == (cold.url, cold.sha256, cold.commit)
    assert cold.sha256 == digest and cold.archive is not None and cold.archive.is_file()
