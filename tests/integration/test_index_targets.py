"""Several GPU targets from one stack, for real: the CI stack's two targets (sm120: 12.0,
sm90a: 9.0a) built with `build-wheels --targets all` (the fixture extension only: the
session's CI build venv, sources and compile cache are reused, so the 12.0 objects come
from the compile cache and only the 9.0a compile is new), verified for their target's
arch, published into one index root per target, served by a plain static file server
(the stdlib's http.server over the whole index directory: what "any static server can
host the tree" means), and installed from each root with pip and uv, the root chosen by
`index-root` from a STAND-IN nvidia-smi (this machine has no GPU). What arrives is
checked in the installed files: the build manifest's target and arch list, and the
GPU code in the installed extension's fatbin.

The publish tests over several roots (the gate and immutability across targets) use the
tiny labelled wheels of the index tests with their stand-in verify report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_support import CI_STACK
from index_support import _build_project, cli, isolated_env, uv_bin, write_verify_report

from vllm_wheels.build.wheelmeta import MANIFEST_NAME, rewrite_wheel
from vllm_wheels.index.store import IndexDir
from vllm_wheels.verify.fatbin import read_archs

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / CI_STACK
LABELS = {"sm120": "cu130.torch2141.sm120", "sm90a": "cu130.torch2141.sm90a"}
# What the stand-in nvidia-smi prints for a machine of each target.
GPUS = {"sm120": "NVIDIA GeForce RTX 5090, 12.0, 575.57.08\n",
        "sm90a": "NVIDIA H100 80GB HBM3, 9.0, 575.57.08\n"}

pytestmark = pytest.mark.timeout(900)


def _listed(root: Path) -> set[str]:
    index = IndexDir(root)
    return set(index.load().files) if index.exists() else set()


# ------------------------------------------------------- publish into several roots


@pytest.fixture
def target_folders(tmp_path: Path) -> Path:
    """wheels/<stack>/ as --targets reads it: a folder per target with a labelled wheel
    and its (stand-in) passing verify_abi report."""
    plain = _build_project(tmp_path / "src", "tinyext", "1.0", tmp_path / "plain")
    base = tmp_path / "wheels"
    for target, label in LABELS.items():
        wheel = rewrite_wheel(plain, base / target, label=label, pins={},
                              manifest={"local_label": label, "gpu_target": target})
        write_verify_report([wheel])
    return base


def test_publish_targets_gives_each_target_its_own_root(target_folders: Path,
                                                        tmp_path: Path) -> None:
    index = tmp_path / "index"
    done = cli("publish", "--stack", STACK, "--targets", "all", "--wheels", target_folders,
               "--index", index)
    for target, label in LABELS.items():
        assert _listed(index / target) == {f"tinyext-1.0+{label}-py3-none-any.whl"}, done.stdout
        page = (index / target / "simple" / "tinyext" / "index.html").read_text()
        assert label in page and LABELS[next(t for t in LABELS if t != target)] not in page
    assert not IndexDir(index).exists()  # no root of its own: the roots are the targets'
    # Publishing the same again changes nothing; one target alone leaves the other be.
    again = cli("publish", "--stack", STACK, "--targets", "sm90a", "--wheels", target_folders,
                "--index", index)
    assert "target sm90a: 0 added, 1 unchanged" in again.stderr + again.stdout


def test_one_refused_target_refuses_every_root(target_folders: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    # The gate: sm90a's wheel has no passing verify_abi result, so sm120 is not published
    # either.
    (sm90a,) = (target_folders / "sm90a").glob("*.whl")
    write_verify_report([sm90a], failed=[sm90a])
    refused = cli("publish", "--stack", STACK, "--targets", "all", "--wheels", target_folders,
                  "--index", index, check=False)
    assert refused.returncode == 10, refused.stderr
    assert not (index / "sm120").exists() or not _listed(index / "sm120")
    write_verify_report([sm90a])
    cli("publish", "--stack", STACK, "--targets", "all", "--wheels", target_folders,
        "--index", index)
    generations = {t: IndexDir(index / t).load().generation for t in LABELS}
    # Immutability: other bytes under sm90a's published name refuse the publish in every
    # root, even where a new file would have been added (sm120).
    rewrite_wheel(_build_project(tmp_path / "src2", "tinyext", "1.0", tmp_path / "plain2",
                                 module_text="CHANGED = True\n"),
                  target_folders / "sm90a", label=LABELS["sm90a"], pins={},
                  manifest={"local_label": LABELS["sm90a"], "changed": True})
    write_verify_report(list((target_folders / "sm90a").glob("*.whl")))
    extra = rewrite_wheel(_build_project(tmp_path / "src3", "tinyother", "1.0",
                                         tmp_path / "plain3"),
                          target_folders / "sm120", label=LABELS["sm120"], pins={},
                          manifest={"local_label": LABELS["sm120"]})
    write_verify_report(list((target_folders / "sm120").glob("*.whl")))
    conflict = cli("publish", "--stack", STACK, "--targets", "all", "--wheels",
                   target_folders, "--index", index, check=False)
    assert conflict.returncode == 10
    assert "in the index root sm90a/ with sha256" in conflict.stderr
    assert {t: IndexDir(index / t).load().generation for t in LABELS} == generations
    assert extra.name not in _listed(index / "sm120")
    assert not list((index / "sm120" / "files").glob("tinyother/*"))


# ------------------------------------------------------------ the real build matrix


@pytest.fixture(scope="module")
def cuda13_build_venv(shared_cache: Path, request: pytest.FixtureRequest) -> Path:
    """The test cache's managed torch 2.14.1+cu130 venv (made by the CI stack build when
    this test runs first)."""
    made = sorted((shared_cache / "venvs").glob("py3.11-torch2.14.1-cu130-*/vllm-wheels-venv.json"))
    if made:
        return made[0].parent
    return Path(request.getfixturevalue("ci_build").build_python).parent.parent


@pytest.fixture(scope="module")
def matrix(cuda13_build_venv: Path, shared_cache: Path, session_build_root: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`build-wheels --targets all` of the CI stack's fixture extension: wheels/<target>/.
    With the session's build root (it names the prefix-map spec file on the compile
    command lines), 12.0 is what the session's CI build already compiled."""
    out = tmp_path_factory.mktemp("matrix") / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack", str(STACK), "--targets",
         "all", "--only", "tiny-cuda-ext", "--cache-dir", str(shared_cache), "--output-dir",
         str(out), "--build-venv", str(cuda13_build_venv)],
        cwd=REPO, text=True, capture_output=True, check=False,
        env={**os.environ, "VLLM_WHEELS_BUILD_ROOT": str(session_build_root)})
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _manifest(wheel_or_dist_info: Path) -> dict[str, object]:
    if wheel_or_dist_info.is_dir():
        return dict(json.loads((wheel_or_dist_info / MANIFEST_NAME).read_text()))
    with zipfile.ZipFile(wheel_or_dist_info) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith("/" + MANIFEST_NAME)]
        return dict(json.loads(zf.read(name)))


