"""verify_throughput without servers: metric definitions on recorded streams (values
computed by hand below), the decision rule, workload parsing, arm commands."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from vllm_wheels.errors import ConfigError
from vllm_wheels.verify.throughput import arms, client, harness, stats
from vllm_wheels.verify.throughput.workload import load_workload

FIXTURES = Path(__file__).parents[1] / "fixtures" / "throughput"


def _chunks(entries: list[tuple[float, str]]) -> list[tuple[float, bytes]]:
    return [(t / 1000.0, data.encode()) for t, data in entries]


def test_recorded_transformers_serve_stream_matches_hand_computed_metrics() -> None:
    doc = json.loads((FIXTURES / "stream-transformers-serve.json").read_text())
    chunks = _chunks([(c["t_ms"], c["data"]) for c in doc["chunks"]])
    record = client.parse_stream(chunks, start=0.0)
    # Six network reads, one message each: five tokens, then the finish message with
    # empty text, finish_reason and usage. Its `choices` is non-empty, so vLLM's rule
    # counts it as a token message (ITL gap and end time).
    assert record.success and record.output_tokens == 5 and record.prompt_tokens is not None
    assert record.ttft == pytest.approx(0.023802)
    assert record.itl == pytest.approx((0.003117, 0.002551, 0.002687, 0.002576, 0.001174))
    assert record.latency == pytest.approx(0.035907)
    metrics = client.compute_metrics([record], duration=0.040, input_len=11)
    # TPOT = (E2EL - TTFT) / (tokens - 1) = (35.907 - 23.802) / 4 ms
    assert metrics["mean_tpot_ms"] == pytest.approx(3.02625)
    assert metrics["output_throughput"] == pytest.approx(5 / 0.040)


# Written by hand in the shape vLLM's OpenAI server streams completions (one token per
# message, usage in a final message with "choices": [], then [DONE]); it also has an SSE
# comment (a ping) and a message split across two network reads.
VLLM_STREAM = [
    (100.0, 'data: {"choices":[{"index":0,"text":"Hel"}]}\n\n'),
    (130.0, ': ping\n\ndata: {"choices":[{"index":0,"text":"lo"}]}\n\n'),
    (150.0, 'data: {"choices":[{"index":0,'),
    (175.0, '"text":" wor"}]}\n\ndata: {"choices":[{"index":0,"text":"ld",'
            '"finish_reason":"length"}]}\n\n'),
    (180.0, 'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":4}}\n\n'),
    (181.0, "data: [DONE]\n\n"),
]


def test_vllm_shaped_stream_definitions() -> None:
    record = client.parse_stream(_chunks(VLLM_STREAM), start=0.0)
    assert record.success and record.text == "Hello world"
    assert (record.output_tokens, record.prompt_tokens) == (4, 7)
    assert record.ttft == pytest.approx(0.100)
    # Token messages at 100, 130, 175, 175 ms (the split one completes at 175 together
    # with the next): gaps 30, 45, 0. The usage message (180) does not extend E2EL.
    assert record.itl == pytest.approx((0.030, 0.045, 0.0))
    assert record.latency == pytest.approx(0.175)


def test_run_metrics_by_hand() -> None:
    a = client.RequestRecord(success=True, ttft=0.1, itl=(0.02, 0.03, 0.05), latency=0.2,
                             output_tokens=4, prompt_tokens=10)
    b = client.RequestRecord(success=True, ttft=0.3, itl=(0.1,), latency=0.5,
                             output_tokens=2, prompt_tokens=None)
    m = client.compute_metrics([a, b], duration=2.0, input_len=8)
    assert m["completed"] == 2 and m["failed"] == 0
    assert m["total_input_tokens"] == 10 + 8  # b's server gave no prompt count: input_len
    assert m["total_output_tokens"] == 6
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["output_throughput"] == pytest.approx(3.0)
    assert m["total_token_throughput"] == pytest.approx(12.0)
    # TPOT: a (0.2-0.1)/3 = 33.333 ms, b (0.5-0.3)/1 = 200 ms
    assert m["mean_tpot_ms"] == pytest.approx((100 / 3 + 200) / 2)
    assert m["median_ttft_ms"] == pytest.approx(200.0)
    # ITL pooled: 20, 30, 50, 100 ms -> median 40; p99 = 50 + 0.97 * (100 - 50)
    assert m["median_itl_ms"] == pytest.approx(40.0)
    assert m["p99_itl_ms"] == pytest.approx(98.5)
    assert m["mean_e2el_ms"] == pytest.approx(350.0)
    # p99 TTFT over (100, 300): 100 + 0.99 * 200
    assert m["p99_ttft_ms"] == pytest.approx(298.0)


def test_failures_and_short_outputs_make_a_run_invalid() -> None:
    error = client.parse_stream(_chunks([(5.0, 'data: {"choices":[{"text":"a"}]}\n\n'),
                                         (9.0, 'data: {"error": "index out of range"}\n\n')]),
                                start=0.0)
    assert not error.success and "index out of range" in error.error
    rejected = client.parse_stream(_chunks([(3.0, '{"detail":"Unexpected fields"}')]), start=0.0,
                                   status=422, reason="Unprocessable Entity")
    assert not rejected.success and rejected.error.startswith("HTTP 422")
    no_usage = client.parse_stream(_chunks([(5.0, 'data: {"choices":[{"text":"a"}]}\n\n')]),
                                   start=0.0)
    assert not no_usage.success and "usage" in no_usage.error
    good = client.parse_stream(_chunks(VLLM_STREAM), start=0.0)
    assert client.run_problems([good, good], output_len=4) == []
    problems = client.run_problems([good, error], output_len=4)
    assert problems and "1/2 requests failed" in problems[0]
    short = client.run_problems([good], output_len=8)
    assert "returned [4] tokens instead of 8" in short[0]
    # Failed requests are not averaged into the latencies.
    m = client.compute_metrics([good, error], duration=1.0, input_len=7)
    assert m["failed"] == 1 and m["median_ttft_ms"] == pytest.approx(100.0)


def _compare(cand: list[float], base: list[float], higher: bool = True) -> stats.MetricComparison:
    return stats.compare_metric("m", cand, base, higher_is_better=higher, threshold=0.03,
                                max_cv=0.02, confidence=0.95, resamples=4000)


def test_decision_rule() -> None:
    base = [100.0, 100.5, 99.5, 100.2, 99.8]
    assert _compare([100.1, 99.9, 100.3, 99.7, 100.0], base).verdict == "pass"
    slow = _compare([90.0, 90.4, 89.6, 90.1, 89.9], base)
    assert slow.verdict == "regression" and slow.ratio == pytest.approx(0.9)
    assert slow.ci_high < 0.97 and "lower by more than 3.0%" in slow.reason
    # A 2 % drop is inside the 3 % allowance but its CI reaches past it: cannot clear it.
    edge = _compare([98.0, 97.0, 99.0, 96.5, 98.5], base)
    assert edge.verdict == "inconclusive"
    noisy = _compare([100.0, 104.0, 96.0, 101.0, 99.0], base)
    assert noisy.verdict == "inconclusive" and "CV" in noisy.reason
    # Latency: higher is worse.
    assert _compare([10.5, 10.6, 10.5, 10.4, 10.5], [10.0, 10.0, 10.1, 9.9, 10.0],
                    higher=False).verdict == "regression"
    assert stats.worst(["pass", "inconclusive", "regression"]) == "regression"
    # Same seed, same interval.
    assert stats.bootstrap_ratio([1, 2, 3, 4, 5], [2, 3, 4, 5, 6], resamples=500,
                                 confidence=0.95) == stats.bootstrap_ratio(
        [1, 2, 3, 4, 5], [2, 3, 4, 5, 6], resamples=500, confidence=0.95)


def test_shipped_workloads_and_unknown_keys(repo_root: Path, tmp_path: Path) -> None:
    for name in ("single-stream", "throughput"):
        w = load_workload(repo_root / "verify" / "workloads" / f"{name}.toml")
        assert w.client.runs >= 5 and w.gate.throughput_drop == 0.03
        assert w.gate.latency_rise == 0.025 and w.engine.load_format == "dummy"
        assert w.model == repo_root / "models" / "gpt-oss-20b"
    single = load_workload(repo_root / "verify" / "workloads" / "single-stream.toml")
    assert single.client.concurrency == (1,)
    bad = tmp_path / "bad.toml"
    text = (repo_root / "verify" / "workloads" / "single-stream.toml").read_text()
    bad.write_text(text.replace("warmup_prompts = 2", "warmup_prompt = 2"))
    with pytest.raises(ConfigError, match="unknown key 'warmup_prompt'") as err:
        load_workload(bad)
    assert "did you mean 'warmup_prompts'" in err.value.fix
    bad.write_text(text.replace("runs = 5", "runs = 3"))
    with pytest.raises(ConfigError, match="at least 5 runs"):
        load_workload(bad)
    bad.write_text(text.replace('args = ["--max-model-len"', 'args = ["--seed", "1", "--max-model-len"'))
    with pytest.raises(ConfigError, match="must not contain --seed"):
        load_workload(bad)


def test_image_arm_docker_command(repo_root: Path) -> None:
    """The image: arm's command, built and checked without running it (no Docker engine)."""
    w = load_workload(repo_root / "verify" / "workloads" / "single-stream.toml")
    w = dataclasses.replace(w, engine=dataclasses.replace(w.engine, attention_backend="FLASHINFER"))
    digest = "sha256:" + "ab" * 32
    arm = arms.ImageArm("baseline", arms.parse_arm_spec("image:vllm/vllm-openai:nightly"), w)
    arm.digest = digest  # as resolve_digest records it after `docker pull`
    argv, env = arm.command(18000)
    assert env == {}
    assert argv[:9] == ["docker", "run", "--rm", "--name", arm.container, "--gpus", "all",
                        "--ipc=host", "-p"]
    text = shlex.join(argv)
    assert f"-p 127.0.0.1:18000:8000 -v {w.model}:/model:ro" in text
    assert "-e HF_HUB_OFFLINE=1 -e VLLM_ATTENTION_BACKEND=FLASHINFER" in text
    assert f"--entrypoint vllm vllm/vllm-openai@{digest} serve /model" in text
    assert ("--served-model-name gpt-oss-20b --host 0.0.0.0 --port 8000 --load-format dummy "
            "--seed 0 --no-enable-prefix-caching --max-model-len 4096") in text
    # The venv arm gets the very same engine flags and environment.
    venv = arms.VenvArm("candidate", arms.parse_arm_spec("venv:/opt/cand"), w)
    vargv, venv_env = venv.command(18001)
    assert vargv[0] == "/opt/cand/bin/vllm"
    assert vargv[vargv.index("--load-format"):] == argv[argv.index("--load-format"):]
    assert venv_env == {"HF_HUB_OFFLINE": "1", "VLLM_ATTENTION_BACKEND": "FLASHINFER"}


