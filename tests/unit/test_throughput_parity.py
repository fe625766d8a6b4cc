"""Issue 19 on the CPU: the backend-parity parser on real vLLM log lines, the explanation
lines of planted regressions, the gate's power and --runs auto against a simulation, the
balanced round order against a planted order effect, the vllm bench serve cross-check's
command and result, the bandwidth anchor, and short outputs without ignore_eos.

Servers here are real HTTP servers on loopback streaming tokens; where a vLLM server is
needed, `tests/fixtures/throughput/standin_vllm.py` is a STAND-IN for one (no GPU here): it
prints vLLM 0.20.0's own log lines and slows down as CUDA graphs off or Triton attention
would."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from loopback import serve_on_loopback
from tiny_model import word_level_model

from vllm_wheels.errors import ConfigError, CouldNotRunError
from vllm_wheels.log import Reporter
from vllm_wheels.verify.throughput import (
    anchor,
    arms,
    client,
    crosscheck,
    harness,
    parity,
    report,
    stats,
)
from vllm_wheels.verify.throughput.workload import load_workload

FIXTURES = Path(__file__).parents[1] / "fixtures" / "throughput"
LOGS = FIXTURES / "vllm-logs"
STANDIN = FIXTURES / "standin_vllm.py"


# ------------------------------------------------------------------ the parser


def test_real_h200_log_eager_triton() -> None:
    facts = parity.parse_server_log((LOGS / "h200-verify-eager-triton.log").read_text())
    assert facts["attention_backend"] == "TRITON_ATTN" and facts["attention_forced"]
    assert facts["cuda_graphs"] == "off" and facts["compile"] == "off"
    assert facts["vllm_version"] == "0.20.0+cu130.torch2110.sm90a.verify"
    assert "moe_backend" not in facts and "gemm_kernel" not in facts
    # Evidence keeps the source location and message, not the time stamp or pid.
    assert facts["evidence"]["attention_backend"] == (
        "[cuda.py:308] Using AttentionBackendEnum.TRITON_ATTN backend.")


def test_real_h100_logs_at_defaults_forced_and_eager() -> None:
    """Real vLLM 0.20.0 logs of the official wheel on an H100 (2026-12-07 GPU run): the
    defaults pick FLASH_ATTN among the candidates with compile and CUDA graphs on; the
    forced server says TRITON_ATTN was asked for; the planted --enforce-eager server has
    both off, and the difference names each cause before any number."""
    texts = {name: (LOGS / f"h100-llama8b-{name}.log").read_text()
             for name in ("official-default", "ours-forced", "ours-eager")}
    default, forced, eager = (parity.parse_server_log(t) for t in texts.values())
    assert default["attention_backend"] == "FLASH_ATTN" and "attention_forced" not in default
    assert (default["compile"], default["cuda_graphs"]) == ("on", "on")
    assert default["vllm_version"] == "0.20.0"
    assert forced["attention_backend"] == "TRITON_ATTN" and forced["attention_forced"]
    assert (forced["compile"], forced["cuda_graphs"]) == ("on", "on")
    assert (eager["compile"], eager["cuda_graphs"]) == ("off", "off") and eager["enforce_eager"]
    keys = {d.key for d in parity.differences(_arm(texts["ours-eager"]),
                                             _arm(texts["official-default"]))}
    assert {"cuda_graphs", "attention_backend"} <= keys
    assert parity.differences(_arm(texts["ours-forced"]), _arm(texts["ours-forced"])) == []


def test_vllm_format_lines_defaults() -> None:
    facts = parity.parse_server_log((LOGS / "vllm-0.20.0-format-lines.log").read_text())
    assert facts["attention_backend"] == "FLASH_ATTN" and "attention_forced" not in facts
    assert facts["moe_backend"] == "TRITON (Unquantized MoE)"
    assert facts["gemm_kernel"] == "CutlassFP8ScaledMMLinearKernel (Fp8LinearMethod)"
    assert facts["cuda_graphs"] == "on" and facts["graph_capture"] == "7 s, 0.53 GiB"
    assert facts["compile"] == "on" and facts["quantization"] == "fp8"
    assert facts["vllm_version"] == "0.20.0"
    assert facts["flashinfer_jit_ops"] == ["sampling"]


def _arm(log: str, **extra: object) -> dict[str, object]:
    return parity.arm_parity({"server_log": parity.parse_server_log(log), **extra})


def test_differences_name_each_planted_cause_with_its_cost() -> None:
    default = (LOGS / "vllm-0.20.0-format-lines.log").read_text()
    eager = (LOGS / "h200-verify-eager-triton.log").read_text()
    diffs = {d.key: d for d in parity.differences(_arm(eager), _arm(default))}
    assert diffs["cuda_graphs"].text == "CUDA graphs off on candidate"
    assert diffs["compile"].text == "torch.compile off on candidate"
    assert diffs["attention_backend"].text == (
        "attention backend differs: candidate TRITON_ATTN, baseline FLASH_ATTN")
    assert "kernel family missing" in diffs["attention_backend"].cost
    # Same logs on both sides: nothing differs.
    assert parity.differences(_arm(default), _arm(default)) == []
    # FlashInfer AOT against JIT, read from the installed packages.
    aot = _arm(default, versions={"vllm": "0.20.0", "flashinfer": "0.6.8",
                                  "flashinfer_jit_cache": "0.6.8"})
    jit = _arm(default, versions={"vllm": "0.20.0", "flashinfer": "0.6.8"})
    [fi] = [d for d in parity.differences(jit, aot) if d.key == "flashinfer"]
    assert fi.text.startswith("FlashInfer AOT / JIT differs: candidate JIT only")


def test_a_backend_the_other_build_does_not_offer_is_named_as_such() -> None:
    """Real logs of the H100 leases: our verification variant (patch 0003) at vLLM's
    defaults lists only TRITON_ATTN and FLEX_ATTENTION as potential backends and chooses
    TRITON_ATTN; the official wheel chooses FLASH_ATTN. The difference says FLASH_ATTN was
    not offered by the candidate's build, not merely ranked lower."""
    ours = (LOGS / "h100-llama8b-verify-default-0003.log").read_text()
    official = (LOGS / "h100-llama8b-official-default.log").read_text()
    facts = parity.parse_server_log(ours)
    assert facts["attention_backend"] == "TRITON_ATTN" and "attention_forced" not in facts
    assert facts["attention_candidates"] == "['TRITON_ATTN', 'FLEX_ATTENTION']"
    assert (facts["compile"], facts["cuda_graphs"]) == ("on", "on")
    [attn] = [d for d in parity.differences(_arm(ours), _arm(official))
              if d.key == "attention_backend"]
    assert attn.text == (
        "attention backend differs: candidate TRITON_ATTN, baseline FLASH_ATTN; FLASH_ATTN "
        "is not among the candidate's potential backends ['TRITON_ATTN', 'FLEX_ATTENTION']: "
        "its build does not offer it")
    # the other way round the baseline's build is the one that lacks it
    [back] = [d for d in parity.differences(_arm(official), _arm(ours))
              if d.key == "attention_backend"]
    assert back.text.endswith("FLASH_ATTN is not among the baseline's potential backends "
                              "['TRITON_ATTN', 'FLEX_ATTENTION']: its build does not offer it")
    # a forced backend lists no candidates: nothing is claimed about what a build offers
    forced = (LOGS / "h100-llama8b-ours-forced.log").read_text()
    [plain] = [d for d in parity.differences(_arm(forced), _arm(official))
               if d.key == "attention_backend"]
    assert plain.text == "attention backend differs: candidate TRITON_ATTN, baseline FLASH_ATTN"


