"""Offline source bundles and the disconnected vLLM configure on the real CUDA 13 test
stack: its bundle exported from the real sdists (vLLM 0.11.2, FlashInfer 0.5.2) and the
STAND-IN externals of tests/fixtures/externals, built again from the bundle alone with
the network closed, refused when a byte of it changed; and CMake's own trace of vLLM's
configure checked against the pipeline's discovery of its external sources.

Each test reuses the session's build venv (`--build-venv`): the venv is not what these
tests are about, and creating another costs 6 GB and ten minutes."""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_support import CI_STACK, CiBuild, cli

from vllm_wheels.build import plan as build_plan
from vllm_wheels.build.fetchcontent import TRACE_FILENAME, discover, read_trace
from vllm_wheels.build.prepare import PreparedPackage
from vllm_wheels.build.sources import sha256_file
from vllm_wheels.build.stack import load_stack
from vllm_wheels.cache import Cache
from vllm_wheels.log import Reporter

pytestmark = [pytest.mark.network, pytest.mark.compile]

VLLM_SDIST_SHA = "496d15bb64ca0fe73adbc57a93b29f4671fa12404c09e0ba02f777bfe60af671"
FLASHINFER_SDIST_SHA = "99d097a28be1e98c7f85e4a767e9e9a4794374f9318c27db14d21e367149063f"

