"""A source is what the stack says: git and path sources with a stated version are
checked against their own pyproject.toml, sdist file names against name and version.
Uses the tiny-cuda-ext fixture and a real local git repository (no network)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from vllm_wheels.build.prepare import prepare_package
from vllm_wheels.build.sources import sdist_filename_disagreement
from vllm_wheels.build.stack import load_stack
from vllm_wheels.cache import Cache
from vllm_wheels.errors import SourceError
from vllm_wheels.log import Reporter

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_cuda_ext"
HEADER = ('schema_version = 1\nname = "t"\npython = "3.11"\ncuda_arch_list = "12.0"\n'
          '[torch]\nversion = "2.14.1"\ncuda = "13.0"\n[cuda_toolkit]\nversion = ">=13"\n')


@pytest.fixture
def reporter(tmp_path: Path):  # type: ignore[no-untyped-def]
    rep = Reporter(tmp_path / "log", stream=io.StringIO())
    yield rep
    rep.close()


def _spec(tmp_path: Path, name: str, source: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "stack.toml"
    path.write_text(HEADER + f'[packages."{name}"]\nbuilder = "setuptools"\nsource = {source}\n')
    return load_stack(path).packages[0]


def test_path_source_version_must_match_pyproject(tmp_path: Path, repo_root: Path,
                                                  reporter: Reporter) -> None:
    cache = Cache(tmp_path / "cache")
    good = _spec(tmp_path, "tiny_cuda.ext", f'{{ path = "{FIXTURE}", version = "0.1.0" }}')
    assert (prepare_package(good, cache, repo_root, reporter).tree / "setup.py").is_file()
    bad = _spec(tmp_path, "tiny-cuda-ext", f'{{ path = "{FIXTURE}", version = "0.2.0" }}')
    with pytest.raises(SourceError) as info:
        prepare_package(bad, cache, repo_root, reporter)
    assert info.value.exit_code == 4
    assert "version: the stack says 0.2.0, pyproject.toml says 0.1.0" in str(info.value)
    assert not list(cache.sources.glob("tiny-cuda-ext-0.2.0-*"))


def test_git_source_name_must_match_pyproject(tmp_path: Path, repo_root: Path,
                                              reporter: Reporter) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURE, repo)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, text=True,
                            capture_output=True).stdout.strip()
    cache = Cache(tmp_path / "cache")
    bad = _spec(tmp_path, "other-ext",
                f'{{ git = "{repo}", commit = "{commit}", version = "0.1.0" }}')
    with pytest.raises(SourceError) as info:
        prepare_package(bad, cache, repo_root, reporter)
    assert "name: the stack says other-ext, pyproject.toml says tiny-cuda-ext" in str(info.value)
    # Without a stated version there is nothing to compare (the commit is the identity).
    unversioned = _spec(tmp_path, "other-ext", f'{{ git = "{repo}", commit = "{commit}" }}')
    assert prepare_package(unversioned, cache, repo_root, reporter).tree.is_dir()


@pytest.mark.parametrize(("filename", "name", "version", "expected"), [
    ("flashinfer_python-0.5.2.tar.gz", "flashinfer-python", "0.5.2", None),
    ("vllm-0.11.2.tar.gz", "vLLM", "0.11.2.0", None),  # names canonical, versions normalized
    ("vllm-0.11.2.tar.gz", "vllm", "0.11.99", "vllm-0.11.2.tar.gz (vllm 0.11.2)"),
    ("vllm-0.11.2.tar.gz", "flashinfer-python", "0.11.2", "vllm-0.11.2.tar.gz (vllm 0.11.2)"),
    ("vllm.tar.gz", "vllm", "0.11.2", "vllm.tar.gz, not an sdist file name (NAME-VERSION.tar.gz)"),
])
def test_sdist_filename_names_its_release(filename: str, name: str, version: str,
                                          expected: str | None) -> None:
    assert sdist_filename_disagreement(filename, name, version) == expected
