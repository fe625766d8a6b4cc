"""Compiler launcher that measures one translation unit and appends one JSON line.

    python measure_compile.py [ccache|sccache] <compiler> <args...>

Put in front of every compile (CMAKE_<LANG>_COMPILER_LAUNCHER, PYTORCH_NVCC,
FLASHINFER_NVCC). With VLLM_WHEELS_TELEMETRY unset it execs the command unchanged. With it
set, it runs the command and appends to that file one line:

  wall_s      monotonic wall time of the whole command
  cpu_s       user+sys of every descendant that was waited for (wait4 rusage of the command,
              exact: nvcc, cicc, ptxas, cudafe++ and gcc all reap their children), plus, with
              sccache, the CPU seen by sampling the sccache server's processes of this unit
  rss_tree_peak_kb   the largest SUM of RSS over the unit's process tree, sampled every
              0.2 s from /proc (a peak shorter than the interval can be missed)
  rss_max_single_kb  the largest single descendant (wait4 ru_maxrss, exact)
  peak_rss_kb        max of the two: what the unit needs at least (ru_maxrss of a spawned
              child starts at the launcher's own ~15 MB, the memory it was spawned from)
  cache       "hit"/"miss" (ccache: its per-invocation stats log, exact; sccache: the
              server's hit/miss counters before and after, exact only when no other unit
              ran at the same time; the summary checks that), null without a cache

sccache runs the compiler in its server (a daemon, not our child), so for sccache units the
"tree" is the client plus the server's descendants whose command line names this unit's
source stem (nvcc's intermediate files are named <stem>.*): a heuristic that double-counts
two same-stem units compiled at the same moment.

The line is written with one write() on an O_APPEND descriptor, so parallel ninja jobs never
interleave lines. Standard library only: it runs under whichever python starts it.

Memory admission (a unit cost record covers the build; see telemetry.py): with
VLLM_WHEELS_MEMORY_BUDGET_KB set, before the compiler starts the launcher reserves the unit's
recorded peak (VLLM_WHEELS_UNIT_PEAKS, a JSON file: {"roots": [[dir, prefix]...],
"peaks": {unit key: kb}, "default_kb": kb for units it does not list}) in the ledger file
VLLM_WHEELS_MEMORY_LEDGER, under an fcntl lock, and waits while the reservations would
exceed the budget; a unit runs anyway when nobody else holds one (a unit larger than the
budget runs alone rather than never). The reservation is dropped when the compiler exits,
and on SIGTERM/SIGHUP; the ledger names pid and start time of each holder, so a launcher
killed outright (SIGKILL, OOM) loses its reservation at the next look instead of blocking
the build forever.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ENV = "VLLM_WHEELS_TELEMETRY"
RECORD_VERSION = 1
INTERVAL = 0.2
SERVER_RESCAN = 5.0
SOURCE_SUFFIXES = (".cu", ".cpp", ".cc", ".cxx", ".c", ".C", ".c++")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TICKS = os.sysconf("SC_CLK_TCK")


def unit_of(argv: list[str]) -> tuple[str | None, str | None]:
    """(source, output) of a compiler command line."""
    source = output = None
    for i, arg in enumerate(argv):
        if arg == "-o" and i + 1 < len(argv):
            output = argv[i + 1]
        elif arg.startswith("-o") and len(arg) > 2 and not arg.startswith("-o="):
            output = arg[2:]
        elif not arg.startswith("-") and arg.endswith(SOURCE_SUFFIXES):
            source = arg
    return source, output


def compile_parts(argv: list[str]
                  ) -> tuple[list[str], str | None, str, str | None, str | None]:
    """(command behind other launchers, compile cache tool or None, compiler, source,
    output). Another launcher may sit between this one and the compile cache: the
    reproducibility launcher (`python .../nvcc_source_path.py sccache nvcc ...`). The whole
    command runs; the unit's cache and compiler are read from behind it."""
    inner = argv
    while len(inner) > 2 and Path(inner[1]).name == "nvcc_source_path.py":
        inner = inner[2:]
    tool = Path(inner[0]).name
    cache_tool = tool if tool in ("ccache", "sccache") and len(inner) > 1 else None
    compiler = inner[1] if cache_tool else inner[0]
    source, output = unit_of(inner[2:] if cache_tool else inner[1:])
    return inner, cache_tool, compiler, source, output


UNIT_PEAKS_ENV = "VLLM_WHEELS_UNIT_PEAKS"
BUDGET_ENV = "VLLM_WHEELS_MEMORY_BUDGET_KB"
LEDGER_ENV = "VLLM_WHEELS_MEMORY_LEDGER"
ADMIT_POLL = 0.25


def unit_key(source: str, cwd: str, roots: list[tuple[str, str]]) -> str:
    """A unit's name that is the same on every machine and checkout: its source path
    relative to the first root containing it, behind that root's prefix (the package's
    tree has prefix "", the cache root e.g. "cache:"); the absolute path when none does."""
    # normpath, not resolve(): a symlinked tree keeps the name the build gave it.
    path = os.path.normpath(Path(cwd, source))
    for root, prefix in roots:
        root = os.path.normpath(root)
        if path.startswith(root + os.sep):
            return prefix + path[len(root) + 1:]
    return path


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): a pid and this name one process,
    a reused pid does not inherit a dead launcher's reservation."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2:].split()[19])