def test_arch_coverage_of_the_gpu() -> None:
    gpu = [{"name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0"}]
    ours = _arm("", archs=["sm_90a"], gpu=gpu)
    ptx_only = _arm("", archs=["sm_80", "compute_80 (PTX)"], gpu=gpu)
    assert ours["gpu_coverage"] == "SASS sm_90a"
    assert ptx_only["gpu_coverage"] == "PTX JIT from compute_80 (no SASS for 9.0)"
    assert parity.arch_coverage(["sm_120"], "9.0") == "none: no kernel runs on 9.0"
    [d] = [d for d in parity.differences(ptx_only, ours) if d.key == "gpu_coverage"]
    assert "PTX JIT" in d.text and "minutes at load" in d.cost


# ------------------------------------------------------------------ power, --runs auto


def test_runs_needed_is_the_inverse_of_the_detectable_change() -> None:
    # Closed form: n = pi/2 (z_0.975 + z_0.8)^2 (cv_c^2 + cv_b^2) / d^2
    z = 1.959963984540054 + 0.8416212335729143
    assert stats.runs_needed(0.01, 0.01, 0.01, confidence=0.95) == math.ceil(
        math.pi / 2 * z ** 2 * 2)  # 25
    for n in (6, 12, 40):
        d = stats.detectable_change(0.01, 0.02, n, n, confidence=0.95)
        assert stats.runs_needed(0.01, 0.02, d, confidence=0.95) == n


