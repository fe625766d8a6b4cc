"""verify_abi on real ELF files against real runtimes.

- The CUDA 13 test stack's wheels (compiled in this test run against torch 2.14.1+cu130)
  against their own build venv (pass) and against the real torch 2.13.0 CPU release
  (fail, with the exact c10::cuda symbols and libraries the extension uses).
- A wheel someone else built (no manifest) linking the CUDA 12 runtime, against a CUDA 13
  torch: the libcudart major is caught.
- A C++ extension needing GLIBCXX_3.4.29 against a runtime whose LD_LIBRARY_PATH holds
  Debian 11's real libstdc++ (6.0.28, up to GLIBCXX_3.4.28).
- Fatbin reading compared with NVIDIA's cuobjdump on objects nvcc builds for 12.0, 12.0a,
  12.0f, 10.0a, 9.0a and PTX.
- The CLI against a missing interpreter and one without torch: "could not check", exit 9.
- vLLM 0.20.0's own DeepGEMM extension (cp38-abi3 wheel, but a .cpython-312 file) against
  Python 3.11: the static check and the import by name both say it is never found.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ci_support import CiBuild, cli, compile_extension, make_wheel, pypi_wheel

from vllm_wheels.build.sources import sha256_file
from vllm_wheels.build.toolchain import find_system_nvcc
from vllm_wheels.verify.fatbin import read_archs
from vllm_wheels.verify.report import passing_wheels

pytestmark = [pytest.mark.network, pytest.mark.compile]

# Debian 11's libstdc++6 (GCC 10.2): provides GLIBCXX up to 3.4.28. Pinned by sha256.
OLD_LIBSTDCXX_URL = ("https://deb.debian.org/debian/pool/main/g/gcc-10/"
                     "libstdc++6_10.2.1-6_amd64.deb")
OLD_LIBSTDCXX_SHA256 = "5c155c58935870bf3b4bfe769116841c0d286a74f59eccfd5645693ac23f06b1"


def verify(repo_root: Path, cache: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                dict[str, object] | None]:
    report = cache / "last-verify.json"
    report.unlink(missing_ok=True)
    result = cli("verify-abi", "--cache-dir", str(cache), "--json", str(report), *args,
                 cwd=repo_root)
    print(result.stdout[-6000:], result.stderr[-3000:])
    return result, json.loads(report.read_text()) if report.exists() else None


def built_wheels(ci_build: CiBuild) -> list[str]:
    """The test stack's wheel files, named one by one: given the directory, verify-abi
    would replace the verify-abi.json that build_wheels wrote there, which other tests
    (publishing) read."""
    return [str(p) for p in sorted(ci_build.out.glob("*.whl"))]


def checks_of(report: dict, prefix: str) -> dict[str, dict]:  # type: ignore[type-arg]
    wheel = next(w for w in report["wheels"] if w["filename"].startswith(prefix))
    return {c["name"]: c for c in wheel["checks"]}


def test_build_writes_a_passing_report_for_exactly_its_wheels(ci_build: CiBuild) -> None:
    passing = passing_wheels(ci_build.out / "verify-abi.json")
    on_disk = {p.name: sha256_file(p) for p in ci_build.out.glob("*.whl")}
    assert passing == on_disk and len(on_disk) == 2


def test_pass_against_the_torch_they_were_built_with(ci_build: CiBuild, repo_root: Path,
                                                     shared_cache: Path) -> None:
    result, report = verify(repo_root, shared_cache, "--wheels", *built_wheels(ci_build),
                            "--python", str(ci_build.build_python))
    assert result.returncode == 0, result.stderr
    assert report is not None and report["schema_version"] == 1 and report["passed"] is True
    ext = checks_of(report, "tiny_cuda_ext")
    assert ext["import"]["status"] == "pass"
    assert ext["undefined-symbols"]["status"] == "pass"
    assert ext["gpu-archs"]["evidence"]["contents"] == {
        "tiny_cuda_ext/_C.cpython-311-x86_64-linux-gnu.so": ["sm_120"]}
    fi = checks_of(report, "flashinfer_python")
    # tvm-ffi symbols resolve through libtvm_ffi.so, which tvm_ffi loads RTLD_GLOBAL.
    assert fi["undefined-symbols"]["status"] == "pass"
    assert fi["companions"]["status"] == "pass"


def test_fail_against_another_real_torch_with_the_exact_symbols(
        ci_build: CiBuild, torch_cpu_213: Path, repo_root: Path, shared_cache: Path) -> None:
    result, report = verify(repo_root, shared_cache, "--wheels", *built_wheels(ci_build),
                            "--python", str(torch_cpu_213))
    assert result.returncode == 8, result.stderr
    assert "ABI mismatch" in result.stderr
    assert report is not None and report["passed"] is False
    ext = checks_of(report, "tiny_cuda_ext")
    torch_check = ext["torch-version"]
    assert torch_check["status"] == "fail"
    assert "2.14.1+cu130" in torch_check["summary"] and "2.13.0+cpu" in torch_check["summary"]
    assert "torch==2.14.1" in torch_check["fix"]
    assert ext["cuda-major"]["status"] == "fail"
    # The fixture's binding.cpp calls exactly these two c10::cuda functions; a CPU torch
    # has neither (nor libc10_cuda.so).
    unresolved = ext["undefined-symbols"]["evidence"]["unresolved"]
    names = {s["demangled"] for syms in unresolved.values() for s in syms}
    assert names == {"c10::cuda::getCurrentCUDAStream(signed char)",
                     "c10::cuda::CUDAStream::stream() const"}
    assert ext["needed-libraries"]["status"] == "fail"
    assert "libc10_cuda.so" in ext["needed-libraries"]["summary"]
    # The real import agrees with the static verdict.
    assert ext["import"]["status"] == "fail"
    assert "libc10_cuda.so" in ext["import"]["summary"]
    # The human table says what differs and what to do.
    assert "FAIL  torch-version" in result.stdout and "fix: install torch==2.14.1" in result.stdout


@pytest.fixture(scope="module")
def cuda12_wheel(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """An extension linking the real CUDA 12 runtime (nvidia-cuda-runtime-cu12 from
    PyPI), packaged without our manifest: facts come from the wheel's ELF files."""
    work = tmp_path_factory.mktemp("cu12")
    wheel = pypi_wheel(shared_cache, "nvidia-cuda-runtime-cu12==12.9.79",
                       "nvidia_cuda_runtime_cu12-12.9.79-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract("nvidia/cuda_runtime/lib/libcudart.so.12", work)
    libdir = work / "nvidia" / "cuda_runtime" / "lib"
    so = compile_extension(
        "#include <Python.h>\nint cudaRuntimeGetVersion(int*);\n"
        "static PyObject* v(PyObject* s, PyObject* a) { int x = 0; cudaRuntimeGetVersion(&x);"
        " return PyLong_FromLong(x); }\n"
        "static PyMethodDef m[] = {{\"version\", v, METH_NOARGS, 0}, {0}};\n"
        "static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"cu12probe\", 0, -1, m};\n"
        "PyMODINIT_FUNC PyInit_cu12probe(void) { return PyModule_Create(&d); }\n",
        "cu12probe", work, extra=(f"-L{libdir}", "-l:libcudart.so.12"))
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    return make_wheel(work, "cu12probe", "1.0", f"{tag}-{tag}-linux_x86_64",
                      {f"cu12probe/{so.name}": so.read_bytes(),
                       "cu12probe/__init__.py": b""})


def test_libcudart_major_the_runtime_lacks(cuda12_wheel: Path, ci_build: CiBuild,
                                           repo_root: Path, shared_cache: Path) -> None:
    result, report = verify(repo_root, shared_cache, "--wheels", str(cuda12_wheel),
                            "--python", str(ci_build.build_python))
    assert result.returncode == 8
    assert report is not None
    checks = checks_of(report, "cu12probe")
    assert report["wheels"][0]["facts_from"] == "wheel metadata and ELF files"
    assert checks["needed-libraries"]["status"] == "fail"
    assert checks["needed-libraries"]["evidence"]["missing"] == {
        f"cu12probe/{next(iter(report['wheels'][0]['shared_objects'])).split('/')[-1]}":
            ["libcudart.so.12"]}
    assert "CUDA runtime of another CUDA major" in checks["needed-libraries"]["fix"]
    assert checks["cuda-major"]["status"] == "n/a"  # no torch coupling in this wheel
    assert checks["torch-version"]["status"] == "n/a"
    assert checks["import"]["status"] == "fail"
    assert "libcudart.so.12" in checks["import"]["summary"]


@pytest.fixture(scope="module")
def old_libstdcxx_runtime(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """A runtime whose LD_LIBRARY_PATH puts Debian 11's real libstdc++.so.6 first (as a
    conda-style environment or an old base image would)."""
    work = tmp_path_factory.mktemp("oldcxx")
    deb = shared_cache / "test-downloads" / "libstdc++6_10.2.1-6_amd64.deb"
    if not deb.exists() or sha256_file(deb) != OLD_LIBSTDCXX_SHA256:
        deb.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["curl", "-fsSL", "-o", str(deb), OLD_LIBSTDCXX_URL], check=True)
    assert sha256_file(deb) == OLD_LIBSTDCXX_SHA256
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is needed to unpack the Debian package")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
    libdir = work / "root" / "usr" / "lib" / "x86_64-linux-gnu"
    assert (libdir / "libstdc++.so.6").exists()
    wrapper = work / "python"
    wrapper.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={libdir} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def test_glibcxx_version_the_runtime_lacks(old_libstdcxx_runtime: Path, tmp_path: Path,
                                           repo_root: Path, shared_cache: Path) -> None:
    source = (
        "#include <Python.h>\n#include <cstddef>\n#include <new>\n#include <bits/functexcept.h>\n"
        "// std::__throw_bad_array_new_length entered libstdc++ in GCC 11 (GLIBCXX_3.4.29)\n"
        "static PyObject* alloc(PyObject*, PyObject* n) {\n"
        "  std::size_t k = PyLong_AsSize_t(n);\n"
        "  if (k > std::size_t(-1) / sizeof(int)) std::__throw_bad_array_new_length();\n"
        "  ::operator delete(::operator new(k * sizeof(int))); Py_RETURN_NONE; }\n"
        "static PyMethodDef m[] = {{\"alloc\", alloc, METH_O, 0}, {0}};\n"
        "static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"newcxx\", 0, -1, m};\n"
        "PyMODINIT_FUNC PyInit_newcxx(void) { return PyModule_Create(&d); }\n")
    so = compile_extension(source, "newcxx", tmp_path, cxx=True)
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    whl = make_wheel(tmp_path, "newcxx", "1.0", f"{tag}-{tag}-linux_x86_64",
                     {so.name: so.read_bytes()})
    # Against this machine's own libstdc++ (GCC 12): passes.
    ok, _ = verify(repo_root, shared_cache, "--wheels", str(whl), "--python", sys.executable)
    assert ok.returncode == 0, ok.stdout
    result, report = verify(repo_root, shared_cache, "--wheels", str(whl), "--python",
                            str(old_libstdcxx_runtime))
    assert result.returncode == 8
    assert report is not None
    checks = checks_of(report, "newcxx")
    versions = checks["symbol-versions"]
    assert versions["status"] == "fail"
    assert versions["evidence"]["missing"] == {so.name: [
        "GLIBCXX_3.4.29 from libstdc++.so.6 (runtime's provides up to GLIBCXX_3.4.28)"]}
    assert checks["import"]["status"] == "fail"
    assert "GLIBCXX_3.4.29" in checks["import"]["summary"]  # the loader's own words


def _nvcc() -> Path:
    nvcc, _ = find_system_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on this machine")
    return nvcc.path


@pytest.fixture(scope="module")
def cuobjdump(shared_cache: Path) -> Path:
    """NVIDIA's cuobjdump from PyPI (nvidia-cuda-cuobjdump), the reference reader."""
    wheel = pypi_wheel(shared_cache, "nvidia-cuda-cuobjdump==13.5.37",
                       "nvidia_cuda_cuobjdump-13.5.37-*.whl")
    target = wheel.parent / "cuobjdump-bin"
    binary = target / "nvidia" / "cu13" / "bin" / "cuobjdump"
    if not binary.exists():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target)
        binary.chmod(0o755)
    return binary


