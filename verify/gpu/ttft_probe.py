"""Where does a request's time to first token go? A probe of one running vLLM server.

    python3 verify/gpu/ttft_probe.py URL MODEL [N] > probe.json

An A/A on some GPU hosts spread in median TTFT at concurrency 1 while decode was steady
(verify/results/2026-12-07-ab-official/, leases 3 and 4): each request's TTFT lay anywhere
between ~22 and ~45 ms where the same builds on another host gave 23.5 +- 0.5 ms. The
harness's per-run numbers cannot say where the extra time is. This probe times the
layers of one request path separately, N requests each, one at a time, on one kept-alive
HTTP connection (as the harness's client does):

    health       GET /health: the API server's HTTP layer and event loop, no engine
    tokenize     POST /tokenize: the same plus the tokenizer, no engine
    first_token  POST /v1/completions, streamed, max_tokens 1, back to back: the whole
                 path to the first token (prefill on the GPU included)
    first_token_gaps  the same with a seeded random pause of 0-50 ms before each request:
                 a delay that waits for a periodic tick shows as a sawtooth in back-to-back
                 requests and as a uniform spread here, with the same width

For the two first_token phases the server's own /metrics (verify/gpu's harness reads the
same histograms: src/vllm_wheels/verify/throughput/servermetrics.py) give vLLM's mean TTFT,
queue and prefill time over the phase, and the TTFT histogram's bucket counts: client TTFT
minus vLLM's TTFT is the time outside vLLM (HTTP, the client), vLLM's TTFT minus queue
and prefill is the API server <-> engine core path.

Standard library only (the GPU machine's python3), plus prometheus_client where present.
Output: JSON with schema_version; milliseconds throughout."""

from __future__ import annotations

import http.client
import json
import random
import socket
import statistics
import sys
import time
import urllib.parse
import urllib.request

SCHEMA_VERSION = 1
HISTOGRAMS = {"ttft": "vllm:time_to_first_token_seconds",
              "queue": "vllm:request_queue_time_seconds",
              "prefill": "vllm:request_prefill_time_seconds"}


def summary(ms: list[float]) -> dict[str, float | int]:
    s = sorted(ms)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 3)
    return {"n": len(s), "min": round(s[0], 3), "p10": q(0.10), "p50": q(0.50), "p90": q(0.90),
            "p99": q(0.99), "max": round(s[-1], 3), "mean": round(statistics.fmean(s), 3),
            "std": round(statistics.pstdev(s), 3)}


def scrape(base: str) -> dict[str, dict[str, float]] | None:
    """sum, count and cumulative bucket counts of HISTOGRAMS, over all label sets."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:  # noqa: S310
            text = r.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a probe without /metrics still times the client
        return None
    wanted = {v: k for k, v in HISTOGRAMS.items()}
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        key = wanted.get(fam.name)
        if key is None:
            continue
        d = out.setdefault(key, {})
        for s in fam.samples:
            name = ("le=" + s.labels["le"]) if s.name.endswith("_bucket") else s.name.rsplit("_", 1)[-1]
            d[name] = d.get(name, 0.0) + s.value
    return out


def server_delta(before: dict | None, after: dict | None) -> dict | None:
    if not before or not after:
        return None
    out: dict[str, object] = {}
    for key, a in after.items():
        b = before.get(key, {})
        n = a.get("count", 0.0) - b.get("count", 0.0)
        if n <= 0:
            continue
        out[key + "_mean_ms"] = round(1e3 * (a.get("sum", 0.0) - b.get("sum", 0.0)) / n, 3)
        if key == "ttft":  # where the server's own TTFTs fall, by its bucket edges
            out["ttft_buckets"] = {k: int(a[k] - b.get(k, 0.0)) for k in a if k.startswith("le=")}
    return out


class Client:
    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
        self.conn.connect()
        # as aiohttp (the harness's client) does: no Nagle delay on small requests
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, path: str) -> float:
        t = time.perf_counter()
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        r.read()
        return 1e3 * (time.perf_counter() - t)

    def post(self, path: str, body: dict) -> float:
        t = time.perf_counter()
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {r.status}")
        return 1e3 * (time.perf_counter() - t)

    def first_token(self, body: dict) -> float:
        """ms from sending to the first streamed chunk with text (as the harness's client)."""
        t = time.perf_counter()
        self.conn.request("POST", "/v1/completions", json.dumps(body),
                          {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        first = None
        while True:
            line = r.readline()
            if not line:
                break
            if first is None and line.startswith(b"data: {"):
                first = 1e3 * (time.perf_counter() - t)
        if first is None:
            raise RuntimeError(f"no token streamed (HTTP {r.status})")
        return first


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    base, model = argv[1].rstrip("/"), argv[2]
    n = int(argv[3]) if len(argv) > 3 else 200
    rng = random.Random(0)
    # 256 random token ids (the workloads' input length), one prompt per request as the
    # harness sends: no prefix caching effect (the workloads turn it off anyway)
    prompts = [[rng.randrange(1000, 20000) for _ in range(256)] for _ in range(n)]
    c = Client(base)
    out: dict[str, object] = {"schema_version": SCHEMA_VERSION, "n": n, "input_len": 256}
    for _ in range(10):  # warm the connection and the paths
        c.get("/health")
        c.first_token({"model": model, "prompt": prompts[0], "max_tokens": 1, "stream": True})
    out["health"] = summary([c.get("/health") for _ in range(n)])
    try:
        out["tokenize"] = summary([c.post("/tokenize", {"model": model, "prompt": "hello " * 255})
                                   for _ in range(n)])
    except RuntimeError as exc:  # a server without vLLM's /tokenize (the tests' stand-in)
        out["tokenize"] = {"error": str(exc)}
        c = Client(base)
    for phase, gap in (("first_token", False), ("first_token_gaps", True)):
        before = scrape(base)
        ms, seq = [], []
        for i in range(n):
            if gap:
                time.sleep(rng.uniform(0.0, 0.05))
            v = c.first_token({"model": model, "prompt": prompts[i], "max_tokens": 1,
                               "stream": True, "ignore_eos": True, "temperature": 0.0})
            ms.append(v)
            seq.append(round(v, 2))
        out[phase] = {**summary(ms), "server": server_delta(before, scrape(base)),
                      "first_40": seq[:40]}
    json.dump(out, sys.stdout, indent=1)
    print()
    line = [f"{k} p50/p90 {out[k]['p50']}/{out[k]['p90']} ms" for k in  # type: ignore[index]
            ("health", "tokenize", "first_token", "first_token_gaps") if "p50" in out[k]]  # type: ignore[operator]
    print(" | ".join(line), "| vLLM's:", out["first_token"].get("server"),  # type: ignore[union-attr]
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
