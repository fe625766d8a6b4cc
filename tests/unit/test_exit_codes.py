"""The documented exit codes, as a script sees them: each run goes through the installed
`vllm-wheels` console script in a subprocess (nox turns every failure into 1, so scripts
and CI call this entry point). Sources are local path sources and a loopback socket, so
nothing here needs the network, a GPU or a torch venv.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from vllm_wheels.errors import EXIT_CODES

REPO = Path(__file__).resolve().parents[2]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def console_script() -> list[str]:
    """The entry point pip installs from [project.scripts] next to this interpreter;
    `python -m vllm_wheels` only where the test venv has no scripts."""
    script = Path(sys.executable).parent / "vllm-wheels"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vllm_wheels"]


def run_script(*args: str, cwd: Path, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in os.environ.items() if k not in ("MAX_JOBS", "NVCC_THREADS")}
    merged.update(env or {})
    return subprocess.run([*console_script(), *args], cwd=cwd, env=merged, text=True,
                          capture_output=True, timeout=120, check=False)


# Toolkit from pip: its nvcc is a "todo" check until the build assembles it, so a dry run
# of this stack passes its checks on any host with git, patch and gcc.
PIP_TOOLKIT = 'version = ">=13.0,<14"\nsource = "pip"\npip_version = "13.0.3.0"'
# No nvcc anywhere satisfies this: the nvcc check fails on every host (missing or mismatched).
IMPOSSIBLE_TOOLKIT = 'version = ">=99,<100"\nsource = "system"'


def make_project(root: Path, *, toolkit: str = PIP_TOOLKIT, extra: str = "") -> Path:
    """A stack of two local packages: `donor` (plain setuptools) and a vLLM-builder package
    whose CUTLASS external comes from the donor's source (from_source), as the CUDA 13
    test stack takes it from FlashInfer's sdist."""
    (root / "donor" / "3rdparty" / "cutlass" / "include").mkdir(parents=True)
    (root / "donor" / "setup.py").write_text(
        'from setuptools import setup\nsetup(name="donor", version="0.1.0")\n')
    shutil.copytree(REPO / "tests" / "fixtures" / "cmake_externals", root / "vllmsrc")
    stack = root / "stack.toml"
    stack.write_text(f"""schema_version = 1
name = "ec"
python = "{PY}"
cuda_arch_list = "12.0"
[torch]
version = "2.14.1"
cuda = "13.0"
[cuda_toolkit]
{toolkit}
[build]
compile_cache = "none"
[packages.donor]
source = {{ path = "donor", version = "0.1.0" }}
[packages.vllm]
source = {{ path = "vllmsrc", version = "0.0.1" }}
[packages.vllm.externals.cutlass]
from_source = "donor:3rdparty/cutlass"
{extra}""")
    return stack