def test_power_matches_a_simulation_of_the_gate() -> None:
    """With the runs the formula asks for, a true drop of the target is resolved (CI
    entirely below 1) in about 80 % of simulated A/Bs, by the gate's own bootstrap."""
    import numpy as np

    rng = np.random.default_rng(7)
    cv, target = 0.01, 0.01
    n = stats.runs_needed(cv, cv, target, confidence=0.95)
    sims = 200
    hits = 0
    for s in range(sims):
        base = rng.normal(100, 100 * cv, n)
        cand = rng.normal(100 * (1 - target), 100 * (1 - target) * cv, n)
        _ratio, _low, high = stats.bootstrap_ratio(cand.tolist(), base.tolist(), resamples=1000,
                                                   confidence=0.95, seed=s)
        hits += high < 1
    assert 0.68 <= hits / sims <= 0.92, hits / sims


def _empty_llama_8b_result(repo_root: Path) -> harness.AbResult:
    """An A/B of the GPU's llama-8b workload with 6 alternating rounds and no runs yet (no
    arms: the tests fill in the runs themselves)."""
    w = load_workload(repo_root / "verify" / "workloads" / "llama-8b.toml")
    result = harness.AbResult(workload=w, candidate=None, baseline=None,  # type: ignore[arg-type]
                              started="")
    result.orders = harness.round_orders(6, "alternate", 0)
    return result


def _result_with_pilot(repo_root: Path, cv: float, seconds: float) -> harness.AbResult:
    result = _empty_llama_8b_result(repo_root)
    rng = __import__("numpy").random.default_rng(1)
    for arm in ("candidate", "baseline"):
        for conc in result.workload.client.concurrency:
            # Exactly the CV wanted: values mean 100, sample std cv * 100.
            z = rng.normal(size=6)
            z = (z - z.mean()) / z.std(ddof=1)
            for rnd, x in enumerate(100 + 100 * cv * z, start=1):
                m = {k: float(x) for k in stats.GATEABLE}
                result.runs.append(harness.ArmRun(arm=arm, round=rnd, concurrency=conc,
                                                  metrics=client.RunMetrics(
                                                      concurrency=conc, num_prompts=1,
                                                      metrics=m, valid=True)))
    return result


def test_runs_auto_plans_the_runs_the_target_needs_within_the_budget(repo_root: Path) -> None:
    result = _result_with_pilot(repo_root, cv=0.01, seconds=60)
    harness._plan_auto(result, harness.AutoRuns(target=0.01, budget_s=3600), 60.0,
                       Reporter(None))
    assert result.auto is not None
    assert result.auto["runs_needed"] == stats.runs_needed(0.01, 0.01, 0.01, confidence=0.95)
    assert result.auto["runs_planned"] == 26 and result.auto["limited_by"] == "reached"
    assert len(result.orders) == 26
    firsts = [o[0] for o in result.orders]
    assert firsts.count("baseline") == firsts.count("candidate") == 13
    # A budget of 120 s at 10 s a round: the pilot (60 s) plus 6 more rounds.
    result = _result_with_pilot(repo_root, cv=0.01, seconds=60)
    harness._plan_auto(result, harness.AutoRuns(target=0.01, budget_s=120), 60.0,
                       Reporter(None))
    assert result.auto is not None
    assert result.auto["runs_planned"] == 12 and result.auto["limited_by"] == "the time budget"


def test_power_statement_in_the_report(repo_root: Path) -> None:
    result = _result_with_pilot(repo_root, cv=0.01, seconds=60)
    harness._decide(result)
    lines = report.power_lines(result)
    mde = stats.detectable_change(0.01, 0.01, 6, 6, confidence=0.95)
    row = next(line for line in lines if line.startswith("| 1 | Output token throughput"))
    assert f"±{mde:.2%}" in row and f"{0.03 + mde:.2%} (threshold 3.0%" in row


# ------------------------------------------------------------------ start failures


def test_a_build_without_flash_attention_is_named_when_its_server_dies_at_start(
        tmp_path: Path) -> None:
    """Real log lines (H100, 2026-12-07): our verification variant at vLLM 0.20.0's
    defaults chose FLASH_ATTN, which it lacks, and died. The venv: arm's server here is a
    STAND-IN `bin/vllm` that prints those lines and exits 1 (no GPU here); the harness must
    say why, not only show the log's tail."""
    text = (LOGS / "h100-llama8b-verify-default-fails.log").read_text()
    why = parity.start_failure(text)
    assert why and "no vllm-flash-attn kernels" in why and "TRITON_ATTN" in why, why
    assert parity.start_failure(
        (LOGS / "h100-llama8b-ours-forced.log").read_text()) is None  # a healthy start
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    vllm = venv / "bin" / "vllm"
    vllm.write_text(f"#!/bin/sh\ncat '{LOGS / 'h100-llama8b-verify-default-fails.log'}'\n"
                    "exit 1\n")
    vllm.chmod(0o755)
    w = load_workload(_workload_file(tmp_path, "alternate"))
    arm = arms.make_arm("candidate", arms.parse_arm_spec(f"venv:{venv}"), w)
    with pytest.raises(CouldNotRunError) as info:
        arm.start(Reporter(None), tmp_path / "server.log")
    assert "exited with code 1" in info.value.what
    assert "no vllm-flash-attn kernels" in info.value.why, info.value.why