def _sass(path: Path) -> set[str]:
    return {e.name for e in read_archs(path) if e.kind == "sass"}


@pytest.mark.compile
def test_matrix_builds_each_target_verified_for_its_arch(matrix: Path) -> None:
    summaries = {}
    for target, label in LABELS.items():
        (wheel,) = (matrix / target).glob("*.whl")
        assert wheel.name.startswith(f"tiny_cuda_ext-0.1.0+{label}-")
        manifest = _manifest(wheel)
        assert manifest["gpu_target"] == target and manifest["local_label"] == label
        # verify_abi ran with the target's arch (--arch), and passed.
        report = json.loads((matrix / target / "verify-abi.json").read_text())
        (result,) = report["results"].values()
        assert result["passed"] and result["filename"] == wheel.name
        (archs,) = [c for c in result["checks"] if c["name"] == "gpu-archs"]
        assert archs["status"] == "pass"
        expected = {"sm120": "12.0", "sm90a": "9.0"}[target]
        assert archs["evidence"]["targets"] == {
            f"arch list {manifest['cuda_arch_list'][0]}": expected}  # type: ignore[index]
        summaries[target] = json.loads((matrix / target / "build-summary.json").read_text())
    # What does not depend on the arch is one for both: venv, tree, compile cache.
    one, two = summaries.values()
    assert one["build"]["build_venv"] == two["build"]["build_venv"]
    assert one["build"]["compile_cache_dir"] == two["build"]["compile_cache_dir"]
    assert one["packages"][0]["tree"] == two["packages"][0]["tree"]
    assert [s["gpu_target"] for s in summaries.values()] == list(LABELS)
    assert one["stack_digest"] != two["stack_digest"]


