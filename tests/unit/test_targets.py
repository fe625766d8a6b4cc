"""GPU targets of one stack ([targets.T], docs/stacks.md): the schema (own arch list and
label, labels that must differ, names that are directories and URL segments), what the
targets share (build venv, source trees) and what they do not (output folder, label,
plan), and `index-root`, which picks a machine's root from its GPU.

index-root runs as a subprocess with a STAND-IN `nvidia-smi` first on PATH: a real
executable (a shell script) that prints what the real one prints for the query the tool
makes, because this machine has no GPU. Likewise a STAND-IN `torch` module (on PYTHONPATH)
for the fallback where nvidia-smi is absent; a real torch without a GPU cannot report one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny_stacks import TINY_CUDA_EXT, copy_tiny_cuda_ext, stack_toml

from vllm_wheels import layout
from vllm_wheels.build import prepare, toolchain
from vllm_wheels.build import stack as schema
from vllm_wheels.build.stack import load_stack, render_toml
from vllm_wheels.cache import Cache
from vllm_wheels.errors import ConfigError, NoGpuError, NoMatchingTargetError
from vllm_wheels.index import roots
from vllm_wheels.index.store import IndexDir

REPO = Path(__file__).resolve().parents[2]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
TARGETS = """
[targets.sm120]
cuda_arch_list = "12.0"