# ------------------------------------------------------------------ round order


def test_round_orders_are_balanced_and_seeded() -> None:
    assert harness.round_orders(4, "alternate", 0) == [
        ("baseline", "candidate"), ("candidate", "baseline")] * 2
    assert harness.round_orders(3, "fixed", 0) == [("baseline", "candidate")] * 3
    rnd = harness.round_orders(10, "random", 5)
    assert rnd == harness.round_orders(10, "random", 5) != harness.round_orders(10, "random", 6)
    assert [o[0] for o in rnd].count("baseline") == 5


@contextmanager
def _streaming_server(name: str, delay: object, **timing: object) -> Iterator[str]:
    spec = importlib.util.spec_from_file_location("standin_vllm", STANDIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with serve_on_loopback(module.make_handler(name, delay, **timing)) as url:
        yield url


def _workload_file(tmp_path: Path, order: str, **gate: float) -> Path:
    model = word_level_model(tmp_path / "model")
    g = {"throughput_drop": 0.03, "latency_rise": 0.025, "max_cv": 0.5, **gate}
    path = tmp_path / f"wl-{order}.toml"
    path.write_text(
        f'name = "order"\nmodel = "{model}"\nserved_model_name = "m"\n[client]\n'
        f'input_len = 4\noutput_len = 12\nnum_prompts = 3\nconcurrency = [1]\n'
        f'warmup_prompts = 1\nruns = 6\norder = "{order}"\n[gate]\n'
        + "".join(f"{k} = {v}\n" for k, v in g.items())
        + 'metrics = ["output_throughput"]\nbootstrap_resamples = 2000\n')
    return path


def test_a_planted_order_effect_no_longer_moves_the_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real streaming servers of the same speed on loopback; whichever arm runs second
    in its round is slowed five-fold (the order effect, planted through the round's
    position). Baseline-first order calls the same speed a regression; the alternating
    order does not, and the report measures the effect instead."""
    state = {"position": 1}
    original = harness._one_round

    def one_round(result, arm, round_no, position, *args, **kwargs):  # type: ignore[no-untyped-def]
        state["position"] = position
        return original(result, arm, round_no, position, *args, **kwargs)

    monkeypatch.setattr(harness, "_one_round", one_round)
    delay = lambda: 0.010 if state["position"] == 2 else 0.002  # noqa: E731
    verdicts = {}
    with _streaming_server("m", delay) as url_a, _streaming_server("m", delay) as url_b:
        for order in ("fixed", "alternate"):
            (tmp_path / order).mkdir()
            w = load_workload(_workload_file(tmp_path / order, order))
            cand = arms.make_arm("candidate", arms.parse_arm_spec(f"url:{url_a}"), w)
            base = arms.make_arm("baseline", arms.parse_arm_spec(f"url:{url_b}"), w)
            result = harness.run_ab(w, cand, base, reporter=Reporter(None),
                                    server_logs=tmp_path / order / "servers")
            out = next(m for m in result.comparisons[1] if m.metric == "output_throughput")
            verdicts[order] = (result.verdict, out.change, harness.order_effect(result, 1),
                               out.ci_low <= 1.0 <= out.ci_high)
    fixed, alternate = verdicts["fixed"], verdicts["alternate"]
    assert fixed[0] == "regression" and fixed[1] < -0.4, verdicts
    # Balanced: the effect lands on both arms as spread (each arm half fast, half slow),
    # so the CI holds "no change" and the verdict is no regression.
    assert alternate[0] != "regression" and alternate[3], verdicts
    assert alternate[2] is not None and alternate[2] < -0.4, verdicts  # measured, not hidden


def test_a_burn_in_keeps_a_fresh_servers_slow_first_minute_out_of_the_runs(
        tmp_path: Path) -> None:
    """A real streaming server on loopback, ten times slower for its first 1.5 s of load
    (planted: an H100 A/A measured a fresh vLLM server's TTFT 5-20 % higher for about its
    first minute, verify/results/2026-12-07-ab-official/). One server as both arms (an
    A/A). Without a burn-in the slow start lands in the first measured runs and the spread
    makes the verdict inconclusive; with burn_in_s = 2 it is spent before round 1, once for
    the one server, and the A/A passes."""
    outcomes = {}
    for burn_in in (0.0, 2.0):
        def delay(first: list[float] = []) -> float:  # noqa: B006 - one server's clock
            now = time.monotonic()
            if not first:
                first.append(now)
            return 0.04 if now - first[0] < 1.5 else 0.004

        (tmp_path / str(burn_in)).mkdir()
        wl_path = _workload_file(tmp_path / str(burn_in), "alternate", max_cv=0.2,
                                 throughput_drop=0.3)
        text = wl_path.read_text().replace("order = ", f"burn_in_s = {burn_in}\norder = ")
        wl_path.write_text(text)
        w = load_workload(wl_path)
        assert w.client.burn_in_s == burn_in
        with _streaming_server("m", delay) as url:
            cand = arms.make_arm("candidate", arms.parse_arm_spec(f"url:{url}"), w)
            base = arms.make_arm("baseline", arms.parse_arm_spec(f"url:{url}"), w)
            result = harness.run_ab(w, cand, base, reporter=Reporter(None),
                                    server_logs=tmp_path / str(burn_in) / "servers")
        out = next(m for m in result.comparisons[1] if m.metric == "output_throughput")
        outcomes[burn_in] = (result.verdict, max(out.cv_candidate, out.cv_baseline),
                             result.burn_ins)
    (slow_verdict, slow_cv, none), (verdict, cv, burn_ins) = outcomes[0.0], outcomes[2.0]
    assert slow_verdict == "inconclusive" and slow_cv > 0.3 and none == [], outcomes
    assert verdict == "pass" and cv < 0.2, outcomes
    assert len(burn_ins) == 1 and burn_ins[0]["seconds"] >= 2.0, burn_ins  # one server


# ------------------------------------------------------------------ planted regressions


@contextmanager
def _standin(tmp_path: Path, name: str, *args: str) -> Iterator[tuple[str, Path]]:
    port = arms.free_port()
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(STANDIN), "serve", "model", "--port",
                                 str(port), "--served-model-name", "m", *args],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={"STANDIN_TOKEN_MS": "2", "PATH": "/usr/bin:/bin"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()  # noqa: S310
                break
            except OSError:
                time.sleep(0.1)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(("candidate_args", "baseline_args", "explanation"), [
    (["--attention-backend", "TRITON_ATTN", "--enforce-eager"],
     ["--attention-backend", "TRITON_ATTN"], "- CUDA graphs off on candidate — likely cost:"),
    (["--attention-backend", "TRITON_ATTN"], [],
     "- attention backend differs: candidate TRITON_ATTN, baseline FLASH_ATTN — likely cost:"),
])
def test_planted_regressions_exit_11_with_their_explanation(
        repo_root: Path, tmp_path: Path, candidate_args: list[str], baseline_args: list[str],
        explanation: str) -> None:
    """The STAND-IN vLLM (no GPU here) logs what vLLM 0.20.0 logs for these settings and
    slows as they would; the CLI must exit 11 and name the cause before the numbers."""
    wl = _workload_file(tmp_path, "alternate")
    with _standin(tmp_path, "cand", *candidate_args) as (cand, cand_log), \
            _standin(tmp_path, "base", *baseline_args) as (base, base_log):
        proc = subprocess.run(
            [sys.executable, "-m", "vllm_wheels", "verify-throughput", "--workload", str(wl),
             "--candidate", f"url:{cand}", "--baseline", f"url:{base}",
             "--candidate-log", str(cand_log), "--baseline-log", str(base_log),
             "--results-dir", str(tmp_path / "results")],
            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 11, proc.stdout[-2000:] + proc.stderr[-3000:]
    [out_dir] = (tmp_path / "results").iterdir()
    text = (out_dir / "report.md").read_text()
    head = text[:text.index("- concurrency 1:")]  # before the numbers
    assert explanation in head, text[:1500]
    doc = json.loads((out_dir / "result.json").read_text())
    assert doc["verdict"] == "regression" and doc["parity"]["differences"]


# ------------------------------------------------------------------ cross-check


def test_bench_command_and_result(repo_root: Path, tmp_path: Path) -> None:
    w = load_workload(repo_root / "verify" / "workloads" / "llama-8b.toml")
    argv = crosscheck.bench_command(Path("/venv"), "http://127.0.0.1:8100", "llama-8b", w, 16,
                                    tmp_path, "r.json")
    assert argv[:3] == ["/venv/bin/vllm", "bench", "serve"]
    pairs = dict(zip(argv[3::], argv[4::], strict=False))
    assert pairs["--dataset-name"] == "random" and pairs["--random-range-ratio"] == "0"
    assert pairs["--random-input-len"] == "256" and pairs["--random-output-len"] == "96"
    assert pairs["--num-prompts"] == "128" and pairs["--max-concurrency"] == "16"
    assert pairs["--served-model-name"] == "llama-8b" and pairs["--endpoint"] == "/v1/completions"
    assert "--ignore-eos" in argv and "--save-result" in argv
    # The keys of vLLM 0.20.0's result JSON (benchmarks/serve.py), values of a real shape.
    (tmp_path / "r.json").write_text(json.dumps({
        "date": "20260101-000000", "backend": "openai", "duration": 10.0, "completed": 16,
        "failed": 0, "total_input_tokens": 4096, "total_output_tokens": 1536,
        "request_throughput": 1.6, "request_goodput": None, "output_throughput": 153.6,
        "total_token_throughput": 563.2, "median_ttft_ms": 20.1, "median_itl_ms": 6.4,
        "num_prompts": 16, "max_concurrency": 16, "input_lens": [256] * 16}))
    bench = crosscheck.parse_result(tmp_path / "r.json")
    assert bench["output_throughput"] == 153.6 and bench["completed"] == 16
    assert crosscheck.compare(150.0, 153.6)["agree"] is False  # +2.4 %
    assert crosscheck.compare(151.0, 153.6)["agree"] is True  # +1.7 %


def test_cross_check_runs_the_bench_against_url_arms(repo_root: Path, tmp_path: Path) -> None:
    """The STAND-IN's `vllm bench serve` against a stand-in server: the report line."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "vllm").write_text(f"#!/bin/sh\nexec {sys.executable} {STANDIN} \"$@\"\n")
    (venv / "bin" / "vllm").chmod(0o755)
    wl = _workload_file(tmp_path, "alternate", throughput_drop=0.5)
    with _standin(tmp_path, "a") as (url, log):
        proc = subprocess.run(
            [sys.executable, "-m", "vllm_wheels", "verify-throughput", "--workload", str(wl),
             "--candidate", f"url:{url}", "--baseline", f"url:{url}",
             "--cross-check-venv", str(venv), "--results-dir", str(tmp_path / "results")],
            cwd=repo_root, capture_output=True, text=True, timeout=300)
    [out_dir] = (tmp_path / "results").iterdir()
    doc = json.loads((out_dir / "result.json").read_text())
    assert {(c["arm"], c["concurrency"]) for c in doc["cross_check"]} == {
        ("baseline", 1), ("candidate", 1)}, proc.stderr[-2000:]
    assert all("bench_output_throughput" in c for c in doc["cross_check"]), doc["cross_check"]
    assert "vllm bench serve" in (out_dir / "report.md").read_text()


# ------------------------------------------------------------------ anchor


def test_weight_bytes_of_known_models() -> None:
    llama = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys; sys.path.insert(0, 'verify/gpu');"
         "import make_model; print(json.dumps(make_model.config('llama-8b')))"],
        capture_output=True, text=True, check=True,
        cwd=Path(__file__).parents[2]).stdout)
    wb = anchor.weight_bytes(llama)
    assert round(wb.total_params / 1e9, 2) == 8.03  # Llama 3 8B
    # Per token: every linear weight and lm_head in bf16, one embedding row.
    assert wb.bytes_per_token == 2 * (wb.total_params - 128256 * 4096 + 4096)
    fp8 = anchor.weight_bytes(llama, fp8=True)
    assert fp8.bytes_per_token == wb.bytes_per_token - (wb.total_params - 2 * 128256 * 4096
                                                        - 65 * 4096)
    # Mixtral 8x7B: 46.7 B params, 12.9 B active per token (its model card).
    mixtral = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "vocab_size": 32000, "intermediate_size": 14336,
               "num_local_experts": 8, "num_experts_per_tok": 2}
    m = anchor.weight_bytes(mixtral)
    assert round(m.total_params / 1e9, 1) == 46.7 and round(m.active_params / 1e9, 1) == 12.9


