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

For the two first_token phases the server's own /metrics give vLLM's mean TTFT, queue and
prefill time over the phase (read as the harness reads them: vllm_wheels' servermetrics.py),
and the TTFT histogram's bucket counts: client TTFT minus vLLM's TTFT is the time outside
vLLM (HTTP, the client), vLLM's TTFT minus queue and prefill is the API server <-> engine
core path.

The machine's python3 with the repository's src/ on PYTHONPATH (ab_official.sh exports it)
and prometheus_client. Output: JSON with schema_version; milliseconds throughout."""

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

from vllm_wheels.verify.throughput import servermetrics

SCHEMA_VERSION = 1
TTFT = servermetrics.HISTOGRAMS["ttft"]


def summary(ms: list[float]) -> dict[str, float | int]:
    s = sorted(ms)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 3)
    return {"n": len(s), "min": round(s[0], 3), "p10": q(0.10), "p50": q(0.50), "p90": q(0.90),
            "p99": q(0.99), "max": round(s[-1], 3), "mean": round(statistics.fmean(s), 3),
            "std": round(statistics.pstdev(s), 3)}


Scrape = tuple[servermetrics.Scrape, dict[str, float]]  # sums and counts; TTFT buckets


def scrape(base: str) -> Scrape | None:
    """One GET /metrics: servermetrics' sums and counts, and the cumulative counts of vLLM's
    TTFT histogram per bucket edge (over all label sets), which only this probe reads."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:  # noqa: S310
            text = r.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a probe without /metrics still times the client
        return None
    buckets: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == TTFT:
            for sample in fam.samples:
                if sample.name.endswith("_bucket"):
                    edge = "le=" + sample.labels["le"]
                    buckets[edge] = buckets.get(edge, 0.0) + sample.value
    return servermetrics.parse(text), buckets


def server_delta(before: Scrape | None, after: Scrape | None) -> dict | None:
    """vLLM's means over the requests between two scrapes (servermetrics.run_means_ms, in
    the probe's key names), and where its TTFTs fell by bucket edge."""
    if before is None or after is None:
        return None
    means = servermetrics.run_means_ms(before[0], after[0])
    if means is None:
        return None
    out: dict[str, object] = {f"{key}_mean_ms": round(ms, 3) for key, ms in means.items()}
    out["ttft_buckets"] = {edge: int(n - before[1].get(edge, 0.0))
                           for edge, n in after[1].items()}
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
    except RuntimeError as exc:  # a server without vLLM's /tokenize (HTTP 404: another framework)
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