def dry_run(root: Path, stack: Path, *extra: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return run_script("build-wheels", "--stack", str(stack), "--cache-dir", str(root / "cache"),
                      "--dry-run", *extra, cwd=root, env=env)


def write_wheel(directory: Path) -> Path:
    """A minimal valid pure-Python wheel (METADATA, WHEEL, RECORD with hashes)."""
    files = {"tiny/__init__.py": b"",
             "tiny-0.1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tiny\nVersion: 0.1.0\n",
             "tiny-0.1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
                                           b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    files["tiny-0.1.0.dist-info/RECORD"] = (record + "tiny-0.1.0.dist-info/RECORD,,\n").encode()
    path = directory / "tiny-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


# ------------------------------------------------------------- one test per exit code


def test_0_a_clean_dry_run(tmp_path: Path) -> None:
    result = dry_run(tmp_path, make_project(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Plan for stack 'ec'" in result.stdout


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--max-jobs", "-3"], {}, "--max-jobs must be a whole number >= 0, got '-3'"),
    (["--nvcc-threads", "-1"], {}, "--nvcc-threads must be a whole number >= 0, got '-1'"),
    ([], {"MAX_JOBS": "-2"}, "MAX_JOBS must be a whole number >= 0, got '-2'"),
    ([], {"NVCC_THREADS": "-1"}, "NVCC_THREADS must be a whole number >= 0, got '-1'"),
    # Refused before the docker build it would be forwarded to.
    (["--max-jobs", "-3", "--in-docker"], {}, "--max-jobs must be a whole number >= 0"),
])
def test_2_negative_parallelism_is_refused(tmp_path: Path, args: list[str],
                                           env: dict[str, str], message: str) -> None:
    result = dry_run(tmp_path, make_project(tmp_path), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert f"ERROR (configuration, exit 2): {message}" in result.stderr
    assert "fix:" in result.stderr
    # Refused before any source was prepared.
    assert not (tmp_path / "cache" / "src").exists()


def test_2_a_mistyped_stack_key(tmp_path: Path) -> None:
    stack = make_project(tmp_path)
    stack.write_text(stack.read_text().replace("cuda_arch_list", "cuda_arch_lst"))
    result = dry_run(tmp_path, stack)
    assert result.returncode == 2, result.stderr
    assert "did you mean 'cuda_arch_list'?" in result.stderr


def test_2_bad_arguments() -> None:
    result = run_script("build-wheels", "--no-such-option", cwd=REPO)
    assert result.returncode == 2, result.stderr


def test_3_dry_run_with_a_failing_check_prints_the_plan_then_exits_3(tmp_path: Path) -> None:
    plan_json = tmp_path / "plan.json"
    result = dry_run(tmp_path, make_project(tmp_path, toolkit=IMPOSSIBLE_TOOLKIT),
                     "--json", str(plan_json))
    assert result.returncode == 3, result.stderr
    # The whole plan came first (down to its last line), and the JSON was written.
    assert "[FAIL] nvcc" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("Log: ")
    checks = json.loads(plan_json.read_text())["toolchain"]["checks"]
    assert any(c["status"] == "fail" and c["name"].startswith("nvcc") for c in checks)
    assert "ERROR (toolchain, exit 3): nvcc" in result.stderr
    assert "a real build would stop" in result.stderr


def test_4_missing_local_source(tmp_path: Path) -> None:
    stack = make_project(tmp_path)
    shutil.rmtree(tmp_path / "vllmsrc")
    result = dry_run(tmp_path, stack)
    assert result.returncode == 4, result.stderr
    assert "ERROR (source, exit 4)" in result.stderr


def test_5_patch_that_does_not_apply(tmp_path: Path) -> None:
    patches = tmp_path / "patches-vllm"
    patches.mkdir()
    (patches / "0001-bad.patch").write_text(
        "--- a/CMakeLists.txt\n+++ b/CMakeLists.txt\n@@ -1,1 +1,1 @@\n"
        "-this line is not in the file\n+replacement\n")
    (patches / "series").write_text("0001-bad.patch\n")
    stack = make_project(tmp_path)
    stack.write_text(stack.read_text().replace(
        'source = { path = "vllmsrc"', f'patches = "{patches}"\nsource = {{ path = "vllmsrc"'))
    result = dry_run(tmp_path, stack)
    assert result.returncode == 5, result.stderr
    assert "ERROR (patch, exit 5)" in result.stderr and "0001-bad.patch" in result.stderr


def test_9_verify_abi_without_the_runtime_interpreter(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path)
    result = run_script("verify-abi", "--wheels", str(wheel), "--python", str(tmp_path / "nope"),
                        "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert result.returncode == 9, result.stderr
    assert "ERROR (could not check, exit 9)" in result.stderr


def test_10_publishing_an_unverified_wheel(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path)
    result = run_script("publish", "--wheels", str(wheel), "--index", str(tmp_path / "index"),
                        cwd=tmp_path)
    assert result.returncode == 10, result.stderr
    assert "ERROR (index, exit 10)" in result.stderr


def test_130_terminated_while_waiting_for_the_index(tmp_path: Path) -> None:
    """SIGTERM while a download hangs: a real loopback socket that accepts the connection
    (the kernel's backlog) and never answers."""
    stack = make_project(tmp_path)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        index = f"http://127.0.0.1:{silent.getsockname()[1]}/simple"
        stack.write_text(stack.read_text().replace(
            'source = { path = "donor", version = "0.1.0" }',
            f'source = {{ pypi = "0.1.0", sha256 = "{"a" * 64}", index = "{index}" }}'))
        process = subprocess.Popen(
            [*console_script(), "build-wheels", "--stack", str(stack), "--cache-dir",
             str(tmp_path / "cache"), "--dry-run"], cwd=tmp_path, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # The step line (progress goes to stderr) comes before the index is asked.
            assert process.stderr is not None
            seen = ""
            while "sources:" not in seen:
                line = process.stderr.readline()
                assert line, process.wait()
                seen += line
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            _out, err = process.communicate(timeout=60)
            err = seen + err
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130, err
    assert "ERROR (interrupted, exit 130)" in err


def test_every_code_is_documented_in_the_readme() -> None:
    """The table for scripts (docs/cli.md, linked from README) lists every code of errors.py."""
    readme = (REPO / "docs" / "cli.md").read_text()
    section = readme.split("## For CI and automation", 1)[1].split("\n## ", 1)[0]
    for kind, code in EXIT_CODES.items():
        assert f"| {code} | {kind} |" in section, (code, kind)
    assert "| 0 |" in section


# ------------------------------------------------------------------- --only and donors


def test_only_prepares_a_from_source_donor_without_building_it(tmp_path: Path) -> None:
    plan_json = tmp_path / "plan.json"
    result = dry_run(tmp_path, make_project(tmp_path), "--only", "vllm", "--json", str(plan_json))
    assert result.returncode == 0, result.stderr
    assert "no package donor" not in result.stderr
    plan = json.loads(plan_json.read_text())
    assert [p["name"] for p in plan["packages"]] == ["vllm"]
    assert [p["name"] for p in plan["source_only"]] == ["donor"]
    donor_tree = plan["source_only"][0]["tree"]
    cutlass = next(e for e in plan["packages"][0]["externals"] if e["name"] == "cutlass")
    assert cutlass["directory"] == f"{donor_tree}/3rdparty/cutlass"
    assert cutlass["origin"] == "from-source:donor"
    assert "Source only donor (not built: left out by --only" in result.stdout


DONOR_TABLE = '[packages.donor]\nsource = { path = "donor", version = "0.1.0" }\n'


@pytest.mark.parametrize(("edit", "message", "fix"), [
    (lambda text: text.replace('from_source = "donor:', 'from_source = "donr:'),
     "no package donr in this stack", "did you mean 'donor'?"),
    # The donor listed after its user.
    (lambda text: text.replace(DONOR_TABLE, "") + DONOR_TABLE,
     "package donor is listed after vllm", "move [packages.donor] above [packages.vllm]"),
])
def test_from_source_naming_errors(tmp_path: Path, edit: Callable[[str], str], message: str,
                                   fix: str) -> None:
    stack = make_project(tmp_path)
    stack.write_text(edit(stack.read_text()))
    result = dry_run(tmp_path, stack, "--only", "vllm")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and fix in result.stderr
    assert not (tmp_path / "cache" / "src").exists()  # refused before preparing anything


def test_3_every_failed_check_is_printed_with_its_fix(tmp_path: Path) -> None:
    """A fresh box fails several checks at once (no Python of the stack's version, no
    matching nvcc): each is named with its own fix, not only the first."""
    stack = make_project(tmp_path, toolkit=IMPOSSIBLE_TOOLKIT)
    stack.write_text(stack.read_text().replace(f'python = "{PY}"', 'python = "3.99"'))
    result = dry_run(tmp_path, stack)
    assert result.returncode == 3, result.stderr
    error = result.stderr[result.stderr.index("ERROR (toolchain, exit 3)"):]
    assert "toolchain checks failed" in error
    assert "- python: python3.99 not found" in error and "fix: install Python 3.99" in error
    assert "- nvcc" in error
    assert "fix: install a CUDA toolkit matching >=99,<100" in error \
        or "fix: install a CUDA 13.x toolkit" in error


def test_3_a_cuda_home_without_nvcc_is_refused_not_replaced(tmp_path: Path) -> None:
    """CUDA_HOME names the toolkit the user chose: without nvcc there, the dry run fails
    naming it, instead of falling back to the nvcc on PATH or /usr/local/cuda."""
    stack = make_project(tmp_path, toolkit='version = ">=1"\nsource = "system"')
    (tmp_path / "not-a-toolkit" / "bin").mkdir(parents=True)
    result = dry_run(tmp_path, stack, env={"CUDA_HOME": str(tmp_path / "not-a-toolkit")})
    assert result.returncode == 3, result.stderr
    assert f"nvcc: CUDA_HOME={tmp_path / 'not-a-toolkit'} holds no nvcc" in result.stderr
    assert "fix: point CUDA_HOME at a CUDA toolkit's root" in result.stderr


def test_runs_started_in_the_same_second_get_a_log_file_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two build-wheels runs of one stack whose clocks read the same second (the log name's
    resolution): each writes its own log, none appends to the other's."""
    from vllm_wheels import cli

    stack = make_project(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20260101-000000")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert cli.main(["build-wheels", "--stack", str(stack), "--cache-dir",
                         str(tmp_path / "cache"), "--dry-run"]) == 0
    logs = sorted((tmp_path / "cache" / "logs").glob("plan-ec-*.log"))
    assert [p.name for p in logs] == ["plan-ec-20260101-000000-2.log",
                                      "plan-ec-20260101-000000.log"]
    for log in logs:
        assert log.read_text().count("Plan for stack 'ec'") == 1


def _empty_index(root: Path) -> Path:
    """A real, empty wheel index (generation 1, no files), as publishing leaves one."""
    from vllm_wheels.index.store import IndexDir, IndexState
    from vllm_wheels.log import Reporter

    index = IndexDir(root)
    with index.lock():
        index.commit(IndexState(), Reporter(None))
    return root


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_2_serve_index_on_an_impossible_port(tmp_path: Path, port: str) -> None:
    result = run_script("serve-index", "--index", str(_empty_index(tmp_path / "index")),
                        "--port", port, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--port" in result.stderr and ("TCP port" in result.stderr
                                           or "not a port number" in result.stderr)


@pytest.mark.parametrize("command", [["index-yank", "some-1.0-py3-none-any.whl", "--reason",
                                      "broken"], ["serve-index", "--port", "0"],
                                     ["index-list"]])
def test_2_index_commands_on_a_folder_that_is_no_index_create_nothing(
        tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "not-an-index"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    result = run_script(*command, "--index", str(folder), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"no wheel index at {folder}" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    # A folder that does not exist is not created either.
    result = run_script(*command, "--index", str(tmp_path / "absent"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "absent").exists()


def test_path_sources_resolve_against_the_stacks_checkout_from_any_directory(
        tmp_path: Path) -> None:
    """A stack in a checkout (noxfile.py + build/) names its path sources relative to that
    checkout's root, as docs/stack-reference.md says, whatever directory the command runs
    in."""
    repo = tmp_path / "repo"
    repo.mkdir()
    stack = make_project(repo)
    (repo / "noxfile.py").write_text("")
    (repo / "build" / "stacks").mkdir(parents=True)
    stack = stack.rename(repo / "build" / "stacks" / "ec.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_script("build-wheels", "--stack", str(stack), "--cache-dir",
                        str(tmp_path / "cache"), "--dry-run", "--json",
                        str(tmp_path / "plan.json"), cwd=elsewhere)
    assert result.returncode == 0, result.stderr  # before: exit 4, elsewhere/donor missing
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["paths"]["output"] == str(repo / "wheels" / "ec")


def test_only_uses_the_stacks_build_venv(tmp_path: Path) -> None:
    """The build venv is the stack's: `--only donor` plans the same venv (path and
    requirements, vLLM's build requirements included) as a full build of the stack, so a
    selection never makes a torch venv of its own."""
    stack = make_project(tmp_path)
    (tmp_path / "vllmsrc" / "requirements").mkdir()
    (tmp_path / "vllmsrc" / "requirements" / "build.txt").write_text("setuptools-scm>=8\n")
    plans = {}
    for name, extra in (("full", ()), ("only", ("--only", "donor"))):
        result = dry_run(tmp_path, stack, "--json", str(tmp_path / f"{name}.json"), *extra)
        assert result.returncode == 0, result.stderr
        plans[name] = json.loads((tmp_path / f"{name}.json").read_text())["toolchain"]
    assert [p["name"] for p in json.loads((tmp_path / "only.json").read_text())["packages"]] \
        == ["donor"]
    assert "setuptools-scm>=8" in plans["full"]["build_venv_requirements"]
    assert plans["only"]["build_venv_requirements"] == plans["full"]["build_venv_requirements"]
    assert plans["only"]["build_venv"] == plans["full"]["build_venv"]


def test_2_an_output_dir_holding_a_wheel_we_did_not_build_is_refused(tmp_path: Path) -> None:
    """A real wheel (pip + setuptools, no build manifest) in --output-dir: refused before
    anything is prepared (exit 2, the file named), and left exactly as it was."""
    stack = make_project(tmp_path)
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(tmp_path / "donor")],
                   check=True, capture_output=True)
    (foreign,) = out.glob("*.whl")
    before = foreign.read_bytes()
    result = dry_run(tmp_path, stack, "--output-dir", str(out))
    assert result.returncode == 2, result.stderr
    assert "ERROR (configuration, exit 2): the output dir" in result.stderr
    assert f"{foreign.name}: no build manifest: not built by this pipeline" in result.stderr
    assert [p.name for p in out.iterdir()] == [foreign.name]
    assert foreign.read_bytes() == before
    assert not (tmp_path / "cache" / "src").exists()


def _tampered(directory: Path, how: str) -> Path:
    """The minimal wheel with one member's bytes changed after RECORD was written, or with
    one RECORD hash replaced by the hash of other bytes (a well-formed, wrong entry)."""
    wheel = write_wheel(directory)
    with zipfile.ZipFile(wheel) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    if how == "member changed":
        members["tiny/__init__.py"] = b"print('not what was built')\n"
    else:
        other = base64.urlsafe_b64encode(hashlib.sha256(b"other").digest()).rstrip(b"=")
        record = members["tiny-0.1.0.dist-info/RECORD"].decode().splitlines()
        record = [",".join([row.split(",")[0], f"sha256={other.decode()}", row.split(",")[2]])
                  if row.startswith("tiny-0.1.0.dist-info/METADATA") else row for row in record]
        members["tiny-0.1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel.unlink()
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return wheel


@pytest.mark.parametrize(("how", "member"), [("member changed", "tiny/__init__.py"),
                                             ("RECORD hash replaced",
                                              "tiny-0.1.0.dist-info/METADATA")])
def test_9_verify_abi_refuses_a_wheel_that_does_not_match_its_record(
        tmp_path: Path, how: str, member: str) -> None:
    wheel = _tampered(tmp_path, how)
    result = run_script("verify-abi", "--wheels", str(tmp_path), "--python", sys.executable,
                        "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert result.returncode == 9, result.stdout + result.stderr
    assert f"ERROR (could not check, exit 9): {wheel.name}: its files do not match its " \
           "RECORD" in result.stderr
    assert f"hash / size of {member} didn't match RECORD" in result.stderr
    assert not (tmp_path / "verify-abi.json").exists()  # no verdict recorded for it


@pytest.mark.parametrize("how", ["member changed", "RECORD hash replaced"])
def test_10_publish_refuses_a_wheel_that_does_not_match_its_record(tmp_path: Path,
                                                                    how: str) -> None:
    """Even with a passing verify_abi result for its sha256 (a STAND-IN report written
    here, in the documented shape) and even with --allow-unverified: nothing enters."""
    from vllm_wheels.verify.report import REPORT_FILENAME, REPORT_SCHEMA_VERSION

    wheel = _tampered(tmp_path, how)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (tmp_path / REPORT_FILENAME).write_text(json.dumps({
        "schema_version": REPORT_SCHEMA_VERSION, "tool": "vllm-wheels verify-abi",
        "created": "2026-01-01T00:00:00Z", "passed": True, "runtime": {"stand_in": True},
        "wheels": [{"filename": wheel.name, "sha256": digest, "passed": True,
                    "facts_from": "wheel", "checks": []}]}))
    index = tmp_path / "index"
    for extra in ([], ["--allow-unverified", "hand-checked"]):
        result = run_script("publish", "--wheels", str(tmp_path), "--index", str(index),
                            *extra, cwd=tmp_path)
        assert result.returncode == 10, result.stderr
        assert "1 wheel(s) do not match their RECORD" in result.stderr
        assert wheel.name in result.stderr
        assert not (index / "files").exists() and not (index / "current").exists()
# -------------------------------------------- the machine's CUDA toolkit source (exit 0/2)
# A stack pins which toolkit may compile; where it comes from is the machine's choice:
# --cuda-toolkit system|pip, else VLLM_WHEELS_CUDA_TOOLKIT, else the stack's source. The
# plan shows the choice: a pip toolkit puts cuda-toolkit[...]==pip_version into the build
# venv and assembles CUDA_HOME in the cache; a system one takes the machine's nvcc.

SYSTEM_TOOLKIT = 'version = ">=13.0,<14"\nsource = "system"'


def planned_source(root: Path, *extra: str, env: dict[str, str] | None = None,
                   toolkit: str = PIP_TOOLKIT) -> tuple[str, subprocess.CompletedProcess[str]]:
    plan_json = root / "plan.json"
    result = dry_run(root, make_project(root, toolkit=toolkit), "--json", str(plan_json),
                     *extra, env={"VLLM_WHEELS_CUDA_TOOLKIT": "", **(env or {})})
    # A system toolkit on a host without nvcc 13 is a failing check (exit 3): still planned.
    assert result.returncode in (0, 3), result.stderr
    toolchain = json.loads(plan_json.read_text())["toolchain"]
    pip = any(r.startswith("cuda-toolkit[") and r.endswith("==13.0.3.0")
              for r in toolchain["build_venv_requirements"])
    cuda_home = toolchain["cuda_home"] or ""
    assert pip == cuda_home.startswith(str(root / "cache" / "cuda-home")), toolchain
    return ("pip" if pip else "system"), result


def test_the_stacks_toolkit_source_without_an_override(tmp_path: Path) -> None:
    assert planned_source(tmp_path / "a")[0] == "pip"
    assert planned_source(tmp_path / "b", toolkit=SYSTEM_TOOLKIT)[0] == "system"


def test_cuda_toolkit_flag_switches_the_source(tmp_path: Path) -> None:
    assert planned_source(tmp_path, "--cuda-toolkit", "system")[0] == "system"


def test_cuda_toolkit_env_applies_when_the_flag_is_absent(tmp_path: Path) -> None:
    source, _ = planned_source(tmp_path, env={"VLLM_WHEELS_CUDA_TOOLKIT": "system"})
    assert source == "system"


def test_cuda_toolkit_flag_wins_over_the_env(tmp_path: Path) -> None:
    source, _ = planned_source(tmp_path / "a", "--cuda-toolkit", "pip",
                               env={"VLLM_WHEELS_CUDA_TOOLKIT": "system"})
    assert source == "pip"
    source, _ = planned_source(tmp_path / "b", "--cuda-toolkit", "system",
                               env={"VLLM_WHEELS_CUDA_TOOLKIT": "pip"})
    assert source == "system"


def test_2_a_bad_cuda_toolkit_value(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    result = dry_run(tmp_path / "a", make_project(tmp_path / "a"),
                     env={"VLLM_WHEELS_CUDA_TOOLKIT": "conda"})
    assert result.returncode == 2, result.stderr
    assert ("ERROR (configuration, exit 2): VLLM_WHEELS_CUDA_TOOLKIT='conda': not a CUDA "
            "toolkit source") in result.stderr
    assert "why: the toolkit comes from the machine (system) or from PyPI's" in result.stderr
    assert "fix: set VLLM_WHEELS_CUDA_TOOLKIT to system or pip" in result.stderr
    assert "stack's [cuda_toolkit] source (pip)" in result.stderr
    assert not (tmp_path / "a" / "cache" / "src").exists()  # refused before any source
    # The flag's values are argparse choices: a bad one is a usage error, also exit 2.
    (tmp_path / "b").mkdir()
    result = dry_run(tmp_path / "b", make_project(tmp_path / "b"), "--cuda-toolkit", "conda")
    assert result.returncode == 2, result.stderr
    assert "invalid choice: 'conda'" in result.stderr


def test_2_pip_toolkit_for_a_stack_without_pip_version(tmp_path: Path) -> None:
    for origin, extra, env in (("--cuda-toolkit", ["--cuda-toolkit", "pip"], {}),
                               ("VLLM_WHEELS_CUDA_TOOLKIT", [],
                                {"VLLM_WHEELS_CUDA_TOOLKIT": "pip"})):
        root = tmp_path / origin.strip("-")
        root.mkdir()
        result = dry_run(root, make_project(root, toolkit=SYSTEM_TOOLKIT), *extra, env=env)
        assert result.returncode == 2, result.stderr
        assert (f"ERROR (configuration, exit 2): {origin}=pip, but stack ec has no "
                "[cuda_toolkit] pip_version") in result.stderr
        assert "why: the pip toolkit is assembled from the cuda-toolkit wheels" in result.stderr
        assert 'fix: add pip_version (e.g. "13.0.2")' in result.stderr
        assert f"or use {origin}=system with CUDA_HOME set" in result.stderr
        assert not (root / "cache" / "src").exists()


# ------------------------------------------------------------ compare-wheels (exit 2)


@pytest.mark.parametrize(("case", "message"), [
    ("bad-arch", "--arch 'twelve' is not a compute capability"),
    ("missing", "does not exist"),
    ("not-a-zip", "is not a wheel (not a zip archive)"),
])
def test_2_compare_wheels_refuses_a_bad_arch_or_file(tmp_path: Path, case: str,
                                                     message: str) -> None:
    (tmp_path / "a").mkdir()
    ours = write_wheel(tmp_path / "a")
    official = tmp_path / "official.whl"
    if case != "missing":
        official.write_bytes(ours.read_bytes() if case == "bad-arch" else b"not a zip")
    out = tmp_path / "compare.json"
    result = run_script("compare-wheels", str(ours), str(official), "--arch",
                        "twelve" if case == "bad-arch" else "12.0", "--json", str(out),
                        cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "ERROR (configuration, exit 2): " in result.stderr and message in result.stderr
    assert "fix:" in result.stderr
    assert not out.exists()  # nothing half-written


def test_0_compare_wheels_of_two_pure_wheels(tmp_path: Path) -> None:
    ours = write_wheel(tmp_path)
    out = tmp_path / "compare.json"
    result = run_script("compare-wheels", str(ours), str(ours), "--arch", "12.0", "--json",
                        str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["extensions"] == []
    assert data["packages"] == {"only_ours": [], "only_official": [], "both": 1}


def test_a_brought_build_venv_needs_only_what_the_selected_packages_build_with(
        tmp_path: Path) -> None:
    """`--only vllm --build-venv V`: the donor is prepared only to lend its tree (from_source),
    so its build requirements are not asked of V (found on the GPU machine: FlashInfer's AOT
    build requirements were demanded of a venv that builds vLLM only). Without --build-venv
    the venv is the stack's and keeps them."""
    stack = make_project(tmp_path)
    (tmp_path / "donor" / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["donor-only-requirement>=1", "setuptools"]\n'
        'build-backend = "setuptools.build_meta"\n')
    venv = tmp_path / "brought-venv"
    venv.mkdir()
    plans = {}
    for name, extra in (("stack", ("--only", "vllm")),
                        ("brought", ("--only", "vllm", "--build-venv", str(venv)))):
        dry_run(tmp_path, stack, "--json", str(tmp_path / f"{name}.json"), *extra)
        plans[name] = json.loads((tmp_path / f"{name}.json").read_text())["toolchain"]
    assert "donor-only-requirement>=1" in plans["stack"]["build_venv_requirements"]
    assert "donor-only-requirement>=1" not in plans["brought"]["build_venv_requirements"]


def test_the_build_venv_holds_the_versions_the_wheels_run_with(tmp_path: Path) -> None:
    """The vLLM package's exact runtime pins (requirements/cuda.txt, as its setup.py reads
    it) constrain the stack's build venv, whose key they change; a build requirement of
    another package that excludes one is refused while planning (exit 3), before any venv
    is made, naming who needs what."""
    stack = make_project(tmp_path)
    plain = dry_run(tmp_path, stack, "--json", str(tmp_path / "plain.json"))
    assert plain.returncode == 0, plain.stderr
    (tmp_path / "vllmsrc" / "requirements").mkdir()
    (tmp_path / "vllmsrc" / "requirements" / "cuda.txt").write_text(
        "apache-tvm-ffi==0.1.9\ndonor==0.1.0\nnumba == 0.65.0  # pinned\nregex\n")
    build_requires = tmp_path / "donor" / "pyproject.toml"
    build_requires.write_text('[build-system]\nrequires = ["setuptools", '
                              '"apache-tvm-ffi>=0.1.6,!=0.1.8,!=0.1.8.post0,<0.2"]\n'
                              'build-backend = "setuptools.build_meta"\n')
    pinned = dry_run(tmp_path, stack, "--json", str(tmp_path / "pinned.json"))
    assert pinned.returncode == 0, pinned.stderr
    plans = {name: json.loads((tmp_path / f"{name}.json").read_text())
             for name in ("plain", "pinned")}
    # donor==0.1.0 is a package of the stack: its wheel is pinned to the built version.
    assert plans["pinned"]["toolchain"]["build_venv_constraints"] == [
        "apache-tvm-ffi==0.1.9", "numba==0.65.0"]
    assert plans["plain"]["toolchain"]["build_venv_constraints"] == []
    assert plans["pinned"]["toolchain"]["build_venv"] != plans["plain"]["toolchain"]["build_venv"]
    assert "    constrained to the wheels' runtime pins: apache-tvm-ffi==0.1.9, numba==0.65.0\n" \
        in pinned.stdout
    build_requires.write_text(build_requires.read_text().replace(">=0.1.6", ">=0.1.10"))
    refused = dry_run(tmp_path, stack)
    assert refused.returncode == 3, refused.stderr
    assert ("ERROR (toolchain, exit 3): the build venv cannot hold the versions the wheels "
            "will run with:\n  - donor builds with `apache-tvm-ffi>=0.1.10,!=0.1.8,"
            "!=0.1.8.post0,<0.2`, which excludes vllm's runtime pin apache-tvm-ffi==0.1.9"
            ) in refused.stderr
    assert "  why: " in refused.stderr and "  fix: " in refused.stderr
    assert not (tmp_path / "cache" / "venvs").exists() or not any(
        (tmp_path / "cache" / "venvs").iterdir())
