"""vLLM's own timing of the requests of one run, from its Prometheus endpoint (/metrics).

The client measures TTFT from before it sends a request to its first streamed token. vLLM
measures parts of the same path itself, and exports each as a histogram
(vllm/v1/metrics/loggers.py of 0.20.0):

    ttft      vllm:time_to_first_token_seconds   the API server's: from the request's
              arrival at the engine client (after the HTTP layer) to its first token
    queue     vllm:request_queue_time_seconds    the engine core's: waiting to be scheduled
    prefill   vllm:request_prefill_time_seconds  the engine core's: scheduled to first token

A scrape before and one after a run give, per histogram, the run's mean in ms (delta of
_sum over delta of _count). When the client's TTFT spreads from run to run and vLLM's does
not, the spread is outside vLLM's engine and output path (HTTP, tokenization, the client);
when vLLM's spreads too, queue and prefill say which part of the engine
(report.spread_diagnosis). A server without /metrics (another framework) gives None.

The exposition format is parsed with prometheus_client's own parser (the library vLLM
exports with), not by hand: label sets, escaping and the _created samples of newer
clients are its business."""

from __future__ import annotations

import urllib.error
import urllib.request

HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "queue": "vllm:request_queue_time_seconds",
    "prefill": "vllm:request_prefill_time_seconds",
}

Scrape = dict[str, tuple[float, float]]  # key -> (sum of seconds, count), all label sets


def parse(text: str) -> Scrape:
    """The histograms of HISTOGRAMS in a /metrics body, summed over their label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    # a histogram's family is named by its # TYPE line: the full name, _seconds included
    wanted = {name: key for key, name in HISTOGRAMS.items()}
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        key = wanted.get(family.name)
        if key is None:
            continue
        totals = out.setdefault(key, [0.0, 0.0])
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                totals[0] += sample.value
            elif sample.name.endswith("_count"):
                totals[1] += sample.value
    return {key: (s, n) for key, (s, n) in out.items()}


def scrape(base_url: str, timeout: float = 5.0) -> Scrape | None:
    """GET /metrics; None when the server has none or it cannot be read."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout) as response:  # noqa: S310 - the arm's own URL
            return parse(response.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def run_means_ms(before: Scrape | None, after: Scrape | None) -> dict[str, float] | None:
    """Each histogram's mean over the requests between two scrapes, in ms."""
    if before is None or after is None:
        return None
    out = {}
    for key, (total, count) in after.items():
        total0, count0 = before.get(key, (0.0, 0.0))
        if count - count0 > 0:
            out[key] = 1e3 * (total - total0) / (count - count0)
    return out or None