def test_baseline_file_and_specs(repo_root: Path, tmp_path: Path) -> None:
    assert arms.load_baseline_image(repo_root / "verify" / "baseline.toml") == \
        "vllm/vllm-openai:nightly"  # no digest resolved yet: the tag, never a made-up digest
    pinned = tmp_path / "baseline.toml"
    pinned.write_text(f'image = "vllm/vllm-openai:nightly"\ndigest = "sha256:{"0" * 64}"\n')
    assert arms.load_baseline_image(pinned) == f"vllm/vllm-openai@sha256:{'0' * 64}"
    assert arms.strip_tag("localhost:5000/vllm:nightly") == "localhost:5000/vllm"
    assert arms.parse_arm_spec("url:http://h:8000") == arms.ArmSpec("url", "http://h:8000")
    for bad in ("docker:x", "url:h:8000", "venv:"):
        with pytest.raises(ConfigError):
            arms.parse_arm_spec(bad)


def test_arms_with_different_settings_are_refused(repo_root: Path) -> None:
    w = load_workload(repo_root / "verify" / "workloads" / "single-stream.toml")
    other = dataclasses.replace(w, engine=dataclasses.replace(w.engine, prefix_caching=True))
    a = arms.VenvArm("candidate", arms.parse_arm_spec("venv:/x"), w)
    b = arms.ImageArm("baseline", arms.parse_arm_spec("image:vllm/vllm-openai:nightly"), other)
    with pytest.raises(ConfigError, match=r"refusing to compare.*\['engine'\]"):
        harness.check_settings(a, b)
    same = arms.ImageArm("baseline", arms.parse_arm_spec("image:vllm/vllm-openai:nightly"), w)
    assert harness.check_settings(a, same) == []
    url = arms.UrlArm("baseline", arms.parse_arm_spec("url:http://h:1"), other)
    assert "not controlled" in harness.check_settings(a, url)[0]


