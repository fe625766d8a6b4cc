"""The programs under vllm_wheels/helpers/ that other interpreters run (the build venv's,
the runtime's, an arm's): each runs as a file with this interpreter and prints what its
caller parses. The toolchain and verify tests reach them through their callers too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import vllm_wheels
from vllm_wheels.build import builders, toolchain
from vllm_wheels.verify import runtime
from vllm_wheels.verify.throughput import arms

HELPERS = Path(vllm_wheels.__file__).parent / "helpers"


def helper(name: str, *args: str, cwd: Path | None = None) -> str:
    return subprocess.run([sys.executable, str(HELPERS / name), *args], check=True, text=True,
                          capture_output=True, cwd=cwd, timeout=60).stdout


def test_python_version_and_purelib() -> None:
    assert helper("python_version.py") == "%d.%d\n" % sys.version_info[:2]  # noqa: UP031
    import sysconfig
    assert helper("purelib.py") == sysconfig.get_paths()["purelib"] + "\n"


def test_dist_version() -> None:
    import importlib.metadata
    assert helper("dist_version.py", "packaging") == importlib.metadata.version("packaging") + "\n"
    assert helper("dist_version.py", "no-such-dist-vllm-wheels") == "\n"


def test_set_flashinfer_version(tmp_path: Path) -> None:
    meta = tmp_path / "flashinfer" / "_build_meta.py"
    meta.parent.mkdir()
    meta.write_text('x = 1\n__version__ = "0.5.0"\n')
    assert helper("set_flashinfer_version.py", str(tmp_path), "0.5.0+stack") == \
        "version: 0.5.0+stack\n"
    assert meta.read_text() == 'x = 1\n__version__ = "0.5.0+stack"\n'
    meta.write_text("x = 1\n")
    with pytest.raises(subprocess.CalledProcessError) as err:
        helper("set_flashinfer_version.py", str(tmp_path), "0.5.0+stack")
    assert f"cannot find __version__ in {meta}" in err.value.stderr


def test_runtime_probe_reports_this_interpreter(tmp_path: Path) -> None:
    rt = runtime.probe(Path(sys.executable))
    assert rt.extension_suffixes
    assert HELPERS not in rt.sys_path  # the helper's own directory is not the runtime's
    out = helper("runtime_probe.py", "packaging", "no-such-dist-vllm-wheels", cwd=tmp_path)
    data = json.loads(out.removeprefix("VLLM_WHEELS_PROBE "))
    assert set(data["dists"]) == {"packaging"}


def test_arm_versions_as_a_file_and_as_text() -> None:
    keys = {"python", "vllm", "flashinfer", "flashinfer_jit_cache", "flashinfer_cubin", "torch",
            "torch_git", "torch_cuda", "vllm_wheels_build"}
    as_file = json.loads(helper("arm_versions.py"))
    text = (HELPERS / "arm_versions.py").read_text()
    as_text = json.loads(subprocess.run([sys.executable, "-c", text], check=True, text=True,
                                        capture_output=True, timeout=60).stdout)
    assert set(as_file) == keys
    assert as_file == as_text
    assert as_file["python"] == sys.version.split()[0]


def test_a_brought_venv_is_checked_against_the_wheels_runtime_pins() -> None:
    """--build-venv V: a constraint (an exact runtime pin of the wheels) binds only what is
    installed, as pip's do; a package installed at another version is named with what to
    install (this interpreter's environment stands in for V)."""
    import importlib.metadata

    from vllm_wheels.errors import ToolchainError

    have = importlib.metadata.version("packaging")
    unmet = json.loads(helper("check_requirements.py", "packaging", "--constraints",
                              f"packaging=={have}", "no-such-dist-vllm-wheels==1.0"))
    assert unmet == []
    unmet = json.loads(helper("check_requirements.py", "packaging", "--constraints",
                              "packaging==0.1", "no-such-dist-vllm-wheels==1.0"))
    assert unmet == [{"requirement": "packaging==0.1", "found": have}]
    venv = Path(sys.prefix)
    assert (venv / "bin" / "python").exists()
    with pytest.raises(ToolchainError) as info:
        toolchain._check_existing_requirements(venv, ["packaging"], ["packaging==0.1"])
    assert info.value.what.endswith(f"another version than the wheels' runtime pins): "
                                    f"packaging==0.1 (found {have})")
    assert info.value.fix.endswith("-m pip install 'packaging==0.1'")


@pytest.mark.parametrize("name", ["runtime_probe.py", "arm_versions.py", "import_smoke.py",
                                  "python_version.py"])
def test_runtime_helpers_parse_as_python_3_8(name: str) -> None:
    """These run with the runtime's (or an image's, or a candidate's) interpreter: no
    syntax newer than Python 3.8."""
    import ast
    ast.parse((HELPERS / name).read_text(), name, feature_version=(3, 8))


def test_callers_find_the_helpers() -> None:
    """Each caller's path to its helper, wherever the caller's module lives."""
    for path in (toolchain.HELPERS / "python_version.py", toolchain.HELPERS / "purelib.py",
                 toolchain.HELPERS / "torch_facts.py", toolchain.HELPERS / "check_requirements.py",
                 builders.HELPERS / "dist_version.py",
                 builders.HELPERS / "set_flashinfer_version.py", runtime.PROBE,
                 arms.VERSIONS_HELPER):
        assert path.is_file(), path
    assert toolchain.python_version(Path(sys.executable)) == "%d.%d" % sys.version_info[:2]  # noqa: UP031