def test_anchor_share_of_the_bandwidth_ceiling(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 1000, "num_hidden_layers": 1, "num_attention_heads": 10,
        "vocab_size": 1000, "intermediate_size": 1000, "tie_word_embeddings": True}))
    a = anchor.anchor(tmp_path, (), "NVIDIA H100 80GB HBM3", 100.0)
    # attn 4e6 + mlp 3e6 linear, norms 2e3 + 1e3, embedding row 1e3 + lm_head 1e6 (tied)
    assert a["bytes_per_token"] == 2 * (7_000_000 + 3_000 + 1_000 + 1_000_000)
    assert a["ceiling_tok_s"] == pytest.approx(3.35e12 / a["bytes_per_token"])
    assert a["share"] == pytest.approx(100.0 / a["ceiling_tok_s"])
    assert anchor.bandwidth("NVIDIA H100 PCIe")[0] == 2.0e12  # type: ignore[index]
    assert anchor.bandwidth("NVIDIA H200")[0] == 4.8e12  # type: ignore[index]
    assert anchor.bandwidth("NVIDIA GeForce RTX 5090")[0] == 1.792e12  # type: ignore[index]
    assert anchor.bandwidth("NVIDIA A100-SXM4-80GB")[0] == 2.039e12  # type: ignore[index]
    assert anchor.bandwidth("NVIDIA L40S")[0] == 0.864e12  # type: ignore[index]
    assert "error" in anchor.anchor(tmp_path, (), "Tesla T4", 100.0)


