"""verify_abi building blocks: CUDA's arch compatibility rules, the runtime's wheel tags,
the extension suffixes it looks for, the ELF reader + loader model on small libraries gcc
compiles here (real ELF files, milliseconds each), and the import test's program run by
this interpreter over such a tree."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag

from vllm_wheels.verify.abi import split_host_gpus
from vllm_wheels.verify.checks import (
    Check,
    LinkScope,
    check_archs,
    check_companions,
    check_needed,
    check_python_tag,
    check_symbols,
    file_found,
    global_scope,
    parse_arch,
    python_for_suffix,
    runtime_tags,
)
from vllm_wheels.verify.elf import demangle, read_elf
from vllm_wheels.verify.fatbin import FatbinEntry
from vllm_wheels.verify.runtime import (
    Gpu,
    Loader,
    PreloadLib,
    Runtime,
    TorchRuntime,
    read_torch_preload,
)
from vllm_wheels.verify.wheelfacts import WheelElf, WheelFacts


@pytest.mark.parametrize(("entry", "gpu", "runs"), [
    (FatbinEntry("sass", 120), (12, 0), True),
    (FatbinEntry("sass", 120), (12, 1), True),     # same major, higher minor
    (FatbinEntry("sass", 120), (10, 0), False),
    (FatbinEntry("sass", 100), (12, 0), False),    # cubins never run on another major
    (FatbinEntry("sass", 90, "a"), (9, 0), True),
    (FatbinEntry("sass", 120, "a"), (12, 1), False),  # `a`: exact arch only
    (FatbinEntry("sass", 120, "f"), (12, 1), True),   # `f`: the family
    (FatbinEntry("sass", 120, "f"), (10, 0), False),
    (FatbinEntry("ptx", 80), (12, 0), True),       # PTX JIT-compiles forward
    (FatbinEntry("ptx", 120), (9, 0), False),
])
def test_cuda_compatibility_rules(entry: FatbinEntry, gpu: tuple[int, int], runs: bool) -> None:
    assert entry.runs_on(*gpu) is runs


def test_arch_spellings() -> None:
    assert parse_arch("12.0") == (12, 0)
    assert parse_arch("12.0a") == (12, 0)
    assert parse_arch("9.0+PTX") == (9, 0)
    assert parse_arch("sm_120f") == (12, 0)
    assert parse_arch("nonsense") is None
    assert FatbinEntry("sass", 120, "a").name == "sm_120a"
    assert str(FatbinEntry("ptx", 80)) == "compute_80 (PTX)"


def _runtime(glibc: tuple[int, int] | None, version: tuple[int, int, int] = (3, 11, 7),
             ld_library_path: list[str] | None = None) -> Runtime:
    return Runtime(python=Path("/x/python"), executable=Path("/x/python"), version=version,
                   implementation="cpython", abiflags="", platform="linux-x86_64", glibc=glibc,
                   sys_path=[], site_packages=Path("/site"),
                   ld_library_path=ld_library_path or [], libpython=None, dists={},
                   torch=None, torch_error=None)


def test_runtime_tags_follow_glibc_and_python() -> None:
    tags = runtime_tags(_runtime((2, 28)))
    assert Tag("cp38", "abi3", "manylinux_2_28_x86_64") in tags  # vLLM's wheel tag
    assert Tag("cp311", "cp311", "manylinux2014_x86_64") in tags
    assert Tag("py3", "none", "linux_x86_64") in tags
    assert Tag("cp38", "abi3", "manylinux_2_31_x86_64") not in tags  # needs a newer glibc
    assert Tag("cp312", "cp312", "linux_x86_64") not in tags


def test_demangle() -> None:
    assert demangle("_ZN3c104cuda12device_countEv") == "c10::cuda::device_count()"
    assert demangle("plain_c_name") == "plain_c_name"


@pytest.fixture
def libs(tmp_path: Path) -> Path:
    """deps/libdep.so exports dep_fn; pkg/libmain.so needs it through RUNPATH $ORIGIN/../deps,
    calls nowhere_fn (defined nowhere) and memcpy (versioned GLIBC), and has a weak ref."""
    (tmp_path / "deps").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "dep.c").write_text("int dep_fn(int x) { return x + 1; }\n"
                                    "static int hidden_fn(void) { return 0; }\n"
                                    "int use_hidden(void) { return hidden_fn(); }\n")
    (tmp_path / "main.c").write_text(
        "#include <string.h>\nint dep_fn(int); int nowhere_fn(void);\n"
        "extern int maybe_fn(void) __attribute__((weak));\n"
        "int main_fn(char* d, const char* s, int n) { memcpy(d, s, n);"
        " return dep_fn(n) + nowhere_fn() + (maybe_fn ? maybe_fn() : 0); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "deps" / "libdep.so"),
                    str(tmp_path / "dep.c"), "-Wl,-soname,libdep.so"], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "pkg" / "libmain.so"),
                    str(tmp_path / "main.c"), f"-L{tmp_path / 'deps'}", "-ldep",
                    "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../deps"], check=True)
    return tmp_path


def test_elf_reader_sees_what_the_loader_will_need(libs: Path) -> None:
    main = read_elf(libs / "pkg" / "libmain.so")
    assert "libdep.so" in main.needed and main.runpath == ["$ORIGIN/../deps"]
    undefined = {u.name: u for u in main.undefined}
    assert not undefined["nowhere_fn"].weak and undefined["maybe_fn"].weak
    assert undefined["memcpy"].version and undefined["memcpy"].version.startswith("GLIBC_")
    assert undefined["memcpy"].version_file == "libc.so.6"
    assert "main_fn" in main.exports and "nowhere_fn" not in main.exports
    dep = read_elf(libs / "deps" / "libdep.so")
    assert "dep_fn" in dep.exports and "hidden_fn" not in dep.exports
    assert main.python_init is None


def test_loader_resolves_origin_runpath_and_reports_missing(libs: Path) -> None:
    loader = Loader(_runtime((2, 36)), overlay={})
    objects, missing = loader.closure(str(libs / "pkg" / "libmain.so"))
    paths = [p for p, _ in objects]
    assert str(libs / "deps" / "libdep.so") in paths
    assert any(Path(p).name == "libc.so.6" for p in paths)
    assert missing == []
    (libs / "deps" / "libdep.so").rename(libs / "libdep.so")
    loader = Loader(_runtime((2, 36)), overlay={})
    _objects, missing = loader.closure(str(libs / "pkg" / "libmain.so"))
    assert missing == [("libdep.so", str(libs / "pkg" / "libmain.so"))]
    # LD_LIBRARY_PATH is searched too (before RUNPATH, as glibc does).
    loader = Loader(_runtime((2, 36), ld_library_path=[str(libs)]), overlay={})
    assert loader.closure(str(libs / "pkg" / "libmain.so"))[1] == []


def test_overlay_places_wheel_files_at_their_installed_paths(libs: Path) -> None:
    """A wheel's own libraries resolve where pip will put them, before any install."""
    dep = read_elf(libs / "deps" / "libdep.so")
    main = read_elf(libs / "pkg" / "libmain.so")
    overlay = {"/site/pkg/libmain.so": main, "/site/deps/libdep.so": dep}
    loader = Loader(_runtime((2, 36)), overlay=overlay)
    objects, missing = loader.closure("/site/pkg/libmain.so")
    assert missing == [] and "/site/deps/libdep.so" in [p for p, _ in objects]


