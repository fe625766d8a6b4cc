"""verify_throughput without servers: metric definitions on recorded streams (values
computed by hand below), the decision rule, workload parsing, arm commands."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from loopback import serve_on_loopback
from tiny_model import word_level_model

from vllm_wheels.errors import ConfigError, CouldNotRunError
from vllm_wheels.log import Reporter
from vllm_wheels.verify.throughput import arms, client, harness, report, stats
from vllm_wheels.verify.throughput.workload import Workload, load_workload

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
    # The server counts a's prompt as 11 tokens (a BOS, say); like vLLM's bench, the
    # input tokens are the client's own prompt lengths (10), not the server's usage.
    a = client.RequestRecord(success=True, ttft=0.1, itl=(0.02, 0.03, 0.05), latency=0.2,
                             output_tokens=4, prompt_tokens=11, prompt_len=10)
    b = client.RequestRecord(success=True, ttft=0.3, itl=(0.1,), latency=0.5,
                             output_tokens=2, prompt_tokens=9)
    m = client.compute_metrics([a, b], duration=2.0, input_len=8)
    assert m["completed"] == 2 and m["failed"] == 0
    assert m["total_input_tokens"] == 10 + 8  # b has no client-side length: input_len
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


def test_burn_in_is_read_overridden_and_refused_below_zero(repo_root: Path,
                                                           tmp_path: Path) -> None:
    gpu = load_workload(repo_root / "verify" / "workloads" / "llama-8b.toml")
    assert gpu.client.burn_in_s == 60
    assert gpu.with_overrides(burn_in_s=0).client.burn_in_s == 0
    single = repo_root / "verify" / "workloads" / "single-stream.toml"
    assert load_workload(single).client.burn_in_s == 0  # not set: none
    with pytest.raises(ConfigError, match="--burn-in -1") as err:
        gpu.with_overrides(burn_in_s=-1)
    assert err.value.fix and err.value.why
    bad = tmp_path / "bad.toml"
    bad.write_text(single.read_text().replace("runs = 5", "runs = 5\nburn_in_s = -5"))
    with pytest.raises(ConfigError, match="burn_in_s must be >= 0") as err:
        load_workload(bad)
    assert err.value.fix and err.value.why


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
    # ... and runs what the venv holds: this tool's PYTHONPATH is removed, not inherited.
    assert venv_env == {"HF_HUB_OFFLINE": "1", "VLLM_ATTENTION_BACKEND": "FLASHINFER",
                        "PYTHONPATH": None}


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


def _run(arm: str, n: int, tput: float, conc: int = 1, valid: bool = True) -> harness.ArmRun:
    m = {k: 10.0 for k in stats.GATEABLE} | {"output_throughput": tput,
                                             "total_token_throughput": tput}
    return harness.ArmRun(arm=arm, round=n, concurrency=conc, metrics=client.RunMetrics(
        concurrency=conc, num_prompts=16, metrics=m, valid=valid,
        problems=() if valid else ("2/16 requests failed; first: HTTP 500",)))


def test_a_proven_regression_outranks_a_cell_that_could_not_run(repo_root: Path) -> None:
    assert harness.overall_verdict(["pass", "inconclusive"]) == "inconclusive"
    assert harness.overall_verdict(["inconclusive", "could-not-run", "pass"]) == "could-not-run"
    assert harness.overall_verdict(["could-not-run", "regression", "inconclusive"]) == \
        "regression"
    assert harness.overall_verdict([]) == "could-not-run"
    w = load_workload(repo_root / "verify" / "workloads" / "single-stream.toml")
    w = dataclasses.replace(w, client=dataclasses.replace(w.client, concurrency=(1, 4)))
    result = harness.AbResult(
        workload=w, candidate=arms.VenvArm("candidate", arms.parse_arm_spec("venv:/x"), w),
        baseline=arms.VenvArm("baseline", arms.parse_arm_spec("venv:/y"), w), started="now")
    # Concurrency 1: the candidate is 10 % slower in every run; concurrency 4: only 2 of
    # the candidate's 5 runs are valid.
    result.runs = [_run("baseline", n, 100.0 + n * 0.1) for n in range(1, 6)]
    result.runs += [_run("candidate", n, 90.0 + n * 0.1) for n in range(1, 6)]
    result.runs += [_run("baseline", n, 100.0 + n * 0.1, conc=4) for n in range(1, 6)]
    result.runs += [_run("candidate", n, 100.0, conc=4, valid=n <= 2) for n in range(1, 6)]
    harness._decide(result)
    harness._finish(result, 0.0)
    assert result.cell_verdicts == {1: "regression", 4: "could-not-run"}
    assert result.verdict == "regression"
    assert "concurrency 4: candidate has 2 valid runs of 5" in result.problems[0]
    text = report.markdown(result)  # both are reported
    assert text.startswith("# Throughput A/B: single-stream — **REGRESSION**")
    assert "- concurrency 1: **regression**" in text
    assert "- concurrency 4: **could-not-run**" in text and "2 valid runs of 5" in text


DOCKER_STAND_IN = """#!{python}
# STAND-IN for the docker CLI (no Docker engine on this machine): records its argv and
# answers the calls the image arm makes the way docker does.
import json, os, sys
with open(os.environ["STAND_IN_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[0] == "info":
    print("{{}}")
elif args[0] == "pull":
    print("nightly: Pulling from vllm/vllm-openai")
    sys.exit(int(os.environ.get("STAND_IN_PULL_RC", "0")))
elif args[:2] == ["image", "inspect"]:
    print(os.environ.get("STAND_IN_DIGESTS", '["vllm/vllm-openai@sha256:{digest}"]'))
elif args[0] == "run":
    print(json.dumps({{"vllm": "0.0.0+stand-in", "torch": None}}))
"""
DIGEST = "sha256:" + "5e" * 32


@pytest.fixture
def docker_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "stand-in-bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(DOCKER_STAND_IN.format(python=sys.executable, digest=DIGEST[7:]))
    docker.chmod(0o755)
    log = tmp_path / "docker-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STAND_IN_LOG", str(log))
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _venv(path: Path) -> Path:
    """A directory that passes the venv arm's check (its python is this interpreter)."""
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").symlink_to(sys.executable)
    (path / "bin" / "vllm").write_text("")
    return path


@pytest.fixture
def models_server() -> Iterator[str]:
    """A real HTTP server on loopback answering GET /v1/models (a url: arm to check)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps({"data": [{"id": "gpt-oss-20b"}]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serve_on_loopback(Handler) as url:
        yield url


def _single_stream(repo_root: Path) -> Workload:
    return load_workload(repo_root / "verify" / "workloads" / "single-stream.toml")


def test_image_arm_is_pinned_to_the_pulled_digest_before_its_facts(
        repo_root: Path, tmp_path: Path, docker_stand_in: Path, models_server: str) -> None:
    w = _single_stream(repo_root)
    image = arms.make_arm("baseline", arms.parse_arm_spec("image:vllm/vllm-openai:nightly"), w)
    venv = arms.make_arm("candidate", arms.parse_arm_spec(f"venv:{_venv(tmp_path / 'v')}"), w)
    url = arms.make_arm("other", arms.parse_arm_spec(f"url:{models_server}"), w)
    harness.prepare_arms((venv, image, url), Reporter(None))
    calls = _calls(docker_stand_in)
    # Only the image arm calls docker, in this order; the facts come from repo@digest.
    assert [c[:2] for c in calls] == [["info", "--format"], ["pull", "vllm/vllm-openai:nightly"],
                                      ["image", "inspect"], ["run", "--rm"]]
    assert calls[2][-1] == "vllm/vllm-openai:nightly"
    assert calls[3][calls[3].index("python3") + 1] == f"vllm/vllm-openai@{DIGEST}"
    facts = image.facts()
    assert facts["digest"] == DIGEST and facts["run_ref"] == f"vllm/vllm-openai@{DIGEST}"
    assert f"--entrypoint vllm vllm/vllm-openai@{DIGEST} serve" in facts["command"]
    assert facts["versions"]["vllm"] == "0.0.0+stand-in"
    assert "digest" not in venv.facts() and "digest" not in url.facts()
    assert url.facts()["models"] == ["gpt-oss-20b"]
    # A digest given in the spec (or baseline.toml) is used as is: no pull.
    docker_stand_in.unlink()
    pinned = arms.make_arm("baseline", arms.parse_arm_spec(f"image:vllm/vllm-openai@{DIGEST}"),
                           w)
    harness.prepare_arms((pinned,), Reporter(None))
    assert [c[0] for c in _calls(docker_stand_in)] == ["info", "run"]


def test_image_arm_without_a_registry_digest_could_not_run(
        repo_root: Path, tmp_path: Path, docker_stand_in: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = _single_stream(repo_root)
    venv = arms.make_arm("candidate", arms.parse_arm_spec(f"venv:{_venv(tmp_path / 'v')}"), w)
    image = arms.make_arm("baseline", arms.parse_arm_spec("image:vllm/vllm-openai:nightly"), w)
    # docker pull fails: the A/B stops before any round (no local :nightly is run).
    monkeypatch.setenv("STAND_IN_PULL_RC", "1")
    result = harness.run_ab(w, venv, image, reporter=Reporter(None),
                            server_logs=tmp_path / "servers")
    assert result.verdict == "could-not-run" and not result.runs
    assert "baseline: docker pull vllm/vllm-openai:nightly failed with exit code 1" in \
        result.problems[0]
    assert "fix: check that the registry is reachable" in result.problems[0]
    assert [c[0] for c in _calls(docker_stand_in)] == ["info", "pull"]
    # The image has no digest from this registry: never made up.
    monkeypatch.setenv("STAND_IN_PULL_RC", "0")
    monkeypatch.setenv("STAND_IN_DIGESTS", '["other/vllm-openai@' + DIGEST + '"]')
    image = arms.make_arm("baseline", arms.parse_arm_spec("image:vllm/vllm-openai:nightly"), w)
    with pytest.raises(CouldNotRunError, match="no registry digest for vllm/vllm-openai:nightly"
                       ) as caught:
        harness.prepare_arms((image,), Reporter(None))
    assert caught.value.exit_code == 13 and caught.value.why and caught.value.fix
    assert image.facts().get("digest") is None


_HIDE_NUMPY = """
import sys
class HideNumpy:  # the `throughput` extra not installed, as far as imports can tell
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, HideNumpy())
from vllm_wheels.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_missing_throughput_extra_could_not_run(repo_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _HIDE_NUMPY, "verify-throughput", "--candidate",
         "url:http://127.0.0.1:9", "--baseline", "url:http://127.0.0.1:9",
         "--model", str(tmp_path), "--results-dir", str(tmp_path / "results")],
        cwd=repo_root, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 13, proc.stderr
    assert "ERROR (could not run, exit 13): the throughput A/B needs numpy" in proc.stderr
    assert "fix: pip install 'vllm-wheels[throughput]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_an_ab_that_stops_with_an_error_leaves_nothing_behind(
        repo_root: Path, tmp_path: Path) -> None:
    """run_ab raises a ConfigError (the model directory has no tokenizer.json) after the
    hidden full log was opened: it must not stay in the results directory."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "vllm_wheels", "verify-throughput", "--model", str(model),
         "--candidate", f"venv:{_venv(tmp_path / 'a')}",
         "--baseline", f"venv:{_venv(tmp_path / 'b')}", "--results-dir", str(results)],
        cwd=repo_root, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "no tokenizer.json in the model directory" in proc.stderr
    assert results.is_dir() and list(results.iterdir()) == []


def test_server_logs_move_in_after_the_report_and_survive_a_failed_write(
        repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from vllm_wheels.verify import cli_throughput as throughput_cli

    parser = argparse.ArgumentParser()
    throughput_cli.add_arguments(parser)
    model = word_level_model(tmp_path / "model")
    cand = _venv(tmp_path / "a")
    base = _venv(tmp_path / "b")

    def args(results: Path) -> argparse.Namespace:
        return parser.parse_args(["--model", str(model), "--candidate", f"venv:{cand}",
                                  "--baseline", f"venv:{base}", "--results-dir", str(results)])

    # The baseline's server cannot start (its vllm is an empty file), after its server
    # log was opened. The report is published, then the logs move in.
    with pytest.raises(CouldNotRunError, match="baseline: cannot start"):
        throughput_cli.run(args(tmp_path / "ok"))
    [out] = (tmp_path / "ok").iterdir()
    assert not out.name.startswith(".")
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "report.md", "result.json",
                                                     "servers", "verify-throughput.log"]
    assert [p.name for p in (out / "servers").iterdir()] == ["baseline-round1.log"]

    # FAULT INJECTION (a full disk cannot be made here): publishing the report directory
    # fails, after its files were written. The logs of the runs are kept, paths printed.
    def no_space(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "publish_dir", no_space)
    with pytest.raises(OSError, match="No space left"):
        throughput_cli.run(args(tmp_path / "full"))
    left = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert len(left) == 2 and left[0].endswith(".log") and left[1].endswith(".servers")
    assert [p.name for p in (tmp_path / "full" / left[1]).iterdir()] == ["baseline-round1.log"]
    assert f"the report could not be written; kept the full log {tmp_path / 'full' / left[0]}" \
        in capsys.readouterr().err


def test_the_gpu_workloads_kv_cache_holds_their_concurrent_prompts(repo_root: Path) -> None:
    """Each llama-8b workload's fixed KV cache (--kv-cache-memory-bytes) holds every request
    of its highest concurrency at once (input + output tokens); otherwise vLLM queues or
    preempts some, and TTFT measures the queue. KV bytes a token from the model's shape
    (verify/gpu/make_model.py): layers x KV heads x head_dim x (K, V) x bf16."""
    import importlib.util

    from vllm_wheels.build.bundle import parse_size  # binary units, as vLLM reads "2G"

    spec = importlib.util.spec_from_file_location(
        "make_model", repo_root / "verify" / "gpu" / "make_model.py")
    assert spec and spec.loader
    make_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_model)
    shape = make_model.SHAPES["llama-8b"]
    per_token = (shape["num_hidden_layers"] * shape["num_key_value_heads"] * shape["head_dim"]
                 * 2 * 2)
    paths = sorted((repo_root / "verify" / "workloads").glob("llama-8b*.toml"))
    assert any(p.name == "llama-8b-long.toml" for p in paths)
    for path in paths:
        w = load_workload(path)
        args = list(w.engine.args)
        size = args[args.index("--kv-cache-memory-bytes") + 1]
        cache = parse_size(size)
        need = max(w.client.concurrency) * (w.client.input_len + w.client.output_len) * per_token
        assert need <= cache, f"{path.name}: {need / 2**30:.2f} GiB of prompts, {size} cache"