# ------------------------------------------------------------------ issue 23 item 12


def test_short_outputs_count_without_ignore_eos() -> None:
    short = [client.RequestRecord(success=True, output_tokens=n, ttft=0.01, latency=0.1)
             for n in (5, 12)]
    assert client.run_problems(short, 12, ignore_eos=False) == []
    assert "short or truncated" in client.run_problems(short, 12, ignore_eos=True)[0]
    long = [client.RequestRecord(success=True, output_tokens=13)]
    assert client.run_problems(long, 12, ignore_eos=False)  # more than asked: wrong
    metrics = client.compute_metrics(short, 1.0, input_len=4)
    assert metrics["total_output_tokens"] == 17  # counted as vLLM's bench counts them


# ------------------------------------------------------------------ why the runs spread


def _result_ttft_noise(repo_root: Path, itl_cv: float) -> harness.AbResult:
    """Runs like the H100 leases 3 and 4 of 2026-12-07: per-request TTFTs of 23-40 ms (std
    about 5 ms within a run, medians 24-38 ms run to run) while output tok/s and ITL stay
    put (ITL_CV sets the decode's run-to-run spread)."""
    result = _empty_llama_8b_result(repo_root)
    rng = __import__("numpy").random.default_rng(7)
    for arm in ("candidate", "baseline"):
        for conc in result.workload.client.concurrency:
            for rnd in range(1, 7):
                ttfts = [float(x) for x in 0.023 + rng.gamma(2.0, 0.004, size=16)]
                m = {k: 100.0 for k in stats.GATEABLE}
                m["output_throughput"] = 156.0 * (1 + 0.002 * rng.normal())
                m["median_ttft_ms"] = float(__import__("numpy").median(ttfts)) * 1e3
                m["median_itl_ms"] = 6.12 * (1 + itl_cv * rng.normal())
                result.runs.append(harness.ArmRun(
                    arm=arm, round=rnd, concurrency=conc, ttfts=ttfts,
                    metrics=client.RunMetrics(concurrency=conc, num_prompts=16, metrics=m,
                                              valid=True)))
    harness._decide(result)
    result.candidate = result.baseline = _FactsOnly()  # type: ignore[assignment]
    return result


