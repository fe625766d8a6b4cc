"""The build planner without a toolchain: the steps each builder plans (argv, working
directory, environment), vLLM's configure command and CMake arguments, FlashInfer's arch
list, the external sources resolved for a vLLM tree, and the plan as printed. Contexts and
plans are built by hand on small fixture trees (no network, no nvcc, no venv); every
expectation is exact."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest

from vllm_wheels.build import (
    builders,
    externals,
    patches,
    pins,
    prepare,
    render,
    telemetry,
    toolchain,
)
from vllm_wheels.build import plan as plan_model
from vllm_wheels.build.builders import flashinfer as flashinfer_builder
from vllm_wheels.build.builders import vllm as vllm_builder
from vllm_wheels.build.sources import FetchedSource
from vllm_wheels.build.stack import (
    BuildSettings,
    CudaToolkit,
    ExternalOverride,
    PackageSpec,
    Source,
    Stack,
    TorchPin,
)
from vllm_wheels.cache import Cache
from vllm_wheels.errors import ConfigError, SourceError, ToolchainError
from vllm_wheels.log import Reporter

REPO = Path(__file__).resolve().parents[2]
CMAKE_FIXTURE = REPO / "tests" / "fixtures" / "cmake_externals"
LABEL = "cu128.torch290.sm80.sm90.sm100.sm120"
PLAT = sysconfig.get_platform()


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's flags and PATH reach the step environments: fixed here."""
    monkeypatch.setenv("PATH", "/usr/bin")
    for key in ("CFLAGS", "CXXFLAGS", "NVCC_APPEND_FLAGS", "CUDAFLAGS", "LDFLAGS",
                "SOURCE_DATE_EPOCH"):
        monkeypatch.delenv(key, raising=False)


def make_stack(tmp_path: Path, *packages: PackageSpec) -> Stack:
    return Stack(name="t", path=tmp_path / "stacks" / "t.toml", description="", python="3.12",
                 cuda_arch_list=("8.0", "9.0", "10.0", "12.0+PTX"),
                 torch=TorchPin(version="2.9.0", cuda="12.8"),
                 cuda_toolkit=CudaToolkit(version=">=12.8,<13"), build=BuildSettings(),
                 packages=packages)


def spec(name: str, builder: str, **kw: object) -> PackageSpec:
    return PackageSpec(name=name, builder=builder, patches=f"patches/{name}",
                       source=Source(kind="path", path=f"pkgs/{name}", version="0.11.0"),
                       **kw)  # type: ignore[arg-type]


PARALLELISM = toolchain.Parallelism(jobs=4, nvcc_threads=2, cores=8, available_gb=32.0,
                                    reason="4 jobs (rule)")
NO_CACHE = toolchain.CompileCache("none", None, None)


def context(tmp_path: Path, package: PackageSpec, **kw: object) -> builders.BuildContext:
    args: dict[str, object] = {
        "stack": make_stack(tmp_path, package), "spec": package,
        "tree": tmp_path / "src" / package.name, "venv_path": tmp_path / "venv",
        "cuda_home": tmp_path / "cuda", "nvcc_release": "12.8", "parallelism": PARALLELISM,
        "compile_cache": NO_CACHE, "staging": tmp_path / "staging" / package.name,
        "python_tag": "cpython-312"}
    args.update(kw)
    return builders.BuildContext(**args)  # type: ignore[arg-type]


def base_env(tmp_path: Path, name: str, externals: bool = False) -> dict[str, str | None]:
    """What every step of a package gets (BuildContext.base_env) in these contexts: no
    compile cache, so the prefix maps go inline (shortest path first); no repo or cache
    root, no pyvenv.cfg."""
    t = tmp_path
    pairs = [(f"{t}/venv", "/venv"), (f"{t}/cuda", "/cuda"),
             *([(f"{t}/ext/c", "/ext/cutlass"), (f"{t}/ext/n", "/ext/newthing")]
               if externals else []),
             (f"{t}/src/{name}", f"/src/{name}")]
    maps = " ".join(f"-ffile-prefix-map={path}={new}" for path, new in pairs)
    return {
        "PATH": f"{t}/venv/bin:{t}/cuda/bin:/usr/bin", "VIRTUAL_ENV": f"{t}/venv",
        "CUDA_HOME": f"{t}/cuda", "CUDA_PATH": f"{t}/cuda",
        "TORCH_CUDA_ARCH_LIST": "8.0 9.0 10.0 12.0+PTX", "MAX_JOBS": "4", "NVCC_THREADS": "2",
        "CMAKE_BUILD_TYPE": "Release", "PYTHONNOUSERSITE": "1",
        "VLLM_WHEELS_TELEMETRY": f"{t}/staging/{name}/compile-units.jsonl",
        "SOURCE_DATE_EPOCH": "315532800",
        "VLLM_WHEELS_PREFIX_MAP": "[" + ", ".join(f'["{a}", "{b}"]' for a, b in pairs) + "]",
        "CFLAGS": maps, "CXXFLAGS": maps,
        "NVCC_APPEND_FLAGS": " ".join(f"-Xcompiler={m}" for m in maps.split()),
        "CUDAFLAGS": " ".join(f"-Xcompiler={m}" for m in maps.split()),
        "LDFLAGS": "-Wl,--discard-all"}