@pytest.mark.parametrize("gencodes", [
    ("compute_120,code=sm_120", "compute_120a,code=sm_120a", "compute_90a,code=sm_90a",
     "compute_120,code=compute_120", "compute_80,code=compute_80"),
    ("compute_120f,code=sm_120f", "compute_100a,code=sm_100a"),
], ids=["plain-a-ptx", "family"])
def test_fatbin_reader_agrees_with_cuobjdump(gencodes: tuple[str, ...], tmp_path: Path,
                                             cuobjdump: Path) -> None:
    kernel = tmp_path / "k.cu"
    kernel.write_text("__global__ void scale(float* x, float a) { x[threadIdx.x] *= a; }\n"
                      "extern \"C\" void launch(float* x) { scale<<<1, 32>>>(x, 2.f); }\n")
    lib = tmp_path / "libk.so"
    args = [a for g in gencodes for a in ("-gencode", f"arch={g}")]
    subprocess.run([str(_nvcc()), "-shared", "-Xcompiler", "-fPIC", "-o", str(lib), str(kernel),
                    *args], check=True)
    ours = read_archs(lib)

    def run(*flags: str) -> str:
        return subprocess.run([str(cuobjdump), *flags, str(lib)], capture_output=True,
                              text=True, check=False).stdout

    # --list-elf spells an sm_120f cubin "sm_120"; `-elf` prints its real arch line.
    sass = set(re.findall(r"\.(sm_\d+[af]?)\.cubin", run("--list-elf")))
    arch_lines = set(re.findall(r"arch = (sm_\d+[af]?)", run("-elf")))
    if any(name.endswith("f") for name in arch_lines):
        sass = {n for n in arch_lines if n.endswith(("a", "f"))}
    ptx = {n.replace("sm_", "compute_") for n in re.findall(r"\.(sm_\d+[af]?)\.ptx",
                                                             run("--list-ptx"))}
    assert {e.name for e in ours if e.kind == "sass"} == sass
    assert {e.name for e in ours if e.kind == "ptx"} == ptx
    assert sass  # the comparison is not vacuous