class _FactsOnly:
    """Stand-in for an arm whose server is gone: the report reads only its facts."""

    def facts(self) -> dict[str, object]:
        return {"spec": "url:http://127.0.0.1:8100", "served_model": "llama-8b"}


def test_a_ttft_spread_with_a_steady_decode_is_named_as_the_time_before_the_first_token(
        repo_root: Path) -> None:
    result = _result_ttft_noise(repo_root, itl_cv=0.0005)
    assert result.verdict == "inconclusive"
    diagnosis = report.spread_diagnosis(result)
    assert [d["concurrency"] for d in diagnosis] == [1, 16]
    assert all(4.0 < d["within_run_ttft_std_ms"] < 8.0 for d in diagnosis)
    lines = report.spread_lines(result)
    assert "the spread is in the time before the first token" in lines[0]
    assert "not either build's kernels" in lines[0]
    text = report.markdown(result)
    assert text.index("Why the runs spread:") < text.index("- workload `llama-8b.toml`")
    assert report.to_json(result)["spread"] == diagnosis
    # When the decode spreads as well, there is no single place to name: no diagnosis.
    noisy = _result_ttft_noise(repo_root, itl_cv=0.03)
    assert report.spread_diagnosis(noisy) == [] and "Why the runs spread" not in \
        report.markdown(noisy)


# ------------------------------------------------------------------ prompts per concurrency


