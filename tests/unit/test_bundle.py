"""Offline source bundles (bundle.py) and the disconnected vLLM configure's CMake trace
(fetchcontent.read_trace / unplanned, builders.vllm.check_fetches), on real inputs: a real
plan of a small stack of path sources exported and loaded back, real gzip/tar archives,
and the real `cmake` (the pip wheel of the test extra) run with the pipeline's own
configure command line on a tiny project."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_stacks import TINY_CUDA_EXT, copy_tiny_cuda_ext, stack_toml

from vllm_wheels.build import bundle
from vllm_wheels.build import plan as build_plan
from vllm_wheels.build.builders import BuildContext, ExternalDir
from vllm_wheels.build.builders.vllm import (
    OFFLINE_ENV,
    check_fetches,
    vllm_build_dir,
    vllm_configure_argv,
    vllm_env,
)
from vllm_wheels.build.fetchcontent import TRACE_FILENAME, read_trace, unplanned
from vllm_wheels.build.stack import load_stack
from vllm_wheels.build.toolchain import CompileCache, Parallelism
from vllm_wheels.cache import Cache
from vllm_wheels.errors import ConfigError, SourceError
from vllm_wheels.log import Reporter

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reporter(tmp_path: Path) -> Reporter:
    """A console-only reporter (no log file to close), writing into memory."""
    return Reporter(None, stream=io.StringIO())


# ------------------------------------------------------------------------ part sizes


@pytest.mark.parametrize(("text", "size"), [
    ("60M", 60 * MiB), ("60MiB", 60 * MiB), ("60mb", 60 * MiB), ("1G", 1024 * MiB),
    ("1.5M", int(1.5 * MiB)), ("2048k", 2 * MiB), (str(3 * MiB), 3 * MiB), (" 1M ", MiB)])
def test_parse_size(text: str, size: int) -> None:
    assert bundle.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "60 parsecs", "-5M", "1T"])
def test_parse_size_rejects_non_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a size") as info:
        bundle.parse_size(text)
    assert info.value.exit_code == 2


def test_parse_size_rejects_parts_under_one_mib() -> None:
    # A part must hold the lock (64 KiB reserved) and a piece of a file.
    with pytest.raises(ConfigError, match="under 1 MiB"):
        bundle.parse_size("500k")


# ------------------------------------------------------------------------- archives


def _tree(root: Path) -> Path:
    """A small source tree with what real ones have: nested dirs, an executable, a symlink,
    VCS metadata and bytecode that are not part of the source."""
    (root / "include" / "cutlass").mkdir(parents=True)
    (root / "include" / "cutlass" / "cutlass.h").write_text("#pragma once\n")
    (root / "python" / "cutlass_library").mkdir(parents=True)
    (root / "python" / "cutlass_library" / "__init__.py").write_text("VERSION = '4.2.1'\n")
    (root / "tools").mkdir()
    (root / "tools" / "gen.sh").write_text("#!/bin/sh\necho gen\n")
    (root / "tools" / "gen.sh").chmod(0o775)
    (root / "LICENSE.txt").write_text("BSD-3-Clause\n")
    (root / "include" / "latest.h").symlink_to("cutlass/cutlass.h")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "python" / "cutlass_library" / "__pycache__").mkdir()
    (root / "python" / "cutlass_library" / "__pycache__" / "x.pyc").write_bytes(b"\0pyc")
    return root


def test_tree_archives_are_deterministic(tmp_path: Path) -> None:
    first = _tree(tmp_path / "one" / "cutlass")
    second = tmp_path / "elsewhere" / "deeper" / "copy"
    shutil.copytree(first, second, symlinks=True)
    # Different mtimes and permission bits on the group/other side must not matter.
    for path in second.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (1_000_000_000, 1_000_000_000))
    (second / "LICENSE.txt").chmod(0o600)
    bundle.write_tree_archive(first, tmp_path / "a.tar.gz")
    bundle.write_tree_archive(second, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert bundle.tree_digest(first) == bundle.tree_digest(second)

    import tarfile

    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert ".git/HEAD" not in members and not any("__pycache__" in n for n in members)
    assert members["include/latest.h"].issym()
    assert members["tools/gen.sh"].mode == 0o755 and members["LICENSE.txt"].mode == 0o644
    assert {m.mtime for m in members.values()} == {0}

    # Only the used paths: CUTLASS as vLLM reads it (headers, python/, license).
    # The MLA kernel's example headers travel too; CUTLASS's CMakeLists does not (the
    # bundled tree is headers-only, with CUTLASS_DIR passed to vLLM's configure).
    for rel in ("examples/common/gather_tensor.hpp", "examples/77_blackwell_fmha/fmha.h",
                "examples/00_basic_gemm/basic_gemm.cu", "CMakeLists.txt"):
        (first / rel).parent.mkdir(parents=True, exist_ok=True)
        (first / rel).write_text("// test\n")
    used = bundle.USED_PATHS["cutlass"]
    bundle.write_tree_archive(first, tmp_path / "used.tar.gz", used)
    with tarfile.open(tmp_path / "used.tar.gz") as tar:
        names = tar.getnames()
        assert "tools/gen.sh" not in names
        assert "include/cutlass/cutlass.h" in names
        assert {"examples/common/gather_tensor.hpp", "examples/77_blackwell_fmha/fmha.h"} <= \
            set(names)
        assert "examples/00_basic_gemm/basic_gemm.cu" not in names
        assert "CMakeLists.txt" not in names

    # A changed file changes the digest.
    (second / "include" / "cutlass" / "cutlass.h").write_text("#pragma once // changed\n")
    assert bundle.tree_digest(first) != bundle.tree_digest(second)


# ---------------------------------------------------------------- export and load

# A stack of path sources only (no download, no toolchain): the CI stack's torch and CUDA
# settings, with the repository's real tiny_cuda_ext fixture and one more package that
# carries a file larger than a bundle part, so export must cut it into chunks.
TINY_STACK = stack_toml("tiny-bundle", TINY_CUDA_EXT + """
[packages.bigdata]
source = { path = "pkgs/bigdata", version = "1.0" }
""")


def _tiny_repo(root: Path, seed: int = 1) -> Path:
    """A repository with the tiny stack, its path sources and one patch."""
    copy_tiny_cuda_ext(root)
    setup_py = root / "pkgs" / "tiny_cuda_ext" / "setup.py"
    first_line = setup_py.read_text().splitlines(keepends=True)[0]
    patch_dir = root / "patches" / "tiny-cuda-ext"
    patch_dir.mkdir(parents=True)
    (patch_dir / "0001-mark.patch").write_text(
        "--- a/setup.py\n+++ b/setup.py\n@@ -1 +1,2 @@\n+# patched by the bundle test\n"
        f" {first_line}")
    (patch_dir / "series").write_text("0001-mark.patch\n")
    big = root / "pkgs" / "bigdata"
    big.mkdir(parents=True)
    (big / "pyproject.toml").write_text('[project]\nname = "bigdata"\nversion = "1.0"\n')
    # 2.5 MiB of incompressible bytes: three chunks with 1 MiB parts.
    (big / "weights.bin").write_bytes(random.Random(seed).randbytes(5 * MiB // 2))
    (root / "build" / "stacks").mkdir(parents=True)
    (root / "build" / "stacks" / "tiny.toml").write_text(TINY_STACK)
    return root


def _export(repo: Path, dest: Path, tmp_path: Path, part_size: int | None
            ) -> bundle.ExportSummary:
    cache = Cache(tmp_path / "export-cache")
    log = reporter(tmp_path)
    stack = load_stack(repo / "build" / "stacks" / "tiny.toml")
    plan = build_plan.make_plan(stack, repo_root=repo, cache=cache, output_dir=tmp_path / "out",
                              log_path=tmp_path / "plan.log", reporter=log,
                              fetch_externals=True)
    return bundle.export(plan, dest, log, part_size)


def _load(directory: Path, cache_root: Path, tmp_path: Path) -> bundle.Bundle:
    return bundle.load(directory, Cache(cache_root), reporter(tmp_path))


def test_export_splits_into_parts_and_load_reassembles(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    summary = _export(repo, tmp_path / "bundle", tmp_path, bundle.parse_size("1M"))
    parts = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert parts == [name for name, _ in summary.parts] and len(parts) >= 3
    for name, size in summary.parts:
        on_disk = sum(f.stat().st_size for f in (tmp_path / "bundle" / name).rglob("*")
                      if f.is_file() and f.name != bundle.LOCK_NAME)
        assert on_disk == size <= MiB - 64 * 1024  # each part fits its size with the lock
        assert (tmp_path / "bundle" / name / bundle.LOCK_NAME).is_file()
    chunks = sorted(c.name for c in (tmp_path / "bundle").rglob("weights.bin.chunk-*"))
    assert chunks == ["weights.bin.chunk-000", "weights.bin.chunk-001", "weights.bin.chunk-002"]

    import json

    lock = json.loads((tmp_path / "bundle" / "part-01" / bundle.LOCK_NAME).read_text())
    assert lock["schema_version"] == bundle.BUNDLE_SCHEMA_VERSION
    kinds = {e["path"]: e["kind"] for e in lock["files"]}
    assert kinds["files/build/stacks/tiny.toml"] == "stack"
    assert kinds["files/patches/tiny-cuda-ext/0001-mark.patch"] == "patch"
    assert kinds["files/patches/tiny-cuda-ext/series"] == "patch"
    assert kinds["files/pkgs/tiny_cuda_ext/setup.py"] == "path-source"
    assert kinds["files/pkgs/bigdata/weights.bin"] == "path-source"

    # The parts copied into one directory, in reverse order, give back the bundle.
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for name in reversed(parts):
        shutil.copytree(tmp_path / "bundle" / name, gathered / name)
    loaded = _load(gathered, tmp_path / "cache-a", tmp_path)
    assert sha256(loaded.files_root / "pkgs/bigdata/weights.bin") == \
        sha256(repo / "pkgs/bigdata/weights.bin")
    assert (loaded.stack_path.read_text()) == TINY_STACK
    for entry in lock["files"]:
        assert sha256(loaded.root / entry["path"]) == entry["sha256"]

    # ... and so do their contents merged into one flat directory (rsync of every part).
    flat = tmp_path / "flat"
    for name in parts:
        shutil.copytree(tmp_path / "bundle" / name, flat, dirs_exist_ok=True)
    loaded_flat = _load(flat, tmp_path / "cache-b", tmp_path)
    assert sha256(loaded_flat.files_root / "pkgs/bigdata/weights.bin") == \
        sha256(repo / "pkgs/bigdata/weights.bin")

    # A plan made from the bundle reads its stack, patch and path sources from it.
    moved = tmp_path / "repo-gone"
    repo.rename(moved)
    cache = Cache(tmp_path / "cache-a")
    plan = build_plan.make_plan(load_stack(loaded.stack_path), repo_root=tmp_path / "elsewhere",
                              cache=cache, output_dir=tmp_path / "out2",
                              log_path=tmp_path / "plan2.log", reporter=reporter(tmp_path),
                              fetch_externals=False, source_bundle=loaded)
    tiny = next(p for p in plan.packages if p.spec.name == "tiny-cuda-ext")
    assert (tiny.tree / "setup.py").read_text().startswith("# patched by the bundle test\n")


def test_export_is_deterministic_and_unsplit(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    _export(repo, tmp_path / "b1", tmp_path, None)
    _export(repo, tmp_path / "b2", tmp_path, None)
    files1 = {p.relative_to(tmp_path / "b1"): sha256(p) for p in (tmp_path / "b1").rglob("*")
              if p.is_file()}
    files2 = {p.relative_to(tmp_path / "b2"): sha256(p) for p in (tmp_path / "b2").rglob("*")
              if p.is_file()}
    assert files1 == files2 and Path(bundle.LOCK_NAME) in files1
    assert not list((tmp_path / "b1").glob("part-*"))


def test_tampered_file_is_exit_4_naming_it_and_both_hashes(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    _export(repo, tmp_path / "bundle", tmp_path, None)
    target = tmp_path / "bundle" / "files" / "pkgs" / "tiny_cuda_ext" / "setup.py"
    expected = sha256(target)
    data = bytearray(target.read_bytes())
    data[10] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(SourceError) as info:
        _load(tmp_path / "bundle", tmp_path / "cache", tmp_path)
    message = info.value.render()
    assert info.value.exit_code == 4
    assert "changed: files/pkgs/tiny_cuda_ext/setup.py" in message
    assert f"expected sha256 {expected}" in message
    assert f"actual   sha256 {sha256(target)}" in message
    # Nothing was laid out in the cache: a build cannot pick up a half-checked bundle.
    assert not list((tmp_path / "cache" / "bundles").glob("*/.verified"))


def test_tampered_chunk_is_exit_4(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    _export(repo, tmp_path / "bundle", tmp_path, bundle.parse_size("1M"))
    chunk = next((tmp_path / "bundle").rglob("weights.bin.chunk-001"))
    with chunk.open("r+b") as handle:
        handle.seek(12345)
        byte = handle.read(1)
        handle.seek(12345)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SourceError, match="changed: files/pkgs/bigdata/weights.bin") as info:
        _load(tmp_path / "bundle", tmp_path / "cache", tmp_path)
    assert info.value.exit_code == 4


def test_missing_part_is_exit_4(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    summary = _export(repo, tmp_path / "bundle", tmp_path, bundle.parse_size("1M"))
    # The part holding a chunk of the big file (the others hold whole files).
    holder = next((tmp_path / "bundle").rglob("weights.bin.chunk-001")).relative_to(
        tmp_path / "bundle").parts[0]
    assert holder in {name for name, _ in summary.parts}
    shutil.rmtree(tmp_path / "bundle" / holder)
    with pytest.raises(SourceError) as info:
        _load(tmp_path / "bundle", tmp_path / "cache", tmp_path)
    assert info.value.exit_code == 4
    assert "missing: files/pkgs/bigdata/weights.bin" in info.value.render()


def test_parts_of_two_exports_are_refused(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    _export(repo, tmp_path / "first", tmp_path, bundle.parse_size("1M"))
    (repo / "pkgs" / "bigdata" / "weights.bin").write_bytes(random.Random(2).randbytes(5 * MiB // 2))
    _export(repo, tmp_path / "second", tmp_path, bundle.parse_size("1M"))
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "first", mixed)
    shutil.rmtree(mixed / "part-02")
    shutil.copytree(tmp_path / "second" / "part-02", mixed / "part-02")
    with pytest.raises(SourceError, match="come from different bundles") as info:
        _load(mixed, tmp_path / "cache", tmp_path)
    assert info.value.exit_code == 4


def test_export_never_wipes_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    repo = _tiny_repo(tmp_path / "repo")
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me\n")
    with pytest.raises(ConfigError, match="exists and is not a source bundle") as info:
        _export(repo, precious, tmp_path, None)
    assert info.value.exit_code == 2
    assert (precious / "notes.txt").read_text() == "keep me\n"
    # Through the command line it is refused before the source step.
    result = subprocess.run([sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack",
                             str(repo / "build/stacks/tiny.toml"), "--cache-dir",
                             str(tmp_path / "c"), "--export-bundle", str(precious)],
                            cwd=repo, text=True, capture_output=True, check=False)
    assert result.returncode == 2, result.stderr
    assert "is not a source bundle" in result.stderr and not (tmp_path / "c" / "src").exists()
    # An earlier bundle, split or not, and an empty directory are replaced.
    _export(repo, tmp_path / "again", tmp_path, bundle.parse_size("1M"))
    _export(repo, tmp_path / "again", tmp_path, None)
    assert (tmp_path / "again" / bundle.LOCK_NAME).is_file()
    (tmp_path / "empty").mkdir()
    _export(repo, tmp_path / "empty", tmp_path, None)


def test_not_a_bundle_is_exit_4(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="is not a source bundle") as info:
        _load(tmp_path / "empty", tmp_path / "cache", tmp_path)
    assert info.value.exit_code == 4


# ----------------------------------------------- the disconnected configure, traced

# A project like vLLM's: one external given as a local SOURCE_DIR (what the plan's
# override variables make of every external it knows) and one declared with
# GIT_REPOSITORY only. The repository is real and reachable (a local git repo), so a
# configure that downloads would succeed: only the disconnected flags stop it.
TINY_CMAKE = """\
cmake_minimum_required(VERSION 3.26)
project(tiny NONE)
include(FetchContent)
# As vLLM does it: the override variable the plan exports for an external it knows.
if(DEFINED ENV{{KNOWN_SRC_DIR}})
  FetchContent_Declare(knownthing SOURCE_DIR $ENV{{KNOWN_SRC_DIR}})