def test_unpack_cache_is_pruned_by_age_and_dead_temp_dirs(tmp_path: Path) -> None:
    import os
    import time

    from vllm_wheels.verify.wheelfacts import clear_unpacked

    old, recent, current = (tmp_path / n for n in ("old", "recent", "current"))
    for d in (old, recent, current):
        d.mkdir()
    stale = time.time() - 30 * 86400
    os.utime(old, (stale, stale))
    os.utime(current, (stale, stale))
    dead = tmp_path / ".abc.tmp-999999999"  # no such pid
    live = tmp_path / f".abc.tmp-{os.getpid()}"
    dead.mkdir()
    live.mkdir()
    clear_unpacked(tmp_path, keep={"current"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["recent", "current", live.name])


def _facts(name: str, version: str, requires: tuple[str, ...]) -> WheelFacts:
    return WheelFacts(path=Path(f"/w/{name}-{version}-py3-none-any.whl"), sha256="0" * 64,
                      name=name, version=version, tags=frozenset(), manifest=None,
                      requires=[Requirement(r) for r in requires], unpacked=Path("/u"))


def test_companions_flashinfer_family_and_tvm_ffi() -> None:
    vllm = _facts("vllm", "0.11.2", ("flashinfer-python==0.5.2", "apache-tvm-ffi==0.1.4"))
    rt = _runtime((2, 36))
    rt.dists.update({"flashinfer-python": "0.5.2", "flashinfer-cubin": "0.5.2",
                     "apache-tvm-ffi": "0.1.4"})
    assert check_companions(vllm, rt, [vllm]).status == "pass"
    rt.dists["flashinfer-cubin"] = "0.5.3"  # cubin from another release: kernels differ
    result = check_companions(vllm, rt, [vllm])
    assert result.status == "fail" and "FlashInfer packages differ" in result.summary
    rt.dists["flashinfer-cubin"] = "0.5.2"
    rt.dists["apache-tvm-ffi"] = "0.1.5"
    result = check_companions(vllm, rt, [vllm])
    assert result.status == "fail" and "apache-tvm-ffi 0.1.5" in result.summary
    # The FlashInfer in the wheel set counts, not the runtime's: a set's 0.5.3 fails the
    # ==0.5.2 pin (and the family) although the runtime has 0.5.2 ...
    fi = _facts("flashinfer-python", "0.5.3", ())
    result = check_companions(vllm, rt, [vllm, fi])
    assert result.status == "fail"
    assert result.summary == (
        "flashinfer-python 0.5.3 in this wheel set but the wheel needs ==0.5.2; "
        "apache-tvm-ffi 0.1.5 in the runtime but the wheel needs ==0.1.4; "
        "FlashInfer packages differ: flashinfer-cubin 0.5.2, flashinfer-python 0.5.3")
    # ... and a set's 0.5.2 passes although the runtime has 0.5.3.
    rt.dists.update({"apache-tvm-ffi": "0.1.4", "flashinfer-python": "0.5.3"})
    result = check_companions(vllm, rt, [vllm, _facts("flashinfer-python", "0.5.2", ())])
    assert result.status == "pass"
    assert result.summary == ("flashinfer-python==0.5.2: 0.5.2 in this wheel set; "
                              "apache-tvm-ffi==0.1.4: 0.1.4 in the runtime")


# ------------------------------------------------ extension suffixes the runtime looks for

PY311_SUFFIXES = [".cpython-311-x86_64-linux-gnu.so", ".abi3.so", ".so"]


@pytest.mark.parametrize(("suffix", "needs"), [
    (".cpython-312-x86_64-linux-gnu.so", "CPython 3.12"),
    (".cpython-313t-x86_64-linux-gnu.so", "CPython 3.13t (free-threaded)"),
    (".cpython-311-aarch64-linux-gnu.so", "CPython 3.11 on aarch64-linux-gnu"),
    (".pypy310-pp73-x86_64-linux-gnu.so", "PyPy 3.10"),
    (".abi3.so", "a CPython that loads stable-ABI (abi3) modules (not a free-threaded build)"),
])
def test_python_a_suffix_needs(suffix: str, needs: str) -> None:
    assert python_for_suffix(suffix, PY311_SUFFIXES) == needs


def _extension(directory: Path, filename: str) -> Path:
    """A real ELF shared object exporting PyInit_<module> (all the static check reads)."""
    module = filename.split(".", 1)[0]
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{module}.c"
    source.write_text(f"void* PyInit_{module}(void) {{ return 0; }}\n")
    target = directory / filename
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(target), str(source)], check=True)
    return target


