from __future__ import annotations

import zipfile
from pathlib import Path

from vllm_wheels.build.wheelmeta import (
    MANIFEST_SCHEMA_VERSION,
    read_manifest,
    requires_dist,
    rewrite_wheel,
    verify_record,
)


def make_wheel(tmp_path: Path) -> Path:
    """A minimal but complete wheel, as setuptools writes one."""
    path = tmp_path / "raw" / "demo_pkg-1.2.3-cp311-cp311-linux_x86_64.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo_pkg/__init__.py", "x = 1\n")
        zf.writestr("demo_pkg-1.2.3.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.2.3\n"
                    "Requires-Dist: torch==2.9.0\nRequires-Dist: numpy\n"
                    "Requires-Dist: flashinfer-python==0.5.2; platform_system == \"Linux\"\n"
                    "\nlong description\n")
        zf.writestr("demo_pkg-1.2.3.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n")
        zf.writestr("demo_pkg-1.2.3.dist-info/RECORD", "stale,,\n")
    return path


def test_rewrite_labels_pins_and_records(tmp_path: Path) -> None:
    extra = tmp_path / "k.so"
    extra.write_bytes(b"\x7fELF fake")
    out = rewrite_wheel(make_wheel(tmp_path), tmp_path / "out", label="cu128.torch290.sm120",
                        pins={"torch": "==2.9.0", "flashinfer-python": "==0.5.2+cu128.sm120"},
                        manifest={"package": "demo-pkg"}, add_files={"demo_pkg/k.so": extra})
    assert out.name == "demo_pkg-1.2.3+cu128.torch290.sm120-cp311-cp311-linux_x86_64.whl"
    assert verify_record(out) == []
    reqs = requires_dist(out)
    assert "torch==2.9.0" in reqs and "numpy" in reqs
    assert 'flashinfer-python==0.5.2+cu128.sm120 ; platform_system == "Linux"' in reqs
    manifest = read_manifest(out)
    assert manifest is not None and manifest["schema_version"] == MANIFEST_SCHEMA_VERSION == 2
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        meta = zf.read("demo_pkg-1.2.3+cu128.torch290.sm120.dist-info/METADATA").decode()
    assert "Version: 1.2.3+cu128.torch290.sm120" in meta and "long description" in meta
    assert "demo_pkg/k.so" in names
    assert not any(n.startswith("demo_pkg-1.2.3.dist-info/") for n in names)
    assert not list((tmp_path / "out").glob(".*tmp*"))  # nothing half-written left


def test_pure_wheel_becomes_platform_wheel_with_kernels(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    src = raw / "fi-0.5.2-py3-none-any.whl"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("fi/__init__.py", "")
        zf.writestr("fi-0.5.2.dist-info/METADATA", "Metadata-Version: 2.1\nName: fi\n"
                    "Version: 0.5.2\n")
        zf.writestr("fi-0.5.2.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr("fi-0.5.2.dist-info/RECORD", "")
    out = rewrite_wheel(src, tmp_path / "out", label="x", pins={}, manifest={},
                        platform_tag="linux_x86_64")
    assert out.name == "fi-0.5.2+x-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(out) as zf:
        wheel = zf.read("fi-0.5.2+x.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: false" in wheel and "Tag: py3-none-linux_x86_64" in wheel


def test_runtime_pins_only_for_built_packages_the_wheel_requires(tmp_path: Path) -> None:
    """FlashInfer built after the tiny-cuda-ext fixture must not require the fixture; a
    vLLM built after FlashInfer pins FlashInfer (it requires it) and its cubin companion
    when its METADATA requires that too. torch is pinned always."""
    from vllm_wheels.build.wheelmeta import select_pins

    built = {"tiny-cuda-ext": "==0.1.0+x", "flashinfer-python": "==0.5.2+x",
             "flashinfer-cubin": "==0.5.2+x"}
    always = {"torch": "==2.14.1", "torchvision": "==0.29.1"}
    fi_declares = ["apache-tvm-ffi<0.2,>=0.1", "numpy", "torch"]
    assert select_pins(fi_declares, always, {"tiny-cuda-ext": "==0.1.0+x"}) == always
    vllm_declares = ["torch==2.9.0", "Flashinfer_Python==0.5.2; platform_system == 'Linux'",
                     "flashinfer-cubin ; extra == 'cubin'", "numpy"]
    assert select_pins(vllm_declares, always, built) == {
        **always, "flashinfer-python": "==0.5.2+x", "flashinfer-cubin": "==0.5.2+x"}
    # Through rewrite_wheel: the demo wheel requires flashinfer-python, not tiny-cuda-ext.
    raw = make_wheel(tmp_path)
    from vllm_wheels.build.wheelmeta import requires_dist as reqs_of

    pins = select_pins(reqs_of(raw), {"torch": "==2.14.1"}, built)
    out = rewrite_wheel(raw, tmp_path / "out", label="x", pins=pins, manifest={})
    reqs = requires_dist(out)
    assert 'flashinfer-python==0.5.2+x ; platform_system == "Linux"' in reqs
    assert "torch==2.14.1" in reqs
    assert not [r for r in reqs if r.startswith(("tiny-cuda-ext", "flashinfer-cubin"))]