def nvcc_command(t: Path) -> str:
    return (f"{t}/venv/bin/python -S {telemetry.LAUNCHER} {t}/venv/bin/python "
            f"{builders.HELPERS}/nvcc_source_path.py {t}/cuda/bin/nvcc "
            + " ".join(f"-Xcompiler=-ffile-prefix-map={p}" for p in
                       (f"{t}/venv=/venv", f"{t}/cuda=/cuda", f"{t}/src/pkg=/src/pkg")))


# ------------------------------------------------------------------------- arch lists


@pytest.mark.parametrize(("archs", "nvcc", "option", "expected"), [
    (("8.0", "9.0", "10.0", "12.0+PTX"), "12.8", "", "8.0 9.0a 10.0a 12.0a"),
    (("8.0", "9.0", "10.0", "12.0+PTX"), "12.9", "", "8.0 9.0a 10.0f 12.0f"),
    (("8.0", "9.0", "10.0", "12.0+PTX"), "13.0", "", "8.0 9.0a 10.0f 12.0f"),
    (("7.5", "10.0a", "12.0f"), "12.8", "", "7.5 10.0a 12.0f"),  # suffixes kept as given
    (("8.0", "9.0"), "12.8", "9.0a 10.0a", "9.0a 10.0a"),  # the option wins verbatim
])
def test_flashinfer_arch_list(tmp_path: Path, archs: tuple[str, ...], nvcc: str, option: str,
                              expected: str) -> None:
    stack = replace(make_stack(tmp_path), cuda_arch_list=archs)
    assert flashinfer_builder.flashinfer_arch_list(stack, nvcc, option) == expected


# ----------------------------------------------------------------------- setuptools


def test_setuptools_steps(tmp_path: Path) -> None:
    ctx = context(tmp_path, spec("pkg", "setuptools", env={"MY_FLAG": "1"}))
    (step,) = builders.steps_for(ctx)
    t = tmp_path
    assert step.title == "build the wheel (PEP 517, no build isolation)"
    assert step.argv == (f"{t}/venv/bin/python", "-m", "build", "--wheel", "--no-isolation",
                         "--outdir", f"{t}/staging/pkg", f"{t}/src/pkg")
    assert (step.cwd, step.progress, step.resolve, step.after) == (t / "src" / "pkg", True,
                                                                   None, None)
    assert dict(step.env) == {**base_env(t, "pkg"), "MY_FLAG": "1",
                              "PYTORCH_NVCC": nvcc_command(t)}


def test_user_env_wins_over_the_planned_one(tmp_path: Path) -> None:
    ctx = context(tmp_path, spec("pkg", "setuptools", env={"MAX_JOBS": "1"}))
    assert builders.steps_for(ctx)[0].env["MAX_JOBS"] == "1"


# ----------------------------------------------------------------------- flashinfer


def test_flashinfer_steps_with_aot(tmp_path: Path) -> None:
    t = tmp_path
    name = "flashinfer-python"
    ctx = context(t, spec(name, "flashinfer", options={"aot_modules": ["gemm*", "norm"]}))
    label, aot, wheel = builders.steps_for(ctx)
    assert label.title == "label the version (flashinfer/_build_meta.py)"
    assert label.argv == (f"{t}/venv/bin/python",
                          str(builders.HELPERS / "set_flashinfer_version.py"),
                          f"{t}/src/{name}", f"0.11.0+{LABEL}")
    assert (dict(label.env), label.cwd) == ({}, t / "src" / name)
    assert aot.title == "AOT-compile FlashInfer kernels for 8.0 9.0a 10.0a 12.0a"
    assert aot.argv == (f"{t}/venv/bin/python", str(builders.HELPERS / "flashinfer_aot.py"),
                        "--source-root", f"{t}/src/{name}",
                        "--out-dir", f"{t}/src/{name}/build/vllm-wheels-aot",
                        "--build-dir", f"{t}/src/{name}/build/aot",
                        "--arch", "8.0 9.0a 10.0a 12.0a", "-v", "gemm*", "norm")
    launcher = f"{t}/venv/bin/python -S {telemetry.LAUNCHER}"
    nvcc = nvcc_command(t).replace("/src/pkg", f"/src/{name}")
    assert dict(aot.env) == {**base_env(t, name),
                             "FLASHINFER_EXTRA_LDFLAGS": "-Xlinker --discard-all",
                             "FLASHINFER_CUDA_ARCH_LIST": "8.0 9.0a 10.0a 12.0a",
                             "FLASHINFER_WORKSPACE_BASE": f"{t}/src/{name}/build/workspace",
                             "FLASHINFER_NVCC": nvcc, "CXX": f"{launcher} c++"}
    assert aot.progress
    assert wheel.argv[-1] == f"{t}/src/{name}"
    assert dict(wheel.env) == base_env(t, name)