def _wheel_with(root: Path, members: list[str]) -> WheelFacts:
    facts = WheelFacts(path=Path("/w/vllm-0.20.0-cp38-abi3-manylinux_2_35_x86_64.whl"),
                       sha256="0" * 64, name="vllm", version="0.20.0",
                       tags=frozenset({Tag("cp38", "abi3", "manylinux_2_35_x86_64")}),
                       requires=[], manifest=None, unpacked=root)
    for member in members:
        so = _extension(root / Path(member).parent, Path(member).name)
        facts.elfs.append(WheelElf(member, f"/site/{member}", so, read_elf(so, member)))
    return facts


def test_python_tag_judges_each_extension_suffix_not_only_the_tag(tmp_path: Path) -> None:
    """vLLM 0.20.0's shape: a cp38-abi3 wheel (installs on 3.11) with a .cpython-312 file,
    which Python 3.11's import system never finds."""
    gemm = "vllm/third_party/deep_gemm/_C.cpython-312-x86_64-linux-gnu.so"
    wheel = _wheel_with(tmp_path, ["vllm/_C.abi3.so", gemm])
    rt = _runtime((2, 36))
    rt.extension_suffixes = PY311_SUFFIXES
    result = check_python_tag(wheel, rt)
    assert result.status == "fail"
    assert result.evidence["matched"] == "cp38-abi3-manylinux_2_35_x86_64"
    assert result.evidence["unfindable"] == {gemm: {
        "module": "vllm.third_party.deep_gemm._C",
        "suffix": ".cpython-312-x86_64-linux-gnu.so", "needs": "CPython 3.12"}}
    assert result.summary.endswith(
        f"{gemm}: `import vllm.third_party.deep_gemm._C` never finds it on Python 3.11 (which "
        "looks for .cpython-311-x86_64-linux-gnu.so, .abi3.so, .so): needs CPython 3.12")
    # On 3.12 both files are found.
    rt.version = (3, 12, 3)
    rt.extension_suffixes = [".cpython-312-x86_64-linux-gnu.so", ".abi3.so", ".so"]
    assert check_python_tag(wheel, rt).status == "pass"
    # A free-threaded 3.13 has no abi3 suffix: vllm/_C.abi3.so is lost there (the tag too).
    rt.version, rt.abiflags = (3, 13, 1), "t"
    rt.extension_suffixes = [".cpython-313t-x86_64-linux-gnu.so", ".so"]
    lost = check_python_tag(wheel, rt).evidence["unfindable"]
    assert lost["vllm/_C.abi3.so"]["needs"].startswith("a CPython that loads stable-ABI")


