"""The CUDA 13 test stack built for real through `python -m vllm_wheels build-wheels`:
a torch CUDA extension fixture, FlashInfer 0.5.2 with two AOT modules, and vLLM 0.11.2's
CMake configure for 12.0 plus one real vLLM CUDA translation unit. No GPU needed: nvcc
compiles for sm_120 on the CPU. vLLM's GitHub-only external sources are replaced by the
STAND-IN directories in tests/fixtures/externals (GitHub is unreachable here)."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from ci_support import CiBuild, cli
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from vllm_wheels.build.wheelmeta import read_manifest, requires_dist, verify_record
from vllm_wheels.verify.fatbin import read_archs

pytestmark = [pytest.mark.network, pytest.mark.compile]


@pytest.fixture(scope="module")
def built(ci_build: CiBuild) -> tuple[Path, subprocess.CompletedProcess[str]]:
    return ci_build.out, ci_build.result


def wheel(out: Path, prefix: str) -> Path:
    found = sorted(out.glob(f"{prefix}-*.whl"))
    assert len(found) == 1, list(out.iterdir())
    return found[0]


def test_wheels_are_labelled_pinned_and_carry_a_manifest(built: tuple[Path, object]) -> None:
    out, _ = built
    ext = wheel(out, "tiny_cuda_ext")
    fi = wheel(out, "flashinfer_python")
    assert ext.name == "tiny_cuda_ext-0.1.0+cu130.torch2141.sm120-cp311-cp311-linux_x86_64.whl"
    assert fi.name == "flashinfer_python-0.5.2+cu130.torch2141.sm120-py3-none-linux_x86_64.whl"
    for w in (ext, fi):
        assert verify_record(w) == []
        assert "torch==2.14.1" in requires_dist(w)
        manifest = read_manifest(w)
        assert manifest is not None
        assert manifest["torch"]["version"] == "2.14.1+cu130"  # type: ignore[index]
        assert manifest["torch"]["git_version"]  # type: ignore[index]
        assert manifest["nvcc"]["release"] == "13.0"  # type: ignore[index]
        assert manifest["cuda_arch_list"] == ["12.0"]
    assert any(r.startswith("apache-tvm-ffi==") for r in requires_dist(fi))
    summary = json.loads((out / "build-summary.json").read_text())
    assert summary["schema_version"] == 2 and len(summary["wheels"]) == 2
    # The wheel records its inputs only; this build's facts are in the summary.
    for w in (ext, fi):
        manifest = read_manifest(w)
        assert manifest is not None
        assert not {"host", "seconds", "jobs", "compile_cache_stats"} & (
            set(manifest) | set(manifest["build"]))  # type: ignore[arg-type]
    assert summary["host"]["cores"] >= 1 and summary["build"]["jobs"] >= 1
    assert [p["package"] for p in summary["packages"]] == ["tiny-cuda-ext",
                                                           "flashinfer-python", "vllm"]
    assert not list(out.glob(".*tmp*"))


def test_wheels_pin_only_what_they_require(built: tuple[Path, object]) -> None:
    """tiny-cuda-ext is built before FlashInfer in this stack, but FlashInfer does not use
    it: installing FlashInfer from the index must not pull in the fixture. FlashInfer's own
    requirements (apache-tvm-ffi) and torch stay pinned."""
    out, _ = built
    fi = wheel(out, "flashinfer_python")
    names = {canonicalize_name(Requirement(r).name) for r in requires_dist(fi)}
    assert "tiny-cuda-ext" not in names, requires_dist(fi)
    assert {"torch", "apache-tvm-ffi"} <= names
    manifest = read_manifest(fi)
    assert manifest is not None
    assert "tiny-cuda-ext" not in manifest["runtime_pins"]  # type: ignore[operator]
    assert manifest["runtime_pins"]["torch"] == "==2.14.1"  # type: ignore[index]


def test_extension_and_aot_kernels_contain_sm120(built: tuple[Path, object], tmp_path: Path
                                                ) -> None:
    out, _ = built
    # The extension follows TORCH_CUDA_ARCH_LIST=12.0 (sm_120); FlashInfer's AOT build
    # compiles its SM120 kernels family-specific with nvcc 13 (sm_120f).
    for w, expected in ((wheel(out, "tiny_cuda_ext"), ["sm_120"]),
                        (wheel(out, "flashinfer_python"), ["sm_120f"])):
        with zipfile.ZipFile(w) as zf:
            sos = [n for n in zf.namelist() if n.endswith(".so")]
            assert sos
            for name in sos:
                zf.extract(name, tmp_path)
                archs = [str(e) for e in read_archs(tmp_path / name)]
                assert archs == expected, (name, archs)
    with zipfile.ZipFile(wheel(out, "flashinfer_python")) as zf:
        names = set(zf.namelist())
    assert {"flashinfer/data/aot/silu_and_mul/silu_and_mul.so",
            "flashinfer/data/aot/norm/norm.so"} <= names


def test_installed_flashinfer_uses_the_aot_kernels(built: tuple[Path, object],
                                                   shared_cache: Path, tmp_path: Path) -> None:
    """Install the wheel (no deps) into a target dir, import it with the build venv's
    torch, with JIT disabled: the two modules must resolve to the shipped .so files."""
    out, _ = built
    venv_python = next((shared_cache / "venvs").glob("py3.11-torch2.14.1-cu130-*/bin/python"))
    target = tmp_path / "site"
    subprocess.run([str(venv_python), "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel(out, "flashinfer_python"))], check=True)
    code = (
        "import flashinfer.jit.env as e; from flashinfer.activation import get_act_and_mul_module;"
        "from flashinfer.norm import get_norm_module; import flashinfer.jit.core as c;"
        "print(e.FLASHINFER_AOT_DIR); get_act_and_mul_module('silu'); get_norm_module(); print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "FLASHINFER_DISABLE_JIT": "1",
           "FLASHINFER_CUDA_ARCH_LIST": "12.0f", "FLASHINFER_WORKSPACE_BASE": str(tmp_path)}
    env.pop("CUDA_HOME", None)
    result = subprocess.run([str(venv_python), "-c", code], env=env, text=True,
                            capture_output=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(target / "flashinfer" / "data" / "aot") in result.stdout


def test_vllm_configured_for_120_and_one_tu_compiled(built: tuple[Path, object],
                                                     shared_cache: Path) -> None:
    objs = list((shared_cache / "src").glob(
        "vllm-0.11.2-*/build/temp.*/CMakeFiles/_C.dir/csrc/quantization/activation_kernels.cu.o"))
    assert len(objs) == 1
    assert [str(e) for e in read_archs(objs[0])] == ["sm_120"]
    ninja = (objs[0].parents[4] / "build.ninja").read_text()
    assert "arch=compute_120" in ninja and "-std=c++20" in ninja  # our patch took effect


def test_rebuild_with_nothing_changed_compiles_nothing(built: tuple[Path, object],
                                                       repo_root: Path, shared_cache: Path,
                                                       session_build_root: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    out, _ = built
    # The build root of `built` (it names the prefix-map spec file on the compile command
    # lines): another one is another command line, and everything would recompile.
    monkeypatch.setenv("VLLM_WHEELS_BUILD_ROOT", str(session_build_root))
    # Every object of the first build, as it is before the rebuild: a recompile (even one
    # the compile cache serves) writes the object again.
    first = json.loads((out / "build-summary.json").read_text())
    objects = {o: o.stat().st_mtime_ns for package in first["packages"]
               for o in Path(package["tree"]).rglob("*.o")}
    assert len(objects) >= 2  # vLLM's translation unit and the fixture's kernel at least
    again = cli("build-wheels", "--stack", "build/stacks/ci-cuda13.toml", "--cache-dir",
                str(shared_cache), "--output-dir", str(out), cwd=repo_root)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "build-summary.json").read_text())
    assert {p["package"] for p in summary["packages"]} == {p["package"] for p in
                                                           first["packages"]}
    for package in summary["packages"]:
        stats = package["compile_cache_stats"]
        # Not one compile request: no miss, and no hit either (a hit is a recompile that
        # the cache served).
        assert stats["misses"] == 0, (package["package"], stats)
        assert stats["hits"] == 0, (package["package"], stats)
    # The measuring launcher in front of every compiler saw no translation unit (calls
    # without a source, such as a compiler's version query, are not compiles).
    telemetry = json.loads((out / "build-telemetry.json").read_text())
    compiled = [u for u in telemetry["units"] if u.get("source")]
    assert compiled == [], compiled[:3]
    # Ninja and setuptools left every object as it was.
    assert {o: o.stat().st_mtime_ns for o in objects} == objects


def test_mismatched_stack_is_refused_before_compiling(repo_root: Path, tmp_path: Path,
                                                      shared_cache: Path) -> None:
    """The cu128 stack's CUDA 12.8 torch with this machine's nvcc 13: exit 3, before
    any venv is created or anything compiles."""
    text = (repo_root / "build" / "stacks" / "rtx5090-cu128.toml").read_text().replace(
        'python = "3.12"', 'python = "3.11"')
    stack = tmp_path / "mismatch.toml"
    stack.write_text(text)
    env_home = os.environ.get("CUDA_HOME")
    if env_home and "12." in env_home:
        pytest.skip("a CUDA 12 toolkit is configured here")
    result = cli("build-wheels", "--stack", str(stack), "--cache-dir", str(shared_cache),
                 "--output-dir", str(tmp_path / "out"), cwd=repo_root)
    assert result.returncode == 3, result.stderr
    assert "nvcc is CUDA 13.0 but torch 2.9.0 is built for CUDA 12.8" in result.stderr
    assert "fix:" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not list((shared_cache / "venvs").glob("py3.11-torch2.9.0-*"))


def test_build_telemetry_measures_the_real_translation_units(built: tuple[Path, object],
                                                              repo_root: Path,
                                                              shared_cache: Path,
                                                              tmp_path: Path,
                                                              session_build_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Every unit through the measuring launcher: vLLM's TU via CMake's compiler launcher,
    the fixture's kernel via PYTORCH_NVCC. Their objects are removed first so that this
    build compiles them whatever the cache held (the compile cache may still serve them)."""
    monkeypatch.setenv("VLLM_WHEELS_BUILD_ROOT", str(session_build_root))  # as `built`'s
    vllm_obj = next((shared_cache / "src").glob(
        "vllm-0.11.2-*/build/temp.*/CMakeFiles/_C.dir/csrc/quantization/activation_kernels.cu.o"))
    ext_objs = list((shared_cache / "src").glob("tiny-cuda-ext-0.1.0-*/build/temp.*/**/*.o"))
    assert ext_objs
    for obj in [vllm_obj, *ext_objs]:
        obj.unlink()
    # A shared record (--unit-costs: another machine's build-telemetry.json) names the
    # vLLM unit's peak: this build runs from it, each unit admitted by its recorded peak
    # (the others by gb_per_job), and its own telemetry says what each reserved.
    unit_key = "csrc/quantization/activation_kernels.cu"
    shared = tmp_path / "other-machine-telemetry.json"
    shared.write_text(json.dumps({"schema_version": 1, "units": [{
        "package": "vllm", "source": f"/elsewhere/cache/src/vllm-0.11.2-0/{unit_key}",
        "cwd": "/elsewhere/cache/src/vllm-0.11.2-0/build/temp.linux-x86_64-cpython-311",
        "wall_s": 100.0, "cpu_s": 99.0, "peak_rss_kb": 1_234_567, "exit": 0}]}))
    out = tmp_path / "wheels"
    result = cli("build-wheels", "--stack", "build/stacks/ci-cuda13.toml", "--cache-dir",
                 str(shared_cache), "--output-dir", str(out), "--unit-costs", str(shared),
                 cwd=repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "build-summary.json").read_text())
    assert summary["telemetry"]["file"] == "build-telemetry.json"
    data = json.loads((out / "build-telemetry.json").read_text())
    assert data["schema_version"] == 1 and data["compile_cache"] == "sccache"
    units = {(u["package"], Path(u["source"]).name): u for u in data["units"] if u["source"]}
    for key in [("vllm", "activation_kernels.cu"), ("tiny-cuda-ext", "kernel.cu")]:
        unit = units[key]
        assert unit["compiler"] == "nvcc" and unit["exit"] == 0, unit
        assert unit["wall_s"] > 0 and unit["cpu_s"] > 0 and unit["peak_rss_kb"] > 0, unit
        assert unit["cache"] in ("hit", "miss", "unknown"), unit
        assert unit["reserved_kb"] > 0 and unit["budget_kb"] == \
            summary["build"]["memory_budget_kb"], unit
    assert summary["build"]["parallelism_source"] == "record"
    assert summary["build"]["unit_costs"] == f"{shared} (--unit-costs)"
    assert units[("vllm", "activation_kernels.cu")]["reserved_kb"] == 1_234_567
    assert units[("vllm", "activation_kernels.cu")]["unit"] == unit_key
    # What compiled (not served by the compile cache) is merged into this cache's record.
    records = {r["package"]: r["units"] for r in (
        json.loads(p.read_text()) for p in (shared_cache / "unit-costs").glob("*.json"))}
    for (package, _), unit in units.items():
        if unit["cache"] == "miss":
            assert unit["peak_rss_kb"] <= records[package][unit["unit"]]["peak_rss_kb"], unit
    s = data["summary"]
    assert s["units"] == len(data["units"]) and s["cpu_seconds"] > 0
    assert s["parallel_efficiency"] is not None and s["peak_rss_kb"] > 0
    vllm_ninja = next(p for p in data["packages"] if p["package"] == "vllm")["ninja"]
    assert any(b["critical_path"][-1].endswith("activation_kernels.cu.o") for b in vllm_ninja)
    # The table at the end of the build, on the console.
    table = result.stderr[result.stderr.index("Build telemetry:"):]
    assert "vllm: activation_kernels.cu" in table and "tiny-cuda-ext: kernel.cu" in table
    assert "parallel efficiency" in table and "hit rate" in table