def test_flashinfer_steps_without_aot(tmp_path: Path) -> None:
    ctx = context(tmp_path, spec("flashinfer-python", "flashinfer", options={"aot": False}))
    assert [s.title for s in builders.steps_for(ctx)] == [
        "label the version (flashinfer/_build_meta.py)",
        "build the wheel (PEP 517, no build isolation)"]


# ----------------------------------------------------------------------------- vLLM


def vllm_context(tmp_path: Path, **kw: object) -> builders.BuildContext:
    tree = tmp_path / "src" / "vllm"
    (tree / "cmake").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text("project(x)\n")
    (tree / "cmake" / "utils.cmake").write_text("\n")
    (tree / "cmake" / "sub").mkdir()
    (tree / "cmake" / "sub" / "CMakeLists.txt").write_text("\n")
    options = kw.pop("options", {"cmake_args": ["-DEXTRA=1"]})
    externals = (builders.ExternalDir("cutlass", "VLLM_CUTLASS_SRC_DIR", tmp_path / "ext" / "c",
                                      headers_only=True),
                 builders.ExternalDir("newthing", None, tmp_path / "ext" / "n",
                                      headers_only=False))
    return context(tmp_path, spec("vllm", "vllm", options=options), externals=externals, **kw)


def cmake_args(t: Path, cache_launcher: str = "") -> list[str]:
    launcher = f"{t}/venv/bin/python;-S;{telemetry.LAUNCHER}"
    host = launcher + (f";{cache_launcher}" if cache_launcher else "")
    return [f"-DCMAKE_C_COMPILER_LAUNCHER={host}", f"-DCMAKE_CXX_COMPILER_LAUNCHER={host}",
            f"-DCMAKE_CUDA_COMPILER_LAUNCHER={launcher};{t}/venv/bin/python;"
            f"{builders.HELPERS}/nvcc_source_path.py"
            + (f";{cache_launcher}" if cache_launcher else ""),
            f"-DCUTLASS_DIR={t}/ext/c", f"-DCUTLASS_INCLUDE_DIR={t}/ext/c/include",
            f"-DCUTLASS_TOOLS_UTIL_INCLUDE_DIR={t}/ext/c/tools/util/include",
            "-DFETCHCONTENT_FULLY_DISCONNECTED=ON", "-DCMAKE_POLICY_DEFAULT_CMP0170=NEW",
            "-DEXTRA=1"]


def test_vllm_cmake_args(tmp_path: Path) -> None:
    assert vllm_builder.vllm_cmake_args(vllm_context(tmp_path)) == cmake_args(tmp_path)


def test_vllm_cmake_args_with_a_compile_cache(tmp_path: Path) -> None:
    cache = toolchain.CompileCache("ccache", Path("/opt/bin/ccache"), tmp_path / "ccache")
    ctx = vllm_context(tmp_path, compile_cache=cache, prefix_maps_via="flags")
    assert vllm_builder.vllm_cmake_args(ctx) == cmake_args(tmp_path, "/opt/bin/ccache")


def test_vllm_configure_argv(tmp_path: Path) -> None:
    t = tmp_path
    ctx = vllm_context(t)
    tree, build = t / "src" / "vllm", t / "src" / "vllm" / "build" / f"temp.{PLAT}-cpython-312"
    maps = base_env(t, "vllm", externals=True)
    assert vllm_builder.vllm_configure_argv(ctx) == (
        f"{t}/venv/bin/cmake", str(tree), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        "-DVLLM_TARGET_DEVICE=cuda", f"-DVLLM_PYTHON_EXECUTABLE={t}/venv/bin/python",
        f"-DFETCHCONTENT_BASE_DIR={tree}/.deps", "-DNVCC_THREADS=2",
        "-DCMAKE_JOB_POOL_COMPILE:STRING=compile", "-DCMAKE_JOB_POOLS:STRING=compile=4",
        f"-DCMAKE_CUDA_COMPILER={t}/cuda/bin/nvcc", *cmake_args(t),
        f"-DCMAKE_C_FLAGS={maps['CFLAGS']}", f"-DCMAKE_CXX_FLAGS={maps['CXXFLAGS']}",
        f"-DCMAKE_CUDA_FLAGS={maps['CUDAFLAGS']}",
        "--trace-expand", "--trace-format=json-v1",
        f"--trace-redirect={build}/vllm-wheels-cmake-trace.json",
        f"--trace-source={tree}/CMakeLists.txt", f"--trace-source={tree}/cmake/utils.cmake",
        f"--trace-source={tree}/cmake/sub/CMakeLists.txt")


def test_vllm_env(tmp_path: Path) -> None:
    t = tmp_path
    env = vllm_builder.vllm_env(vllm_context(t))
    assert env == {**base_env(t, "vllm", externals=True),
                   "VLLM_TARGET_DEVICE": "cuda", "MAX_JOBS": "8",  # jobs x nvcc threads
                   "VLLM_VERSION_OVERRIDE": f"0.11.0+{LABEL}",
                   "SETUPTOOLS_SCM_PRETEND_VERSION": f"0.11.0+{LABEL}",
                   "FETCHCONTENT_BASE_DIR": f"{t}/src/vllm/.deps",
                   "CMAKE_ARGS": " ".join(cmake_args(t)), "VLLM_DISABLE_SCCACHE": "1",
                   "VLLM_CUTLASS_SRC_DIR": f"{t}/ext/c", **vllm_builder.OFFLINE_ENV}
    assert vllm_builder.OFFLINE_ENV["https_proxy"] == "http://127.0.0.1:9"


