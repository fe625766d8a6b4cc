"""Real subprocesses and real GNU patch on small trees."""

from __future__ import annotations

import hashlib
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_wheels.build.patches import PatchFile, apply_series, check_patch, read_series
from vllm_wheels.build.toolchain import parse_nvcc_version
from vllm_wheels.errors import BuildError, DiskFullError, PatchError, ToolchainError
from vllm_wheels.log import Reporter
from vllm_wheels.runner import capture, query, run, start

_open: list[Reporter] = []


def reporter(tmp_path: Path) -> Reporter:
    rep = Reporter(tmp_path / "log.txt", stream=io.StringIO())
    _open.append(rep)
    return rep


@pytest.fixture(autouse=True)
def _close_reporters() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def test_run_logs_env_changes_and_shows_compiler_errors(tmp_path: Path) -> None:
    rep = reporter(tmp_path)
    script = "echo compiling; echo 'foo.cu(3): error: identifier \"x\" is undefined'; exit 2"
    with pytest.raises(BuildError) as info:
        run(["bash", "-c", script], reporter=rep, env_changes={"MAX_JOBS": "3"}, what="compile")
    assert 'error: identifier "x" is undefined' in info.value.what
    assert "exit code 2" in info.value.what
    log = (tmp_path / "log.txt").read_text()
    assert "env +MAX_JOBS=3" in log and "compiling" in log


def test_killed_compiler_is_reported_as_memory_and_disk_full_has_its_own_code(
        tmp_path: Path) -> None:
    with pytest.raises(BuildError) as info:
        run(["bash", "-c", "kill -9 $$"], reporter=reporter(tmp_path))
    assert "out of memory" in info.value.what and "--max-jobs" in info.value.fix
    with pytest.raises(DiskFullError) as full:
        run(["bash", "-c", "echo 'write: No space left on device'; exit 1"],
            reporter=reporter(tmp_path))
    assert full.value.exit_code == 7


def test_missing_command_is_a_toolchain_error(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError):
        run(["definitely-not-a-tool-xyz"], reporter=reporter(tmp_path))


def test_parse_nvcc_version() -> None:
    text = "Cuda compilation tools, release 12.8, V12.8.93\nBuild cuda_12.8.r12.8/compiler"
    assert parse_nvcc_version(text) == ("12.8", "12.8.93")


def _patch(tmp_path: Path, name: str, old: str, new: str) -> PatchFile:
    body = f"--- a/f.txt\n+++ b/f.txt\n@@ -1,3 +1,3 @@\n a\n-{old}\n+{new}\n c\n"
    path = tmp_path / "patches" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("description line\n\n" + body)
    return PatchFile(name, path, hashlib.sha256(body.encode()).hexdigest())


def test_patch_statuses(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.txt").write_text("a\nb\nc\n")
    good = _patch(tmp_path, "good.patch", "b", "B")
    bad = _patch(tmp_path, "bad.patch", "zzz", "Z")
    assert check_patch(tree, good).status == "applies"
    conflict = check_patch(tree, bad)
    assert conflict.status == "conflicts" and conflict.failed_hunks == ("f.txt: hunk #1 at line 1",)
    apply_series(tree, [good])
    assert (tree / "f.txt").read_text() == "a\nB\nc\n"
    assert check_patch(tree, good).status == "already-applied"
    with pytest.raises(PatchError) as info:
        apply_series(tree, [bad])
    assert "hunk #1" in info.value.what and info.value.exit_code == 5


def test_series_must_list_every_patch(tmp_path: Path) -> None:
    _patch(tmp_path, "one.patch", "b", "B")
    _patch(tmp_path, "two.patch", "b", "C")
    (tmp_path / "patches" / "series").write_text("one.patch\n")
    with pytest.raises(Exception, match="not listed in series: two.patch"):
        read_series(tmp_path / "patches")


def test_query_never_raises_and_says_why_it_has_no_answer(tmp_path: Path) -> None:
    missing = query(["definitely-not-a-tool-xyz", "--version"])
    assert not missing.ok and missing.not_run is not None
    assert missing.describe().startswith("cannot run definitely-not-a-tool-xyz")
    slow = query([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert not slow.ok and slow.not_run is not None and "timed out after 0.5 s" in slow.not_run
    failed = query([sys.executable, "-c", "import sys; print('out'); sys.exit('broken: x')"])
    assert failed.not_run is None and failed.returncode == 1 and not failed.ok
    assert failed.describe().endswith("failed (exit 1): broken: x")
    env = query([sys.executable, "-c", "import os; print(os.environ.get('A'), "
                 "os.environ.get('HOME') is None)"], env_changes={"A": "1", "HOME": None})
    assert env.ok and env.stdout.split() == ["1", "True"]
    # capture() is the toolchain flavour: the same failure becomes exit 3.
    with pytest.raises(ToolchainError, match="failed \\(exit 1\\): broken: x") as info:
        capture(failed.argv)
    assert info.value.exit_code == 3


def test_start_logs_the_command_and_runs_in_its_own_session(tmp_path: Path) -> None:
    rep = reporter(tmp_path)
    out = tmp_path / "server" / "server.log"
    # It prints whether it leads its own session: stopping the server's process group
    # then cannot reach this test's.
    proc = start([sys.executable, "-c", "import os; print('up', os.environ['PORT'], "
                  "os.getsid(0) == os.getpid(), flush=True)"],
                 reporter=rep, log_file=out, env_changes={"PORT": "8123"})
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while "up 8123" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.read_text() == "up 8123 True\n"
    rep.close()
    log = (tmp_path / "log.txt").read_text()
    assert "+ " in log and "env +PORT=8123" in log


def test_missing_gnu_patch_is_a_toolchain_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.txt").write_text("a\nb\nc\n")
    good = _patch(tmp_path, "good.patch", "b", "B")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # a real PATH without patch
    with pytest.raises(ToolchainError, match="GNU patch could not run") as info:
        check_patch(tree, good)
    assert info.value.exit_code == 3 and "apt-get install patch" in info.value.fix