[targets.sm90a]
cuda_arch_list = "9.0a"
"""


def write_stack(tmp_path: Path, targets: str = TARGETS, *, name: str = "fleet") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(stack_toml(name, TINY_CUDA_EXT + targets, python=PY))
    return path


# ---------------------------------------------------------------------------- schema


def test_each_target_has_its_own_arch_list_and_label(tmp_path: Path) -> None:
    stack = load_stack(write_stack(tmp_path))
    assert list(stack.targets) == ["sm120", "sm90a"]  # the file's order
    sm90a = stack.for_target("sm90a")
    assert (sm90a.gpu_target, sm90a.cuda_arch_list, sm90a.local_label()) == (
        "sm90a", ("9.0a",), "cu130.torch2141.sm90a")
    assert stack.for_target("sm120").local_label() == "cu130.torch2141.sm120"
    # Everything else is the stack's: the same packages, torch, toolkit, name.
    assert (sm90a.packages, sm90a.torch, sm90a.name) == (stack.packages, stack.torch,
                                                         stack.name)
    assert sm90a.targets == {}
    # A target's label given in the file wins.
    labelled = load_stack(write_stack(tmp_path, TARGETS.replace(
        '"9.0a"\n', '"9.0a"\nlabel = "hopper.v2"\n')))
    assert labelled.for_target("sm90a").local_label() == "hopper.v2"


def test_targets_leave_the_stacks_own_build_and_digest_as_they_were(tmp_path: Path) -> None:
    plain = load_stack(write_stack(tmp_path, "", name="plain"))
    with_targets = load_stack(write_stack(tmp_path, TARGETS, name="plain2"))
    # Same keys but the name: the same digest (targets are not part of a build's inputs
    # unless it is the target's build), the same arch list and label as before.
    assert dataclasses.replace(with_targets, name="plain", path=plain.path,
                               targets={}) == plain
    assert with_targets.digest() == dataclasses.replace(plain, name="plain2").digest()
    assert with_targets.local_label() == plain.local_label() == "cu130.torch2141.sm120"
    # A target's build is hashed as the stack with the target's arch list and label.
    assert with_targets.for_target("sm90a").digest() == dataclasses.replace(
        plain, name="plain2", cuda_arch_list=("9.0a",), label="cu130.torch2141.sm90a").digest()
    assert with_targets.for_target("sm90a").digest() != with_targets.digest()


def test_the_target_table_is_documented(repo_root: Path) -> None:
    assert schema.Target.__doc__
    assert all(f.metadata.get("doc") for f in dataclasses.fields(schema.Target))
    reference = (repo_root / schema.REFERENCE_DOC).read_text()
    assert "## [targets.TARGET]" in reference and "| `targets` | tables |" in reference


def test_the_writer_round_trips_targets(tmp_path: Path) -> None:
    stack = load_stack(write_stack(tmp_path, TARGETS.replace(
        '"9.0a"\n', '"9.0a"\nlabel = "hopper.v2"\n')))
    text = render_toml(stack)
    assert '[targets.sm120]\ncuda_arch_list = "12.0"\n' in text
    assert '[targets.sm90a]\ncuda_arch_list = "9.0a"\nlabel = "hopper.v2"\n' in text
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert dataclasses.replace(load_stack(again), path=stack.path) == stack


@pytest.mark.parametrize(("targets", "message"), [
    # 12.0 and 12.0+PTX derive the same label: two different wheels under one name.
    ('[targets.a]\ncuda_arch_list = "12.0"\n[targets.b]\ncuda_arch_list = "12.0+PTX"\n',
     "[targets.a] and [targets.b] both label their wheels cu130.torch2141.sm120"),
    ('[targets.files]\ncuda_arch_list = "12.0"\n', "the target name 'files' is reserved"),
    ('[targets.all]\ncuda_arch_list = "12.0"\n', "the target name 'all' is reserved"),
    ('[targets.SM120]\ncuda_arch_list = "12.0"\n', "'SM120' is not a plain lowercase name"),
    ('[targets.sm120]\ncuda_arch_list = "sm_120"\n', "is not a TORCH_CUDA_ARCH_LIST"),
    ('[targets.sm120]\nlabel = "x"\n', "missing key 'cuda_arch_list' in [targets.sm120]"),
    ('[targets.sm120]\ncuda_arch_list = "12.0"\narch = "12.0"\n', "arch"),
])
def test_bad_targets_are_refused_at_load(tmp_path: Path, targets: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_stack(write_stack(tmp_path, targets))
    assert info.value.exit_code == 2
    assert message in info.value.render()


def test_targets_are_selected_by_name_or_all(tmp_path: Path) -> None:
    stack = load_stack(write_stack(tmp_path))
    assert stack.select_targets("all") == ["sm120", "sm90a"]
    # The stack's order, whatever the command line's.
    assert stack.select_targets("sm90a,sm120") == ["sm120", "sm90a"]
    with pytest.raises(ConfigError) as info:
        stack.select_targets("sm90")
    assert "no target sm90 in" in info.value.render()
    assert "did you mean 'sm90a'?" in info.value.render()
    plain = load_stack(write_stack(tmp_path, "", name="plain"))
    with pytest.raises(ConfigError, match="the stack has no \\[targets\\]"):
        plain.select_targets("all")


# ------------------------------------------------------------ layout and what is shared


def test_target_folders_and_index_roots_come_from_layout(tmp_path: Path) -> None:
    assert layout.target_wheels_dir(tmp_path, "fleet", "sm90a") == \
        tmp_path / "wheels" / "fleet" / "sm90a"
    assert layout.target_index_dir(tmp_path / "index", "sm90a") == tmp_path / "index" / "sm90a"
    # A target's root sits beside an index root's own entries: none may be a target name.
    index = IndexDir(tmp_path / "index")
    own = {p.name for p in (index.files, index.generations, index.current, index.simple)}
    assert own <= layout.RESERVED_TARGET_NAMES
    with pytest.raises(ConfigError):
        layout.target_index_dir(tmp_path, "../x")


def test_targets_share_the_build_venv_and_the_source_trees(tmp_path: Path) -> None:
    stack = load_stack(write_stack(tmp_path))
    cache = Cache(tmp_path / "cache")
    requirements = ["cmake", "ninja"]
    sm120, sm90a = stack.for_target("sm120"), stack.for_target("sm90a")
    assert toolchain.venv_path(sm120, cache, requirements) == \
        toolchain.venv_path(sm90a, cache, requirements) == \
        toolchain.venv_path(stack, cache, requirements)
    assert [prepare.tree_name(p) for p in sm120.packages] == \
        [prepare.tree_name(p) for p in sm90a.packages]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_wheels", *args], cwd=cwd, text=True,
                          capture_output=True, check=False, timeout=300,
                          env={**os.environ, **(env or {})})


def test_dry_run_plans_every_target_with_one_venv_and_one_tree(tmp_path: Path) -> None:
    copy_tiny_cuda_ext(tmp_path)
    (tmp_path / "noxfile.py").write_text("")
    (tmp_path / "build").mkdir()
    # The series directory the stack names must exist (an empty series: no patches).
    (tmp_path / "patches" / "tiny-cuda-ext").mkdir(parents=True)
    (tmp_path / "patches" / "tiny-cuda-ext" / "series").write_text("")
    stack = write_stack(tmp_path)
    done = run_cli("build-wheels", "--stack", str(stack), "--cache-dir", str(tmp_path / "cache"),
                   "--output-dir", str(tmp_path / "out"), "--dry-run", "--targets", "all",
                   "--json", str(tmp_path / "plan.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    plans = {t: json.loads((tmp_path / f"plan.{t}.json").read_text()) for t in ("sm120", "sm90a")}
    assert not (tmp_path / "plan.json").exists()
    for name, plan in plans.items():
        assert plan["stack"]["gpu_target"] == name
        assert plan["paths"]["output"] == str(tmp_path / "out" / name)
    assert [p["stack"]["cuda_arch_list"] for p in plans.values()] == [["12.0"], ["9.0a"]]
    assert [p["stack"]["local_label"] for p in plans.values()] == [
        "cu130.torch2141.sm120", "cu130.torch2141.sm90a"]
    one, two = plans.values()
    assert one["toolchain"]["build_venv"] == two["toolchain"]["build_venv"]
    assert one["packages"][0]["tree"] == two["packages"][0]["tree"]
    assert one["toolchain"]["compile_cache"] == two["toolchain"]["compile_cache"]
    # The arch list reaches the build's environment: each target compiles its own.
    assert [p["packages"][0]["steps"][-1]["env"]["TORCH_CUDA_ARCH_LIST"]
            for p in plans.values()] == ["12.0", "9.0a"]
    assert "target sm90a (9.0a, +cu130.torch2141.sm90a)" in done.stdout + done.stderr
    # An unknown target is exit 2 before anything is planned.
    bad = run_cli("build-wheels", "--stack", str(stack), "--cache-dir", str(tmp_path / "cache"),
                  "--dry-run", "--targets", "sm100", cwd=tmp_path)
    assert bad.returncode == 2 and "no target sm100" in bad.stderr
    both = run_cli("build-wheels", "--stack", str(stack), "--targets", "all", "--export-bundle",
                   str(tmp_path / "b"), cwd=tmp_path)
    assert both.returncode == 2 and "--targets and --export-bundle exclude each other" \
        in both.stderr


# ---------------------------------------------------------------------- index-root


def fake_nvidia_smi(bin_dir: Path, output: str, *, exit_code: int = 0) -> Path:
    """STAND-IN nvidia-smi: a real executable printing what the real one prints for the
    query verify_abi and index-root make (name, compute_cap, driver), one line per GPU.
    It refuses any other query, so a changed query fails the test."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "nvidia-smi.out").write_text(output)
    script = bin_dir / "nvidia-smi"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # STAND-IN for nvidia-smi (no GPU on the test machine)
        if [ "$1" != "--query-gpu=name,compute_cap,driver_version" ] || \\
           [ "$2" != "--format=csv,noheader" ]; then
            echo "stand-in nvidia-smi: unexpected arguments: $*" >&2; exit 2
        fi
        /bin/cat "{bin_dir / 'nvidia-smi.out'}"
        exit {exit_code}
        """))
    script.chmod(0o755)
    return bin_dir


def fake_torch(where: Path, capabilities: list[tuple[int, int]]) -> Path:
    """STAND-IN torch module: what torch.cuda reports on a machine with these GPUs."""
    package = where / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "# STAND-IN for torch (no GPU on the test machine)\n"
        "__version__ = '2.14.1+cu130'\nfrom . import cuda\n")
    (package / "cuda.py").write_text(textwrap.dedent(f"""\
        CAPS = {capabilities!r}
        def is_available(): return bool(CAPS)
        def device_count(): return len(CAPS)
        def get_device_capability(i): return CAPS[i]
        def get_device_name(i): return "Stand-in GPU %d.%d" % CAPS[i]
        """))
    return where


def index_root(tmp_path: Path, stack: Path, *, path: str, pythonpath: str = "",
               extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "PYTHONPATH": pythonpath}
    return run_cli("index-root", "--base-url", "https://wheels.example/idx/", "--stack",
                   str(stack), *extra, cwd=tmp_path, env=env)


@pytest.mark.parametrize(("smi", "root", "fit"), [
    ("NVIDIA GeForce RTX 5090, 12.0, 575.57.08\n", "sm120", "exact cubin"),
    ("NVIDIA H100 80GB HBM3, 9.0, 575.57.08\n", "sm90a", "exact cubin"),
    # 12.1 (DGX Spark): a plain 12.0 cubin runs there; 9.0a does not.
    ("NVIDIA GB10, 12.1, 580.00\n", "sm120", "compatible cubin"),
    # Two GPUs of one kind: one root.
    ("NVIDIA H100, 9.0, 575\nNVIDIA H100, 9.0, 575\n", "sm90a", "exact cubin"),
])
def test_index_root_is_the_gpus_target(tmp_path: Path, smi: str, root: str, fit: str) -> None:
    stack = write_stack(tmp_path)
    bin_dir = fake_nvidia_smi(tmp_path / "bin", smi)
    done = index_root(tmp_path, stack, path=str(bin_dir))
    assert done.returncode == 0, done.stderr
    # stdout is the URL alone: `pip install --index-url "$(vllm-wheels index-root ...)"`.
    assert done.stdout == f"https://wheels.example/idx/{root}/simple/\n"
    assert f"target {root}" in done.stderr and fit in done.stderr
    as_json = json.loads(index_root(tmp_path, stack, path=str(bin_dir),
                                    extra=("--json",)).stdout)
    assert as_json["schema_version"] == 1 and as_json["gpu_target"] == root
    assert as_json["root"] == f"https://wheels.example/idx/{root}/simple/"
    assert {g["source"] for g in as_json["gpus"]} == {"nvidia-smi"}


def test_index_root_without_a_matching_target_is_exit_16(tmp_path: Path) -> None:
    stack = write_stack(tmp_path)
    # 8.9 (RTX 4090): neither 12.0 nor 9.0a has code for it.
    done = index_root(tmp_path, stack, path=str(fake_nvidia_smi(
        tmp_path / "bin", "NVIDIA GeForce RTX 4090, 8.9, 575\n")))
    assert done.returncode == NoMatchingTargetError.exit_code == 16
    assert done.stdout == ""
    assert "no matching target" in done.stderr and "8.9 (NVIDIA GeForce RTX 4090)" in done.stderr
    assert "sm120: 12.0; sm90a: 9.0a" in done.stderr
    assert '[targets.sm89] cuda_arch_list = "8.9"' in done.stderr
    # A 12.0 and a 9.0 GPU in one machine: no one target has code for both.
    mixed = index_root(tmp_path, stack, path=str(fake_nvidia_smi(
        tmp_path / "bin2", "NVIDIA GeForce RTX 5090, 12.0, 575\nNVIDIA H100, 9.0, 575\n")))
    assert mixed.returncode == 16, mixed.stderr


@pytest.mark.parametrize(("smi", "exit_code", "said"), [
    (None, 0, "nvidia-smi is not on PATH"),
    ("", 0, "nvidia-smi lists none"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9,
     "failed (exit 9)"),
])
def test_index_root_without_a_gpu_is_exit_15(tmp_path: Path, smi: str | None, exit_code: int,
                                             said: str) -> None:
    stack = write_stack(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi is not None:
        fake_nvidia_smi(bin_dir, smi, exit_code=exit_code)
    done = index_root(tmp_path, stack, path=str(bin_dir))
    assert done.returncode == NoGpuError.exit_code == 15, done.stderr
    assert "ERROR (no GPU, exit 15)" in done.stderr and said in done.stderr
    assert done.stdout == ""


def test_index_root_falls_back_to_torch(tmp_path: Path) -> None:
    stack = write_stack(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    where = fake_torch(tmp_path / "site", [(9, 0)])
    done = index_root(tmp_path, stack, path=str(empty), pythonpath=str(where), extra=("--json",))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["gpu_target"] == "sm90a"
    assert data["gpus"] == [{"index": 0, "name": "Stand-in GPU 9.0", "compute_capability": "9.0",
                             "source": "torch", "fit": "exact cubin"}]
    # torch without a CUDA device: no GPU, and both sources are named.
    none = fake_torch(tmp_path / "site2", [])
    done = index_root(tmp_path, stack, path=str(empty), pythonpath=str(none))
    assert done.returncode == 15
    assert "nvidia-smi is not on PATH" in done.stderr and "sees no CUDA device" in done.stderr


def test_index_root_of_a_stack_without_targets_is_the_base_root(tmp_path: Path) -> None:
    stack = write_stack(tmp_path, "", name="plain")
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "NVIDIA GeForce RTX 5090, 12.0, 575\n")
    done = index_root(tmp_path, stack, path=str(bin_dir))
    assert done.stdout == "https://wheels.example/idx/simple/\n", done.stderr
    h100 = fake_nvidia_smi(tmp_path / "bin2", "NVIDIA H100, 9.0, 575\n")
    assert index_root(tmp_path, stack, path=str(h100)).returncode == 16


@pytest.mark.parametrize(("archs", "capability", "expected"), [
    (["12.0"], (12, 0), roots.EXACT),
    (["12.0"], (12, 1), roots.COMPATIBLE),
    (["12.0a"], (12, 1), roots.NONE),  # an `a` cubin runs on its exact arch only
    (["12.0f"], (12, 1), roots.COMPATIBLE),  # an `f` cubin within its family
    (["9.0a"], (9, 0), roots.EXACT),
    (["8.0+PTX"], (9, 0), roots.PTX_ONLY),
    (["8.0+PTX", "9.0"], (9, 0), roots.EXACT),
    (["12.0"], (9, 0), roots.NONE),
])
def test_fit_follows_cudas_compatibility_rules(archs: list[str], capability: tuple[int, int],
                                               expected: int) -> None:
    assert roots.fit(archs, capability) == expected


def test_the_best_fitting_target_wins(tmp_path: Path) -> None:
    # PTX for 8.0 runs on 9.0, but the 9.0a cubin is exact: it wins whatever the order.
    stack = load_stack(write_stack(tmp_path, """
[targets.ptx]
cuda_arch_list = "8.0+PTX"
[targets.sm90a]
cuda_arch_list = "9.0a"
"""))
    gpu = roots.Gpu(0, "H100", (9, 0), "nvidia-smi")
    assert roots.choose(stack, "http://h/", [gpu]).target == "sm90a"
    ada = roots.Gpu(0, "L40S", (8, 9), "nvidia-smi")
    assert roots.choose(stack, "http://h/", [ada]).target == "ptx"