def test_vllm_env_keeps_sccache_for_sccache(tmp_path: Path) -> None:
    cache = toolchain.CompileCache("sccache", Path("/opt/bin/sccache"), tmp_path / "cc" / "s")
    env = vllm_builder.vllm_env(vllm_context(tmp_path, compile_cache=cache,
                                         prefix_maps_via="flags"))
    assert "VLLM_DISABLE_SCCACHE" not in env
    assert env["SCCACHE_DIR"] == f"{tmp_path}/cc/s"


def test_vllm_steps(tmp_path: Path) -> None:
    t = tmp_path
    ctx = vllm_context(t)
    configure, wheel = builders.steps_for(ctx)
    build = t / "src" / "vllm" / "build" / f"temp.{PLAT}-cpython-312"
    assert configure.title == "CMake configure (as vLLM's setup.py does), disconnected"
    assert configure.argv == vllm_builder.vllm_configure_argv(ctx)
    assert (configure.cwd, dict(configure.env)) == (build, vllm_builder.vllm_env(ctx))
    assert configure.after is not None
    assert wheel.argv[-3:] == ("--outdir", f"{t}/staging/vllm", f"{t}/src/vllm")
    assert dict(wheel.env) == vllm_builder.vllm_env(ctx)


def test_vllm_configure_is_fresh_only_over_another_builders_cmake_cache(tmp_path: Path
                                                                        ) -> None:
    """Decided when the step runs: no cache or this build's nvcc -> the planned command;
    a CMakeCache.txt naming another builder's nvcc -> the same command with --fresh."""
    t = tmp_path
    ctx = vllm_context(t)
    configure = builders.steps_for(ctx)[0]
    assert configure.resolve is not None
    assert configure.resolve() == configure.argv  # nothing configured yet
    cache = t / "src" / "vllm" / "build" / f"temp.{PLAT}-cpython-312" / "CMakeCache.txt"
    cache.parent.mkdir(parents=True)
    cache.write_text(f"CMAKE_CUDA_COMPILER:FILEPATH={t}/cuda/bin/nvcc\n")
    assert configure.resolve() == configure.argv
    cache.write_text("CMAKE_CUDA_COMPILER:FILEPATH=/other-cache/cuda-home/bin/nvcc\n")
    assert configure.resolve() == (*configure.argv, "--fresh")


def test_vllm_steps_compile_only(tmp_path: Path) -> None:
    t = tmp_path
    ctx = vllm_context(t, options={"compile_only": ["csrc/a.cu", "csrc/b.cu"]})
    configure, compile_ = builders.steps_for(ctx)
    build = t / "src" / "vllm" / "build" / f"temp.{PLAT}-cpython-312"
    assert compile_.title == "compile 2 translation unit(s) only: csrc/a.cu, csrc/b.cu"
    assert compile_.argv == (f"{t}/venv/bin/cmake", "--build", str(build), "--target",
                             "<object of csrc/a.cu>", "<object of csrc/b.cu>")
    assert compile_.resolve is not None and compile_.progress
    assert not builders.makes_wheel(ctx.spec)


def test_vllm_steps_with_a_unit_cost_record(tmp_path: Path) -> None:
    t = tmp_path
    costs = {"csrc/a.cu": {"wall_s": 9.0, "cpu_s": 9.0, "peak_rss_kb": 1000.0},
             "csrc/b.cu": {"wall_s": 3.0, "cpu_s": 3.0, "peak_rss_kb": 1000.0}}
    ctx = vllm_context(t, unit_costs=costs)
    titles = [s.title for s in builders.steps_for(ctx)]
    assert titles == ["CMake configure (as vLLM's setup.py does), disconnected",
                      "compile the 2 recorded unit(s) longest first (setup.py then finds "
                      "them up to date)", "build the wheel (PEP 517, no build isolation)"]
    order = builders.steps_for(ctx)[1]
    build = t / "src" / "vllm" / "build" / f"temp.{PLAT}-cpython-312"
    assert order.argv == (f"{t}/venv/bin/ninja", "-C", str(build), "-f",
                          f"{build}/.vllm-wheels-order/order.ninja", "-j", "4",
                          "<recorded objects, longest first>")


# --------------------------------------------------------------------------- externals


def prepared(tmp_path: Path, builder: str = "vllm",
             externals: dict[str, ExternalOverride] | None = None) -> prepare.PreparedPackage:
    package = spec("vllm", builder, externals=externals or {})
    return prepare.PreparedPackage(package, FetchedSource(None, CMAKE_FIXTURE, None, None, None),
                                    CMAKE_FIXTURE, (), (), ())


