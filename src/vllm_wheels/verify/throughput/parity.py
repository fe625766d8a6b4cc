"""Backend parity: what each arm's vLLM server chose, read from its own log, and every
difference between the arms with its likely cost (the report's first lines).

A custom build loses speed in a few typical ways, and each one shows in the server's log
or in the installed packages, not in the numbers alone:
  * a kernel family missing, so vLLM silently picks another attention, MoE or
    quantized-GEMM backend;
  * FlashInfer compiling its kernels just in time (no AOT jit-cache package);
  * the GPU's arch missing from the compiled kernels (PTX JIT, or no kernel at all);
  * CUDA graphs or torch.compile off (--enforce-eager, a compilation config).

The log lines are vLLM 0.20.0's own format strings (file:line in vLLM's source):
  attention  "Using %s backend."  (platforms/cuda.py:308, a backend forced with
             --attention-backend; %s is the enum, AttentionBackendEnum.TRITON_ATTN)
             "Using %s attention backend out of potential backends: %s." (cuda.py:368)
  MoE        "Using {backend} Unquantized MoE backend out of potential backends: [...]."
             (fused_moe/oracle/unquantized.py:186); the same with "Fp8 MoE backend"
             (oracle/fp8.py:238) and other quantized MoE oracles
  GEMM       "Selected %s for %s"  (model_executor/kernels/linear/__init__.py:420, the
             FP8/INT8 scaled-mm kernel per quantization method, e.g.
             "Selected CutlassFP8ScaledMMLinearKernel for Fp8LinearMethod")
  graphs     "Graph capturing finished in %.0f secs, took %.2f GiB"
             (v1/worker/gpu_model_runner.py:6134): CUDA graphs captured;
             "Cudagraph is disabled under eager mode" (config/vllm.py:1089)
  compile    "Enforce eager set, disabling torch.compile and CUDAGraphs. ..."
             (config/vllm.py:896); "torch.compile took %.2f s in total"
             (compilation/monitor.py:20), "Dynamo bytecode transform time: %.2f s"
             (compilation/backends.py:1129), "Directly load the compiled graph(s) for
             compile range %s from the cache, took %.3f s" (backends.py:291)
  version    "Initializing a V1 LLM engine (v%s) with config: ..." (v1/engine/core.py:110)
  FlashInfer JIT: FlashInfer's own "Loading JIT ops: NAME" lines (flashinfer/jit), and
             whether its AOT packages (flashinfer-jit-cache, flashinfer-cubin) are
             installed (the arm's version report)
The compiled archs come from the arm's vllm/_C.abi3.so (its fatbin, verify/fatbin.py),
the GPU's compute capability from nvidia-smi.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ATTN_FORCED = re.compile(r"Using (?:AttentionBackendEnum\.)?(\w+) backend\.")
_ATTN_AUTO = re.compile(r"Using (\w+) attention backend out of potential backends: (\[.*?\])")
_MOE = re.compile(r"Using (.+?) ((?:Unquantized|Fp8|Nvfp4|NvFp4|Mxfp4|MxFp8|Int8|INT8|"
                  r"WNA16|Int ?Wna16)?\s*MoE) backend(?: out of potential backends: (\[.*?\]))?")
_MOE_MXFP8 = re.compile(r"Using '([^']+)' MxFp8 MoE backend")
_GEMM = re.compile(r"Selected (\w+) for (\w+)")
_GRAPHS_ON = re.compile(r"Graph capturing finished in (\d+) secs, took ([\d.]+) GiB")
_GRAPHS_OFF = re.compile(r"Cudagraph is disabled under eager mode|cudagraph_mode=none|"
                         r"'cudagraph_mode': <CUDAGraphMode\.NONE")
_EAGER = re.compile(r"Enforce eager set, disabling torch\.compile and CUDAGraphs")
_COMPILE_ON = re.compile(r"torch\.compile took ([\d.]+) s in total|"
                         r"Dynamo bytecode transform time: ([\d.]+) s|"
                         r"Directly load the compiled graph\(s\) for compile range")
_COMPILE_OFF = re.compile(r"'mode': <CompilationMode\.NONE|compilation was disabled")
_VERSION = re.compile(r"Initializing a V1 LLM engine \(v([^)]+)\)|\bversion (\d+\.\d+\.\S+)")
_FI_JIT = re.compile(r"Loading JIT ops: (\S+)")
_QUANT = re.compile(r"quantization=(\w+)")


def parse_server_log(text: str) -> dict[str, Any]:
    """What the server chose, from its log (keys absent when the log does not say)."""
    facts: dict[str, Any] = {}
    evidence: dict[str, str] = {}
    gemm: dict[str, str] = {}
    jit: list[str] = []

    def note(key: str, value: Any, line: str) -> None:
        if key not in facts:
            facts[key] = value
            evidence[key] = _tail(line)

    for line in text.splitlines():
        if m := _ATTN_AUTO.search(line):
            note("attention_backend", m.group(1), line)
            facts.setdefault("attention_candidates", m.group(2))
        elif m := _ATTN_FORCED.search(line):
            note("attention_backend", m.group(1), line)
            facts.setdefault("attention_forced", True)
        if m := _MOE_MXFP8.search(line):
            note("moe_backend", f"{m.group(1)} (MxFp8 MoE)", line)
        elif (m := _MOE.search(line)) and "attention backend" not in line:
            note("moe_backend", f"{m.group(1)} ({m.group(2).strip()})", line)
        if (m := _GEMM.search(line)) and m.group(2) not in gemm:
            gemm[m.group(2)] = m.group(1)
            evidence.setdefault("gemm_kernel", _tail(line))
        if m := _GRAPHS_ON.search(line):
            note("cuda_graphs", "on", line)
            facts.setdefault("graph_capture", f"{m.group(1)} s, {m.group(2)} GiB")
        elif _GRAPHS_OFF.search(line):
            note("cuda_graphs", "off", line)
        if _EAGER.search(line):
            note("compile", "off", line)
            note("cuda_graphs", "off", line)
            facts["enforce_eager"] = True
        elif _COMPILE_ON.search(line):
            note("compile", "on", line)
        elif _COMPILE_OFF.search(line):
            note("compile", "off", line)
        if m := _VERSION.search(line):
            note("vllm_version", m.group(1) or m.group(2), line)
        if m := _FI_JIT.search(line):
            jit.append(m.group(1))
        if "Initializing a V1 LLM engine" in line and (m := _QUANT.search(line)):
            note("quantization", m.group(1), line)
    if gemm:
        facts["gemm_kernel"] = ", ".join(f"{kernel} ({method})"
                                         for method, kernel in sorted(gemm.items()))
    if jit:
        facts["flashinfer_jit_ops"] = sorted(set(jit))
    facts["evidence"] = evidence
    return facts


# Why a server died before it was ready, from its own log: the signatures of the ways a
# custom build fails at start-up, each with what it means for the build and what to do.
# First match wins; the order puts the most specific first.
START_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"FlashAttention version not detected|FA\d is unavailable due to"),
     "the server chose FLASH_ATTN, but this build has no vllm-flash-attn kernels "
     "(vllm/vllm_flash_attn without _vllm_fa*_C); vLLM 0.20.0 does not fall back to another "
     "backend (measured on an H100, verify/results/2026-12-07-ab-official/). Force one the "
     "build has (--attention-backend TRITON_ATTN, or FLASHINFER with FlashInfer installed), "
     "build vllm-flash-attn (a stack without the verification variant's reduction), or "
     "carry a patch like patches/vllm/0.20.0-verify/0003 that lets vLLM's selector move on"),
    (re.compile(r"no kernel image is available for execution on the device"),
     "a kernel has no machine code for this GPU's arch: the build's TORCH_CUDA_ARCH_LIST "
     "does not cover it (verify_abi --arch shows which objects lack it)"),
    (re.compile(r"CUDA out of memory|torch\.OutOfMemoryError"),
     "the GPU ran out of memory at start-up: other servers on the GPU, or "
     "--gpu-memory-utilization / --kv-cache-memory-bytes too high for it"),
)


def start_failure(text: str) -> str | None:
    """What a server log says about why the server died before it was ready, or None."""
    for pattern, meaning in START_FAILURES:
        m = pattern.search(text)
        if m:
            return f"{meaning} (log: \"{m.group(0)}\")"
    return None


def _tail(line: str) -> str:
    # The prefix "(EngineCore pid=..) INFO 11-29 18:40:21 [cuda.py:308] " carries a time
    # and pid: keep the source location and the message only.
    m = re.search(r"\[(\S+\.py:\d+)\]\s*(.*)", line)
    text = f"[{m.group(1)}] {m.group(2)}" if m else line.strip()
    return text[:300]


# ------------------------------------------------------------------ archs and the GPU


def vllm_extension(venv: Path) -> Path | None:
    """The venv's vllm/_C.abi3.so (the core kernels), or None."""
    found = sorted(venv.glob("lib/python3*/site-packages/vllm/_C.abi3.so"))
    return found[0] if found else None