class Ledger:
    """Memory reservations of the running units: one line "pid start_ticks kb" each, in a
    file every launcher of the build locks (fcntl) for each read-modify-write."""

    def __init__(self, path: str, budget_kb: int) -> None:
        self.path, self.budget_kb = path, budget_kb
        self.me = (os.getpid(), _start_time(os.getpid()) or 0)
        self.held = 0

    def _update(self, change: Callable[[list[tuple[int, int, int]]], bool]) -> bool:
        # No signal handler (which releases through here) may run while the lock is held:
        # flock on a second descriptor of the same file would wait for this one forever.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP,
                                                            signal.SIGINT})
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "r+", encoding="ascii") as f:
                entries = []
                for line in f.read().splitlines():
                    try:
                        pid, start, kb = (int(x) for x in line.split())
                    except ValueError:
                        continue
                    # A holder that died without releasing (killed outright) holds nothing.
                    if (pid, start) == self.me or _start_time(pid) == start:
                        entries.append((pid, start, kb))
                done = change(entries)
                f.seek(0)
                f.truncate()
                f.write("".join(f"{p} {s} {k}\n" for p, s, k in entries))
            return done
        finally:
            os.close(fd)  # releases the lock
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def reserve(self, kb: int) -> float:
        """Blocks until `kb` fits beside the others' reservations (or nobody holds one);
        returns the seconds waited."""
        def take(entries: list[tuple[int, int, int]]) -> bool:
            others = [e for e in entries if (e[0], e[1]) != self.me]
            if others and sum(e[2] for e in others) + kb > self.budget_kb:
                return False
            entries[:] = [*others, (*self.me, kb)]
            return True
        t0 = time.monotonic()
        while not self._update(take):
            time.sleep(ADMIT_POLL)
        self.held = kb
        return time.monotonic() - t0

    def release(self) -> None:
        if self.held:
            def drop(entries: list[tuple[int, int, int]]) -> bool:
                entries[:] = [e for e in entries if (e[0], e[1]) != self.me]
                return True
            self._update(drop)
            self.held = 0