def resolve(tmp_path: Path, prep: prepare.PreparedPackage,
            **kw: object) -> list[tuple[str, str, str, str | None, bool]]:
    out = externals.resolve_externals(prep, Cache(tmp_path / "cache"), tmp_path,
                                     Reporter(stream=io.StringIO()), fetch=False,
                                     **kw)  # type: ignore[arg-type]
    return [(e.source.name, str(e.directory or ""), e.origin, e.commit, e.headers_only)
            for e in out.externals]


def test_resolve_externals_to_fetch(tmp_path: Path) -> None:
    assert resolve(tmp_path, prepared(tmp_path)) == [
        ("cutlass", "", "to fetch", None, False),
        ("newthing", "", "to fetch", "0123456789abcdef0123456789abcdef01234567", False)]


def test_resolve_externals_only_for_vllm(tmp_path: Path) -> None:
    prep = prepared(tmp_path, builder="setuptools")
    assert externals.resolve_externals(prep, Cache(tmp_path / "cache"), tmp_path,
                                      Reporter(stream=io.StringIO()), fetch=False) is prep


def test_resolve_externals_overrides_and_cache(tmp_path: Path) -> None:
    headers = tmp_path / "cutlass-headers"
    (headers / "include").mkdir(parents=True)
    # A cached checkout (its commit marker written by the fetch) is used, at its subdir.
    key = hashlib.sha256(b"https://example.invalid/newthing.git@"
                         b"0123456789abcdef0123456789abcdef01234567").hexdigest()[:16]
    checkout = tmp_path / "cache" / "externals" / "newthing" / key
    checkout.mkdir(parents=True)
    (checkout / ".vllm-wheels-commit").write_text("0123456789abcdef0123456789abcdef01234567\n")
    prep = prepared(tmp_path, externals={"cutlass": ExternalOverride(path="cutlass-headers")})
    assert resolve(tmp_path, prep) == [
        ("cutlass", str(headers), "override:path", None, True),
        ("newthing", f"{checkout}/python/newthing/newthing", "cache",
         "0123456789abcdef0123456789abcdef01234567", False)]


def test_resolve_externals_from_another_source(tmp_path: Path) -> None:
    donor_tree = tmp_path / "fi"
    (donor_tree / "3rdparty" / "cutlass" / "include").mkdir(parents=True)
    donor = prepare.PreparedPackage(spec("flashinfer-python", "flashinfer"),
                                     FetchedSource(None, donor_tree, None, None, None),
                                     donor_tree, (), (), ())
    prep = prepared(tmp_path, externals={"cutlass": ExternalOverride(
        from_source="flashinfer-python:3rdparty/cutlass")})
    assert resolve(tmp_path, prep, others=[donor])[0] == (
        "cutlass", f"{donor_tree}/3rdparty/cutlass", "from-source:flashinfer-python", None,
        True)
    with pytest.raises(ConfigError) as err:
        resolve(tmp_path, prep, others=[])
    assert "package flashinfer-python was not prepared before vllm" in str(err.value)


def test_resolve_externals_refuses_an_unknown_name(tmp_path: Path) -> None:
    prep = prepared(tmp_path, externals={"cutlas": ExternalOverride(path="x")})
    with pytest.raises(ConfigError) as err:
        resolve(tmp_path, prep)
    assert str(err.value).startswith("[packages.vllm.externals.cutlas]: this source declares "
                                     "no external named 'cutlas'")
    assert err.value.fix == "did you mean 'cutlass'? declared: cutlass, newthing"


def test_an_unreachable_external_is_named_with_the_bundle_and_the_stack_key(
        tmp_path: Path) -> None:
    """No GitHub (as on this machine and on air-gapped hosts): the fetch of an external
    fails with the real git, and the error names the external and its package, and points
    to the offline bundle and to the stack key of a mirror or a local copy. A file:// URL
    that does not exist stands for the unreachable host (no network is touched)."""
    (tmp_path / "cutlass-headers" / "include").mkdir(parents=True)
    gone = f"file://{tmp_path}/no-such-mirror.git"
    prep = prepared(tmp_path, externals={"cutlass": ExternalOverride(path="cutlass-headers"),
                                         "newthing": ExternalOverride(url=gone)})
    with pytest.raises(SourceError) as err:
        externals.resolve_externals(prep, Cache(tmp_path / "cache"), tmp_path,
                                    Reporter(stream=io.StringIO()), fetch=True)
    text = err.value.render()
    assert err.value.exit_code == 4
    assert str(err.value).startswith(f"external newthing of vllm: git fetch {gone} "
                                     "0123456789abcdef0123456789abcdef01234567 failed")
    assert "`--bundle DIR`" in text and "docs/build.md" in text
    assert '[packages.vllm.externals.newthing] url = "MIRROR"' in text
    assert "it must hold 0123456789abcdef0123456789abcdef01234567" in text
    assert 'path = "DIR_OR_ARCHIVE"' in text
    # Nothing half-written: no checkout (nor its temporary sibling) is left in the cache.
    assert list((tmp_path / "cache" / "externals" / "newthing").iterdir()) == []


# ------------------------------------------------------------------------- the plan