def compiled_archs(so: Path) -> list[str]:
    from ..fatbin import read_archs

    return [str(e) for e in read_archs(so)]


def arch_coverage(archs: Iterable[str], compute_cap: str) -> str:
    """How a GPU of compute capability "9.0" runs the kernels: 'SASS sm_90a',
    'PTX JIT from compute_80' or 'none'."""
    from ..fatbin import FatbinEntry

    try:
        major, minor = (int(x) for x in compute_cap.split(".")[:2])
    except ValueError:
        return "unknown (no compute capability)"
    entries = []
    for text in archs:
        m = re.fullmatch(r"(sm|compute)_(\d+)([af]?)(?: \(PTX\))?", text)
        if m:
            entries.append(FatbinEntry("sass" if m.group(1) == "sm" else "ptx",
                                       int(m.group(2)), m.group(3)))
    sass = [e for e in entries if e.kind == "sass" and e.runs_on(major, minor)]
    if sass:
        return "SASS " + ", ".join(e.name for e in sass)
    ptx = [e for e in entries if e.kind == "ptx" and e.runs_on(major, minor)]
    if ptx:
        return f"PTX JIT from {max(ptx).name} (no SASS for {major}.{minor})"
    return f"none: no kernel runs on {major}.{minor}"


# ------------------------------------------------------------------ parity of two arms


