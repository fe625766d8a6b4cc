"""Upgrade-trial logic without the network: reading a release's requirements from a
source tree, the torch decision, the stack writer's round trip, patch series re-checks
with real GNU patch, and the stage runner with real subprocesses (failure, interruption,
resume)."""

from __future__ import annotations

import dataclasses
import email.parser
import http.server
import io
import json
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import serve_on_loopback
from packaging.version import Version

from vllm_wheels.build.fetchcontent import ExternalSource
from vllm_wheels.build.patches import read_series
from vllm_wheels.build.stack import ExternalOverride, load_stack
from vllm_wheels.errors import ConfigError, InterruptedError_
from vllm_wheels.log import Reporter
from vllm_wheels.trial import compare, stages
from vllm_wheels.trial.plan import (
    candidate_toolkit,
    check_series,
    cuda_from_requires_dist,
    hunk_text,
    parse_request,
    patch_dir_for,
    torch_cuda_from_simple_url,
)
from vllm_wheels.trial.release import read_release, toolkit_floor
from vllm_wheels.trial.stack_writer import promotion_commands, render_stack, write_stack

# The stack these tests move from: torch 2.9.0+cu128 with a CUDA 12 toolkit (the former
# default), so that a torch and a CUDA major move are both on the table.
CU128_STACK = "build/stacks/rtx5090-cu128.toml"

CMAKE = """\
cmake_minimum_required(VERSION 3.26)
set(TORCH_SUPPORTED_VERSION_CUDA "2.10.0")
find_package(Torch REQUIRED)
# set(CUDA_SUPPORTED_ARCHS "1.0")   a comment must not count
if(DEFINED CMAKE_CUDA_COMPILER_VERSION AND
   CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 13.0)
  set(CUDA_SUPPORTED_ARCHS "7.5;8.0;12.0")
elseif(DEFINED CMAKE_CUDA_COMPILER_VERSION AND
   CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8)
  set(CUDA_SUPPORTED_ARCHS "7.0;8.0;10.0;12.0")
else()
  set(CUDA_SUPPORTED_ARCHS "7.0;8.0;9.0")
endif()
option(VLLM_FANCY "a build option" OFF)
if (DEFINED ENV{THING_SRC_DIR})
  set(THING_SRC_DIR $ENV{THING_SRC_DIR})
endif()
if(THING_SRC_DIR)
  FetchContent_Declare(thing SOURCE_DIR ${THING_SRC_DIR})
else()
  FetchContent_Declare(thing GIT_REPOSITORY https://example.org/thing.git
                       GIT_TAG 0123456789abcdef0123456789abcdef01234567)
endif()
set(ENV{LD_LIBRARY_PATH} "/x:$ENV{LD_LIBRARY_PATH}")
"""
ENVS = '''\
environment_variables = {
    # ================== Installation Time Env Vars ==================
    "VLLM_TARGET_DEVICE": lambda: os.getenv("VLLM_TARGET_DEVICE", "cuda"),
    "VLLM_MAIN_CUDA_VERSION": lambda: os.getenv("VLLM_MAIN_CUDA_VERSION", "") or "12.9",
    # ================== Runtime Env Vars ==================
    "VLLM_HOST_IP": lambda: os.getenv("VLLM_HOST_IP", ""),
}
if TYPE_CHECKING:
    VLLM_MAIN_CUDA_VERSION: str = "12.9"
'''


def release_tree(root: Path, torch: str = "2.10.0", build_torch: str = "2.9.0") -> Path:
    (root / "requirements").mkdir(parents=True)
    (root / "vllm").mkdir()
    (root / "requirements" / "common.txt").write_text("numpy\n")
    (root / "requirements" / "cuda.txt").write_text(
        f"-r common.txt\ntorch=={torch}\ntorchaudio=={torch}\n"
        "torchvision==0.25.0 # must move with torch\nflashinfer-python==0.6.4\n")
    (root / "requirements" / "build.txt").write_text(f"cmake\ntorch=={build_torch}\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = [\n    "cmake",\n    "torch == ' + torch + '",\n]\n'
        '[project]\nname = "vllm"\nrequires-python = ">=3.10,<3.14"\n')
    (root / "CMakeLists.txt").write_text(CMAKE)
    (root / "vllm" / "envs.py").write_text(ENVS)
    (root / "setup.py").write_text('import os\nos.environ.get("CMAKE_ARGS")\n'
                                   'if envs.VLLM_USE_PRECOMPILED: pass\n')
    return root