def hand_made_plan(tmp_path: Path) -> plan_model.Plan:
    t = tmp_path
    pkg = spec("pkg", "setuptools", env={"MY_FLAG": "1"})
    vllm = spec("vllm", "vllm", options={"cmake_args": ["-DEXTRA=1"]})
    stack = make_stack(t, pkg, vllm)
    fetched = FetchedSource(t / "dl" / "pkg.tar.gz", None, "ab" * 32, None, None)
    pkg_prep = prepare.PreparedPackage(
        pkg, fetched, t / "src" / "pkg",
        (patches.PatchFile("0001-fix.patch", t / "p" / "0001-fix.patch", "cd" * 32),),
        (pins.StrippedPin("requirements/cuda.txt", "torch==2.8.0"),
         pins.StrippedPin("requirements/cuda.txt", "torchaudio==2.8.0"),
         pins.StrippedPin("pyproject.toml", "torch==2.8.0")), ("setuptools>=77", "wheel"))
    vllm_prep = externals.resolve_externals(
        prepare.PreparedPackage(vllm, FetchedSource(None, CMAKE_FIXTURE, None, None, None),
                                 CMAKE_FIXTURE, (), (), ("cmake>=3.26",)),
        Cache(t / "cache"), t, Reporter(stream=io.StringIO()), fetch=False)
    checks = [toolchain.ToolchainCheck("python", "ok", "3.12.7"),
              toolchain.ToolchainCheck("nvcc", "fail", "nvcc 12.4 is older than >=12.8,<13",
                                       "install CUDA 12.8"),
              toolchain.ToolchainCheck("disk", "warn", "12 GB free", "free space"),
              toolchain.ToolchainCheck("torch", "pending", "installed with the build venv", "")]
    return plan_model.Plan(
        stack=stack, repo_root=t, cache=Cache(t / "cache"), output_dir=t / "wheels" / "t",
        log_path=t / "cache" / "logs" / "t.log", packages=[pkg_prep, vllm_prep],
        checks=checks, parallelism=PARALLELISM, compile_cache=NO_CACHE,
        venv_path=t / "venv", venv_requirements=["torch==2.9.0", "setuptools>=77"],
        cuda_home=t / "cuda", nvcc=None, torch=None,
        contexts=[context(t, pkg, stack=stack),
                  context(t, vllm, stack=stack, tree=CMAKE_FIXTURE)])


@pytest.mark.parametrize("source", ["system", "pip"])
def test_the_manifest_records_which_toolkit_compiled(tmp_path: Path, source: str) -> None:
    """nvcc.toolkit is the effective source: the stack's, or the machine's override
    (with_toolkit_source); the same release from either place is told apart."""
    from vllm_wheels.build import output
    from vllm_wheels.build.stack import with_toolkit_source

    plan = hand_made_plan(tmp_path)
    stack = replace(plan.stack, cuda_toolkit=CudaToolkit(
        version=">=13.0,<14", source="system", pip_version="13.0.2"))
    stack = with_toolkit_source(stack, source, "--cuda-toolkit")
    nvcc = toolchain.Nvcc(path=tmp_path / "cuda" / "bin" / "nvcc", cuda_home=tmp_path / "cuda",
                          release="13.0", full_version="13.0.88", found_via=source)
    torch = toolchain.TorchFacts(version="2.11.0+cu130", cuda="13.0", git_version="ab" * 20,
                                 cxx11_abi=True, location=str(tmp_path / "venv"))
    plan = replace(plan, stack=stack, nvcc=nvcc, torch=torch)
    manifest = output.wheel_manifest(plan, plan.contexts[0], plan.packages[0], {}, 0.0, None,
                                     {"torch": "==2.11.0"}, {})
    assert manifest["nvcc"] == {"version": "13.0.88", "release": "13.0", "toolkit": source}
    assert manifest["stack"]["digest"] == stack.digest()
    assert "location" not in manifest["torch"]  # a machine path is no input of the wheel