@dataclass(frozen=True)
class Difference:
    key: str
    text: str  # what differs, naming the arm
    cost: str  # the likely cost

    def line(self) -> str:
        return f"{self.text} — likely cost: {self.cost}"


FIELDS: tuple[tuple[str, str], ...] = (
    ("vllm_version", "vLLM (server log)"),
    ("attention_backend", "attention backend"),
    ("moe_backend", "MoE backend"),
    ("gemm_kernel", "quantized-GEMM kernel"),
    ("cuda_graphs", "CUDA graphs"),
    ("compile", "torch.compile"),
    ("flashinfer", "FlashInfer AOT / JIT"),
    ("archs", "archs compiled in (vllm/_C)"),
    ("gpu_coverage", "the GPU runs"),
    ("build_type", "build type"),
)

_COSTS = {
    "cuda_graphs": "large at small batch: single-stream decode typically 1.3-3x slower "
                   "(every kernel launched from the host each token); less at high "
                   "concurrency",
    "compile": "typically 5-15 % lower throughput (no Inductor fusion of norm, activation "
               "and quantization ops); CUDA graphs may go with it",
    "attention_backend": "decode typically within 5-15 % at short context, prefill and "
                         "long context up to 1.5-2x; often a kernel family missing from "
                         "one build (e.g. vllm-flash-attn not built, so FLASH_ATTN is "
                         "not offered)",
    "moe_backend": "MoE layers up to 1.5-2x (grouped-GEMM kernel family missing from one "
                   "build, or FlashInfer's MoE absent)",
    "gemm_kernel": "quantized linear layers 0-30 % (e.g. CUTLASS scaled_mm not compiled, "
                   "so torch._scaled_mm or Marlin runs)",
    "flashinfer": "start-up minutes while FlashInfer compiles its kernels (needs nvcc on "
                  "the serving host); steady-state speed equal once compiled, a fallback "
                  "backend if compiling fails",
    "archs": "none when both have SASS for the GPU; see the next line",
    "gpu_coverage": "PTX JIT: minutes at load and no arch-specific (e.g. sm_90a wgmma) "
                    "paths, which can be several times slower; no kernel: the server fails",
    "vllm_version": "any: the arms run different vLLM code, so a difference may come "
                    "from the code rather than the build",
    "build_type": "a Debug build is several times slower in every custom kernel",
    "quantization": "the arms run different weights formats: not comparable",
}


