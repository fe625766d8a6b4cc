"""FetchContent discovery on real vLLM sdists from PyPI (pinned by sha256): the exact
externals (name, URL, ref, override variable) of the CUDA branch, each expected value read
by hand from the release's CMake files. Needs PyPI; no compiler, no torch."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vllm_wheels.build.fetchcontent import discover
from vllm_wheels.build.sources import download, find_sdist, unpack
from vllm_wheels.log import Reporter

pytestmark = pytest.mark.network

SDISTS = {
    "0.11.2": "496d15bb64ca0fe73adbc57a93b29f4671fa12404c09e0ba02f777bfe60af671",
    "0.12.0": "dc2863be80260f378f1e72f9b82b4009610e434d05fdd7067383b231b89c4f4a",
    "0.20.0": "a6d50152936ee292455af3ffbe359f7a284ac43bf3b68caccf29f368e196cc72",
    "0.33.0": "f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112",
}

CUTLASS = "https://github.com/nvidia/cutlass.git"
FA = "https://github.com/vllm-project/flash-attention.git"
FLASHMLA = "https://github.com/vllm-project/FlashMLA"
QUTLASS = "https://github.com/IST-DASLab/qutlass.git"
TRITON = "https://github.com/triton-lang/triton.git"

EXPECTED = {
    "0.11.2": {
        ("cutlass", CUTLASS, "v4.2.1", "VLLM_CUTLASS_SRC_DIR"),
        ("vllm-flash-attn", FA, "58e0626a692f09241182582659e3bf8f16472659",
         "VLLM_FLASH_ATTN_SRC_DIR"),
        ("flashmla", FLASHMLA, "46d64a8ebef03fa50b4ae74937276a5c940e3f95", "FLASH_MLA_SRC_DIR"),
        ("qutlass", QUTLASS, "830d2c4537c7396e14a02a46fbddd18b5d107c65", "QUTLASS_SRC_DIR"),
    },
    "0.12.0": {
        ("cutlass", CUTLASS, "v4.2.1", "VLLM_CUTLASS_SRC_DIR"),
        ("vllm-flash-attn", FA, "86f8f157cf82aa2342743752b97788922dd7de43",
         "VLLM_FLASH_ATTN_SRC_DIR"),
        ("flashmla", FLASHMLA, "46d64a8ebef03fa50b4ae74937276a5c940e3f95", "FLASH_MLA_SRC_DIR"),
        ("qutlass", QUTLASS, "830d2c4537c7396e14a02a46fbddd18b5d107c65", "QUTLASS_SRC_DIR"),
        ("triton_kernels", TRITON, "v3.5.0", "TRITON_KERNELS_SRC_DIR"),
    },
    "0.20.0": {
        ("cutlass", CUTLASS, "v4.4.2", "VLLM_CUTLASS_SRC_DIR"),
        ("vllm-flash-attn", FA, "f5bc33cfc02c744d24a2e9d50e6db656de40611c",
         "VLLM_FLASH_ATTN_SRC_DIR"),
        ("flashmla", FLASHMLA, "a6ec2ba7bd0a7dff98b3f4d3e6b52b159c48d78b", "FLASH_MLA_SRC_DIR"),
        ("qutlass", QUTLASS, "830d2c4537c7396e14a02a46fbddd18b5d107c65", "QUTLASS_SRC_DIR"),
        ("triton_kernels", TRITON, "v3.6.0", "TRITON_KERNELS_SRC_DIR"),
        ("deepgemm", "https://github.com/deepseek-ai/DeepGEMM.git",
         "891d57b4db1071624b5c8fa0d1e51cb317fa709f", "DEEPGEMM_SRC_DIR"),
    },
    "0.33.0": {
        ("cutlass", CUTLASS, "v4.7.1", "VLLM_CUTLASS_SRC_DIR"),
        ("vllm-flash-attn", FA, "b273a02621d3c94bc747df67204f591b67f38fae",
         "VLLM_FLASH_ATTN_SRC_DIR"),
        ("flashmla", FLASHMLA, "e2afa5fd8c220fbd05fe03fc24c9d5e64c24641b", "FLASH_MLA_SRC_DIR"),
        # FetchContent_Populate through variables, inside if(QUTLASS_SRC_DIR)/else()
        ("qutlass", QUTLASS, "e74319e3405ce6d71965732880f5dc1f52371f64", "QUTLASS_SRC_DIR"),
        # the else() of `if (VLLM_TARGET_DEVICE STREQUAL "rocm")`, not ROCm/triton
        ("triton_kernels", TRITON, "v3.5.1", "TRITON_KERNELS_SRC_DIR"),
        ("deepgemm", "https://github.com/vllm-project/DeepGEMM.git",
         "0820030756945b2daec208e8e8255268360f337d", "DEEPGEMM_SRC_DIR"),
        ("deepselect", "https://github.com/vllm-project/DeepSelect.git",
         "d96d33afe1fab0d6066da49cdc91e64c2bee65ea", "DEEPSELECT_SRC_DIR"),
        ("fmha_sm100", "https://github.com/vllm-project/MSA.git",
         "968061ab16cb14991a5c7d4c0e8eabf531be0dcf", "FMHA_SM100_SRC_DIR"),
        ("flashkda", "https://github.com/vllm-project/FlashKDA.git",
         "17a037d98da546deb4591e967cf961a43c034d8b", "FLASH_KDA_SRC_DIR"),
        ("tml_fa4", "https://github.com/vllm-project/tml-fa4.git",
         "75765e76a9c2c012c1f6ecd64577eb646eb4d303", "TML_FA4_SRC_DIR"),
    },
}


def vllm_source(cache: Path, version: str) -> Path:
    """The unpacked sdist, downloaded once into the test cache and checked by sha256."""
    dest = cache / "test-sources" / f"vllm-{version}"
    if not dest.is_dir():
        sdist = find_sdist("https://pypi.org/simple", "vllm", version)
        archive = download(sdist.url, cache / "test-downloads" / sdist.filename,
                           SDISTS[version], Reporter(stream=io.StringIO()))
        unpack(archive, dest)
    return dest


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_cuda_branch_externals_exactly(shared_cache: Path, version: str) -> None:
    found = discover(vllm_source(shared_cache, version))
    assert {(e.name, e.url, e.ref, e.override_env) for e in found} == EXPECTED[version]
    assert all(e.device == "cuda" for e in found)
    triton = [e for e in found if e.name == "triton_kernels"]
    assert all(e.override_subdir == "python/triton_kernels/triton_kernels" for e in triton)


def test_cpu_branch_is_another_plan(shared_cache: Path) -> None:
    # The same 0.33.0 tree for VLLM_TARGET_DEVICE=cpu reaches only cpu_extension.cmake.
    found = discover(vllm_source(shared_cache, "0.33.0"), "cpu")
    assert {e.name for e in found} == {"arm_compute", "oneDNN"}
    assert all(e.device == "cpu" for e in found)