def test_render_plan(tmp_path: Path) -> None:
    t, fx = tmp_path, CMAKE_FIXTURE
    plan = hand_made_plan(t)
    lines = render.render_plan(plan).splitlines()
    assert lines[:27] == [
        f"Plan for stack 't' ({t}/stacks/t.toml, digest {plan.stack.digest()[:12]})",
        f"  python 3.12, TORCH_CUDA_ARCH_LIST=8.0 9.0 10.0 12.0+PTX, local label +{LABEL}",
        "  torch: torch==2.9.0 (CUDA 12.8) from pip's configured index",
        "Toolchain checks:",
        "  [ok  ] python: 3.12.7",
        "  [FAIL] nvcc: nvcc 12.4 is older than >=12.8,<13",
        "         fix: install CUDA 12.8",
        "  [warn] disk: 12 GB free",
        "         fix: free space",
        "  [todo] torch: installed with the build venv",
        f"  build venv: {t}/venv",
        "    requirements: torch==2.9.0, setuptools>=77",
        "  parallelism: 4 jobs (rule)",
        "    from the rule (no unit cost record for this version and arch list: one is "
        "written after the build)",
        "  compile cache: none , backend none",
        "Package pkg (setuptools builder)",
        "  source: path 0.11.0 pkgs/pkg",
        f"          sha256 {'ab' * 32} (verified)",
        f"  tree: {t}/src/pkg",
        "  patches: 0001-fix.patch (applied)",
        "  torch pins stripped (torch comes from the stack): requirements/cuda.txt (2), "
        "pyproject.toml (1)",
        "  step 1: build the wheel (PEP 517, no build isolation)",
        f"      cd {t}/src/pkg",
        # Only what differs from the common environment (printed once, below).
        f"      PYTORCH_NVCC='{nvcc_command(t)}'",
        f"      {t}/venv/bin/python -m build --wheel --no-isolation --outdir {t}/staging/pkg "
        f"{t}/src/pkg",
        "Package vllm (vllm builder)",
        "  source: path 0.11.0 pkgs/vllm"]
    assert lines[27:33] == [
        f"  tree: {fx}",
        "  patches: none",
        "  external cutlass: https://example.invalid/cutlass.git @ v9.9.9 (tag; commit "
        "resolved at fetch)",
        "      VLLM_CUTLASS_SRC_DIR=<after fetch> [to fetch] declared in CMakeLists.txt:9",
        "  external newthing: https://example.invalid/newthing.git @ "
        "0123456789abcdef0123456789abcdef01234567",
        "      NEWTHING_SRC_DIR=<after fetch> [to fetch] declared in "
        "cmake/external_projects/newthing.cmake:4"]
    assert [line for line in lines[33:] if line.startswith("  step ")] == [
        "  step 1: CMake configure (as vLLM's setup.py does), disconnected",
        "  step 2: build the wheel (PEP 517, no build isolation)"]
    # A vLLM step: what differs from the common environment (vllm_env is checked exactly
    # above; the order of the prefix maps follows this machine's path lengths).
    ctx = plan.contexts[1]
    changed = {k: v for k, v in vllm_builder.vllm_env(ctx).items()
               if plan.contexts[0].base_env().get(k) != v}
    assert "ALL_PROXY" in changed and "PATH" not in changed
    assert lines[33:33 + 3 + len(changed)] == [
        "  step 1: CMake configure (as vLLM's setup.py does), disconnected",
        f"      cd {fx}/build/temp.{PLAT}-cpython-312",
        *[f"      {key}={shlex.quote(str(changed[key]))}" for key in sorted(changed)],
        f"      {shlex.join(vllm_builder.vllm_configure_argv(ctx))}"]
    common = lines.index("Common build environment:")
    env = base_env(t, "pkg")
    assert lines[common + 1:] == [
        *[f"  {key}={value}" for key, value in sorted({**env, "MY_FLAG": "1"}.items())],
        f"Output: {t}/wheels/t", f"Cache: {t}/cache", f"Source trees: {t}/cache/src",
        f"Log: {t}/cache/logs/t.log"]


def test_render_plan_with_a_unit_cost_record_and_a_source_only_package(tmp_path: Path) -> None:
    made = hand_made_plan(tmp_path)
    plan = replace(
        made, parallelism=replace(PARALLELISM, source="record", memory_budget_kb=8 * 1024 * 1024,
                                  unit_costs="/records/vllm.json"),
        unit_costs={"vllm": {"csrc/a.cu": {"wall_s": 1.0, "cpu_s": 1.0, "peak_rss_kb": 1.0}}},
        source_only=made.packages[:1], packages=made.packages[1:], contexts=made.contexts[1:])
    lines = render.render_plan(plan).splitlines()
    assert lines[13] == ("    from a unit cost record: /records/vllm.json (vllm: 1 unit(s)); "
                         "memory budget 8.0 GB; vLLM compiles the recorded units longest first")
    assert (f"Source only pkg (not built: left out by --only; its tree serves from_source "
            f"externals): {tmp_path}/src/pkg") in lines


# ------------------------------------------------------------ the build venv's constraints


def pinned_stack(tmp_path: Path) -> Stack:
    return make_stack(tmp_path, spec("flashinfer-python", "flashinfer"), spec("vllm", "vllm"))


# vLLM 0.20.0's runtime pins (requirements/cuda.txt and common.txt, in part) and FlashInfer
# 0.6.8.post1's build requirements, as prepare.py reads them from the sources.
VLLM_PINS = ("lark == 1.2.2", "numba == 0.65.0", "flashinfer-python==0.6.8.post1",
             "flashinfer-cubin==0.6.8.post1", "apache-tvm-ffi==0.1.9",
             "nvidia-cutlass-dsl[cu13]==4.4.2", "macos-only==1.0 ; sys_platform == 'darwin'")
FLASHINFER_BUILD = ("setuptools>=77", "packaging>=24",
                    "apache-tvm-ffi>=0.1.6,!=0.1.8,!=0.1.8.post0,<0.2", "build", "wheel")