def arm_parity(facts: dict[str, Any]) -> dict[str, Any]:
    """One arm's parity fields from its recorded facts (server_log, versions, archs, gpu)."""
    log = facts.get("server_log") or {}
    versions = facts.get("versions") or {}
    out: dict[str, Any] = {k: log.get(k) for k in
                           ("vllm_version", "attention_backend", "moe_backend", "gemm_kernel",
                            "cuda_graphs", "compile", "quantization", "attention_candidates")}
    if facts.get("server_log") is None:
        out["log"] = "no server log"
    aot = [name for name in ("flashinfer_jit_cache", "flashinfer_cubin") if versions.get(name)]
    if versions.get("flashinfer") or log.get("flashinfer_jit_ops"):
        fi = "AOT (" + ", ".join(aot) + ")" if aot else "JIT only (no jit-cache/cubin)"
        if log.get("flashinfer_jit_ops"):
            fi += f"; JIT-compiled at start: {', '.join(log['flashinfer_jit_ops'][:4])}"
        out["flashinfer"] = fi
    elif versions:
        out["flashinfer"] = "not installed"
    else:
        out["flashinfer"] = None
    archs = facts.get("archs")
    out["archs"] = " ".join(archs) if archs else None
    gpu = facts.get("gpu") or []
    cap = next((g.get("compute_cap") for g in gpu if g.get("compute_cap")), None)
    out["gpu_coverage"] = arch_coverage(archs, cap) if archs and cap else None
    build = versions.get("vllm_wheels_build") or {}
    out["build_type"] = (build.get("build_type") if isinstance(build, dict) else None) or (
        "official (PyPI/image)" if versions.get("vllm") and not build else None)
    return out


def differences(candidate: dict[str, Any], baseline: dict[str, Any]) -> list[Difference]:
    """Every field known for both arms that differs, candidate named first."""
    out = []
    for key, label in (*FIELDS, ("quantization", "quantization")):
        a, b = candidate.get(key), baseline.get(key)
        if key == "build_type" and a and b and "Release" in (a, b) and "official" in a + b:
            continue  # a Release build of ours against the official wheel: same kind
        if key == "flashinfer" and a and b and a.split(" ")[0] == b.split(" ")[0]:
            continue  # both AOT or both JIT: the package names may differ
        if a is None or b is None or a == b:
            continue
        text = _difference_text(key, label, a, b)
        if key == "attention_backend":
            text += _not_offered(candidate, baseline)
        out.append(Difference(key, text, _COSTS.get(key, "unknown")))
    return out


def _not_offered(candidate: dict[str, Any], baseline: dict[str, Any]) -> str:
    """Why the attention backends differ, when the logs tell: vLLM lists the backends it
    found valid ("out of potential backends: [...]"), so a backend one arm chose that is
    missing from the other arm's list was not offered by that arm's build (e.g.
    vllm-flash-attn not built), rather than ranked lower."""
    notes = []
    for arm, chose, other in (("candidate", candidate, baseline),
                              ("baseline", baseline, candidate)):
        backend, offered = other.get("attention_backend"), chose.get("attention_candidates")
        if backend and offered and f"'{backend}'" not in offered:
            notes.append(f"{backend} is not among the {arm}'s potential backends {offered}: "
                         f"its build does not offer it")
    return "; " + "; ".join(notes) if notes else ""


def _difference_text(key: str, label: str, cand: str, base: str) -> str:
    if key in ("cuda_graphs", "compile") and "off" in (cand, base):
        off = "candidate" if cand == "off" else "baseline"
        name = "CUDA graphs" if key == "cuda_graphs" else "torch.compile"
        return f"{name} off on {off}"
    if key == "gpu_coverage":
        return f"the GPU runs candidate: {cand}; baseline: {base}"
    return f"{label} differs: candidate {cand}, baseline {base}"


def unknown_fields(candidate: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Fields that one or both arms could not tell (no log line, no venv, no GPU)."""
    return [label for key, label in FIELDS
            if candidate.get(key) is None or baseline.get(key) is None]