def test_parse_request() -> None:
    assert parse_request(["vllm==0.12.0"]).name == "trial-vllm-0.12.0"
    req = parse_request(["flashinfer_python==0.5.3", "vllm == 0.12.0", "torch==2.9.0"])
    assert (req.vllm, req.flashinfer, req.torch) == ("0.12.0", "0.5.3", "2.9.0")
    for bad in (["vllm>=0.12"], ["vllm==0.12.0", "numpy==2"], ["torch==2.9.0"],
                ["vllm==0.12.0", "vllm==0.13.0"], ["vllm==latest!"]):
        with pytest.raises(ConfigError):
            parse_request(bad)


def test_read_release_from_its_own_files(tmp_path: Path) -> None:
    facts = read_release(release_tree(tmp_path / "src"), "vllm", "9.9.9")
    assert facts.expected_torch() == "2.10.0"
    assert [p.where for p in facts.torch_pins][:2] == ["requirements/cuda.txt:2",
                                                       "requirements/build.txt:2"]
    # The build file disagrees with the runtime pin: shown, not hidden.
    assert facts.torch_disagreements() == ["requirements/build.txt:2 pins torch==2.9.0"]
    assert {p.name: p.exact for p in facts.companions} == {"torchaudio": "2.10.0",
                                                           "torchvision": "0.25.0"}
    assert facts.flashinfer is not None and facts.flashinfer.exact == "0.6.4"
    assert facts.default_cuda == ("12.9", "vllm/envs.py:9")
    assert facts.requires_python == ">=3.10,<3.14"
    assert [(b.min_nvcc, b.archs[-1]) for b in facts.arch_branches] == \
        [("13.0", "12.0"), ("12.8", "12.0"), (None, "9.0")]
    assert facts.branch_for(Version("12.8")).archs == ("7.0", "8.0", "10.0", "12.0")  # type: ignore[union-attr]
    assert facts.branch_for(Version("12.6")).min_nvcc is None  # type: ignore[union-attr]
    assert [e.name for e in facts.externals] == ["thing"]
    switches = {(s.kind, s.name) for s in facts.switches}
    assert {("env", "THING_SRC_DIR"), ("cmake-option", "VLLM_FANCY"), ("env", "CMAKE_ARGS"),
            ("env", "VLLM_USE_PRECOMPILED"), ("env", "VLLM_MAIN_CUDA_VERSION")} <= switches
    # Runtime variables and generic OS variables are not build switches.
    assert ("env", "VLLM_HOST_IP") not in switches
    assert ("env", "LD_LIBRARY_PATH") not in switches


def test_toolkit_floor() -> None:
    assert toolkit_floor(">=12.8,<13", None) == Version("12.8")
    assert toolkit_floor(">=13.0,<14", "13.0.3.0") == Version("13.0")
    assert toolkit_floor("<13", None) is None


