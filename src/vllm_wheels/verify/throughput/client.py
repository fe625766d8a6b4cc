"""The built-in benchmark client: random prompts, streamed OpenAI completions, and the
metrics of vLLM's `vllm bench serve`, defined the same way.

One client at one version drives both arms, so their numbers are comparable (clients
count tokens and define TPOT/ITL differently; mixing them is the classic A/B mistake).

Requests (as `vllm bench serve --backend openai --endpoint /v1/completions
--dataset-name random --ignore-eos --temperature 0 --request-rate inf
--max-concurrency C`): POST /v1/completions with `stream: true`,
`stream_options.include_usage`, `max_tokens = output_len`, `temperature = 0`,
`ignore_eos` (when the workload says so), all prompts issued at once and at most C in
flight (a semaphore; a request's clock starts once it holds a slot).

Prompts: like vLLM's random dataset, each prompt is a run of non-special vocabulary ids
starting at a seeded random offset, decoded to text and re-encoded until it is exactly
`input_len` tokens (the same kind of prompts as vLLM's, not byte-identical to them).

Per request, from the stream (`parse_stream`; `vllm/benchmarks/lib/endpoint_request_func.py`):
    st        perf_counter() just before the request is sent
    a "token message" is an SSE `data:` message whose JSON has a non-empty `choices`
    (its text may be empty, e.g. a special token)
    TTFT      time of the first token message - st
    ITL       time between consecutive token messages (one entry per gap)
    E2EL      time of the last token message - st (the trailing usage message is not
              a token and does not extend it)
    output_tokens  from `usage.completion_tokens`; `usage.prompt_tokens` is recorded
              (prompt_tokens) but not used in the metrics
    prompt_len     the prompt's length under the model's tokenizer, counted by the client
              (`Prompt.tokens`; like vLLM's `RequestFuncInput.prompt_len`)
    TPOT      (E2EL - TTFT) / (output_tokens - 1), only when output_tokens > 1

Per run (`compute_metrics`; `calculate_metrics` in `vllm/benchmarks/serve.py`):
    duration                from just before the first request to after the last one ends
    completed / failed      successful / unsuccessful requests
    total_input_tokens      sum of the client-side prompt_len of completed requests (as
                            vLLM's bench; the server's usage.prompt_tokens may add a BOS
                            or chat tokens and is not used; input_len when unknown)
    total_output_tokens     sum of output_tokens of completed requests
    request_throughput      completed / duration                          (req/s)
    output_throughput       total_output_tokens / duration                (tok/s)
    total_token_throughput  (total_input_tokens + total_output_tokens) / duration
    {mean,median,std,p99}_{ttft,tpot,itl,e2el}_ms   numpy mean / median / std /
                            percentile (linear interpolation) over all completed
                            requests' values (ITL: all gaps of all requests), in ms

Where this client is stricter than vLLM's, on purpose:
  * a `data:` message carrying an error (`{"error": ...}` or `"object": "error"`) fails
    the request (vLLM skips it and may count the partial answer as a success);
  * a request without `usage.completion_tokens` fails: the output length could not be
    verified (vLLM re-tokenizes the text, which miscounts garbage from random weights);
  * `usage` is read even when it rides on a message that also has `choices`
    (transformers serve sends it on the final finish_reason message; vLLM's client
    would miss it there). vLLM's own server sends usage with `choices: []`;
  * a run is valid only when no request failed and, with ignore_eos, every request
    returned exactly `output_len` tokens (without ignore_eos a request may stop at EOS
    and counts with its real length, as in vLLM's bench; more than `output_len` tokens
    is always invalid); an invalid run is recorded but never averaged in.
Not computed: goodput and peak output tokens/s (`max_output_tokens_per_s`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, CouldNotRunError

PERCENTILES = (99,)


# ---------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int  # length under the model's tokenizer, without special tokens


def make_prompts(model_dir: Path, count: int, input_len: int, seed: int) -> list[Prompt]:
    """`count` prompts of exactly `input_len` tokens (see the module docstring)."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ConfigError(f"no tokenizer.json in the model directory {model_dir}",
                          why="the client builds prompts of an exact token length with the "
                              "model's own tokenizer",
                          fix="put the model's config.json and tokenizer files in that "
                              "directory (weights are not needed with load_format = dummy)")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    # Only ids that survive decode -> encode on their own (byte-level BPE has lone bytes
    # that decode to U+FFFD, which re-encodes to other ids and never converges).
    allowed = np.array([i for i in sorted(set(tokenizer.get_vocab().values()) - special)
                        if "\ufffd" not in (piece := tokenizer.decode([i]))
                        and tokenizer.encode(piece, add_special_tokens=False).ids == [i]],
                       dtype=np.int64)
    if len(allowed) == 0:
        raise ConfigError(f"the tokenizer in {model_dir} has no usable vocabulary ids")
    rng = np.random.default_rng(seed)
    prompts = []
    for index in range(count):
        offset = int(rng.integers(0, len(allowed)))
        ids = allowed[(offset + index + np.arange(input_len)) % len(allowed)].tolist()
        # Decoding then re-encoding merges or splits tokens; trim or extend until the
        # text is exactly input_len tokens (vLLM's gen_prompt_decode_to_target_len). Like
        # vLLM, a prompt that does not converge keeps its nearest length, and the run
        # counts that length (Prompt.tokens) as its input tokens.
        text = tokenizer.decode(ids)
        again = tokenizer.encode(text, add_special_tokens=False).ids
        for _ in range(20):
            if len(again) == input_len:
                break
            if len(again) > input_len:
                ids = again[:input_len]
            else:
                ids = again + rng.choice(allowed, size=input_len - len(again)).tolist()
            text = tokenizer.decode(ids)
            again = tokenizer.encode(text, add_special_tokens=False).ids
        prompts.append(Prompt(text=text, tokens=len(again)))
    return prompts


