"""The GPU lease's host tools, run for real on this machine: verify/gpu/host_jitter.py (what
the host adds to an A/A's spread) and verify/gpu/keep_awake.py (SCHED_IDLE loops that keep
the CPUs out of idle while an A/A measures)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCHED_IDLE = 5  # Linux's policy number, as /proc/PID/sched prints it


def test_host_jitter_measures_cpu_steal_and_wake_up_lateness(repo_root: Path) -> None:
    out = subprocess.run([sys.executable, repo_root / "verify/gpu/host_jitter.py", "0.5"],
                         capture_output=True, text=True, check=True, timeout=30)
    facts = json.loads(out.stdout)
    assert facts["schema_version"] == 1
    assert facts["cpu"]["cores"] == os.cpu_count()
    wake = facts["wake_ms"]
    # a 1 ms sleep for 0.5 s: a few hundred samples, each woken late by >= 0
    assert 50 <= wake["samples"] <= 500
    assert 0 <= wake["p50"] <= wake["p90"] <= wake["p99"] <= wake["max"]
    assert 0 <= facts["steal_pct"] <= 100


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_keep_awake_runs_one_sched_idle_loop_per_cpu_and_stops_on_term(
        repo_root: Path) -> None:
    proc = subprocess.Popen([sys.executable, repo_root / "verify/gpu/keep_awake.py"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"keep_awake: {os.cpu_count()} SCHED_IDLE")
        children = _children(proc.pid)
        assert len(children) == os.cpu_count()
        for child in children:
            policy = next(line for line in Path(f"/proc/{child}/sched").read_text().splitlines()
                          if line.startswith("policy"))
            assert int(policy.split(":")[1]) == SCHED_IDLE
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        time.sleep(0.2)
        assert not [c for c in children if Path(f"/proc/{c}").exists()
                    and "Z" not in Path(f"/proc/{c}/stat").read_text().split()[2]]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_ttft_probe_splits_a_requests_time_to_first_token_into_its_layers(
        repo_root: Path) -> None:
    """verify/gpu/ttft_probe.py against a real streaming server on loopback (a STAND-IN
    for vLLM: tests/fixtures/throughput/standin_vllm.py, with vLLM's /metrics histograms).
    The stand-in spends 8 ms per request before the request reaches its "engine" (as HTTP
    and tokenization do in vLLM) and 4 ms in prefill: the probe must put the 8 ms outside
    vLLM's own TTFT, and /health must not pay for either."""
    import importlib.util

    from loopback import serve_on_loopback

    spec = importlib.util.spec_from_file_location(
        "standin_vllm", repo_root / "tests/fixtures/throughput/standin_vllm.py")
    assert spec and spec.loader
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    handler = standin.make_handler("m", lambda: 0.001, request_path=lambda: 0.008,
                                   prefill=lambda: 0.004)
    with serve_on_loopback(handler) as url:
        out = subprocess.run([sys.executable, repo_root / "verify/gpu/ttft_probe.py", url, "m",
                              "20"], capture_output=True, text=True, check=True, timeout=60)
    probe = json.loads(out.stdout)
    assert probe["schema_version"] == 1
    for phase in ("first_token", "first_token_gaps"):
        client, server = probe[phase], probe[phase]["server"]
        assert client["n"] == 20
        assert 3.5 <= server["prefill_mean_ms"] <= 6            # the engine's part
        assert server["ttft_mean_ms"] >= server["prefill_mean_ms"]
        # the client's TTFT holds the 8 ms that vLLM's own does not
        assert client["p50"] - server["ttft_mean_ms"] >= 7.5
    assert probe["health"]["p50"] < probe["first_token"]["p50"] - 10
    assert "first_token p50/p90" in out.stderr                 # the lease log's one line