def _admission(argv: list[str]) -> tuple[Ledger, int, str] | None:
    """(ledger, kb to reserve, unit key) when the build runs under a memory budget."""
    budget = os.environ.get(BUDGET_ENV)
    ledger = os.environ.get(LEDGER_ENV)
    if not budget or not ledger:
        return None
    try:
        with open(os.environ.get(UNIT_PEAKS_ENV, ""), encoding="utf-8") as f:
            peaks = json.load(f)
    except (OSError, ValueError):
        peaks = {}
    source = compile_parts(argv)[3]
    key = unit_key(source, str(Path.cwd()), [(r, p) for r, p in peaks.get("roots", [])]) \
        if source else ""
    kb = int(peaks.get("peaks", {}).get(key) or peaks.get("default_kb") or 0)
    return Ledger(ledger, int(budget)), kb, key


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, rss_kb, cpu_ticks) for every process we may read."""
    table = {}
    for entry in os.scandir("/proc"):
        name = entry.name
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # comm (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = data[data.rfind(b")") + 2:].split()
        table[int(name)] = (int(fields[1]), int(fields[21]) * PAGE_KB,
                            int(fields[11]) + int(fields[12]))
    return table


def _descendants(root: int, table: dict[int, tuple[int, int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _sccache_server(table: dict[int, tuple[int, int, int]]) -> int | None:
    """Our sccache server: a process named sccache with no arguments (clients have some)
    and our SCCACHE_DIR (other builds on the machine run servers of their own)."""
    want = ("SCCACHE_DIR=" + os.environ.get("SCCACHE_DIR", "")).encode()
    for pid in table:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            if args[0].rsplit(b"/", 1)[-1] != b"sccache" or any(args[1:]):
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if "SCCACHE_DIR" not in os.environ or want in environ:
            return pid
    return None


def _names_unit(pid: int, stem: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return any(a.rsplit(b"/", 1)[-1].startswith(stem) for a in args[1:])


class _Sampler(threading.Thread):
    """Every INTERVAL: the summed RSS of the unit's process tree (and, with sccache, of the
    server's processes naming the unit, whose CPU it also keeps)."""

    def __init__(self, pid: int, sccache_stem: bytes | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.stem = pid, sccache_stem
        self.stop = threading.Event()
        self.tree_peak = 0
        self.server_cpu: dict[int, int] = {}
        self.samples = 0

    def run(self) -> None:
        server: int | None = None
        server_scan = -SERVER_RESCAN
        while not self.stop.wait(INTERVAL):
            table = _proc_table()
            self.samples += 1
            pids = _descendants(self.pid, table)
            if self.stem:
                # Finding the server reads every process's cmdline: not on every sample.
                if (server is None or server not in table) and \
                        time.monotonic() - server_scan >= SERVER_RESCAN:
                    server, server_scan = _sccache_server(table), time.monotonic()
                if server is not None:
                    mine = [p for p in _descendants(server, table)[1:]
                            if _names_unit(p, self.stem)]
                    for p in mine:
                        self.server_cpu[p] = table[p][2]
                    pids += mine
            self.tree_peak = max(self.tree_peak, sum(table[p][1] for p in pids if p in table))


def _sccache_counts(tool: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([tool, "--show-stats", "--stats-format", "json"], text=True,
                             capture_output=True, check=True, timeout=30).stdout
        stats = json.loads(out)["stats"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None
    return (sum(stats.get("cache_hits", {}).get("counts", {}).values()),
            sum(stats.get("cache_misses", {}).get("counts", {}).values()))


def _ccache_result(statslog: str) -> str | None:
    try:
        with open(statslog, encoding="utf-8", errors="replace") as f:
            counters = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return None
    if any(c in ("direct_cache_hit", "preprocessed_cache_hit") for c in counters):
        return "hit"
    if "cache_miss" in counters:
        return "miss"
    return None


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: measure_compile.py [ccache|sccache] <compiler> <args...>", file=sys.stderr)
        return 2
    path = os.environ.get(ENV)
    admission = _admission(argv)
    if not path and admission is None:
        os.execvp(argv[0], argv)
    if admission is None:
        return _run(argv, path, None, 0, "")
    ledger, kb, key = admission

    def release_and_die(signum: int, _frame: object) -> None:
        ledger.release()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, release_and_die)
    try:
        waited = ledger.reserve(kb)
        return _run(argv, path, ledger, waited, key)
    finally:
        ledger.release()


def _run(argv: list[str], path: str | None, ledger: Ledger | None, waited: float,
         key: str) -> int:
    inner, cache_tool, compiler, source, output = compile_parts(argv)
    env = dict(os.environ)
    statslog = None
    if cache_tool == "ccache":
        fd, statslog = tempfile.mkstemp(prefix="vllm-wheels-ccache-", suffix=".log")
        os.close(fd)
        env["CCACHE_STATSLOG"] = statslog
    before = _sccache_counts(inner[0]) if cache_tool == "sccache" else None
    stem = (Path(source).stem + ".").encode() if source else None

    started_at = time.time()
    t0 = time.monotonic()
    # ninja's Ctrl-C reaches the whole process group; the compiler decides, we report.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pid = os.posix_spawnp(argv[0], argv, env)
    except OSError as exc:
        print(f"measure_compile: cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127
    sampler = _Sampler(pid, stem if cache_tool == "sccache" else None)
    sampler.start()
    # wait4: the rusage of this child and everything it reaped, exactly, and nothing of
    # our own other children (the sccache --show-stats calls).
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    reserved = ledger.held if ledger is not None else 0
    if ledger is not None:
        ledger.release()  # the compiler's memory is free: the next unit may start
    sampler.stop.set()
    sampler.join()
    signal.signal(signal.SIGINT, old)
    returncode = os.waitstatus_to_exitcode(status)
    tree_peak, server_cpu, samples = sampler.tree_peak, sampler.server_cpu, sampler.samples

    cache = None
    if statslog:
        cache = _ccache_result(statslog)
        Path(statslog).unlink()
    after = _sccache_counts(inner[0]) if before is not None else None
    delta = None
    if before is not None and after is not None:
        delta = {"hits": after[0] - before[0], "misses": after[1] - before[1]}
        cache = "miss" if delta["misses"] > 0 else "hit" if delta["hits"] > 0 else None
    cpu = usage.ru_utime + usage.ru_stime + sum(server_cpu.values()) / TICKS
    record = {
        "v": RECORD_VERSION, "source": source, "output": output, "cwd": str(Path.cwd()),
        "compiler": Path(compiler).name, "cache_tool": cache_tool, "cache": cache,
        "sccache_delta": delta, "start": round(started_at, 3), "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3), "cpu_user_s": round(usage.ru_utime, 3),
        "cpu_sys_s": round(usage.ru_stime, 3),
        "cpu_sccache_server_s": round(sum(server_cpu.values()) / TICKS, 3),
        "rss_tree_peak_kb": tree_peak, "rss_max_single_kb": usage.ru_maxrss,
        "peak_rss_kb": max(tree_peak, usage.ru_maxrss), "samples": samples,
        "exit": returncode,
    }
    if ledger is not None:
        record.update({"unit": key, "reserved_kb": reserved, "admit_wait_s": round(waited, 3),
                       "budget_kb": ledger.budget_kb})
    if not path:
        return _exit(returncode)
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:  # telemetry never fails a build
        print(f"measure_compile: cannot append to {path}: {exc}", file=sys.stderr)
    return _exit(returncode)


def _exit(returncode: int) -> int:
    if returncode < 0:
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    return returncode


if __name__ == "__main__":
    # A bare tool name in argv[0] is found on PATH, as a launcher's would be.
    if len(sys.argv) > 1 and os.sep not in sys.argv[1]:
        sys.argv[1] = shutil.which(sys.argv[1]) or sys.argv[1]
    sys.exit(main(sys.argv[1:]))