# ---------------------------------------------------------------------------- streams


@dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """One request's outcome, in seconds."""

    success: bool
    error: str = ""
    ttft: float = 0.0
    itl: tuple[float, ...] = ()
    latency: float = 0.0  # E2EL
    output_tokens: int | None = None
    prompt_tokens: int | None = None  # the server's usage.prompt_tokens (recorded only)
    prompt_len: int | None = None  # the client's count: what total_input_tokens sums
    start: float = 0.0
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "error": self.error, "ttft": self.ttft,
                "itl": list(self.itl), "latency": self.latency,
                "output_tokens": self.output_tokens, "prompt_tokens": self.prompt_tokens,
                "prompt_len": self.prompt_len}


def split_sse(chunks: Iterable[tuple[float, bytes]]) -> list[tuple[float, str]]:
    """(arrival time, bytes) network chunks -> (time, message) for each complete SSE
    message, timed at the chunk that completed it. Comments (':' lines) are dropped."""
    messages: list[tuple[float, str]] = []
    buffer = ""
    last = 0.0
    for stamp, data in chunks:
        last = stamp
        buffer += data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        while "\n\n" in buffer:
            message, buffer = buffer.split("\n\n", 1)
            _add_message(messages, stamp, message)
        # Like vLLM's StreamedResponseHandler: a trailing `data:` message that is already
        # complete JSON counts now, not when a later chunk brings its blank line.
        if buffer.startswith("data:") and _complete(buffer):
            _add_message(messages, stamp, buffer)
            buffer = ""
    if buffer.strip():
        _add_message(messages, last, buffer)
    return messages


def _complete(buffer: str) -> bool:
    content = buffer.removeprefix("data:").strip()
    if content == "[DONE]":
        return True
    try:
        json.loads(content)
    except json.JSONDecodeError:
        return False
    return bool(content)


def _add_message(messages: list[tuple[float, str]], stamp: float, message: str) -> None:
    lines = [line for line in message.strip().split("\n") if line and not line.startswith(":")]
    payload = "\n".join(line.removeprefix("data:").removeprefix(" ")
                        for line in lines if line.startswith("data:"))
    if payload:
        messages.append((stamp, payload))


