"""verify/gpu/h200_e2e.sh's server start and stop (verify/gpu/detached.sh), run for real by
bash with a harmless long-running command instead of `vllm serve`: the pid file names the
command itself, leading a session of its own, and stopping it ends that session (the
command and its child) and nothing of the caller's session."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "verify" / "gpu" / "detached.sh"

# A "server" with a child of its own, as vllm serve has its engine process.
SERVER = "sleep 300 & wait"


def _sid(pid: int) -> int:
    return os.getsid(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped) counts as gone.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_start_records_the_session_leader_and_stop_ends_only_its_session(tmp_path: Path
                                                                          ) -> None:
    pidfile, log = tmp_path / "serve.pid", tmp_path / "serve.log"
    # The script runs in a session of its own (as h200_e2e.sh under the device tool), so a
    # stop that signals "its own session" would end it before it prints "survived".
    script = f"""
. {LIB}
start_detached {pidfile} {log} {tmp_path} bash -c '{SERVER}' || exit 3
echo "started $(cat {pidfile}) script-sid $(ps -o sid= -p $$ | tr -d ' ')"
read -r _ < {tmp_path / "go"}
stop_detached {pidfile} 5
echo survived
"""
    os.mkfifo(tmp_path / "go")
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    server = child = 0
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "started", line
        server, script_sid = int(line[1]), int(line[3])
        # The pid file names the command itself, the leader of a new session, not a
        # subshell of the script's session.
        assert _sid(server) == server != script_sid
        assert Path(f"/proc/{server}/cmdline").read_bytes().split(b"\0")[:2] == [b"bash", b"-c"]
        deadline = time.monotonic() + 5
        while not child and time.monotonic() < deadline:
            child = next((int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                          and int(p.name) != server and _session_of(int(p.name)) == server), 0)
        assert child, "the server's child did not start"
        (tmp_path / "go").write_text("\n")
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "survived" in out  # the stop did not signal the script's own session
        assert not _alive(server) and not _alive(child)
        assert _alive(os.getpid())
    finally:
        for pid in (server, child):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def _session_of(pid: int) -> int:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return -1


def test_stop_never_signals_its_own_session(tmp_path: Path) -> None:
    """A pid file naming a process of the caller's own session (what the old start wrote):
    only that process is stopped, the caller lives on."""
    pidfile = tmp_path / "serve.pid"
    script = f"""
. {LIB}
sleep 300 & echo $! > {pidfile}
stop_detached {pidfile} 5
wait
echo survived
"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                         start_new_session=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "survived" in out.stdout
    assert "does not lead a session of its own" in out.stderr