def test_invalid_runs_are_left_out_and_too_few_cannot_decide(repo_root: Path) -> None:
    w = load_workload(repo_root / "verify" / "workloads" / "single-stream.toml")
    cand = arms.VenvArm("candidate", arms.parse_arm_spec("venv:/x"), w)
    base = arms.VenvArm("baseline", arms.parse_arm_spec("venv:/y"), w)

    def run(arm: str, n: int, tput: float, valid: bool = True) -> harness.ArmRun:
        m = {k: 10.0 for k in stats.GATEABLE} | {"output_throughput": tput,
                                                 "total_token_throughput": tput}
        return harness.ArmRun(arm=arm, round=n, concurrency=1, metrics=client.RunMetrics(
            concurrency=1, num_prompts=16, metrics=m, valid=valid,
            problems=() if valid else ("3/16 requests returned [100] tokens instead of 512",)))

    result = harness.AbResult(workload=dataclasses.replace(
        w, client=dataclasses.replace(w.client, runs=6)), candidate=cand, baseline=base,
        started="now")
    result.runs = [run("baseline", n, 100.0 + n * 0.1) for n in range(1, 7)]
    result.runs += [run("candidate", n, 100.0 - n * 0.1) for n in range(1, 6)]
    result.runs.append(run("candidate", 6, 1.0, valid=False))  # would drag the median down
    harness._decide(result)
    assert result.verdict == "pass"
    out = next(m for m in result.comparisons[1] if m.metric == "output_throughput")
    assert len(out.candidate) == 5 and 1.0 not in out.candidate
    result.runs = [r for r in result.runs if not (r.arm == "candidate" and r.round == 5)]
    result.comparisons.clear()
    harness._decide(result)
    assert result.verdict == "could-not-run"
    assert "candidate has 4 valid runs of 6" in result.problems[0]