def test_one_file_per_python_is_fine_where_one_of_them_is_found(tmp_path: Path) -> None:
    """The import system takes the first file of its suffix order; the others are unused."""
    wheel = _wheel_with(tmp_path, ["pkg/_C.cpython-311-x86_64-linux-gnu.so",
                                   "pkg/_C.cpython-312-x86_64-linux-gnu.so"])
    files = wheel.extension_modules()["pkg._C"]
    assert file_found(files, PY311_SUFFIXES) is files[0]
    rt = _runtime((2, 36))
    rt.extension_suffixes = PY311_SUFFIXES
    assert check_python_tag(wheel, rt).status == "pass"


def test_module_name_of_a_platlib_member_is_where_it_installs(tmp_path: Path) -> None:
    wheel = _wheel_with(tmp_path, ["vllm-0.20.0.data/platlib/vllm/_C.abi3.so"])
    assert list(wheel.extension_modules()) == ["vllm._C"]


def test_import_helper_resolves_by_name_with_the_interpreters_own_suffixes(tmp_path: Path
                                                                         ) -> None:
    """The real import system of this interpreter, over an unpacked tree: a module whose
    file has this Python's suffix imports (its package's __init__ is not run), one whose
    file is for the next CPython is not found, as `import` would say after installing."""
    import sys
    import sysconfig

    from vllm_wheels.verify.abi import IMPORT_SMOKE, WheelReport, import_plan

    own = sysconfig.get_config_var("EXT_SUFFIX")
    major, minor = sys.version_info[:2]
    foreign = own.replace(f"-{major}{minor}", f"-{major}{minor + 1}")
    include = sysconfig.get_paths()["include"]
    root = tmp_path / "unpacked"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("raise RuntimeError('__init__ must not run')\n")
    for module, directory, suffix in (("ok", root / "pkg", own),
                                      ("_C", root / "pkg" / "sub", foreign)):
        source = tmp_path / f"{module}.c"
        source.write_text(
            "#include <Python.h>\n"
            f"static struct PyModuleDef d = {{PyModuleDef_HEAD_INIT, \"{module}\", 0, -1, 0}};\n"
            f"PyMODINIT_FUNC PyInit_{module}(void) {{ return PyModule_Create(&d); }}\n")
        subprocess.run(["gcc", "-shared", "-fPIC", f"-I{include}", "-o",
                        str(directory / f"{module}{suffix}"), str(source)], check=True)
    facts = WheelFacts(path=Path("/w/pkg-1-py3-none-any.whl"), sha256="0" * 64, name="pkg",
                       version="1", tags=frozenset(), requires=[], manifest=None, unpacked=root)
    for member in (f"pkg/ok{own}", f"pkg/sub/_C{foreign}"):
        facts.elfs.append(WheelElf(member, f"/site/{member}", root / member,
                                   read_elf(root / member, member)))
    plan = import_plan([WheelReport(facts)])
    assert plan["packages"] == {"pkg": [str(root / "pkg")],
                                "pkg.sub": [str(root / "pkg" / "sub")]}
    plan.update(torch=False, gpu_op=False)
    done = subprocess.run([sys.executable, str(IMPORT_SMOKE), json.dumps(plan)],
                          capture_output=True, text=True, check=True)
    results = {r["module"]: r for r in (json.loads(line.split(" ", 1)[1])
                                        for line in done.stdout.splitlines())}
    assert results["pkg.ok"]["ok"] is True
    assert results["pkg.ok"]["origin"] == str(root / f"pkg/ok{own}")
    assert results["pkg.sub._C"] == {
        "module": "pkg.sub._C", "ok": False, "found": False, "origin": None,
        "detail": "ModuleNotFoundError: No module named 'pkg.sub._C'"}


# ------------------------------------- --arch on a host whose GPU is not a target (H200)

H200 = Gpu("NVIDIA H200", (9, 0), "580.95.05")
RTX5090 = Gpu("NVIDIA GeForce RTX 5090", (12, 0), "580.95.05")
DGX_SPARK = Gpu("NVIDIA GB10", (12, 1), "580.95.05")


