"""vLLM's own kernels from a built `_C`, against a float64 torch reference, on the GPU.

Run with the Python where the wheel is installed (the op libraries register on import of
vllm._C / vllm._C_stable_libtorch; vLLM's Python package is not imported):

    python verify/gpu/kernel_checks.py [--json OUT]

Each check draws fresh random inputs (never zeros), poisons the output first (NaN), and
compares ||out - ref|| / ||ref|| with a bound for the dtype (bf16 operands: 2e-2; fp32: 1e-4).
Exit 0 only if every check passes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

import torch

BOUND = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.double(), ref.double()
    if torch.isnan(out64).any():
        return float("nan")
    return float((out64 - ref64).norm() / ref64.norm())


def check_silu_and_mul(dtype: torch.dtype) -> float:
    x = torch.randn(257, 2 * 688, device="cuda", dtype=dtype)
    out = torch.full((257, 688), float("nan"), device="cuda", dtype=dtype)
    torch.ops._C.silu_and_mul(out, x)
    gate, up = x.double().chunk(2, dim=-1)
    return rel_err(out, torch.nn.functional.silu(gate) * up)


def check_rms_norm(dtype: torch.dtype) -> float:
    x = torch.randn(257, 4096, device="cuda", dtype=dtype)
    w = torch.randn(4096, device="cuda", dtype=dtype)
    out = torch.full_like(x, float("nan"))
    torch.ops._C.rms_norm(out, x, w, 1e-6)
    x64 = x.double()
    ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    return rel_err(out, ref)


def check_fused_add_rms_norm(dtype: torch.dtype) -> float:
    x = torch.randn(129, 2048, device="cuda", dtype=dtype)
    residual = torch.randn_like(x)
    w = torch.randn(2048, device="cuda", dtype=dtype)
    summed = x.double() + residual.double()
    ref = summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    torch.ops._C.fused_add_rms_norm(x, residual, w, 1e-6)  # in place: x = norm, residual = sum
    return max(rel_err(x, ref), rel_err(residual, summed))


def check_rotary_embedding(dtype: torch.dtype) -> float:
    tokens, heads, head_size, max_pos = 97, 8, 64, 4096
    positions = torch.randint(0, max_pos, (tokens,), device="cuda")
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv_freq)
    cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to("cuda", dtype)
    q = torch.randn(tokens, heads * head_size, device="cuda", dtype=dtype)
    k = torch.randn(tokens, heads * head_size, device="cuda", dtype=dtype)

    def ref(x: torch.Tensor) -> torch.Tensor:
        x = x.double().view(tokens, heads, head_size)
        cos, sin = cache.double()[positions].chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x1, x2 = x.chunk(2, dim=-1)  # NeoX style: rotate the two halves
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).view(tokens, -1)

    q_ref, k_ref = ref(q), ref(k)
    torch.ops._C.rotary_embedding(positions, q, k, head_size, cache, True)
    return max(rel_err(q, q_ref), rel_err(k, k_ref))


def check_reshape_and_cache_flash(dtype: torch.dtype) -> float:
    tokens, heads, head_size, blocks, block_size = 61, 4, 64, 32, 16
    key = torch.randn(tokens, heads, head_size, device="cuda", dtype=dtype)
    value = torch.randn_like(key)
    key_cache = torch.full((blocks, block_size, heads, head_size), float("nan"), device="cuda",
                           dtype=dtype)
    value_cache = torch.full_like(key_cache, float("nan"))
    slots = torch.randperm(blocks * block_size, device="cuda")[:tokens]
    one = torch.ones((), device="cuda", dtype=torch.float32)
    torch.ops._C_cache_ops.reshape_and_cache_flash(key, value, key_cache, value_cache, slots,
                                                    "auto", one, one)
    got_k = key_cache.view(-1, heads, head_size)[slots]
    got_v = value_cache.view(-1, heads, head_size)[slots]
    return max(rel_err(got_k, key), rel_err(got_v, value))


CHECKS = [check_silu_and_mul, check_rms_norm, check_fused_add_rms_norm, check_rotary_embedding,
          check_reshape_and_cache_flash]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for module in ("vllm._C", "vllm._C_stable_libtorch", "vllm._moe_C"):
        importlib.import_module(module)
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        for check in CHECKS:
            torch.manual_seed(len(results))
            started = time.perf_counter()
            try:
                err = check(dtype)
                torch.cuda.synchronize()
                error = None
            except Exception as exc:  # a missing op or a launch failure is a FAIL, not a crash
                err, error = float("nan"), f"{type(exc).__name__}: {exc}"
            ok = err == err and err <= BOUND[dtype]
            results.append({"op": check.__name__.removeprefix("check_"), "dtype": str(dtype),
                            "rel_err": err, "bound": BOUND[dtype], "ok": ok, "error": error,
                            "seconds": round(time.perf_counter() - started, 3)})
            print(f"{'PASS' if ok else 'FAIL'}  {results[-1]['op']:<24} {str(dtype):<15} "
                  f"rel_err {err:.3e} (bound {BOUND[dtype]:.0e}){'  ' + error if error else ''}")
    summary = {"schema_version": 1, "device": torch.cuda.get_device_name(),
               "capability": ".".join(map(str, torch.cuda.get_device_capability())),
               "torch": torch.__version__, "checks": results,
               "passed": all(r["ok"] for r in results)}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
