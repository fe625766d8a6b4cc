from __future__ import annotations

from pathlib import Path

from vllm_wheels.build.fetchcontent import discover
from vllm_wheels.build.pins import exact_pins, strip_torch_pins


def test_strip_torch_pins_keeps_lookalikes(tmp_path: Path) -> None:
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "cuda.txt").write_text(
        "-r common.txt\ntorch==2.9.0\ntorchaudio==2.9.0\ntorchvision==0.24.0 # note\n"
        "torchao>=0.1\nflashinfer-python==0.5.2\n# torch in a comment\n")
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = [\n    "cmake>=3.26",\n    "torch == 2.9.0",\n'
        '    "wheel",\n]\n')
    removed = strip_torch_pins(tmp_path)
    assert {r.line.split("#")[0].strip() for r in removed} == {
        "torch==2.9.0", "torchaudio==2.9.0", "torchvision==0.24.0", '"torch == 2.9.0",'}
    text = (tmp_path / "requirements" / "cuda.txt").read_text()
    assert "torchao>=0.1" in text and "flashinfer-python==0.5.2" in text
    assert "\ntorch==" not in text
    pyproject = (tmp_path / "pyproject.toml").read_text()
    assert "torch" not in pyproject and '"wheel",' in pyproject


def test_exact_pins_are_the_requirements_of_one_version() -> None:
    """What a wheel requires at exactly one version (the build venv is constrained to it);
    ranges, wildcards, URLs and torch's own pins are not such pins."""
    assert exact_pins([
        "apache-tvm-ffi==0.1.9", "numba == 0.65.0", "legacy===1.0", "extras[cu13]==4.4.2",
        "marked==1.0 ; platform_machine == 'x86_64'",
        "ranged>=1,<2", "wild==2.*", "two==1.0,!=1.1", "url @ https://example.invalid/u.whl",
        "torch==2.11.0", "torchvision==0.26.0", "not a requirement ==", "free"]) == [
        "apache-tvm-ffi==0.1.9", "numba == 0.65.0", "legacy===1.0", "extras[cu13]==4.4.2",
        "marked==1.0 ; platform_machine == 'x86_64'"]


def test_discover_fetchcontent_from_cmake(repo_root: Path) -> None:
    found = {e.name: e for e in discover(repo_root / "tests/fixtures/cmake_externals")}
    cutlass = found["cutlass"]
    assert cutlass.ref == "v9.9.9" and not cutlass.ref_is_commit  # resolved from set()
    assert cutlass.override_env == "VLLM_CUTLASS_SRC_DIR"
    assert cutlass.url == "https://example.invalid/cutlass.git"
    new = found["newthing"]
    assert new.ref_is_commit and new.override_env == "NEWTHING_SRC_DIR"
    assert new.override_subdir == "python/newthing/newthing"
    # cpu_extension.cmake is included only for VLLM_TARGET_DEVICE=cpu.
    assert "oneDNN" not in found and cutlass.device == "cuda"
    cpu = discover(repo_root / "tests/fixtures/cmake_externals", "cpu")
    assert [(e.name, e.device) for e in cpu if e.name == "oneDNN"] == [("oneDNN", "cpu")]


def test_driver_stub_defines_declared_versioned_and_per_thread_names() -> None:
    """The libcuda link stub of a pip-assembled CUDA home defines every name an object
    compiled against cuda.h can reference (see toolchain.driver_stub_source)."""
    from vllm_wheels.build.toolchain import driver_stub_source

    cuda_h = """
#define cuGetProcAddress cuGetProcAddress_v2
#define cuMemcpy __CUDA_API_PTDS(cuMemcpy)
#define cuStreamQuery __CUDA_API_PTSZ(cuStreamQuery)
CUresult CUDAAPI cuInit(unsigned int Flags);
CUresult CUDAAPI cuGetProcAddress(const char *symbol, void **pfn, int v, cuuint64_t f);
CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size);
"""
    source = driver_stub_source(cuda_h)
    for name in ("cuInit", "cuGetProcAddress_v2", "cuMemCreate", "cuMemcpy_ptds",
                 "cuStreamQuery_ptsz"):
        assert f"void {name}(void) {{}}" in source, name
    assert "CUDAAPI" not in source and "__CUDA_API" not in source