def test_missing_interpreter_could_not_check(ci_build: CiBuild, repo_root: Path,
                                             shared_cache: Path, tmp_path: Path) -> None:
    result, report = verify(repo_root, shared_cache, "--wheels", *built_wheels(ci_build),
                            "--python", str(tmp_path / "no" / "python"))
    assert result.returncode == 9
    assert "could not check" in result.stderr and "does not exist" in result.stderr
    assert report is None  # nothing half-written


def test_runtime_without_torch_could_not_check(ci_build: CiBuild, repo_root: Path,
                                               shared_cache: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    result, report = verify(repo_root, shared_cache, "--wheels", *built_wheels(ci_build),
                            "--python", str(bare / "bin" / "python"))
    assert result.returncode == 9, result.stdout
    assert report is not None and report["status"] == "unknown"
    torch_check = checks_of(report, "tiny_cuda_ext")["torch-version"]
    assert torch_check["status"] == "unknown" and "no torch in the runtime" in torch_check["summary"]


# The official vLLM 0.20.0 wheel (PyPI, 244 MB), pinned by sha256. Tagged cp38-abi3, yet
# it carries DeepGEMM's extension built for CPython 3.12 only.
VLLM_020 = "vllm==0.20.0"
VLLM_020_SHA256 = "24d28892e210200f6e1bd13f699c42a74cd2bb7364c11248e2348f677c7f6dfb"
DEEP_GEMM_SO = "vllm/third_party/deep_gemm/_C.cpython-312-x86_64-linux-gnu.so"


@pytest.fixture(scope="module")
def vllm_020_deep_gemm(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """A subset of the real vLLM 0.20.0 wheel, to keep the test small (verify_abi would
    read 1.5 GB of ELF files otherwise): its DeepGEMM extension, the real file, and the
    __init__.py files of the packages above it, under the real wheel's file name tag and
    torch pin."""
    real = pypi_wheel(shared_cache, VLLM_020, "vllm-0.20.0-cp38-abi3-manylinux_2_35_x86_64.whl",
                      sha256=VLLM_020_SHA256)
    members = (DEEP_GEMM_SO, "vllm/__init__.py", "vllm/third_party/__init__.py",
               "vllm/third_party/deep_gemm/__init__.py")
    with zipfile.ZipFile(real) as zf:
        files = {m: zf.read(m) for m in members}
        metadata = zf.read("vllm-0.20.0.dist-info/METADATA").decode()
    torch_pin = next(line.split(": ", 1)[1] for line in metadata.splitlines()
                     if line.startswith("Requires-Dist: torch=="))
    return make_wheel(tmp_path_factory.mktemp("vllm020"), "vllm", "0.20.0",
                      "cp38-abi3-manylinux_2_35_x86_64", files, requires=(torch_pin,))


def test_extension_the_runtime_python_never_finds(vllm_020_deep_gemm: Path, torch_cpu_213: Path,
                                                  repo_root: Path, shared_cache: Path) -> None:
    """The wheel's tag installs on Python 3.11, but 3.11 looks for .cpython-311-...so,
    .abi3.so and .so: `import vllm.third_party.deep_gemm._C` finds nothing. Both the suffix
    judgement and the import by name (not by file path) must say so."""
    result, report = verify(repo_root, shared_cache, "--wheels", str(vllm_020_deep_gemm),
                            "--python", str(torch_cpu_213))
    assert result.returncode == 8
    assert report is not None
    assert report["runtime"]["python_version"].startswith("3.11.")
    assert report["runtime"]["extension_suffixes"] == [
        ".cpython-311-x86_64-linux-gnu.so", ".abi3.so", ".so"]
    checks = checks_of(report, "vllm-0.20.0")
    tag = checks["python-tag"]
    assert tag["status"] == "fail"
    assert tag["evidence"]["matched"] == "cp38-abi3-manylinux_2_35_x86_64"  # the tag is fine
    assert tag["evidence"]["unfindable"] == {DEEP_GEMM_SO: {
        "module": "vllm.third_party.deep_gemm._C", "suffix": ".cpython-312-x86_64-linux-gnu.so",
        "needs": "CPython 3.12"}}
    assert DEEP_GEMM_SO in tag["summary"] and "needs CPython 3.12" in tag["summary"]
    assert "CPython 3.12" in tag["fix"]
    imported = checks["import"]
    assert imported["status"] == "fail"
    # The import system's own answer, then which file and which Python.
    assert "No module named 'vllm.third_party.deep_gemm._C'" in imported["summary"]
    assert DEEP_GEMM_SO in imported["summary"] and "needs CPython 3.12" in imported["summary"]
    assert "FAIL  python-tag" in result.stdout


def test_arch_coverage_of_a_wheel_built_elsewhere(tmp_path: Path, repo_root: Path,
                                                  shared_cache: Path) -> None:
    """Without a manifest, an arch-specific object (sm_90a only, like FlashMLA or FA3 in
    vLLM's wheel) does not fail a 12.0 target when other objects cover it; a target that
    no object covers does."""
    kernel = tmp_path / "k.cu"
    kernel.write_text("__global__ void scale(float* x) { x[threadIdx.x] *= 2.f; }\n"
                      "extern \"C\" void launch(float* x) { scale<<<1, 32>>>(x); }\n")
    files = {}
    for name, gencode in (("libgeneric.so", "compute_120,code=sm_120"),
                          ("libhopper.so", "compute_90a,code=sm_90a")):
        subprocess.run([str(_nvcc()), "-shared", "-Xcompiler", "-fPIC", "-o",
                        str(tmp_path / name), str(kernel), "-gencode", f"arch={gencode}"],
                       check=True)
        files[f"gpuk/{name}"] = (tmp_path / name).read_bytes()
    whl = make_wheel(tmp_path, "gpuk", "1.0", "py3-none-linux_x86_64", files)
    result, report = verify(repo_root, shared_cache, "--wheels", str(whl), "--python",
                            sys.executable, "--arch", "12.0")
    assert result.returncode == 0, result.stdout
    assert report is not None
    archs = checks_of(report, "gpuk")["gpu-archs"]
    assert archs["status"] == "pass"
    assert archs["evidence"]["arch_specific_elsewhere"] == [
        "gpuk/libhopper.so has nothing for arch list 12.0 (has sm_90a)"]
    result, report = verify(repo_root, shared_cache, "--wheels", str(whl), "--python",
                            sys.executable, "--arch", "8.0")
    assert result.returncode == 8
    assert report is not None
    assert "no object of the wheel has code for arch list 8.0" in \
        checks_of(report, "gpuk")["gpu-archs"]["summary"]
