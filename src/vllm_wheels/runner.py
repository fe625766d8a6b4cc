"""The one place that starts subprocesses.

`run()` logs the command (shell-quoted) and only the environment variables it changes,
streams merged stdout/stderr into the full log, hands each line to an optional callback
(progress parsing), and on failure raises a typed error whose message carries the
compiler error lines and the last lines of output rather than the whole log.

`query()` runs a short command whose output is a fact (a version, a probe, a listing) and
never raises: what a failure means differs by caller (a toolchain error, "could not check",
or a fact that is simply absent, like nvidia-smi on a host without a GPU). `capture()` is
the toolchain flavour of it. `start()` launches a long-lived server in its own session,
logged the same way as `run()`.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError, DiskFullError, InterruptedError_, PipelineError, ToolchainError
from .log import Reporter

# Lines worth showing on the console when a compile fails.
_ERROR_LINE = re.compile(
    r"(\berror\b|\bError\b|FAILED:|fatal error|undefined reference|"
    r"CMake Error|Killed signal|No space left)"
)
_DISK_FULL = re.compile(r"No space left on device|ENOSPC|Disk quota exceeded")
_OOM = re.compile(r"Killed signal terminated program|internal compiler error: Killed|"
                  r"nvcc error\s*:.*killed", re.IGNORECASE)


def format_env_changes(changes: Mapping[str, str | None]) -> list[str]:
    lines = []
    for key in sorted(changes):
        value = changes[key]
        lines.append(f"    env -{key}" if value is None else f"    env +{key}={value}")
    return lines


def apply_env(changes: Mapping[str, str | None], base: Mapping[str, str] | None = None
              ) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    reporter: Reporter,
    env_changes: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
    on_line: Callable[[str], object] | None = None,
    error_cls: type[PipelineError] = BuildError,
    what: str = "",
    fix: str = "",
    echo: bool = False,
    tail_lines: int = 40,
) -> list[str]:
    """Run a command; return its last output lines. Raise `error_cls` on failure."""
    argv = [os.fspath(c) for c in cmd]
    exe = argv[0]
    if os.sep not in exe and shutil.which(exe, path=(env_changes or {}).get("PATH")
                                          or os.environ.get("PATH")) is None:
        raise ToolchainError(f"command not found: {exe}",
                             why=f"needed for: {what or shlex.join(argv)}",
                             fix=f"install {exe} or put it on PATH")
    changes = dict(env_changes or {})
    reporter.log(f"+ {shlex.join(argv)}" + (f"   (cwd: {cwd})" if cwd else ""))
    for line in format_env_changes(changes):
        reporter.log(line)
    if echo:
        reporter.say(f"    + {shlex.join(argv)}")
    tail: collections.deque[str] = collections.deque(maxlen=400)
    error_lines: list[str] = []
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=apply_env(changes), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolchainError(f"cannot start {exe}: {exc}", fix=f"install {exe}") from exc
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            reporter.log(line)
            tail.append(line)
            if _ERROR_LINE.search(line) and len(error_lines) < 60:
                error_lines.append(line)
            if on_line is not None:
                on_line(line)
        returncode = proc.wait()
        proc.stdout.close()
    except KeyboardInterrupt:
        # Stop the whole process group (ninja and its nvcc children), not just the parent.
        _kill_group(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        raise InterruptedError_(f"interrupted while running: {what or exe}",
                                why="Ctrl-C or SIGTERM",
                                fix="re-run the same command; finished steps are reused"
                                ) from None
    if returncode == 0:
        return list(tail)[-tail_lines:]
    text = "\n".join(tail)
    shown = error_lines[-25:] or list(tail)[-tail_lines:]
    detail = "\n".join("      " + line for line in shown)
    header = f"{what or shlex.join(argv)} failed with exit code {returncode}"
    log_hint = f"full log: {reporter.log_path}" if reporter.log_path else ""
    if _DISK_FULL.search(text):
        raise DiskFullError(f"{header}: the disk is full\n{detail}",
                            why="a build step could not write its output",
                            fix="free disk space (or point --cache-dir at a larger disk) "
                                f"and re-run. {log_hint}", returncode=returncode)
    if returncode in (-signal.SIGKILL, 137) or _OOM.search(text):
        raise BuildError(f"{header}: a compiler was killed (most likely out of memory)\n{detail}",
                         why="each CUDA translation unit can take 3-7 GB; too many ran at once",
                         fix="re-run with a lower --max-jobs (or MAX_JOBS), or free memory. "
                             f"{log_hint}", returncode=returncode)
    raise error_cls(f"{header}\n{detail}", why=log_hint, fix=fix, returncode=returncode)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class QueryResult:
    """What a query printed. `not_run` says why there is no exit status to go by: the
    command could not start, or it did not finish in time (it was killed)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    not_run: str | None = None

    @property
    def ok(self) -> bool:
        return self.not_run is None and self.returncode == 0

    def describe(self, limit: int = 2000) -> str:
        """One line for an error message: why it did not run, or its exit and output tail."""
        if self.not_run is not None:
            return self.not_run
        return (f"{shlex.join(self.argv)} failed (exit {self.returncode}): "
                f"{(self.stderr or self.stdout).strip()[-limit:]}")


def query(cmd: Sequence[str | os.PathLike[str]], *, env_changes: Mapping[str, str | None]
          | None = None, cwd: Path | None = None, timeout: float = 120) -> QueryResult:
    """Run a short command for its output; never raises (see the module docstring)."""
    argv = tuple(os.fspath(c) for c in cmd)
    try:
        done = subprocess.run(argv, cwd=cwd, env=apply_env(env_changes or {}),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except OSError as exc:
        return QueryResult(argv, -1, "", "", not_run=f"cannot run {argv[0]}: {exc}")
    except subprocess.TimeoutExpired:
        return QueryResult(argv, -1, "", "",
                           not_run=f"{shlex.join(argv)} timed out after {timeout:g} s")
    return QueryResult(argv, done.returncode, done.stdout, done.stderr)


def capture(cmd: Sequence[str | os.PathLike[str]], *, env_changes: Mapping[str, str | None]
            | None = None, cwd: Path | None = None, timeout: float = 120) -> str:
    """Run a short query command (nvcc --version, python -c ...) and return stdout.

    Raises ToolchainError on failure: queries are about the toolchain.
    """
    done = query(cmd, env_changes=env_changes, cwd=cwd, timeout=timeout)
    if not done.ok:
        raise ToolchainError(done.describe())
    return done.stdout


def start(cmd: Sequence[str | os.PathLike[str]], *, reporter: Reporter, log_file: Path,
          env_changes: Mapping[str, str | None] | None = None) -> subprocess.Popen[bytes]:
    """Start a long-lived process (a model server) in its own session, its output appended
    to `log_file`; the command and its environment changes go to the full log first. The
    caller stops it (the whole group: servers fork workers). Raises OSError if it cannot
    start."""
    argv = [os.fspath(c) for c in cmd]
    changes = dict(env_changes or {})
    reporter.log(f"+ {shlex.join(argv)}")
    for line in format_env_changes(changes):
        reporter.log(line)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(argv, env=apply_env(changes), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