def test_torch_decision(repo_root: Path, tmp_path: Path) -> None:
    stack = load_stack(repo_root / CU128_STACK)
    moved = read_release(release_tree(tmp_path / "a", torch="2.10.0", build_torch="2.10.0"),
                         "vllm", "0.17.0")
    same = read_release(release_tree(tmp_path / "b", torch="2.9.0", build_torch="2.9.0"),
                        "vllm", "0.12.0")

    def never(version: str) -> tuple[str | None, str]:
        raise AssertionError("the index is only asked when torch changes")

    stays = compare.decide_torch(stack, same, None, never)
    assert stays.verdict == "stays" and stays.cuda_chosen == "12.8"
    assert dict(stays.companions_chosen) == {"torchvision": "0.25.0", "torchaudio": "2.9.0"}

    moves = compare.decide_torch(stack, moved, None, lambda v: ("12.8", f"index for {v}"))
    assert moves.verdict == "moves" and moves.chosen == "2.10.0"
    assert "flashinfer-python, vllm" in moves.message and "together" in moves.message
    assert moves.cuda_note == "read from index for 2.10.0"

    unknown = compare.decide_torch(stack, moved, None, lambda v: (None, "no wheel"))
    # Not read: no value (never the current 12.8 as if it had been read).
    assert unknown.cuda_chosen is None and unknown.cuda_note.startswith("could not")

    forced = compare.decide_torch(stack, same, "2.10.0", lambda v: ("13.0", "index"))
    assert forced.verdict == "forced" and forced.expected == "2.9.0"
    assert "expects torch 2.9.0" in forced.message and "CMake only warns" in forced.risk
    assert not forced.companions_chosen and "dropped" in forced.companions_note
    assert compare.toolkit_for(stack, "13.0") == (">=13.0,<14", "torch's CUDA major moves "
                                                  "12 -> 13; nvcc must follow")


def test_external_diff_warns_about_the_stacks_overrides() -> None:
    def ext(name: str, ref: str) -> ExternalSource:
        return ExternalSource(name, f"https://x/{name}", ref, f"{name.upper()}_DIR", "", "f:1")

    rows, warnings = compare.diff_externals(
        [ext("a", "v1"), ext("gone", "v1"), ext("same", "v1")],
        [ext("a", "v2"), ext("same", "v1"), ext("new", "v1")],
        {"a": ExternalOverride(path="/srv/a"), "gone": ExternalOverride(path="/srv/g")})
    assert {r["name"]: r["change"] for r in rows} == {"a": "moved", "gone": "removed",
                                                      "same": "same", "new": "added"}
    assert any("'gone'" in w and "dropped" in w for w in warnings)
    assert any("/srv/a" in w and "v2" in w for w in warnings)


@pytest.mark.parametrize("name", ["build/stack.toml", "build/stacks/ci-cuda13.toml",
                                  CU128_STACK])
def test_stack_writer_round_trips(repo_root: Path, tmp_path: Path, name: str) -> None:
    stack = load_stack(repo_root / name)
    target = tmp_path / "out" / "s.toml"
    written = write_stack(dataclasses.replace(stack, path=target), target, header=["hi"])
    assert written.digest() == stack.digest()
    assert render_stack(written, header=[]) == render_stack(stack, header=[])


def test_stack_writer_leaves_nothing_when_the_file_would_not_load(repo_root: Path,
                                                                  tmp_path: Path) -> None:
    stack = load_stack(repo_root / "build" / "stack.toml")
    target = tmp_path / "s.toml"
    with pytest.raises(ConfigError):
        write_stack(dataclasses.replace(stack, name="not a name"), target, header=[])
    assert list(tmp_path.iterdir()) == []


def test_promotion_commands(tmp_path: Path) -> None:
    commands = promotion_commands(
        repo_root=tmp_path, trial_stack=tmp_path / "build/stacks/trial-vllm-1.0.toml",
        default_stack=tmp_path / "build/stack.toml", default_name="rtx5090",
        trial_name="trial-vllm-1.0", moves=[("patches/vllm/0.9", "patches/vllm/1.0")],
        drop=[("patches/vllm/1.0", "0001-x.patch")])
    assert commands[0] == "mv patches/vllm/0.9 patches/vllm/1.0"
    assert commands[1] == "rm patches/vllm/1.0/0001-x.patch"
    assert "build/stacks/trial-vllm-1.0.toml > build/stack.toml" in commands[3]


PATCH_HEADER = "--- a/{f}\n+++ b/{f}\n"