endif()
FetchContent_MakeAvailable(knownthing)
{declare}
FetchContent_MakeAvailable(hiddenthing)
message(STATUS "hiddenthing is at ${{hiddenthing_SOURCE_DIR}}")
"""


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                    "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                   capture_output=True)


# The hidden declaration as written out, or with its arguments in a list variable (which
# the CMake trace records as one ';'-joined argument).
DECLARES = {
    "literal": "\nFetchContent_Declare(hiddenthing GIT_REPOSITORY {url} GIT_TAG v9.9.9)",
    "list-variable": "set(_args GIT_REPOSITORY {url} GIT_TAG v9.9.9)\n"
                     "FetchContent_Declare(hiddenthing ${{_args}})",
}


def _configure_context(tmp_path: Path, planned: tuple[str, ...], declare: str = "literal"
                       ) -> tuple[BuildContext, str]:
    upstream = tmp_path / "hiddenthing.git"
    upstream.mkdir()
    _git("init", "-q", cwd=upstream)
    (upstream / "CMakeLists.txt").write_text('message(STATUS "hiddenthing configured")\n')
    _git("add", ".", cwd=upstream)
    _git("commit", "-q", "-m", "v9.9.9", cwd=upstream)
    _git("tag", "v9.9.9", cwd=upstream)
    url = upstream.as_uri()
    known = tmp_path / "known"
    known.mkdir()
    (known / "CMakeLists.txt").write_text('message(STATUS "knownthing configured")\n')
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text(
        TINY_CMAKE.format(declare=DECLARES[declare].format(url=url)))
    stack = load_stack(Path(__file__).parents[2] / "build" / "stacks" / "ci-cuda13.toml")
    spec = next(p for p in stack.packages if p.name == "vllm")
    externals = tuple(ExternalDir(name, "KNOWN_SRC_DIR" if name == "knownthing" else None,
                                  known, False) for name in planned)
    ctx = BuildContext(stack, spec, tree, venv_path=Path(sys.prefix),
                       cuda_home=tmp_path / "no-cuda", nvcc_release="13.0",
                       parallelism=Parallelism(1, 1, 1, 8.0, "test"),
                       compile_cache=CompileCache("none", None, None),
                       staging=tmp_path / "staging", externals=externals)
    return ctx, url


def _run_configure(ctx: BuildContext) -> subprocess.CompletedProcess[str]:
    """The pipeline's configure command and environment (cmake and ninja of this venv:
    the test extra installs both)."""
    assert (Path(sys.prefix) / "bin" / "cmake").exists(), "pip install -e '.[test]' (cmake)"
    env = dict(os.environ)
    for key, value in vllm_env(ctx).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    build = vllm_build_dir(ctx)
    build.mkdir(parents=True)
    return subprocess.run(vllm_configure_argv(ctx), cwd=build, env=env, text=True,
                          capture_output=True, check=False)


@pytest.mark.compile
@pytest.mark.parametrize("declare", sorted(DECLARES))
def test_disconnected_configure_refuses_and_trace_names_the_hidden_external(
        tmp_path: Path, declare: str) -> None:
    ctx, url = _configure_context(tmp_path, planned=("knownthing",), declare=declare)
    result = _run_configure(ctx)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "knownthing configured" in output
    assert "FETCHCONTENT_FULLY_DISCONNECTED" in output and "hiddenthing" in output
    # Nothing was downloaded: no populated source, no download sub-build.
    deps = ctx.tree / ".deps"
    assert not (deps / "hiddenthing-src").exists()
    assert not list(deps.glob("hiddenthing-subbuild*"))
    assert "hiddenthing configured" not in output

    traced = read_trace(vllm_build_dir(ctx) / TRACE_FILENAME)
    by_name = {t.name: t for t in traced}
    assert set(by_name) == {"knownthing", "hiddenthing"}
    assert by_name["hiddenthing"].url == url and by_name["hiddenthing"].ref == "v9.9.9"
    assert by_name["hiddenthing"].downloads
    assert by_name["hiddenthing"].where == "CMakeLists.txt:10"
    assert not by_name["knownthing"].downloads
    assert by_name["knownthing"].source_dir == str(tmp_path / "known")
    assert unplanned(traced, {"knownthing"}) == [by_name["hiddenthing"]]
    assert unplanned(traced, {"KnownThing", "HiddenThing"}) == []  # as CMake compares names

    with pytest.raises(SourceError) as info:
        check_fetches(ctx, False)
    message = info.value.render()
    assert info.value.exit_code == 4
    assert f"hiddenthing: {url} @ v9.9.9 (FetchContent_Declare at CMakeLists.txt:10)" in message
    assert "the configure failed because of it" in message
    assert "[packages.vllm.externals.hiddenthing]" in message


@pytest.mark.compile
def test_check_fetches_passes_when_the_plan_knows_every_external(tmp_path: Path) -> None:
    ctx, _url = _configure_context(tmp_path, planned=("knownthing", "hiddenthing"))
    _run_configure(ctx)
    assert len(read_trace(vllm_build_dir(ctx) / TRACE_FILENAME)) == 2
    check_fetches(ctx, True)  # no error


def test_offline_env_closes_every_proxy() -> None:
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "all_proxy"):
        assert OFFLINE_ENV[key] == "http://127.0.0.1:9"


def test_read_trace_of_a_missing_or_cut_trace(tmp_path: Path) -> None:
    assert read_trace(tmp_path / "none.json") == []
    cut = tmp_path / "cut.json"
    cut.write_text('{"version":{"major":1,"minor":2}}\n'
                   '{"args":["a","GIT_REPOSITORY","u","GIT_TAG","t"],"cmd":"FetchContent_Declare",'
                   '"file":"/x/CMakeLists.txt","line":3}\n'
                   '{"args":["b","GIT_REPOS')
    assert [(t.name, t.url, t.ref, t.where) for t in read_trace(cut)] == [
        ("a", "u", "t", "CMakeLists.txt:3")]