def parse_stream(chunks: Iterable[tuple[float, bytes]], start: float, *, status: int = 200,
                 reason: str = "") -> RequestRecord:
    """A request's record from its recorded stream (definitions: module docstring)."""
    if status != 200:
        body = b"".join(data for _stamp, data in chunks).decode("utf-8", "replace")
        return RequestRecord(success=False, start=start,
                             error=f"HTTP {status} {reason}: {body.strip()[:300]}")
    first: float | None = None
    previous = start
    itl: list[float] = []
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    text = ""
    for stamp, payload in split_sse(chunks):
        if payload == "[DONE]":
            continue
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            return RequestRecord(success=False, start=start,
                                 error=f"not JSON in the stream: {payload[:200]!r}")
        if not isinstance(data, dict):
            continue
        if "error" in data or data.get("object") == "error":
            detail = data.get("error", data.get("message", data))
            return RequestRecord(success=False, start=start, text=text,
                                 error=f"server error in the stream: {detail}")
        choices = data.get("choices")
        if choices:
            if first is None:
                first = stamp
            else:
                itl.append(stamp - previous)
            previous = stamp
            text += choices[0].get("text") or ""
        usage = data.get("usage")
        if isinstance(usage, dict):
            if usage.get("completion_tokens") is not None:
                output_tokens = int(usage["completion_tokens"])
            if usage.get("prompt_tokens") is not None:
                prompt_tokens = int(usage["prompt_tokens"])
    if first is None:
        return RequestRecord(success=False, start=start,
                             error="never received a token message (no TTFT)")
    if output_tokens is None:
        return RequestRecord(success=False, start=start, text=text,
                             error="the server sent no usage.completion_tokens: the output "
                                   "length cannot be verified")
    return RequestRecord(success=True, ttft=first - start, itl=tuple(itl),
                         latency=previous - start, output_tokens=output_tokens,
                         prompt_tokens=prompt_tokens, start=start, text=text)


# ---------------------------------------------------------------------------- metrics


@dataclass(frozen=True, kw_only=True)
class RunMetrics:
    """vLLM's BenchmarkMetrics keys (`metrics`) plus what made the run (in)valid."""

    concurrency: int
    num_prompts: int
    metrics: dict[str, float]
    valid: bool
    problems: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "num_prompts": self.num_prompts,
                "valid": self.valid, "problems": list(self.problems), **self.metrics}


def compute_metrics(records: Sequence[RequestRecord], duration: float, *,
                    input_len: int, percentiles: Sequence[int] = PERCENTILES
                    ) -> dict[str, float]:
    """The run's metrics over its completed requests (definitions: module docstring)."""
    import numpy as np

    done = [r for r in records if r.success]
    outputs = [r.output_tokens or 0 for r in done]
    total_input = sum(r.prompt_len if r.prompt_len is not None else input_len for r in done)
    series: dict[str, list[float]] = {
        "ttft": [r.ttft for r in done],
        "tpot": [(r.latency - r.ttft) / (n - 1) for r, n in zip(done, outputs, strict=True)
                 if n > 1],
        "itl": [gap for r in done for gap in r.itl],
        "e2el": [r.latency for r in done],
    }
    result: dict[str, float] = {
        "duration": duration,
        "completed": float(len(done)),
        "failed": float(len(records) - len(done)),
        "total_input_tokens": float(total_input),
        "total_output_tokens": float(sum(outputs)),
        "request_throughput": len(done) / duration,
        "output_throughput": sum(outputs) / duration,
        "total_token_throughput": (total_input + sum(outputs)) / duration,
    }
    for name, values in series.items():
        # `or [0]`: like vLLM's `np.mean(x or 0)`, an empty list reports 0.
        arr = np.asarray(values or [0.0], dtype=np.float64) * 1000.0
        result[f"mean_{name}_ms"] = float(np.mean(arr))
        result[f"median_{name}_ms"] = float(np.median(arr))
        result[f"std_{name}_ms"] = float(np.std(arr))
        for p in percentiles:
            result[f"p{p}_{name}_ms"] = float(np.percentile(arr, p))
    return result