def _fake_nvidia_smi(bin_dir: Path, output: str) -> Path:
    """STAND-IN nvidia-smi (no GPU here): a real executable printing the real one's answer
    to the query index-root makes (see tests/unit/test_targets.py)."""
    bin_dir.mkdir(parents=True)
    (bin_dir / "nvidia-smi.out").write_text(output)
    script = bin_dir / "nvidia-smi"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # STAND-IN for nvidia-smi (no GPU on the test machine)
        [ "$1" = "--query-gpu=name,compute_cap,driver_version" ] || exit 2
        /bin/cat "{bin_dir / 'nvidia-smi.out'}"
        """))
    script.chmod(0o755)
    return bin_dir


@pytest.fixture(scope="module")
def served(matrix: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The targets published into one index directory, served whole by a plain static
    file server on loopback; yields its base URL (the roots are BASE<target>/simple/)."""
    index = tmp_path_factory.mktemp("index") / "index"
    cli("publish", "--stack", STACK, "--targets", "all", "--wheels", matrix, "--index", index)
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
                             "--directory", str(index), "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"port (\d+)", line)
        assert match, line
        yield f"http://127.0.0.1:{match.group(1)}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.compile
@pytest.mark.parametrize("installer", ["pip", "uv"])
@pytest.mark.parametrize("target", list(LABELS))
def test_each_machine_installs_its_targets_wheel(served: str, matrix: Path,
                                                 cuda13_build_venv: Path, tmp_path: Path,
                                                 target: str, installer: str) -> None:
    # The machine asks which root is its own (its GPU, from the stand-in nvidia-smi) ...
    bin_dir = _fake_nvidia_smi(tmp_path / "bin", GPUS[target])
    asked = cli("index-root", "--base-url", served, "--stack", STACK,
                env={"PATH": str(bin_dir), "PYTHONPATH": ""})
    root = asked.stdout.strip()
    assert root == f"{served}{target}/simple/", asked.stderr
    # ... and installs from it alone, nothing but the package (its torch pin is the
    # build venv's own torch; --target keeps the build venv untouched).
    env = isolated_env(tmp_path / "home")
    dest = tmp_path / "site"
    python = cuda13_build_venv / "bin" / "python"
    if installer == "pip":
        argv = [str(python), "-m", "pip", "--isolated", "install", "--no-deps",
                "--index-url", root, "--target", str(dest), "tiny-cuda-ext"]
    else:
        argv = [uv_bin(), "pip", "install", "--no-config", "--no-deps", "--python", str(python),
                "--index-url", root, "--target", str(dest), "tiny-cuda-ext"]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, text=True, capture_output=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"{installer} from {root}: {time.monotonic() - started:.1f} s")
    # The right file arrived: its manifest names the target, its GPU code is the target's.
    (dist_info,) = dest.glob("tiny_cuda_ext-*.dist-info")
    assert dist_info.name == f"tiny_cuda_ext-0.1.0+{LABELS[target]}.dist-info"
    manifest = _manifest(dist_info)
    assert manifest["gpu_target"] == target
    (extension,) = (dest / "tiny_cuda_ext").glob("_C*.so")
    assert _sass(extension) == {"sm120": {"sm_120"}, "sm90a": {"sm_90a"}}[target]
    assert manifest["cuda_arch_list"] == {"sm120": ["12.0"], "sm90a": ["9.0a"]}[target]
    # The installed extension is byte for byte the one built for that target.
    (wheel,) = (matrix / target).glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        built = zf.read(f"tiny_cuda_ext/{extension.name}")
    assert extension.read_bytes() == built