def test_the_build_venv_is_constrained_to_the_wheels_runtime_pins(tmp_path: Path) -> None:
    """FlashInfer builds with apache-tvm-ffi>=0.1.6,<0.2 and pins the version its build venv
    holds; vLLM requires ==0.1.9. The venv's constraints hold vLLM's exact pins, so the
    range resolves to 0.1.9 (unconstrained it took the newest, 0.1.15.post2, and verify_abi
    failed the set). A package of the stack is pinned to its built version instead, extras
    go (pip refuses them in a constraint), markers stay (pip evaluates them)."""
    stack = pinned_stack(tmp_path)
    constraints = toolchain.venv_constraints(
        stack, {"flashinfer-python": (), "vllm": VLLM_PINS},
        {"flashinfer-python": FLASHINFER_BUILD, "vllm": ("cmake>=3.26.1", "setuptools-scm>=8"),
         "the pipeline": ("cmake", "ninja")})
    assert constraints == ["apache-tvm-ffi==0.1.9", "flashinfer-cubin==0.6.8.post1",
                           "lark==1.2.2", 'macos-only==1.0 ; sys_platform == "darwin"',
                           "numba==0.65.0", "nvidia-cutlass-dsl==4.4.2"]
    # They key the venv: one made without them (or with others) is not reused. A stack
    # whose packages pin nothing keeps the key it had before constraints existed.
    requirements = sorted(FLASHINFER_BUILD)
    with_pins = toolchain.venv_key(stack, requirements, constraints)
    assert with_pins != toolchain.venv_key(stack, requirements)
    assert with_pins != toolchain.venv_key(stack, requirements, constraints[:1])
    before = {"python": "3.12", "torch": ["2.9.0", "12.8", stack.torch.simple_url],
              "toolkit": [stack.cuda_toolkit.source, stack.cuda_toolkit.pip_version],
              "requirements": requirements, "layout": 1}
    assert toolchain.venv_key(stack, requirements, []) == hashlib.sha256(
        json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    cache = Cache(tmp_path / "cache")
    assert toolchain.venv_path(stack, cache, requirements, constraints).name.endswith(with_pins)


@pytest.mark.parametrize(("pins", "build", "problem"), [
    ({"vllm": ("apache-tvm-ffi==0.1.9",)},
     {"flashinfer-python": ("apache-tvm-ffi>=0.1.10,<0.2",)},
     "flashinfer-python builds with `apache-tvm-ffi>=0.1.10,<0.2`, which excludes vllm's "
     "runtime pin apache-tvm-ffi==0.1.9"),
    ({"vllm": ("numba==0.65.0",), "flashinfer-python": ("numba==0.61.2",)}, {},
     "numba is pinned to different versions: ==0.65.0 by vllm, ==0.61.2 by flashinfer-python"),
    ({"vllm": ("cmake==3.31.6",)}, {"the pipeline": ("cmake>=4",)},
     "the pipeline builds with `cmake>=4`, which excludes vllm's runtime pin cmake==3.31.6"),
])
def test_a_build_requirement_that_excludes_a_runtime_pin_is_refused(
        tmp_path: Path, pins: dict[str, tuple[str, ...]], build: dict[str, tuple[str, ...]],
        problem: str) -> None:
    """One venv cannot hold both: refused while planning (exit 3, before torch is
    installed), naming who needs what; a requirement whose marker does not hold in the
    build venv's Python is no conflict."""
    with pytest.raises(ToolchainError) as info:
        toolchain.venv_constraints(pinned_stack(tmp_path), pins, build)
    text = info.value.render()
    assert info.value.exit_code == 3
    assert text.startswith("ERROR (toolchain, exit 3): the build venv cannot hold the "
                           "versions the wheels will run with:\n  - " + problem)
    assert "\n  why: the build venv is constrained to the exact runtime pins" in text
    assert "\n  fix: build versions of these packages that agree" in text
    elsewhere = {who: tuple(f"{r} ; python_version < '3.0'" for r in reqs)
                 for who, reqs in build.items()}
    if elsewhere:
        toolchain.venv_constraints(pinned_stack(tmp_path), pins, elsewhere)


def test_the_build_requirements_install_within_the_constraints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The constraints file beside torch's pin is the one the build requirements are
    installed with (what pip is asked, as the build venv's creation runs it)."""
    asked: list[tuple[list[str], str | None]] = []

    def run(argv: list[object], **_kw: object) -> None:
        args = [str(a) for a in argv]
        if args[1:3] == ["-m", "venv"]:
            Path(args[3]).mkdir(parents=True)
        constraints = Path(args[args.index("-c") + 1]).read_text() if "-c" in args else None
        asked.append((args, constraints))

    monkeypatch.setattr(toolchain, "run", run)
    where = tmp_path / "venv"
    toolchain._create_venv(pinned_stack(tmp_path), Path("/usr/bin/python3.12"), where,
                           Reporter(stream=io.StringIO()), list(FLASHINFER_BUILD),
                           ["apache-tvm-ffi==0.1.9", "numba==0.65.0"])
    install = asked[-1]
    assert install[0][:5] == [f"{where}/bin/python", "-m", "pip", "install", "-c"]
    assert install[0][6:] == list(FLASHINFER_BUILD)
    assert install[1] == "torch==2.9.0\napache-tvm-ffi==0.1.9\nnumba==0.65.0\n"
