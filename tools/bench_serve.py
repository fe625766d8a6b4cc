"""Serving the index under load: serve-index against nginx on the same tree, in one run.

Both serve the tree bench_index.py made, on loopback: ours as `vllm-wheels serve-index`
(its default workers: one per CPU), nginx (Debian's) with the configuration that
`index-server-config` writes, run as it is (`worker_processes auto`). The load generator
is wrk (Debian's `wrk`, C, event-driven: the client must not be the bottleneck, which a
Python client would be), with a Lua script that reports p50 / p99 / p99.9 and counts
requests over 1 s from wrk's full latency histogram.

Each round measures both servers at each connection count, alternating which goes first,
so both see the same machine (this one is shared: its load is printed). The request is
`GET /simple/<project>/` with pip's Accept header (JSON preferred), keep-alive, as pip and
uv ask for pages. Reported per server and connection count: the median over rounds of
req/s and of each percentile, requests over 1 s (and errors) summed over rounds, and the
ratio ours / nginx against the targets (issue 22): req/s >= 0.5 x nginx, p99 <= 2 x
nginx, no request over 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vllm_wheels.index import server_config
from vllm_wheels.index.store import IndexDir

PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; "
              "q=0.1, text/html; q=0.01")
TARGET_RPS_RATIO = 0.5
TARGET_P99_RATIO = 2.0
SLOW_US = 1_000_000

# wrk's done() hook: one JSON line. latency(i) walks the histogram's distinct values (µs);
# requests past --timeout are not in it but counted as timeouts (added to "over 1 s").
WRK_LUA = """
done = function(summary, latency, requests)
  local over = 0
  for i = 1, #latency do
    local v, c = latency(i)
    if v > SLOW_US then over = over + c end
  end
  io.write(string.format('BENCH {"requests": %%d, "duration_us": %%d, "p50_us": %%d, ' ..
    '"p99_us": %%d, "p999_us": %%d, "max_us": %%d, "over_1s": %%d, "timeouts": %%d, ' ..
    '"errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, over, summary.errors.timeout,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status))
end
""".replace("SLOW_US", str(SLOW_US)).replace("%%", "%")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving (--part serve or all)")
    group.add_argument("--rounds", type=int, default=3)
    group.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    group.add_argument("--connections", default="100,200")
    group.add_argument("--workers", type=int, default=None,
                       help="serve-index --workers (default: its own, one per CPU)")
    group.add_argument("--project", default="proj001", help="the page requested")
    group.add_argument("--json", type=Path, default=None, dest="json_out",
                       help="also write the results as JSON (schema_version 1)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[str], what: str) -> None:
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before serving")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {url} within 20 s")


def _start_ours(index: IndexDir, workers: int | None) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "vllm_wheels", "serve-index", "--index", str(index.root),
           "--port", "0", "--quiet"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    banner = ""
    for _ in range(20):
        line = proc.stdout.readline()
        banner += line
        match = re.search(r"index URL: (http://\S+/simple/)", line)
        if match:
            print(banner.splitlines()[0], flush=True)
            return proc, match.group(1)
        if not line:
            break
    proc.kill()
    raise SystemExit(f"serve-index did not start:\n{banner}")


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None)


def _start_nginx(nginx: str, index: IndexDir, work: Path
                 ) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    root = server_config.make_root(index, "")
    out = work / "server-config"
    # As root, nginx's workers would run as nobody, who cannot read a private temp dir.
    user = "root" if os.geteuid() == 0 else None
    server_config.write_configs(root, out, listen=f"127.0.0.1:{port}", worker_user=user)
    proc = subprocess.Popen([nginx, "-p", str(out / "nginx"), "-c", "nginx.conf",
                             "-e", "stderr", "-g", "daemon off;"], text=True)
    url = f"http://127.0.0.1:{port}/simple/"
    _wait_http(url, proc, "nginx")
    print(f"nginx {_nginx_version(nginx)} with the generated configuration at {url}",
          flush=True)
    return proc, url


def _nginx_version(nginx: str) -> str:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    return out.strip().rsplit("/", 1)[-1]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)  # both: stop now, children included
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wrk(url: str, connections: int, duration: int, script: Path) -> dict[str, Any]:
    threads = min(connections, max(1, len(os.sched_getaffinity(0))))
    proc = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
         "-H", f"Accept: {PIP_ACCEPT}", "-s", str(script), url],
        capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    data: dict[str, Any] = json.loads(line.removeprefix("BENCH "))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
        "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
        "p999_ms": statistics.median(r["p999_us"] for r in runs) / 1000,
        "max_ms": max(r["max_us"] for r in runs) / 1000,
        "over_1s": sum(r["over_1s"] + r["timeouts"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "rounds_rps": [round(r["rps"]) for r in runs],
    }


def run(index: IndexDir, work: Path, args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian's package; "
                         "the load generator of this benchmark)")
    conns = [int(c) for c in str(args.connections).split(",")]
    script = work / "bench.lua"
    script.write_text(WRK_LUA)
    nginx = find_nginx()
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    cpus = len(os.sched_getaffinity(0))
    print(f"\nserving: {cpus} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"GET /simple/{args.project}/ with pip's Accept header, keep-alive; wrk, "
          f"{args.rounds} rounds x {args.duration} s per server and connection count",
          flush=True)
    try:
        servers["serve-index"] = _start_ours(index, args.workers)
        if nginx is None:
            print("nginx is not installed (apt-get install -y nginx): measuring serve-index "
                  "alone", flush=True)
        else:
            servers["nginx"] = _start_nginx(nginx, index, work)
        names = list(servers)
        for name in names:  # warm-up: connections, page caches
            wrk(servers[name][1] + f"{args.project}/", conns[0], 2, script)
        results: dict[str, dict[int, list[dict[str, Any]]]] = {n: {c: [] for c in conns}
                                                                for n in names}
        for round_no in range(args.rounds):
            for c in conns:
                order = names if round_no % 2 == 0 else names[::-1]
                for name in order:
                    data = wrk(servers[name][1] + f"{args.project}/", c, args.duration,
                               script)
                    results[name][c].append(data)
                    print(f"  round {round_no + 1} {c:>4} conns {name:<12} "
                          f"{data['rps']:9,.0f} req/s  p99 {data['p99_us'] / 1000:7.1f} ms"
                          f"  over 1 s {data['over_1s'] + data['timeouts']}", flush=True)
    finally:
        for proc, _url in servers.values():
            _stop(proc)
    load_end = os.getloadavg()[0]
    summary = {n: {c: _summary(results[n][c]) for c in conns} for n in names}
    _print_table(summary, conns, names)
    print(f"load average at the end: {load_end:.1f}", flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({
            "schema_version": 1, "cpus": cpus, "rounds": args.rounds,
            "duration_s": args.duration, "request": f"/simple/{args.project}/",
            "servers": {n: {str(c): s for c, s in v.items()} for n, v in summary.items()},
        }, indent=2) + "\n")


def _print_table(summary: dict[str, dict[int, dict[str, Any]]], conns: list[int],
                 names: list[str]) -> None:
    print(f"\n| {'median of the rounds':<40} | " + " | ".join(f"{n:<26}" for n in names)
          + (" | ours / nginx |" if "nginx" in names else " |"))
    print("|" + "---|" * (len(names) + 1 + ("nginx" in names)))
    for c in conns:
        rows = {
            "req/s (rounds' range)": lambda s: f"{s['rps']:,.0f} ({min(s['rounds_rps']):,}-"
                                             f"{max(s['rounds_rps']):,})",
            "p50 / p99 / p99.9 (ms)": lambda s: f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} / "
                                              f"{s['p999_ms']:.1f}",
            "requests over 1 s, errors": lambda s: f"{s['over_1s']}, {s['errors']}",
        }
        for label, fmt in rows.items():
            cells = [fmt(summary[n][c]) for n in names]
            ratio = ""
            if "nginx" in names:
                ours, theirs = summary["serve-index"][c], summary["nginx"][c]
                if label.startswith("req/s"):
                    ratio = f"{ours['rps'] / theirs['rps']:.2f}"
                elif label.startswith("p50"):
                    ratio = f"p99 {ours['p99_ms'] / max(theirs['p99_ms'], 0.001):.2f}"
            print(f"| {f'{c} conns: {label}':<40} | " + " | ".join(f"{x:<26}" for x in cells)
                  + (f" | {ratio:<12} |" if "nginx" in names else " |"))
    if "nginx" not in names:
        return
    verdicts = []
    for c in conns:
        ours, theirs = summary["serve-index"][c], summary["nginx"][c]
        ok = (ours["rps"] >= TARGET_RPS_RATIO * theirs["rps"]
              and ours["p99_ms"] <= TARGET_P99_RATIO * theirs["p99_ms"]
              and ours["over_1s"] == 0 and ours["errors"] == 0)
        verdicts.append(f"{c} conns: {'met' if ok else 'MISSED'}")
    print(f"targets (req/s >= {TARGET_RPS_RATIO} x nginx, p99 <= {TARGET_P99_RATIO:g} x nginx, "
          f"no request over 1 s): " + "; ".join(verdicts), flush=True)