def test_pip_cuda_home_driver_stub_keeps_the_libcuda_dependency(built: tuple[Path, object],
                                                                shared_cache: Path,
                                                                tmp_path: Path) -> None:
    """vLLM 0.20's _C links CUDA::cuda_driver (the assembled CUDA home's stubs/libcuda.so)
    and calls the driver API directly. Torch's link lines turn --as-needed on, so a stub
    that defines no symbols is dropped and the extension loses DT_NEEDED libcuda.so.1:
    `undefined symbol: cuGetProcAddress_v2` at import on every GPU host (seen on an H200,
    verify/results/2026-11-29-h200-e2e). The stub must define what cuda.h declares."""
    stub = next((shared_cache / "cuda-home").glob("py3.11-torch2.14.1-cu130-*/lib64/stubs/libcuda.so"))
    use = tmp_path / "use.c"
    use.write_text("extern int cuGetProcAddress_v2(void); extern int cuMemCreate(void);\n"
                   "int f(void) { return cuGetProcAddress_v2() + cuMemCreate(); }\n")
    out = tmp_path / "use.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(use), "-Wl,--as-needed",
                    str(stub)], check=True)
    dynamic = subprocess.run(["readelf", "-d", str(out)], check=True, capture_output=True,
                             text=True).stdout
    assert "[libcuda.so.1]" in dynamic, dynamic