def test_prompts_per_concurrency_makes_a_concurrent_run_more_than_one_burst(
        repo_root: Path, tmp_path: Path) -> None:
    """With num_prompts = concurrency a run is one burst (every H100 lease: median TTFT CV
    4-9 % at concurrency 16, quiet host or not). `prompts_per_concurrency` sends at least
    that many prompts per slot: a real streaming server on loopback receives them, the
    report names the count, and the cross-check's `vllm bench serve` gets the same."""
    wl_path = _workload_file(tmp_path, "alternate", max_cv=0.5, throughput_drop=0.5)
    wl_path.write_text(wl_path.read_text()
                       .replace("concurrency = [1]", "concurrency = [1, 2]")
                       .replace("order = ", "prompts_per_concurrency = 4\norder = "))
    w = load_workload(wl_path)
    assert (w.client.prompts_at(1), w.client.prompts_at(2)) == (4, 8)  # num_prompts 3
    served: list[float] = []

    def delay() -> float:
        served.append(time.monotonic())
        return 0.001

    with _streaming_server("m", delay) as url:
        cand = arms.make_arm("candidate", arms.parse_arm_spec(f"url:{url}"), w)
        base = arms.make_arm("baseline", arms.parse_arm_spec(f"url:{url}"), w)
        result = harness.run_ab(w, cand, base, reporter=Reporter(None),
                                server_logs=tmp_path / "servers")
    sent = {conc: {r.metrics.num_prompts for r in result.runs if r.concurrency == conc}
            for conc in (1, 2)}
    assert sent == {1: {4}, 2: {8}}, sent
    assert all(r.metrics.valid for r in result.runs)
    assert "3 prompts (4 at concurrency 1) (8 at concurrency 2)" in report.markdown(result)
    argv = crosscheck.bench_command(Path("/venv"), url, "m", w, 2, tmp_path, "b.json")
    assert argv[argv.index("--num-prompts") + 1] == "8"
    # the official workloads use it: 128 prompts at concurrency 16
    gpu = load_workload(repo_root / "verify" / "workloads" / "llama-8b.toml")
    assert (gpu.client.prompts_at(1), gpu.client.prompts_at(16)) == (16, 128)
    bad = wl_path.read_text().replace("prompts_per_concurrency = 4",
                                      "prompts_per_concurrency = -1")
    wl_path.write_text(bad)
    with pytest.raises(ConfigError, match="prompts_per_concurrency must be >= 0"):
        load_workload(wl_path)


def test_vllms_own_metrics_say_whether_the_ttft_spread_is_inside_the_server(
        tmp_path: Path) -> None:
    """The stand-in vLLM server (named as one: no GPU here) exports vLLM's TTFT, queue and
    prefill histograms on /metrics, as vLLM 0.20.0 names them. Planted once in the request
    path before the engine (HTTP, tokenization: the client's TTFT sees it, vLLM's does
    not), once in the prefill (both see it). The harness scrapes /metrics around every run
    and the report says on which side of vLLM's arrival stamp the spread is."""
    import random

    rng = random.Random(3)
    jitter = lambda: rng.uniform(0.0, 0.15)  # noqa: E731
    steady = lambda: 0.004  # noqa: E731
    texts = {}
    # a steady 50 ms prefill where the request path jitters, so that a loaded test host's
    # own millisecond of scheduling noise stays small beside vLLM's TTFT
    for where, timing in (("request path", {"request_path": jitter, "prefill": lambda: 0.05}),
                          ("prefill", {"prefill": jitter})):
        (tmp_path / where).mkdir()
        wl_path = _workload_file(tmp_path / where, "alternate", max_cv=0.1,
                                 throughput_drop=0.9)
        w = load_workload(wl_path)
        with _streaming_server("m", steady, **timing) as url:
            cand = arms.make_arm("candidate", arms.parse_arm_spec(f"url:{url}"), w)
            base = arms.make_arm("baseline", arms.parse_arm_spec(f"url:{url}"), w)
            result = harness.run_ab(w, cand, base, reporter=Reporter(None),
                                    server_logs=tmp_path / where / "servers")
        assert all(r.server_ms and set(r.server_ms) == {"ttft", "queue", "prefill"}
                   for r in result.runs), [r.server_ms for r in result.runs]
        [d] = report.spread_diagnosis(result)
        assert set(d["server"]) == {"candidate", "baseline"}
        texts[where] = report.spread_lines(result)[0]
        assert report.to_json(result)["runs"][0]["server_ms"]["ttft"] > 0
    assert "outside vLLM's engine and output path" in texts["request path"], texts
    assert "inside the server: vLLM's own TTFT spreads as well" in texts["prefill"], texts
    # and, where vLLM's prefill time spreads, which step and what to do about it
    assert "in the engine's prefill step" in texts["prefill"], texts
    assert "longer prompts make it GPU-bound" in texts["prefill"], texts
    assert "prefill step" not in texts["request path"], texts
