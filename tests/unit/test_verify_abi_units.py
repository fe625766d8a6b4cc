"""verify_abi building blocks: CUDA's arch compatibility rules, the runtime's wheel tags,
and the ELF reader + loader model on small libraries gcc compiles here (real ELF files,
milliseconds each)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag

from vllm_wheels.fatbin import FatbinEntry
from vllm_wheels.verify.checks import check_companions, parse_arch, runtime_tags
from vllm_wheels.verify.elf import demangle, read_elf
from vllm_wheels.verify.runtime import Loader, Runtime
from vllm_wheels.verify.wheelfacts import WheelFacts


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
    # The FlashInfer in the wheel set counts, not the runtime's.
    fi = _facts("flashinfer-python", "0.5.3", ())
    assert "0.5.3 in this wheel set" in check_companions(vllm, rt, [vllm, fi]).summary