def _gpu_wheel(root: Path, fatbin: list[FatbinEntry], manifest: dict[str, object] | None
               ) -> WheelFacts:
    """One real extension (gcc ELF); its fatbin entries are what the fatbin reader returns
    for an nvcc object of those archs (the reader itself is checked against cuobjdump in
    tests/integration/test_verify_abi.py)."""
    facts = _wheel_with(root, ["vllm/_C.abi3.so"])
    facts.manifest = manifest
    elf = facts.elfs[0]
    facts.elfs[0] = dataclasses.replace(elf, info=dataclasses.replace(elf.info, fatbin=fatbin))
    return facts


@pytest.mark.parametrize("manifest", [None, {"cuda_arch_list": ["12.0"]}])
def test_arch_12_0_passes_on_a_host_whose_gpu_is_not_a_target(
        tmp_path: Path, manifest: dict[str, object] | None) -> None:
    wheel = _gpu_wheel(tmp_path, [FatbinEntry("sass", 120), FatbinEntry("sass", 120, "f")],
                       manifest)
    rt = _runtime((2, 36))
    rt.non_target_gpus = [H200]
    result = check_archs(wheel, rt, ["12.0"])
    assert result.status == "pass", result.summary
    assert result.summary == (
        "1 object(s) with GPU code; arch list 12.0 covered; this host's GPU NVIDIA H200 (9.0) "
        "is not a target: its code is not required, and these wheels' kernels do not run on "
        "it (import only, no GPU op)")
    assert result.evidence["targets"] == {"arch list 12.0": "12.0"}
    assert result.evidence["host_gpus_not_targeted"] == ["GPU NVIDIA H200 (9.0)"]
    # The control: the same H200 as a host GPU to serve on (no split) is a gap.
    rt.gpus, rt.non_target_gpus = [H200], []
    failed = check_archs(wheel, rt, ["12.0"])
    assert failed.status == "fail"
    assert "vllm/_C.abi3.so has nothing for GPU NVIDIA H200 (9.0)" in failed.summary
    # And a 12.0 wheel still fails for a target it lacks, whatever the host.
    rt.gpus, rt.non_target_gpus = [], [H200]
    assert check_archs(wheel, rt, ["10.0"]).status == "fail"


def test_split_moves_host_gpus_of_another_major_than_every_target() -> None:
    rt = _runtime((2, 36))
    rt.gpus = [H200, RTX5090]
    split_host_gpus(rt, ["12.0"])
    assert (rt.gpus, rt.non_target_gpus) == ([RTX5090], [H200])
    # A GPU of a target's major stays, whatever the minor or the spelling of the target.
    for targets in (["12.0"], ["12.0a"], ["sm_120f"], ["12.0+PTX"]):
        rt.gpus = [DGX_SPARK]
        split_host_gpus(rt, targets)
        assert (rt.gpus, rt.non_target_gpus) == ([DGX_SPARK], []), targets
    # Every target's major counts: 9.0 among the targets keeps the H200.
    rt.gpus = [H200, RTX5090]
    split_host_gpus(rt, ["9.0a", "12.0"])
    assert (rt.gpus, rt.non_target_gpus) == ([H200, RTX5090], [])


# ------------------------------------------- the CUDA libraries `import torch` preloads

