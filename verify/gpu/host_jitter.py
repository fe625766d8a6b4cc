"""The GPU host's own noise, measured in a few seconds: what an A/A's spread is read against
when the GPU's clocks are steady (issue 19: the same H100 type gave per-request TTFT
spreads of 0.2-0.4 ms on one lease and 4-5 ms on another).

    python3 verify/gpu/host_jitter.py [SECONDS]      -> one JSON line

- cpu: the processor's model, cores, and the frequency governor where the host exposes it;
- steal_pct / iowait_pct: /proc/stat over the interval (a VM whose vCPUs the hypervisor
  gives to others shows steal);
- wake_ms: how late a thread wakes from a 1 ms sleep (p50, p90, p99, max). A server that
  idles between requests at concurrency 1 pays this on every request's first step, so a
  host with a large p90 here has jittery TTFT whatever the build.
Standard library only: it runs with the machine's python3 before any venv exists."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SCHEMA_VERSION = 1


def _cpu_times() -> list[int]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return [int(x) for x in fields]


def _cpu_model() -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def _governor() -> str | None:
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return path.read_text().strip() if path.exists() else None


def measure(seconds: float) -> dict[str, object]:
    before, t0 = _cpu_times(), time.monotonic()
    late: list[float] = []
    while time.monotonic() - t0 < seconds:
        start = time.perf_counter()
        time.sleep(0.001)
        late.append((time.perf_counter() - start) * 1e3 - 1.0)
    after = _cpu_times()
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    late.sort()

    def q(p: float) -> float:
        return round(late[min(len(late) - 1, int(p * len(late)))], 3)

    # /proc/stat: user nice system idle iowait irq softirq steal ...
    return {"schema_version": SCHEMA_VERSION,
            "cpu": {"model": _cpu_model(), "cores": os.cpu_count(), "governor": _governor()},
            "interval_s": round(time.monotonic() - t0, 1),
            "steal_pct": round(100 * delta[7] / total, 2) if len(delta) > 7 else None,
            "iowait_pct": round(100 * delta[4] / total, 2),
            "busy_pct": round(100 * (total - delta[3] - delta[4]) / total, 1),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "wake_ms": {"samples": len(late), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
                        "max": round(late[-1], 3)}}


if __name__ == "__main__":
    print(json.dumps(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)))