# Every way a process here could reach an index or a repository, closed: proxies on a
# closed local port (pip, git, CMake's downloads honour them) and pip told not to look.
NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "ALL_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
              "https_proxy": "http://127.0.0.1:9", "all_proxy": "http://127.0.0.1:9",
              "NO_PROXY": "", "no_proxy": "", "PIP_NO_INDEX": "1",
              "PIP_CONFIG_FILE": "/dev/null", "GIT_TERMINAL_PROMPT": "0"}


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = cli(*args, cwd=cwd, env=env)
    print(f"[{time.monotonic() - started:.0f}s] build-wheels {' '.join(args[:2])} ...: exit "
          f"{result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def build_venv(ci_build: CiBuild) -> Path:
    return ci_build.build_python.parent.parent


@pytest.fixture(scope="module")
def exported(ci_build: CiBuild, repo_root: Path, shared_cache: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The CI stack's bundle in parts of at most 5 MiB (after the session's build, so the
    sources are in the shared cache and nothing is downloaded twice)."""
    dest = tmp_path_factory.mktemp("bundle") / "ci-bundle"
    result = cli("build-wheels", "--stack", CI_STACK, "--cache-dir", str(shared_cache),
                 "--export-bundle", str(dest), "--bundle-part-size", "5M", cwd=repo_root)
    print(result.stdout[-2000:], result.stderr[-4000:])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Build from it with no network: build-wheels --bundle" in result.stderr
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


def _lock(bundle_dir: Path) -> dict[str, object]:
    locks = sorted(bundle_dir.glob("part-*/bundle-lock.json"))
    assert locks, list(bundle_dir.iterdir())
    assert len({p.read_bytes() for p in locks}) == 1  # every part carries the same lock
    data: dict[str, object] = json.loads(locks[0].read_text())
    return data


def test_export_locks_the_real_sources(exported: Path, repo_root: Path, shared_cache: Path,
                                       tmp_path: Path) -> None:
    lock = _lock(exported)
    files = {e["path"]: e for e in lock["files"]}  # type: ignore[attr-defined]
    sdists = lock["sdists"]
    assert sdists["vllm"]["sha256"] == VLLM_SDIST_SHA  # type: ignore[index]
    assert sdists["vllm"]["filename"] == "vllm-0.11.2.tar.gz"  # type: ignore[index]
    assert sdists["flashinfer-python"]["sha256"] == FLASHINFER_SDIST_SHA  # type: ignore[index]
    assert files["sdists/vllm-0.11.2.tar.gz"]["sha256"] == VLLM_SDIST_SHA
    assert files["sdists/flashinfer_python-0.5.2.tar.gz"]["sha256"] == FLASHINFER_SDIST_SHA
    assert files["files/build/stacks/ci-cuda13.toml"]["kind"] == "stack"
    for patch in (repo_root / "patches/vllm/0.11.2-torch2.14").iterdir():
        entry = files[f"files/patches/vllm/0.11.2-torch2.14/{patch.name}"]
        assert entry["kind"] == "patch" and entry["sha256"] == sha256_file(patch)
    assert files["files/tests/fixtures/tiny_cuda_ext/setup.py"]["kind"] == "path-source"
    externals = lock["externals"]["vllm"]  # type: ignore[index]
    # The three STAND-INs as deterministic archives; CUTLASS comes from FlashInfer's sdist.
    for name in ("vllm-flash-attn", "flashmla", "qutlass"):
        assert externals[name]["file"] == f"externals/vllm/{name}.tar.gz"
        assert externals[name]["origin"] == "override:path"
        assert files[f"externals/vllm/{name}.tar.gz"]["kind"] == "external"
    assert externals["cutlass"]["file"] is None
    assert externals["cutlass"]["origin"] == "from-source:flashinfer-python"
    discovered = {e.name for e in discover(_vllm_tree(repo_root, shared_cache, tmp_path))
                  if e.device == "cuda"}
    assert set(externals) == discovered

    # Parts of at most 5 MiB (each with its lock), the sdists cut into chunks, and every
    # file of the lock in them whole or in pieces.
    for part in lock["parts"]:  # type: ignore[attr-defined]
        assert part["bytes"] <= 5 * 1024 * 1024
        on_disk = sum(f.stat().st_size for f in (exported / part["name"]).rglob("*")
                      if f.is_file())
        assert on_disk <= 5 * 1024 * 1024
    assert len(list(exported.rglob("vllm-0.11.2.tar.gz.chunk-*"))) >= 2
    whole = hashlib.sha256()
    for chunk in sorted(exported.rglob("vllm-0.11.2.tar.gz.chunk-*"), key=lambda p: p.name):
        whole.update(chunk.read_bytes())
    assert whole.hexdigest() == VLLM_SDIST_SHA


def _vllm_tree(repo_root: Path, shared_cache: Path, tmp_path: Path) -> Path:
    return _vllm_prep(repo_root, shared_cache, tmp_path).tree


def _vllm_prep(repo_root: Path, shared_cache: Path, tmp_path: Path
               ) -> PreparedPackage:
    """The prepared (patched) vLLM 0.11.2 tree the session's build used: the same plan the
    pipeline makes, over the shared cache (nothing is unpacked again)."""
    plan = build_plan.make_plan(load_stack(repo_root / CI_STACK), repo_root=repo_root,
                              cache=Cache(shared_cache), output_dir=tmp_path / "unused",
                              log_path=tmp_path / "plan.log",
                              reporter=Reporter(None, stream=io.StringIO()),
                              fetch_externals=False, only=["vllm"])
    return next(p for p in plan.packages if p.spec.name == "vllm")


def test_offline_build_from_the_bundle(exported: Path, ci_build: CiBuild,
                                       tmp_path: Path) -> None:
    """The whole stack built from the bundle alone, in a new cache, from a directory
    outside the repository, with every network path closed."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    out = tmp_path / "wheels"
    result = run_cli("build-wheels", "--bundle", str(exported), "--cache-dir",
                     str(tmp_path / "cache"), "--build-venv", str(build_venv(ci_build)),
                     "--output-dir", str(out), cwd=workdir, env=NO_NETWORK)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "files verified by sha256" in result.stderr
    built = sorted(p.name for p in out.glob("*.whl"))
    assert built == sorted(p.name for p in ci_build.out.glob("*.whl"))
    assert len(built) == 2  # the fixture and FlashInfer; vLLM is configure + 1 TU
    # The sources came from the bundle: sdists placed in the new cache by sha256, the
    # STAND-IN externals unpacked from the bundle's archives.
    cache = tmp_path / "cache"
    assert (cache / "downloads/sha256" / VLLM_SDIST_SHA[:2] / VLLM_SDIST_SHA).is_dir()
    assert len(list((cache / "externals/bundled").iterdir())) == 3
    trees = list((cache / "src").glob("vllm-0.11.2-*"))
    assert len(trees) == 1
    # CMake's own record: every external from the bundle's archives (CUTLASS from the
    # FlashInfer sdist of the bundle), none downloaded.
    traced = read_trace(next(trees[0].glob(f"build/temp.*/{TRACE_FILENAME}")))
    sources = {t.name: t.source_dir for t in traced}
    assert all(not t.downloads for t in traced)
    for name in ("vllm-flash-attn", "flashmla", "qutlass"):
        assert sources[name].startswith(str(cache / "externals/bundled")), sources
    assert sources["cutlass"].startswith(str(cache / "src" / "flashinfer-python-0.5.2-"))
    assert not list(workdir.iterdir())  # nothing written where it ran


def test_tampered_bundle_is_refused(exported: Path, ci_build: CiBuild, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    # Flip one byte in the middle of a chunk of the vLLM sdist.
    chunk = sorted(copy.rglob("vllm-0.11.2.tar.gz.chunk-*"), key=lambda p: p.name)[1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x20
    chunk.write_bytes(bytes(data))
    out = tmp_path / "wheels"
    result = run_cli("build-wheels", "--bundle", str(copy), "--cache-dir",
                     str(tmp_path / "cache"), "--build-venv", str(build_venv(ci_build)),
                     "--output-dir", str(out), cwd=tmp_path, env=NO_NETWORK)
    assert result.returncode == 4, result.stderr[-4000:]
    assert "changed: sdists/vllm-0.11.2.tar.gz" in result.stderr
    assert f"expected sha256 {VLLM_SDIST_SHA}" in result.stderr
    assert not out.exists() or not list(out.iterdir())
    assert not (tmp_path / "cache" / "src").exists()  # nothing unpacked, nothing built


def test_cmake_trace_agrees_with_discovery(ci_build: CiBuild, repo_root: Path,
                                           shared_cache: Path, tmp_path: Path) -> None:
    """CMake's own record of vLLM 0.11.2's configure (the session's build) declares exactly
    the externals the discovery found, and every one from a local directory."""
    prep = _vllm_prep(repo_root, shared_cache, tmp_path)
    trace = next(prep.tree.glob(f"build/temp.*/{TRACE_FILENAME}"))
    traced = read_trace(trace)
    discovered = {e.name for e in discover(prep.tree) if e.device == "cuda"}
    assert {t.name for t in traced} == discovered
    assert discovered >= {"cutlass", "vllm-flash-attn", "flashmla", "qutlass"}
    # ... each from the very directory the plan resolved for it, none downloaded.
    planned = {e.source.name: str(e.directory) for e in prep.externals}
    assert {t.name: t.source_dir for t in traced} == planned
    for call in traced:
        assert not call.downloads, call


HIDDEN_URL = "https://github.com/example/hiddenthing.git"


def _hiding_patch(tree: Path) -> str:
    """A patch to vLLM's CMakeLists.txt declaring one more external in a way the discovery
    cannot read: the arguments come from a list variable, so no GIT_REPOSITORY token
    stands in the call (CMake expands it, and its trace shows it)."""
    before = (tree / "CMakeLists.txt").read_text().splitlines(keepends=True)
    anchor = next(i for i, line in enumerate(before)
                  if line.startswith('message(STATUS "FetchContent base directory'))
    added = ['string(CONCAT _hidden_url "https://github.com/" "example/hiddenthing.git")\n',
             "set(_hidden_args GIT_REPOSITORY ${_hidden_url} GIT_TAG v9.9.9)\n",
             "FetchContent_Declare(hiddenthing ${_hidden_args})\n",
             "FetchContent_MakeAvailable(hiddenthing)\n"]
    after = before[:anchor + 1] + added + before[anchor + 1:]
    return "".join(difflib.unified_diff(before, after, "a/CMakeLists.txt", "b/CMakeLists.txt"))


def test_configure_names_an_external_hidden_from_the_plan(
        ci_build: CiBuild, repo_root: Path, shared_cache: Path, tmp_path: Path) -> None:
    tree = _vllm_tree(repo_root, shared_cache, tmp_path)
    patch_dir = tmp_path / "patches"
    shutil.copytree(repo_root / "patches/vllm/0.11.2-torch2.14", patch_dir)
    (patch_dir / "0003-hidden-external.patch").write_text(_hiding_patch(tree))
    with (patch_dir / "series").open("a") as series:
        series.write("0003-hidden-external.patch\n")
    stack_text = (repo_root / CI_STACK).read_text()
    stack_text = stack_text.replace('name = "ci-cuda13"', 'name = "ci-cuda13-hidden"', 1)
    stack_text = stack_text.replace('patches = "patches/vllm/0.11.2-torch2.14"',
                                    f'patches = "{patch_dir}"', 1)
    assert str(patch_dir) in stack_text
    stack = tmp_path / "hidden.toml"
    stack.write_text(stack_text)
    # The discovery really does not see it (else this would test nothing new).
    result = run_cli("build-wheels", "--stack", str(stack), "--cache-dir", str(shared_cache),
                     "--build-venv", str(build_venv(ci_build)), "--output-dir",
                     str(tmp_path / "wheels"), "--only", "vllm", cwd=repo_root)
    assert result.returncode == 4, result.stderr[-4000:]
    err = result.stderr
    assert "configure declares external source(s) the plan does not know" in err
    assert f"hiddenthing: {HIDDEN_URL} @ v9.9.9 (FetchContent_Declare at CMakeLists.txt:" in err
    assert "the configure failed because of it" in err
    assert "[packages.vllm.externals.hiddenthing]" in err
    hidden_tree = next(p for p in (shared_cache / "src").glob("vllm-0.11.2-*")
                       if (p / "CMakeLists.txt").is_file()
                       and "_hidden_args" in (p / "CMakeLists.txt").read_text())
    assert "hiddenthing" not in {e.name for e in discover(hidden_tree)}
    # Nothing was downloaded: FetchContent refused before its download sub-build.
    assert not (hidden_tree / ".deps" / "hiddenthing-src").exists()
    assert not list((hidden_tree / ".deps").glob("hiddenthing-subbuild*"))
    log = Path(re.search(r"full log: (\S+)", err).group(1)).read_text()  # type: ignore[union-attr]
    assert "FETCHCONTENT_FULLY_DISCONNECTED" in log and "hiddenthing-src" in log
    assert "Cloning into" not in log
    assert not (tmp_path / "wheels").exists() or not list((tmp_path / "wheels").glob("*.whl"))
    shutil.rmtree(hidden_tree, ignore_errors=True)  # 0.5 GB not reused by any other test