# torch/__init__.py's CUDA preloading in the shape of torch 2.11 (the wheels with
# nvidia/cu13/lib): names, order, lists and the /proc/self/maps test as torch has them.
TORCH_2_11_INIT = '''
import ctypes, glob, os, sys


def _get_cuda_dep_paths(path, lib_folder, lib_name):
    from torch.version import cuda as cuda_version
    paths = glob.glob(os.path.join(path, "nvidia", lib_folder, "lib", lib_name))
    if cuda_version is not None:
        major = cuda_version.split(".")[0]
        paths += glob.glob(os.path.join(path, "nvidia", f"cu{major}", "lib", lib_name))
    return paths + glob.glob(os.path.join(path, lib_folder, "lib", lib_name))


def _preload_cuda_lib(lib_folder, lib_name, required=True):
    lib_path = None
    for path in sys.path:
        candidate_lib_paths = _get_cuda_dep_paths(path, lib_folder, lib_name)
        if candidate_lib_paths:
            lib_path = candidate_lib_paths[0]
            break
    if not lib_path and required:
        raise ValueError(f"{lib_name} not found in the system path {sys.path}")
    if lib_path:
        ctypes.CDLL(lib_path)


def _preload_cuda_deps(err=None):
    cuda_libs: list[tuple[str, str]] = [
        ("cublas", "libcublasLt.so.*[0-9]"),
        ("cublas", "libcublas.so.*[0-9]"),
        ("cudnn", "libcudnn.so.*[0-9]"),
        ("cuda_nvrtc", "libnvrtc.so.*[0-9]"),
        ("cuda_nvrtc", "libnvrtc-builtins.so.*[0-9]"),
        ("cuda_runtime", "libcudart.so.*[0-9]"),
        ("cuda_cupti", "libcupti.so.*[0-9]"),
        ("cufft", "libcufft.so.*[0-9]"),
        ("curand", "libcurand.so.*[0-9]"),
        ("nvjitlink", "libnvJitLink.so.*[0-9]"),
        ("cusparse", "libcusparse.so.*[0-9]"),
        ("cusparselt", "libcusparseLt.so.*[0-9]"),
        ("cusolver", "libcusolver.so.*[0-9]"),
        ("nccl", "libnccl.so.*[0-9]"),
        ("nvshmem", "libnvshmem_host.so.*[0-9]"),
        ("cufile", "libcufile.so.*[0-9]"),
    ]
    if err is not None and not [
        lib for _, lib in cuda_libs if lib.split(".", 1)[0] in err.args[0]
    ]:
        raise err
    for lib_folder, lib_name in cuda_libs:
        _preload_cuda_lib(lib_folder, lib_name)
    _preload_cuda_lib("nvtx", "libnvToolsExt.so.*[0-9]", required=False)


def _load_global_deps():
    here = os.path.abspath(__file__)
    global_deps_lib_path = os.path.join(os.path.dirname(here), "lib", "libtorch_global_deps.so")
    try:
        ctypes.CDLL(global_deps_lib_path, mode=ctypes.RTLD_GLOBAL)
        try:
            with open("/proc/self/maps") as f:
                _maps = f.read()
            if "libcudart.so" not in _maps:
                return
            _preload_cuda_deps()
        except Exception:
            pass
    except OSError as err:
        _preload_cuda_deps(err)
        ctypes.CDLL(global_deps_lib_path, mode=ctypes.RTLD_GLOBAL)
'''

# The shape before (torch 2.9 and its CUDA 12 wheels, one nvidia/<folder>/lib each): after
# the global deps, only NVRTC and nvJitLink, and only when libcudart came from the wheel;
# the full table only when libtorch_global_deps.so does not load.
TORCH_2_9_INIT = '''
import ctypes, glob, os, sys


def _preload_cuda_deps(lib_folder, lib_name):
    lib_path = None
    for path in sys.path:
        nvidia_path = os.path.join(path, "nvidia")
        if not os.path.exists(nvidia_path):
            continue
        candidate_lib_paths = glob.glob(os.path.join(nvidia_path, lib_folder, "lib", lib_name))
        if candidate_lib_paths and not lib_path:
            lib_path = candidate_lib_paths[0]
        if lib_path:
            break
    if not lib_path:
        raise ValueError(f"{lib_name} not found in the system path {sys.path}")
    ctypes.CDLL(lib_path)


def _load_global_deps():
    lib_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib",
                            "libtorch_global_deps.so")
    try:
        ctypes.CDLL(lib_path, mode=ctypes.RTLD_GLOBAL)
        try:
            with open("/proc/self/maps") as f:
                _maps = f.read()
            if "nvidia/cuda_runtime/lib/libcudart.so" not in _maps:
                return
            _preload_cuda_deps("cuda_nvrtc", "libnvrtc.so.*[0-9]")
            _preload_cuda_deps("nvjitlink", "libnvJitLink.so.*[0-9]")
        except Exception:
            pass
    except OSError as err:
        cuda_libs: dict[str, str] = {
            "cublas": "libcublas.so.*[0-9]",
            "cudnn": "libcudnn.so.*[0-9]",
            "cuda_nvrtc": "libnvrtc.so.*[0-9]",
            "cuda_runtime": "libcudart.so.*[0-9]",
            "nvjitlink": "libnvJitLink.so.*[0-9]",
        }
        is_cuda_lib_err = [
            lib for lib in cuda_libs.values() if lib.split(".")[0] in err.args[0]
        ]
        if not is_cuda_lib_err:
            raise err
        for lib_folder, lib_name in cuda_libs.items():
            _preload_cuda_deps(lib_folder, lib_name)
        ctypes.CDLL(lib_path, mode=ctypes.RTLD_GLOBAL)
'''

# Where each shape's wheels put the libraries (site-packages-relative), and the CUDA major.
CUDA_13_LIBS = {name: "nvidia/cu13/lib" for name in (
    "libcublasLt.so.13", "libcublas.so.13", "libnvrtc.so.13", "libnvrtc-builtins.so.13.0",
    "libcudart.so.13", "libcupti.so.13", "libcufft.so.12", "libcurand.so.10",
    "libnvJitLink.so.13", "libcusparse.so.12", "libcusolver.so.12", "libcufile.so.0")} | {
    "libcudnn.so.9": "nvidia/cudnn/lib", "libcusparseLt.so.0": "nvidia/cusparselt/lib",
    "libnccl.so.2": "nvidia/nccl/lib", "libnvshmem_host.so.3": "nvidia/nvshmem/lib"}
