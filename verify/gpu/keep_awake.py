"""Keeps the GPU host's CPUs out of their idle state while a throughput A/A or A/B
measures (ab_official.sh with KEEP_AWAKE=1), for hosts whose threads wake late.

    python3 verify/gpu/keep_awake.py [N]     (N CPUs, default all; stop: SIGTERM)

Why: at concurrency 1 a vLLM server idles between requests, and its engine thread must wake
for each new one. On a virtual machine an idle vCPU halts and is woken through the
hypervisor, which can take milliseconds; one H100 lease measured 4-5 ms of per-request TTFT
spread this way where the previous host had 0.2-0.4 ms
(verify/results/2026-12-07-ab-official/, verify/gpu/host_jitter.py). One busy loop per CPU
under SCHED_IDLE never halts the vCPU, yet runs only when nothing else wants that CPU: the
servers' threads preempt it at once. Its cost, where CPUs are SMT siblings, is some speed
for the sibling of a busy thread, the same for both arms. Standard library only."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def spin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while True:
        pass


def main(n: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:n]
    # SCHED_IDLE before the forks, so every loop has it from its first instruction (and
    # this waiting parent too: it needs a CPU only to stop them)
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    children = []
    for cpu in cpus:
        pid = os.fork()
        if pid == 0:
            spin(cpu)
        children.append(pid)

    def stop(signum: int, frame: FrameType | None) -> None:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"keep_awake: {len(children)} SCHED_IDLE loops on CPUs {cpus[0]}-{cpus[-1]}",
          flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else len(os.sched_getaffinity(0)))
