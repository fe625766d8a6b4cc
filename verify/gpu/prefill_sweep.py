"""How vLLM's time to first token grows with the prompt: N streamed requests of max_tokens 1
at each input length, one at a time; the client's median and vLLM's own mean TTFT, queue
and prefill (its /metrics). A cost that stays when the prompt shrinks to a few tokens is the
engine's fixed per-step host work, not the GPU's prefill.

    python3 verify/gpu/prefill_sweep.py URL MODEL [N] > sweep.json"""
from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ttft_probe import Client, scrape, server_delta  # noqa: E402


def main(argv: list[str]) -> int:
    base, model = argv[1].rstrip("/"), argv[2]
    n = int(argv[3]) if len(argv) > 3 else 50
    rng = random.Random(0)
    c = Client(base)
    out: dict[str, object] = {"schema_version": 1, "n": n, "lengths": {}}
    for length in (1, 16, 64, 256, 1024):
        prompts = [[rng.randrange(1000, 20000) for _ in range(length)] for _ in range(n + 3)]
        for p in prompts[:3]:
            c.first_token({"model": model, "prompt": p, "max_tokens": 1, "stream": True})
        before = scrape(base)
        ms = [c.first_token({"model": model, "prompt": p, "max_tokens": 1, "stream": True,
                             "ignore_eos": True}) for p in prompts[3:]]
        server = server_delta(before, scrape(base)) or {}
        server.pop("ttft_buckets", None)
        row = {"client_p50_ms": round(statistics.median(ms), 2),
               "client_std_ms": round(statistics.pstdev(ms), 2), **server}
        out["lengths"][length] = row  # type: ignore[index]
        print(length, row, file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