CUDA_12_LIBS = {"libcublas.so.12": "nvidia/cublas/lib", "libcudnn.so.9": "nvidia/cudnn/lib",
                "libnvrtc.so.12": "nvidia/cuda_nvrtc/lib",
                "libcudart.so.12": "nvidia/cuda_runtime/lib",
                "libnvJitLink.so.12": "nvidia/nvjitlink/lib"}
SHAPES = {"2.11": (TORCH_2_11_INIT, "13.0", CUDA_13_LIBS),
          "2.9": (TORCH_2_9_INIT, "12.8", CUDA_12_LIBS)}


def _gcc(target: Path, source: str, *args: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    c_file = target.parent / f".{target.name}.c"
    c_file.write_text(source)
    soname = [] if target.name == "libempty.so" else [f"-Wl,-soname,{target.name}"]
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(target), str(c_file), *soname,
                    *args], check=True)
    c_file.unlink()
    return target


def _cuda_torch_runtime(root: Path, shape: str, *, cudart_in_global_deps: bool = True,
                        global_deps_finds_cudart: bool = True, absent: tuple[str, ...] = (),
                        cudart_at: str | None = None) -> Runtime:
    """A runtime whose site-packages holds a CUDA torch of that shape: torch/__init__.py,
    torch/lib/libtorch_global_deps.so (real ELF) needing libcudart through its RPATH into
    nvidia/, and the nvidia wheels' libraries (real ELF; libnvrtc exports nvrtcVersion).
    cudart_at: libcudart moved there (a toolkit's, outside site-packages), the RPATH too."""
    text, cuda, libs = SHAPES[shape]
    site = root / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(text)
    cudart = next(n for n in libs if n.startswith("libcudart"))
    where = {**libs, cudart: f"../{cudart_at}"} if cudart_at else libs
    # One small library copied to every name (the loader marks a file without a soname by
    # its name), but NVRTC's, which defines nvrtcVersion.
    empty = _gcc(root / "empty" / "libempty.so", "int empty_x;\n")
    for name, folder in where.items():
        (site / folder).mkdir(parents=True, exist_ok=True)
        if name.startswith("libnvrtc.so"):
            _gcc(site / folder / name, "int nvrtcVersion(int* a, int* b) { return 0; }\n")
        else:
            shutil.copy(empty, site / folder / name)
    cudart_dir = (site / where[cudart]).resolve()
    link = ["-Wl,--no-as-needed", f"-L{cudart_dir}", f"-l:{cudart}"] \
        if cudart_in_global_deps else []
    # Torch's RPATH into nvidia/ (or none: libcudart then lies where only a preload finds it).
    rpath = str(cudart_dir) if cudart_at else \
        f"$ORIGIN/../../{libs[cudart]}" if global_deps_finds_cudart else "$ORIGIN"
    _gcc(site / "torch" / "lib" / "libtorch_global_deps.so", "int global_deps_x;\n", *link,
         "-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}")
    for name in absent:
        (site / libs[name] / name).unlink()
    rt = _runtime((2, 36))
    rt.sys_path = [site]
    rt.site_packages = site
    rt.torch = TorchRuntime(site / "torch", f"2.x+cu{cuda.replace('.', '')}", cuda, "0" * 40)
    return rt


def _nvrtc_wheel(root: Path, rt: Runtime, shape: str) -> WheelFacts:
    """vLLM's DeepGEMM _C in small: it needs libnvrtc.so.N and has no RPATH to it (the
    loader finds it only as an object already loaded); _D calls NVRTC without needing it."""
    libs = SHAPES[shape][2]
    nvrtc = next(n for n in libs if n.startswith("libnvrtc.so"))
    build = root / "build"
    _gcc(build / nvrtc, "int nvrtcVersion(int* a, int* b) { return 0; }\n")
    call = ("int nvrtcVersion(int*, int*);\n"
            "int {0}(void) {{ int a, b; return nvrtcVersion(&a, &b); }}\n")
    members = {"pkg/deep_gemm/_C.so": ("needs_nvrtc", [f"-L{build}", f"-l:{nvrtc}"]),
               "pkg/_D.so": ("assumes_nvrtc", [])}
    facts = WheelFacts(path=Path("/w/pkg-1.0-cp312-cp312-linux_x86_64.whl"), sha256="0" * 64,
                       name="pkg", version="1.0", tags=frozenset(), requires=[], manifest=None,
                       unpacked=root / "wheel")
    for member, (function, link) in members.items():
        so = _gcc(root / "wheel" / member, call.format(function), *link)
        facts.elfs.append(WheelElf(member, str(rt.site_packages / member), so,
                                   read_elf(so, member)))
    return facts


