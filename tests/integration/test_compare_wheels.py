"""compare-wheels on real wheels: a tiny CUDA kernel compiled by nvcc twice (once for
sm_120 + sm_90a, once for sm_90a only), packed as the shared objects of two real wheels,
"official" and "ours", in the shapes the comparison must tell apart: an extension whose
official copy runs natively on 12.0 and ours does not (MISSING), one only the official
wheel has without 12.0 code (ABSENT), one only ours has (ONLY OURS), one the same in both
(SAME), and a Python package on each side only. Two small nvcc compiles, no network."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from ci_support import cli, make_wheel

from vllm_wheels.build.toolchain import find_system_nvcc

pytestmark = pytest.mark.compile

KERNEL = ('__global__ void scale(float* x, float a) { x[threadIdx.x] *= a; }\n'
          'extern "C" void launch(float* x) { scale<<<1, 32>>>(x, 2.f); }\n')
TAG = "cp312-cp312-linux_x86_64"


def _nvcc(shared_cache: Path) -> Path:
    """The machine's nvcc, else the one the CI build assembled from PyPI's cuda-toolkit
    wheels in the shared cache (a CI box has no system toolkit)."""
    nvcc, _ = find_system_nvcc()
    if nvcc is not None:
        return nvcc.path
    assembled = sorted(shared_cache.glob("cuda-home/*/bin/nvcc"))
    if not assembled:
        pytest.skip("no nvcc here (no system toolkit and no assembled one in the cache)")
    return assembled[-1]


def _compile(nvcc: Path, out: Path, *gencodes: str) -> bytes:
    source = out.with_suffix(".cu")
    source.write_text(KERNEL)
    args = [a for g in gencodes for a in ("-gencode", f"arch={g}")]
    subprocess.run([str(nvcc), "-shared", "-Xcompiler", "-fPIC", "-o", str(out), str(source),
                    *args], check=True)
    return out.read_bytes()


def test_compare_wheels_reports_missing_absent_and_only_ours(shared_cache: Path,
                                                             repo_root: Path,
                                                             tmp_path: Path) -> None:
    nvcc = _nvcc(shared_cache)
    both = _compile(nvcc, tmp_path / "both.so", "compute_120,code=sm_120",
                    "compute_90a,code=sm_90a")
    hopper = _compile(nvcc, tmp_path / "hopper.so", "compute_90a,code=sm_90a")
    official_dir, ours_dir = tmp_path / "official", tmp_path / "ours"
    official_dir.mkdir()
    ours_dir.mkdir()
    official = make_wheel(official_dir, "pkg", "1.0", TAG, {
        "pkg/__init__.py": b"", "pkg/ops/__init__.py": b"",
        "pkg/_C.so": both, "pkg/_moe_C.so": both, "pkg/_fa3_C.so": hopper})
    # Ours lacks the Hopper-only extension, has _C without sm_120 and one extension more.
    ours = make_wheel(ours_dir, "pkg", "1.0+cu130.sm120", TAG, {
        "pkg/__init__.py": b"", "pkg/extra/__init__.py": b"",
        "pkg/_C.so": hopper, "pkg/_moe_C.so": both, "pkg/_extra_C.so": both})
    out, table = tmp_path / "compare.json", tmp_path / "compare.md"
    result = cli("compare-wheels", str(ours), str(official), "--arch", "12.0",
                 "--json", str(out), "--markdown", str(table), cwd=repo_root)
    # Evidence, not a gate: exit 0 even with code missing.
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["arch"] == "12.0"
    assert data["wheels"]["ours"]["name"] == ours.name
    assert data["wheels"]["official"] == {"name": official.name,
                                          "size": official.stat().st_size}
    rows = {r["extension"]: r for r in data["extensions"]}
    assert {m: r["verdict"] for m, r in rows.items()} == {
        "pkg/_C.so": "MISSING", "pkg/_fa3_C.so": "ABSENT", "pkg/_extra_C.so": "ONLY OURS",
        "pkg/_moe_C.so": "SAME"}
    c = rows["pkg/_C.so"]
    # One kernel per arch; `nvcc -shared` also embeds the device-linked copy, so each arch
    # has n cubins (2 with nvcc 13.0; cuobjdump --list-elf lists the same).
    n = c["ours"]["cubins"]["sm_90a"]
    assert n >= 1 and c["official"]["cubins"] == {"sm_120": n, "sm_90a": n}
    assert c["ours"]["cubins"] == {"sm_90a": n} and c["ours"]["ptx"] == []
    assert c["why"] == f"official: {n} cubins run natively, ours: none"
    assert rows["pkg/_fa3_C.so"]["ours"] is None
    assert rows["pkg/_fa3_C.so"]["why"] == "official has it, with no machine code for the arch"
    assert rows["pkg/_extra_C.so"]["official"] is None
    assert rows["pkg/_moe_C.so"]["why"] == f"ours {n} / official {n} cubins run natively"
    assert data["missing_code"] == ["pkg/_C.so"]
    assert data["packages"] == {"only_ours": ["pkg.extra"], "only_official": ["pkg.ops"],
                                "both": 1}
    markdown = table.read_text()
    assert f"| `pkg/_C.so` | MISSING | sm_90a×{n} | sm_120×{n}, sm_90a×{n} |" in markdown
    assert "- extensions MISSING code for 12.0: pkg/_C.so" in markdown
    assert result.stdout.rstrip("\n") == markdown.rstrip("\n")  # printed, and written
    # The same wheels for 9.0: every extension either side has runs natively there.
    result = cli("compare-wheels", str(ours), str(official), "--arch", "9.0", "--json",
                 str(out), cwd=repo_root)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["missing_code"] == ["pkg/_fa3_C.so"]  # official runs on 9.0, ours lacks it
    assert {r["extension"]: r["verdict"] for r in data["extensions"]}["pkg/_C.so"] == "SAME"
