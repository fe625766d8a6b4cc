"""The verification variant's patch series on the real vLLM 0.20.0 sdist (PyPI, pinned by
sha256), applied as the build's first stage applies it (GNU patch, no fuzz), and what its
flash-attention hunk changes in vLLM's backend selection. Needs PyPI and GNU patch; no
compiler, no torch.

vLLM cannot be imported here (no torch), so the selection check runs the patched
`FlashAttentionBackend.supports_combination` on its own: its source, read from the patched
tree, is executed with a stand-in for `is_fa_version_supported` (the one name it reads from
the flash-attention extensions) and a minimal DeviceCapability. The stand-in answers what the
real function answers on a build without `_vllm_fa2_C`/`_vllm_fa3_C` (False), and on the
official wheel (True)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from test_discovery_real_sdists import vllm_source

from vllm_wheels.build.patches import apply_series, read_series

pytestmark = pytest.mark.network

BACKEND = "vllm/v1/attention/backends/flash_attn.py"


@pytest.fixture(scope="module")
def patched_tree(shared_cache: Path, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Path:
    tree = tmp_path_factory.mktemp("verify-variant") / "vllm-0.20.0"
    shutil.copytree(vllm_source(shared_cache, "0.20.0"), tree, symlinks=True)
    series = read_series(repo_root / "patches/vllm/0.20.0-verify")
    checks = apply_series(tree, series)
    assert [c.patch for c in checks] == [p.name for p in series]
    return tree


class DeviceCapability(NamedTuple):
    """Stand-in for vllm.platforms.interface.DeviceCapability: compared as (major, minor)."""
    major: int
    minor: int


def supports_combination(tree: Path, fa_built: bool) -> Any:
    """FlashAttentionBackend.supports_combination from TREE, executed on its own for a bf16
    Llama layer on sm_90, with the flash-attention extensions present or not."""
    source = (tree / BACKEND).read_text()
    module = ast.parse(source)
    backend = next(n for n in module.body
                   if isinstance(n, ast.ClassDef) and n.name == "FlashAttentionBackend")
    method = next(n for n in backend.body
                  if isinstance(n, ast.FunctionDef) and n.name == "supports_combination")
    method.decorator_list = []        # the classmethod, called as a plain function below
    for arg in method.args.args:      # annotations name torch/vLLM types absent here
        arg.annotation = None
    method.returns = None
    namespace: dict[str, Any] = {"DeviceCapability": DeviceCapability,
                                 "is_fa_version_supported": lambda version: fa_built}
    exec(compile(ast.Module(body=[method], type_ignores=[]), str(tree / BACKEND), "exec"),
         namespace)
    return namespace["supports_combination"](
        None, head_size=128, dtype="bfloat16", kv_cache_dtype="auto", block_size=16,
        use_mla=False, has_sink=False, use_sparse=False,
        device_capability=DeviceCapability(9, 0))


def test_the_verify_series_applies_exactly_to_the_real_sdist(patched_tree: Path) -> None:
    # the hunks landed: the extension check (0001), the importable stand-in (0002) and the
    # selection check (0003)
    init = (patched_tree / "vllm/vllm_flash_attn/__init__.py").read_text()
    assert "vllm-wheels verify variant" in init
    assert "raise ImportError" not in init
    assert "flash-attention extensions not built" in (patched_tree / BACKEND).read_text()


def test_without_flash_attention_the_selector_is_told_flash_attn_is_invalid(
        patched_tree: Path) -> None:
    # What vLLM's CudaPlatform.get_valid_backends reads: a reason, so FLASH_ATTN leaves the
    # potential backends and the next one of the priority list (TRITON_ATTN) is chosen. On
    # an H100 without this hunk the engine died at start: "FlashAttention version not
    # detected" (verify/results/2026-12-07-ab-official/).
    reason = supports_combination(patched_tree, fa_built=False)
    assert reason == "flash-attention extensions not built (vllm-wheels verify variant)"
    # A build with the extensions (the official wheel, the full stack) is unchanged.
    assert supports_combination(patched_tree, fa_built=True) is None


def test_the_release_itself_lets_flash_attn_be_chosen_without_the_extensions(
        shared_cache: Path) -> None:
    # Why 0003 exists: unpatched 0.20.0 returns no reason whatever the extensions, so its
    # selector picks FLASH_ATTN on Hopper and fails later.
    pristine = vllm_source(shared_cache, "0.20.0")
    assert supports_combination(pristine, fa_built=False) is None