def run_problems(records: Sequence[RequestRecord], output_len: int, *,
                 ignore_eos: bool = True) -> list[str]:
    """Why a run is invalid (empty list: valid). Short outputs make it invalid only when
    the run asked for ignore_eos; without it a request may end at EOS and counts with its
    real length, as in `vllm bench serve` (more than output_len is always wrong)."""
    problems = []
    failed = [r for r in records if not r.success]
    if failed:
        problems.append(f"{len(failed)}/{len(records)} requests failed; first: {failed[0].error}")
    wrong = [r.output_tokens for r in records if r.success and r.output_tokens != output_len
             and (ignore_eos or (r.output_tokens or 0) > output_len)]
    if wrong:
        problems.append(f"{len(wrong)}/{len(records)} requests returned "
                        f"{sorted({n or 0 for n in wrong})} "
                        f"tokens instead of {output_len} (short or truncated outputs)")
    return problems


# ---------------------------------------------------------------------------- the client


@dataclass
class BenchmarkRun:
    records: list[RequestRecord] = field(default_factory=list)
    duration: float = 0.0


ProgressCallback = Callable[[int, int], None]


async def _one_request(session: Any, url: str, payload: dict[str, Any]) -> RequestRecord:
    import aiohttp

    chunks: list[tuple[float, bytes]] = []
    start = time.perf_counter()
    try:
        async with session.post(url, json=payload) as response:
            async for data in response.content.iter_any():
                chunks.append((time.perf_counter(), data))
            return parse_stream(chunks, start, status=response.status,
                                reason=response.reason or "")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return RequestRecord(success=False, start=start,
                             error=f"{type(exc).__name__}: {exc}")


async def _benchmark(base_url: str, model: str, prompts: Sequence[Prompt], *, output_len: int,
                     concurrency: int, ignore_eos: bool, seed: int,
                     on_progress: ProgressCallback | None, timeout_s: float) -> BenchmarkRun:
    import aiohttp

    url = base_url.rstrip("/") + "/v1/completions"
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    semaphore = asyncio.Semaphore(concurrency)
    run = BenchmarkRun()
    done = 0

    async def limited(prompt: Prompt, session: aiohttp.ClientSession) -> RequestRecord:
        nonlocal done
        payload: dict[str, Any] = {
            "model": model, "prompt": prompt.text, "max_tokens": output_len,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
        }
        if ignore_eos:
            payload["ignore_eos"] = True
        async with semaphore:
            record = await _one_request(session, url, payload)
        record = dataclasses.replace(record, prompt_len=prompt.tokens)
        done += 1
        if on_progress is not None:
            on_progress(done, len(prompts))
        return record

    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"Content-Type": "application/json"}) as session:
        started = time.perf_counter()
        run.records = list(await asyncio.gather(*(limited(p, session) for p in prompts)))
        run.duration = time.perf_counter() - started
    return run


def benchmark(base_url: str, model: str, prompts: Sequence[Prompt], *, output_len: int,
              concurrency: int, ignore_eos: bool, seed: int,
              on_progress: ProgressCallback | None = None,
              timeout_s: float = 6 * 3600) -> BenchmarkRun:
    """Send all prompts (at most `concurrency` in flight); the records and the duration."""
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:  # the optional extra is missing
        raise CouldNotRunError("the throughput client needs aiohttp, numpy and tokenizers",
                               fix="pip install 'vllm-wheels[throughput]'") from exc
    return asyncio.run(_benchmark(base_url, model, prompts, output_len=output_len,
                                  concurrency=concurrency, ignore_eos=ignore_eos, seed=seed,
                                  on_progress=on_progress, timeout_s=timeout_s))


def measure(base_url: str, model: str, prompts: Sequence[Prompt], *, output_len: int,
            input_len: int, concurrency: int, ignore_eos: bool, seed: int,
            on_progress: ProgressCallback | None = None) -> tuple[RunMetrics, BenchmarkRun]:
    """One benchmark run -> its metrics and validity."""
    run = benchmark(base_url, model, prompts, output_len=output_len, concurrency=concurrency,
                    ignore_eos=ignore_eos, seed=seed, on_progress=on_progress)
    problems = run_problems(run.records, output_len, ignore_eos=ignore_eos)
    metrics = compute_metrics(run.records, run.duration, input_len=input_len)
    return RunMetrics(concurrency=concurrency, num_prompts=len(prompts), metrics=metrics,
                      valid=not problems, problems=tuple(problems)), run