def _library_checks(rt: Runtime, wheel: WheelFacts) -> tuple[Check, Check]:
    """needed-libraries and undefined-symbols as verify_abi runs them."""
    loader = Loader(rt, {e.installed: e.info for e in wheel.elfs})
    exports = global_scope(loader, rt, True)
    scopes = [LinkScope(e, *loader.closure(e.installed), exports) for e in wheel.elfs]
    return check_needed(wheel, scopes, rt), check_symbols(wheel, scopes)


@pytest.mark.parametrize("shape", ["2.11", "2.9"])
def test_what_import_torch_preloads_is_found_by_soname_but_not_exported(
        tmp_path: Path, shape: str) -> None:
    """The false positive of the H200 verify build: DeepGEMM's _C needs libnvrtc.so.13,
    which `import torch` has already ctypes-loaded from nvidia/cu13/lib (torch 2.11 preloads
    its whole CUDA list once libcudart is loaded): found by soname, its symbols bound by the
    object that needs it. RTLD_LOCAL: an object that merely assumes NVRTC's symbols without
    needing the library finds none."""
    rt = _cuda_torch_runtime(tmp_path, shape)
    wheel = _nvrtc_wheel(tmp_path, rt, shape)
    needed, symbols = _library_checks(rt, wheel)
    assert needed.status == "pass", needed.summary
    assert symbols.status == "fail"
    assert symbols.summary == "pkg/_D.so: 1 unresolved: nvrtcVersion"


@pytest.mark.parametrize(("shape", "kwargs"), [
    ("2.11", {"cudart_in_global_deps": False}),  # a CPU torch: libcudart never loads
    ("2.11", {"absent": ("libcudnn.so.9",)}),  # torch stops at a required library absent
    ("2.9", {"cudart_at": "usr/local/cuda/lib64"}),  # cudart not from the wheel
])
def test_no_preload_where_torch_would_not_preload(tmp_path: Path, shape: str,
                                                  kwargs: dict[str, Any]) -> None:
    rt = _cuda_torch_runtime(tmp_path, shape, **kwargs)
    nvrtc = next(n for n in SHAPES[shape][2] if n.startswith("libnvrtc.so"))
    needed, symbols = _library_checks(rt, _nvrtc_wheel(tmp_path, rt, shape))
    assert needed.status == "fail"
    assert needed.summary.startswith(f"pkg/deep_gemm/_C.so: missing {nvrtc}")
    assert "pkg/deep_gemm/_C.so: 1 unresolved: nvrtcVersion" in symbols.summary


@pytest.mark.parametrize("shape", ["2.11", "2.9"])
def test_preload_before_retrying_global_deps_that_did_not_load(tmp_path: Path,
                                                                shape: str) -> None:
    """libtorch_global_deps.so does not find libcudart (no RPATH to it): torch preloads
    its list from nvidia/ (libcudart among them) and loads it again."""
    rt = _cuda_torch_runtime(tmp_path, shape, global_deps_finds_cudart=False)
    needed, _symbols = _library_checks(rt, _nvrtc_wheel(tmp_path, rt, shape))
    assert needed.status == "pass", needed.summary


def test_the_preload_list_is_read_from_the_runtimes_torch(tmp_path: Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text(TORCH_2_11_INIT)
    preload = read_torch_preload(init)
    assert preload is not None and preload.condition == "libcudart.so"
    assert [lib.pattern for lib in preload.after_load][3:6] == [
        "libnvrtc.so.*[0-9]", "libnvrtc-builtins.so.*[0-9]", "libcudart.so.*[0-9]"]
    assert len(preload.after_load) == 17 and preload.on_error == preload.after_load
    assert preload.after_load[-1] == PreloadLib("nvtx", "libnvToolsExt.so.*[0-9]", False)
    assert all(lib.required for lib in preload.after_load[:-1])
    init.write_text(TORCH_2_9_INIT)
    preload = read_torch_preload(init)
    assert preload is not None
    assert preload.condition == "nvidia/cuda_runtime/lib/libcudart.so"
    assert preload.after_load == (PreloadLib("cuda_nvrtc", "libnvrtc.so.*[0-9]"),
                                  PreloadLib("nvjitlink", "libnvJitLink.so.*[0-9]"))
    assert [lib.folder for lib in preload.on_error] == [
        "cublas", "cudnn", "cuda_nvrtc", "cuda_runtime", "nvjitlink"]
    # A torch without this code (or a shape not known): nothing beyond DT_NEEDED.
    init.write_text("def _load_global_deps():\n    pass\n")
    assert read_torch_preload(init) is None
    assert read_torch_preload(tmp_path / "missing.py") is None
