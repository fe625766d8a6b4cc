"""An absolute anchor for single-stream decode: output tok/s as a share of what the GPU's
memory bandwidth allows. At concurrency 1 every decode step reads every weight the token
uses once, so

    ceiling tok/s = HBM bandwidth / weight bytes read per token

(the KV cache read, small at short context, is left out, so the ceiling is a little
high). Weight bytes from the model's config.json: parameters x bytes per parameter (bf16
2; with --quantization fp8 the linear layers' weights 1, embeddings, lm_head and norms
stay 2); an MoE token reads only its top-k experts' weights (plus the router). The share
says how near the build is to the hardware: decode at 60-80 % of the ceiling is typical
for a well-built server; far below points at the host (launches, Python) or the kernels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# HBM bandwidth in bytes/s, by a substring of nvidia-smi's GPU name (most specific
# first). Sources: NVIDIA's data sheets (H100: nvidia.com/en-us/data-center/h100,
# SXM 3.35 TB/s, PCIe 2.0 TB/s; H200: nvidia.com/en-us/data-center/h200, 4.8 TB/s;
# A100 80GB: nvidia.com/en-us/data-center/a100, SXM 2,039 GB/s; L40S:
# nvidia.com/en-us/data-center/l40s, 864 GB/s; GeForce RTX 5090:
# nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5090, 1,792 GB/s).
GPU_BANDWIDTH: tuple[tuple[str, float, str], ...] = (
    ("H100 PCIe", 2.0e12, "NVIDIA H100 data sheet (PCIe)"),
    ("H100 NVL", 3.9e12, "NVIDIA H100 data sheet (NVL)"),
    ("H100", 3.35e12, "NVIDIA H100 data sheet (SXM)"),
    ("H200", 4.8e12, "NVIDIA H200 data sheet"),
    ("RTX 5090", 1.792e12, "NVIDIA GeForce RTX 5090 specifications"),
    ("A100-SXM4-80GB", 2.039e12, "NVIDIA A100 data sheet (80GB SXM)"),
    ("A100 80GB PCIe", 1.935e12, "NVIDIA A100 data sheet (80GB PCIe)"),
    ("A100", 2.039e12, "NVIDIA A100 data sheet (80GB SXM)"),
    ("L40S", 0.864e12, "NVIDIA L40S data sheet"),
)


def bandwidth(gpu_name: str) -> tuple[float, str] | None:
    """(bytes/s, source) for nvidia-smi's name, e.g. 'NVIDIA H100 80GB HBM3'."""
    for key, value, source in GPU_BANDWIDTH:
        if key.lower() in gpu_name.lower():
            return value, source
    return None


@dataclass(frozen=True)
class WeightBytes:
    total_params: int
    active_params: int  # read per token (an MoE's top-k experts only)
    bytes_per_token: int

    def to_dict(self) -> dict[str, int]:
        return {"total_params": self.total_params, "active_params": self.active_params,
                "bytes_per_token": self.bytes_per_token}


def weight_bytes(config: dict[str, Any], *, fp8: bool = False) -> WeightBytes:
    """Llama / Mixtral / Qwen-MoE style decoder: params and bytes read per decode token."""
    h = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or h // heads)
    vocab = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", False))
    attn = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
    experts = int(config.get("num_local_experts") or config.get("num_experts") or 0)
    if experts:
        inter = int(config.get("moe_intermediate_size") or config["intermediate_size"])
        top_k = int(config.get("num_experts_per_tok", 2))
        expert = 3 * h * inter
        router = h * experts
        shared = 3 * h * int(config.get("shared_expert_intermediate_size") or 0)
        mlp_total, mlp_active = experts * expert + router + shared, top_k * expert + router + shared
    else:
        mlp_total = mlp_active = 3 * h * int(config["intermediate_size"])
    norms = 2 * h
    embed = vocab * h
    head = 0 if tied else vocab * h
    linear_total = layers * (attn + mlp_total)
    linear_active = layers * (attn + mlp_active)
    other = layers * norms + h + embed + head
    total = linear_total + other
    active = linear_active + other
    # Per token the embedding reads one row, not the table; lm_head reads all of it.
    read_other = layers * norms + h + h + (vocab * h if not tied else embed)
    linear_bytes = 1 if fp8 else 2
    return WeightBytes(total_params=total, active_params=active,
                       bytes_per_token=linear_active * linear_bytes + read_other * 2)


def anchor(model_dir: Path, engine_args: tuple[str, ...], gpu_name: str,
           measured_tps: float) -> dict[str, Any]:
    """The anchor of one arm's single-stream output tok/s (keys: see report.anchor_line)."""
    out: dict[str, Any] = {"gpu": gpu_name, "measured_output_tok_s": measured_tps}
    try:
        config = json.loads((model_dir / "config.json").read_text())
        wb = weight_bytes(config, fp8=_quantization(engine_args) == "fp8")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        out["error"] = f"cannot size the model from {model_dir}/config.json: {exc}"
        return out
    out.update(wb.to_dict())
    bw = bandwidth(gpu_name)
    if bw is None:
        out["error"] = f"GPU {gpu_name!r} is not in the bandwidth table (anchor.GPU_BANDWIDTH)"
        return out
    out["bandwidth_bytes_s"], out["bandwidth_source"] = bw
    out["ceiling_tok_s"] = bw[0] / wb.bytes_per_token
    out["share"] = measured_tps / out["ceiling_tok_s"]
    return out


def _quantization(args: tuple[str, ...]) -> str:
    for i, arg in enumerate(args):
        if arg == "--quantization" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--quantization="):
            return arg.split("=", 1)[1]
    return ""