def _patch(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_series_is_checked_in_order_on_scratch_copies(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("one\ntwo\nthree\n")
    (tree / "b.txt").write_text("alpha\nbeta\n")
    series = tmp_path / "series"
    series.mkdir()
    _patch(series / "1-two.patch", PATCH_HEADER.format(f="a.txt")
           + "@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n")
    # Applies only after 1-two.patch: the check must be sequential, as a build is.
    _patch(series / "2-after-1.patch", PATCH_HEADER.format(f="a.txt")
           + "@@ -1,3 +1,3 @@\n one\n-TWO\n+2\n three\n")
    _patch(series / "3-upstream.patch", PATCH_HEADER.format(f="b.txt")
           + "@@ -1,2 +1,2 @@\n-ALPHA\n+alpha\n beta\n")
    _patch(series / "4-conflict.patch", PATCH_HEADER.format(f="b.txt")
           + "@@ -1,2 +1,2 @@\n alpha\n-gamma\n+delta\n")
    (series / "series").write_text("1-two.patch\n2-after-1.patch\n3-upstream.patch\n"
                                   "4-conflict.patch\n")
    patches = read_series(series)
    results = check_series(tree, patches)
    assert [r.status for r in results] == ["applies", "applies", "already-applied", "conflicts"]
    assert results[3].failed_hunks == ("b.txt: hunk #1 at line 1",)
    assert hunk_text(patches[3].path, "b.txt", 1) == "@@ -1,2 +1,2 @@\n alpha\n-gamma\n+delta"
    assert (tree / "a.txt").read_text() == "one\ntwo\nthree\n"  # the tree is untouched


def test_patch_dir_for_the_candidate(repo_root: Path, tmp_path: Path) -> None:
    stack = load_stack(repo_root / "build" / "stacks" / "ci-cuda13.toml")
    spec = stack.package("vllm")
    assert spec is not None
    (tmp_path / "patches/vllm/0.12.0-torch2.14").mkdir(parents=True)
    assert patch_dir_for(spec, "0.12.0", tmp_path)[0] == "patches/vllm/0.12.0-torch2.14"
    directory, note, carried = patch_dir_for(spec, "0.13.0", tmp_path)
    assert (directory, carried) == ("patches/vllm/0.11.2-torch2.14", True)
    assert "patches/vllm/0.13.0-torch2.14 does not exist" in note


# ------------------------------------------------------------------------- stages


def _paths(tmp_path: Path) -> stages.StagePaths:
    return stages.StagePaths(stack=tmp_path / "trial.toml", wheels=tmp_path / "wheels",
                             abi_json=tmp_path / "abi.json", throughput_json=tmp_path / "t.json",
                             logs=tmp_path / "logs", cache=tmp_path / "cache")


def _reporter(tmp_path: Path) -> Reporter:
    return Reporter(tmp_path / "trial.log", stream=io.StringIO())


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_failed_stage_is_recorded_with_exit_code_and_log(tmp_path: Path) -> None:
    state = stages.TrialState(tmp_path / "state.json", "k")
    state.plan = {"x": 1}
    state.record(stages.StageResult("plan", "passed"))
    reporter = _reporter(tmp_path)
    commands = {"build": _py("print('compiling'); print('ERROR (toolchain, exit 3): no nvcc');"
                             " raise SystemExit(3)"),
                "abi": _py("raise SystemExit(0)"), "throughput": _py("raise SystemExit(0)")}
    try:
        results = stages.run_stages(state, ["plan", "build", "abi", "throughput"],
                                    commands=commands, paths=_paths(tmp_path),
                                    reporter=reporter, gpu=False, throughput_available=False,
                                    first_step=2, total_steps=5)
    finally:
        reporter.close()
    build, abi, throughput = results
    assert (build.status, build.exit_code, build.meaning) == ("failed", 3, "toolchain")
    assert build.detail == "exit 3 (toolchain): ERROR (toolchain, exit 3): no nvcc"
    assert "compiling" in Path(build.log or "").read_text()
    assert abi.status == "skipped" and "build failed" in abi.detail
    assert throughput.status == "not-run" and throughput.detail == stages.NO_GPU
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["results"]["build"]["exit_code"] == 3 and saved["plan"] == {"x": 1}


# runner.run does not close the child's stdout pipe when interrupted; the file object is
# closed by the garbage collector, which pytest reports as an unraisable ResourceWarning.
@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Python turns SIGINT into KeyboardInterrupt only where SIGINT was not ignored when
    it started; a test run started in the background (`cmd &`, nohup) inherits it ignored
    and a Ctrl-C would do nothing. Install Ctrl-C's usual handler for the test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_interrupted_trial_continues_from_the_interrupted_stage(tmp_path: Path) -> None:
    key = stages.trial_key({"stack": "s"}, [])
    state = stages.TrialState.load(tmp_path / "state.json", key)
    state.plan = {"candidate_stack": {}}
    state.record(stages.StageResult("plan", "passed", seconds=1.0))
    paths = _paths(tmp_path)
    # The marker is assembled by the child so that the logged command line does not
    # already contain it.
    slow = _py("import time; print('child ' + 'running', flush=True); time.sleep(60)")
    commands = {"build": slow, "abi": _py("pass"), "throughput": _py("pass")}

    def interrupt_once_running() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            logs = list(paths.logs.glob("trial-build-*.log")) if paths.logs.is_dir() else []
            if logs and "child running" in logs[0].read_text():
                # What Ctrl-C does, aimed at the main thread so that its blocking read of
                # the child's output is interrupted (a process-wide signal may land on
                # this thread instead).
                signal.pthread_kill(main, signal.SIGINT)
                return
            time.sleep(0.05)

    main = threading.main_thread().ident
    assert main is not None
    watcher = threading.Thread(target=interrupt_once_running)
    watcher.start()
    reporter = _reporter(tmp_path)
    started = time.monotonic()
    try:
        with pytest.raises(InterruptedError_):
            stages.run_stages(state, ["plan", "build", "abi"], commands=commands, paths=paths,
                              reporter=reporter, gpu=False, throughput_available=False,
                              first_step=2, total_steps=4)
    finally:
        watcher.join()
        reporter.close()
    assert time.monotonic() - started < 30  # the child was stopped, not waited for
    saved = stages.TrialState.load(tmp_path / "state.json", key)
    assert saved.results["build"].status == "interrupted"
    assert saved.passed("plan") and saved.plan == {"candidate_stack": {}}
    assert saved.note == "continuing the saved trial (done: plan)"

    # Re-run: the plan stays done, the build runs again (and now passes), then abi.
    paths.wheels.mkdir()
    ok = {"build": _py("print('built')"), "abi": _py("print('abi ok')"), "throughput": _py("")}
    reporter = _reporter(tmp_path)
    try:
        results = stages.run_stages(saved, ["plan", "build", "abi"], commands=ok, paths=paths,
                                    reporter=reporter, gpu=False, throughput_available=False,
                                    first_step=2, total_steps=4)
    finally:
        reporter.close()
    assert [(r.name, r.status) for r in results] == [("build", "passed"), ("abi", "passed")]
    # A third run reuses both.
    again = stages.TrialState.load(tmp_path / "state.json", key)
    reporter = _reporter(tmp_path)
    try:
        results = stages.run_stages(again, ["plan", "build", "abi"], commands=commands,
                                    paths=paths, reporter=reporter, gpu=False,
                                    throughput_available=False, first_step=2, total_steps=4)
    finally:
        reporter.close()
    assert all(r.reused for r in results)
    # Other inputs: the saved trial is not continued.
    other = stages.TrialState.load(tmp_path / "state.json", stages.trial_key({"stack": "t"}, []))
    assert other.plan is None and "starting over" in other.note


def test_default_stages_follow_the_gpu() -> None:
    assert stages.parse_stages(None, gpu=False) == ["plan", "build", "abi"]
    assert stages.parse_stages(None, gpu=True) == ["plan", "build", "abi", "throughput"]
    assert stages.parse_stages("abi,build", gpu=False) == ["plan", "build", "abi"]
    with pytest.raises(ConfigError):
        stages.parse_stages("plan,compile", gpu=False)


def test_throughput_stage_on_a_gpu_host(tmp_path: Path) -> None:
    """What the stage does where a GPU exists (the GPU itself is not needed to decide)."""
    paths = _paths(tmp_path)
    state = stages.TrialState(tmp_path / "state.json", "k")
    state.record(stages.StageResult("build", "passed"))
    paths.wheels.mkdir()
    commands = {"build": _py(""), "abi": _py(""), "throughput": _py("print('measured')")}

    def throughput(available: bool) -> stages.StageResult:
        state.results.pop("throughput", None)
        reporter = _reporter(tmp_path)
        try:
            return stages.run_stages(state, ["plan", "throughput"], commands=commands,
                                     paths=paths, reporter=reporter, gpu=True,
                                     throughput_available=available, first_step=2,
                                     total_steps=3)[0]
        finally:
            reporter.close()

    assert "does not exist yet" in throughput(False).detail
    ran = throughput(True)
    assert ran.status == "passed" and "measured" in Path(ran.log or "").read_text()
    # verify-throughput makes the candidate venv itself, from the trial's wheels and stack.
    command = stages.stage_commands(paths)["throughput"]
    assert command[3] == "verify-throughput" and "--candidate" not in command
    assert command[command.index("--stack") + 1] == str(paths.stack)
    assert command[command.index("--wheels") + 1] == str(paths.wheels)


def test_a_stage_that_runs_again_invalidates_the_saved_later_stages(tmp_path: Path) -> None:
    """build re-runs (its wheels were deleted): the abi pass saved for the old wheels must
    not be reused; it runs again (and here fails, as it would for the new wheels)."""
    paths = _paths(tmp_path)
    state = stages.TrialState(tmp_path / "state.json", "k")
    state.record(stages.StageResult("build", "passed"))
    state.record(stages.StageResult("abi", "passed"))
    assert not paths.wheels.exists()  # so build is not reusable
    commands = {"build": _py(f"import os; os.makedirs({str(paths.wheels)!r})"),
                "abi": _py("import sys; sys.exit(8)"), "throughput": _py("")}
    reporter = _reporter(tmp_path)
    try:
        results = stages.run_stages(state, ["plan", "build", "abi"], commands=commands,
                                    paths=paths, reporter=reporter, gpu=False,
                                    throughput_available=True, first_step=2, total_steps=4)
    finally:
        reporter.close()
    assert [(r.name, r.status, r.reused) for r in results] == [
        ("build", "passed", False), ("abi", "failed", False)]
    assert results[1].exit_code == 8


def test_candidate_archs_follow_the_candidates_nvcc(repo_root: Path, tmp_path: Path) -> None:
    """When torch's CUDA moves to 13, the candidate builds with nvcc 13 and takes CMake's
    nvcc >= 13.0 branch: an arch only the 12.8 branch accepts (10.0 here) is dropped."""
    facts = read_release(release_tree(tmp_path / "src"), "vllm", "9.9.9")
    stack = dataclasses.replace(load_stack(repo_root / CU128_STACK),
                                cuda_arch_list=("10.0", "12.0"))
    same = compare.arch_support(stack, Version("12.8"), facts, facts)
    assert same["candidate_drops"] == []
    moved = compare.arch_support(stack, Version("12.8"), facts, facts, Version("13.0"))
    assert moved["candidate_drops"] == ["10.0"]
    assert moved["candidate"]["branch"]["min_nvcc"] == "13.0" or \
        "13.0" in moved["candidate"]["branch"]["condition"]
    assert moved["current"]["missing"] == []


# ------------------------------------------------- torch's CUDA from its wheel metadata

TORCH_METADATA = Path(__file__).parent.parent / "fixtures" / "torch-metadata"


def _requires_dist(version: str) -> list[str]:
    path = TORCH_METADATA / f"torch-{version}-cp312-cp312-manylinux_2_28_x86_64.whl.metadata"
    message = email.parser.Parser().parsestr(path.read_text(encoding="utf-8"))
    return message.get_all("Requires-Dist") or []


@pytest.mark.parametrize(("version", "cuda", "where"), [
    ("2.9.0", "12.8", "nvidia-cuda-runtime-cu12==12.8.90"),
    ("2.11.0", "13.0", "cuda-toolkit==13.0.2"),
    ("2.13.0", "13.0", "cuda-toolkit==13.0.3"),
])
def test_torch_cuda_from_real_pypi_metadata(version: str, cuda: str, where: str) -> None:
    """The real Requires-Dist of torch's x86_64 wheels on PyPI (fixtures with provenance):
    CUDA 12 as nvidia-cuda-runtime-cu12, CUDA 13 as the cuda-toolkit metapackage."""
    assert cuda_from_requires_dist(_requires_dist(version), machine="x86_64",
                                   python="3.12") == (cuda, where)


def test_torch_cuda_requirement_forms_and_markers() -> None:
    # torch 2.9.0 names its CUDA runtime for x86_64 only: on aarch64 it is no CUDA build.
    cuda, why = cuda_from_requires_dist(_requires_dist("2.9.0"), machine="aarch64",
                                        python="3.12")
    assert cuda is None and "names no CUDA runtime" in why
    # The CUDA 13 runtime package without a -cuNN suffix (a line written here: no torch
    # on PyPI uses this form, the cu130 wheels of download.pytorch.org do).
    assert cuda_from_requires_dist(['nvidia-cuda-runtime==13.0.96; platform_system == "Linux"',
                                    "filelock"], machine="x86_64", python="3.12") == (
        "13.0", "nvidia-cuda-runtime==13.0.96")
    cuda, why = cuda_from_requires_dist(["cuda-toolkit[cudart]>=13"], machine="x86_64",
                                        python="3.12")
    assert cuda is None and "pins no exact CUDA version" in why


def _torch_index(metadata: dict[str, bytes]) -> type[http.server.BaseHTTPRequestHandler]:
    """A PEP 691 simple index on loopback listing one torch wheel per version in
    `metadata` for this machine, serving its PEP 658 .metadata (404 where empty)."""
    machine = platform.machine()
    names = {v: f"torch-{v}-cp312-cp312-manylinux_2_28_{machine}.whl" for v in metadata}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/simple/torch/":
                files = [{"filename": n, "url": f"/files/{n}", "hashes": {}}
                         for n in names.values()]
                body = json.dumps({"meta": {"api-version": "1.1"}, "name": "torch",
                                   "files": files}).encode()
                kind = "application/vnd.pypi.simple.v1+json"
            else:
                found = [v for v, n in names.items() if self.path == f"/files/{n}.metadata"]
                body = metadata[found[0]] if found else b""
                kind = "text/plain"
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def test_torch_cuda_from_a_simple_index(tmp_path: Path) -> None:
    """The whole read, through a real HTTP index on loopback serving PyPI's real torch
    2.11.0 metadata (as this machine's wheel) and a torch 2.12.0 without metadata."""
    real = (TORCH_METADATA / "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl.metadata"
            ).read_bytes()
    with serve_on_loopback(_torch_index({"2.11.0": real, "2.12.0": b""})) as base:
        cuda, where = torch_cuda_from_simple_url(base + "/simple", "2.11.0", "3.12")
        assert cuda == "13.0", where
        assert where.startswith("cuda-toolkit==13.0.2 in the metadata of torch-2.11.0-")
        cuda, why = torch_cuda_from_simple_url(base + "/simple", "2.12.0", "3.12")
        assert cuda is None and "metadata could not be read" in why
        cuda, why = torch_cuda_from_simple_url(base + "/simple", "2.14.0", "3.12")
        assert cuda is None and "no cp312 linux" in why


def test_candidate_toolkit_and_arch_branch_follow_the_cuda_read(repo_root: Path,
                                                                 tmp_path: Path) -> None:
    """torch 2.11's CUDA 13.0 moves nvcc to >= 13.0, and the candidate is checked against
    CMake's nvcc >= 13.0 branch; 12.8 keeps the 12.8 branch; a CUDA that could not be read
    is a blocker and is left out of the candidate stack, never the current value."""
    stack = load_stack(repo_root / CU128_STACK)
    assert stack.torch.cuda == "12.8"
    facts = read_release(release_tree(tmp_path / "src", torch="2.11.0", build_torch="2.11.0"),
                         "vllm", "9.9.9")
    floor = toolkit_floor(stack.cuda_toolkit.version, stack.cuda_toolkit.pip_version)

    def decide(cuda: str | None) -> compare.TorchDecision:
        return compare.decide_torch(stack, facts, None,
                                    lambda v: (cuda, "the index") if cuda else
                                    (None, "no wheel"))

    for cuda, nvcc, branch in (("13.0", ">=13.0,<14", "13.0"), ("12.8", ">=12.8,<13", "12.8")):
        toolkit, _note, cand_floor, unknown, blockers = candidate_toolkit(stack, decide(cuda))
        assert (toolkit.version, str(cand_floor), unknown, blockers) == (nvcc, branch, {}, [])
        archs = compare.arch_support(stack, floor, facts, facts, cand_floor)
        assert archs["candidate"]["branch"]["condition"] == f"nvcc >= {branch}"

    decision = decide(None)
    assert decision.cuda_chosen is None and decision.cuda_note.startswith("could not read")
    toolkit, _note, cand_floor, unknown, blockers = candidate_toolkit(stack, decision)
    assert cand_floor is None and blockers == [decision.cuda_note]
    assert set(unknown) == {("torch", "cuda"), ("cuda_toolkit", "version")}
    archs = compare.arch_support(stack, floor, facts, facts, cand_floor,
                                 candidate_nvcc_unknown=unknown[("cuda_toolkit", "version")])
    assert archs["candidate"]["branch"] is None and archs["candidate"]["unknown"]

    # The candidate stack: the placeholder values are proven, then left out with the
    # blocker in their place; the file does not load until the user sets them.
    target = tmp_path / "trial.toml"
    written = write_stack(stack, target, header=["trial"], unknown=unknown)
    text = target.read_text()
    assert written.path == target and written.torch.version == stack.torch.version
    torch_table = text.split("\n[torch]\n", 1)[1].split("\n[", 1)[0]
    toolkit_table = text.split("\n[cuda_toolkit]\n", 1)[1].split("\n[", 1)[0]
    assert "\ncuda = " not in torch_table and "\nversion = " not in toolkit_table
    assert f"# cuda = ?  LEFT OUT (blocker): {decision.cuda_note}" in torch_table
    assert "# version = ?  LEFT OUT (blocker): nvcc's major" in toolkit_table
    with pytest.raises(ConfigError):
        load_stack(target)


def test_release_reads_torch_from_the_per_device_build_requirements(tmp_path: Path) -> None:
    """Newer vLLM keeps its build requirements in requirements/build/cuda.txt."""
    tree = release_tree(tmp_path / "src", torch="2.11.0", build_torch="2.11.0")
    (tree / "requirements" / "build.txt").unlink()
    (tree / "requirements" / "build").mkdir()
    (tree / "requirements" / "build" / "cuda.txt").write_text("cmake\ntorch==2.11.0\n")
    facts = read_release(tree, "vllm", "9.9.9")
    assert "requirements/build/cuda.txt:2" in [p.where for p in facts.torch_pins]


def test_build_stage_skips_a_candidate_stack_that_leaves_values_out(tmp_path: Path) -> None:
    """A stack written without [torch] cuda (could not be read) is not handed to
    build-wheels, whose command here would fail the test if it ran."""
    state = stages.TrialState(tmp_path / "state.json", "k")
    state.plan = {"candidate_stack": {"left_out": ["[torch] cuda", "[cuda_toolkit] version"]}}
    state.record(stages.StageResult("plan", stages.StageStatus.PASSED))
    reporter = _reporter(tmp_path)
    commands = {name: _py("raise SystemExit(1)") for name in ("build", "abi", "throughput")}
    try:
        build, abi = stages.run_stages(state, ["plan", "build", "abi"], commands=commands,
                                       paths=_paths(tmp_path), reporter=reporter, gpu=False,
                                       throughput_available=False, first_step=2, total_steps=4)
    finally:
        reporter.close()
    assert build.status == "skipped" and "[torch] cuda" in build.detail
    assert abi.status == "skipped"
