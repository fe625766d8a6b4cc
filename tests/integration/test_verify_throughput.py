"""verify_throughput end to end against real OpenAI-compatible servers on the CPU.

CI has no GPU and no Docker engine, so the vLLM arms cannot run here. The harness, the
client and the decision are exercised against `transformers serve` (transformers' own
FastAPI/uvicorn server, which has POST /v1/completions with streaming and /health),
each process serving a tiny GPT-2 with random weights and a tokenizer trained on the
spot, as url: arms. Nothing is faked: real processes, real HTTP on loopback, real tokens.

Differences from a GPU A/B, on purpose and named:
  * transformers serve answers 422 to `ignore_eos`, so the workload sets ignore_eos =
    false and the models have no EOS token (every answer is exactly max_tokens long);
  * it sends several tokens per network read at times, so ITL has many zero gaps; and
    TTFT on these tiny models is a few ms with 20-30 % spread under load, so the test
    workload gates on throughput only (TTFT/ITL are reported; latency gating is checked
    with exact numbers in tests/unit);
  * a shared 2-core CI machine is far noisier than an idle GPU (run-to-run CV 5-15 %
    measured here), so the test workload's tolerances are wide (50 %); the decision rule
    itself is the same and is checked with exact numbers in tests/unit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.network  # the server venv comes from PyPI (torch from local disk)

MAKE_MODEL = Path(__file__).parents[1] / "fixtures" / "throughput" / "make_tiny_model.py"


@pytest.fixture(scope="module")
def server_venv(torch_cpu_213: Path) -> Path:
    """transformers' OpenAI-compatible server on torch 2.13.0 CPU: conftest's runtime venv
    (python -m venv + pip, whose config serves the CPU torch from local disk)."""
    return torch_cpu_213.parent.parent


@pytest.fixture(scope="module")
def models(server_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    shapes = {
        "tiny": (32, 2, 1024),
        # ~100x the tiny one's weights: the "slower arm" (a larger model; ~4-6x slower
        # per token here).
        "large": (384, 8, 1024),
        # n_positions 24: a 16-token prompt can get only 8 tokens before the learned
        # position table runs out; the server then errors mid-stream (a model with a
        # small max length, the real cause of the invalid-run test).
        "short": (32, 2, 24),
    }
    out = {}
    for name, (n_embd, n_layer, n_pos) in shapes.items():
        path = root / name
        subprocess.run([str(server_venv / "bin" / "python"), str(MAKE_MODEL), str(path),
                        str(n_embd), str(n_layer), str(n_pos)], check=True,
                       capture_output=True)
        out[name] = path
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, venv: Path, model: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("wb")
        # One torch thread: two cores are shared with the client and the other server.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "transformers"), "serve", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--device", "cpu"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"transformers serve did not start: {log.read_text()[-3000:]}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def servers(server_venv: Path, models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("server-logs")
    started: dict[str, Server] = {}
    try:
        # Two separate processes serving the same model: the "equal arms".
        for name, model in (("a", "tiny"), ("b", "tiny"), ("large", "large"),
                            ("short", "short")):
            started[name] = Server(server_venv, models[model], logs / f"{name}.log")
        yield started
    finally:
        for server in started.values():
            server.stop()


def _workload(tmp_path: Path, model: Path, engine: dict[str, object] | None = None,
              **client: object) -> Path:
    settings = {"input_len": 16, "output_len": 48, "num_prompts": 16, "concurrency": [1, 4],
                "warmup_prompts": 2, "runs": 5, "ignore_eos": False, **client}
    lines = ['name = "cpu-tiny"', f'model = "{model}"', f'served_model_name = "{model}"',
             "[client]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    if engine:
        lines.append("[engine]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in engine.items()]
    lines += ["[gate]", "throughput_drop = 0.5", "latency_rise = 0.5", "max_cv = 0.5",
              'metrics = ["output_throughput", "total_token_throughput"]',
              "bootstrap_resamples = 2000"]
    path = tmp_path / "cpu-tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def _ab(repo_root: Path, tmp_path: Path, workload: Path, candidate: str, baseline: str
        ) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "vllm_wheels", "verify-throughput", "--workload", str(workload),
         "--candidate", candidate, "--baseline", baseline, "--results-dir", str(results)],
        cwd=repo_root, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-3000:], proc.stderr[-6000:])
    out_dirs = sorted(results.iterdir())
    # One report directory, and no hidden full log or server logs left beside it.
    assert len(out_dirs) == 1 and not out_dirs[0].name.startswith("."), out_dirs
    return proc, json.loads((out_dirs[0] / "result.json").read_text()), out_dirs[0]


def test_equal_arms_pass(repo_root: Path, tmp_path: Path, models: dict[str, Path],
                         servers: dict[str, Server]) -> None:
    workload = _workload(tmp_path, models["tiny"])
    proc, result, out = _ab(repo_root, tmp_path, workload, f"url:{servers['a'].url}",
                            f"url:{servers['b'].url}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["schema_version"] == 1
    assert result["verdict"] == "pass"
    # Interleaved in ABBA order (the arm that runs first alternates per round, so an order
    # effect cannot become a bias); the workload's 5 runs per arm round up to 6 (an even
    # count balances the order), every one valid: no failures, exactly output_len tokens.
    order = [(r["round"], r["arm"]) for r in result["runs"] if r["concurrency"] == 1]
    assert order == [(n, arm) for n in range(1, 7)
                     for arm in (("baseline", "candidate") if n % 2 else ("candidate", "baseline"))]
    for run in result["runs"]:
        assert run["valid"] and run["failed"] == 0
        assert run["total_output_tokens"] == 16 * 48
        # The client's own prompt lengths (as vLLM's bench), exactly input_len each.
        assert run["total_input_tokens"] == 16 * 16
    assert len(result["warmups"]) == 12  # one per arm per round, 6 rounds
    assert [c["verdict"] for c in result["cells"]] == ["pass", "pass"]
    report = (out / "report.md").read_text()
    assert report.startswith("# Throughput A/B: cpu-tiny — **PASS**")
    assert "## cpu-tiny, concurrency 4: pass" in report
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Progress on the console: arm, run, request count, ETA.
    assert "candidate run 6/6 concurrency 4: 16/16 requests, A/B ETA" in proc.stderr


def test_larger_model_is_a_regression_with_its_ci(repo_root: Path, tmp_path: Path,
                                                  models: dict[str, Path],
                                                  servers: dict[str, Server]) -> None:
    workload = _workload(tmp_path, models["tiny"], concurrency=[2])
    proc, result, out = _ab(repo_root, tmp_path, workload, f"url:{servers['large'].url}",
                            f"url:{servers['a'].url}")
    assert proc.returncode == 11, proc.stderr[-3000:]  # ThroughputRegressionError
    assert result["verdict"] == "regression"
    metric = next(m for m in result["cells"][0]["metrics"] if m["metric"] == "output_throughput")
    low, high = metric["ci"]
    assert metric["verdict"] == "regression"
    assert high < 1 - 0.5 and low <= metric["ratio"] <= high
    assert "Output token throughput" in proc.stderr and "95% CI [" in proc.stderr
    assert any("different model names" in n for n in result["notes"])
    assert "**REGRESSION**" in (out / "report.md").read_text().splitlines()[0]


def test_erroring_or_rejecting_server_makes_the_run_invalid(
        repo_root: Path, tmp_path: Path, models: dict[str, Path],
        servers: dict[str, Server]) -> None:
    # A model whose position table ends mid-answer: the server errors inside the stream.
    workload = _workload(tmp_path, models["tiny"])
    proc, result, _out = _ab(repo_root, tmp_path, workload, f"url:{servers['short'].url}",
                             f"url:{servers['a'].url}")
    assert proc.returncode == 13, proc.stderr[-3000:]  # CouldNotRunError
    assert result["verdict"] == "could-not-run"
    assert "candidate" in result["problems"][0]
    assert "index out of range" in result["problems"][0]
    assert not any(r["arm"] == "candidate" for r in result["runs"])  # never averaged in

    # The same server asked for ignore_eos (vLLM's flag): HTTP 422 on every request.
    workload = _workload(tmp_path, models["tiny"], ignore_eos=True)
    (tmp_path / "results").rename(tmp_path / "results-1")
    proc, result, _out = _ab(repo_root, tmp_path, workload, f"url:{servers['a'].url}",
                             f"url:{servers['b'].url}")
    assert proc.returncode == 13
    assert "HTTP 422" in result["problems"][0] and "ignore_eos" in result["problems"][0]


# STAND-IN for vLLM's `vllm` command: no vLLM server runs without a GPU. It takes the
# `vllm serve MODEL ... --host H --port P` line the venv arm builds, prints it (so the test
# can read what the harness passed), and becomes transformers' server on that port.
STANDIN_VLLM = """#!{python}
import os, sys
args = sys.argv[1:]
print("stand-in vllm argv:", " ".join(args), "| OMP_NUM_THREADS=" +
      os.environ.get("OMP_NUM_THREADS", "-"), flush=True)
assert args[0] == "serve", args
host, port = args[args.index("--host") + 1], args[args.index("--port") + 1]
os.execv({transformers!r}, [{transformers!r}, "serve", args[1], "--host", host,
                            "--port", port, "--device", "cpu"])
"""


def _standin_vllm_venv(server_venv: Path, where: Path) -> Path:
    """A real venv (python -m venv) layered over the server venv through a .pth file, as
    verify_abi layers its runtime venv, with the stand-in `vllm` in its bin/."""
    venv = where / "standin-vllm-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    server_site = next((server_venv / "lib").glob("python3*/site-packages"))
    (site / "server-venv.pth").write_text(f"{server_site}\n")
    script = venv / "bin" / "vllm"
    script.write_text(STANDIN_VLLM.format(python=venv / "bin" / "python",
                                          transformers=str(server_venv / "bin" / "transformers")))
    script.chmod(0o755)
    return venv


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        if text in args:
            found.append(args)
    return found


def test_venv_arms_get_a_fresh_server_each_round_and_stop_it(
        repo_root: Path, tmp_path: Path, models: dict[str, Path], server_venv: Path) -> None:
    """The arm users run for our wheels (`venv:`), whose server the harness starts and
    stops itself: one fresh server per arm per round, the workload's engine settings on
    its command line and in its environment, facts read from the venv, nothing left
    running."""
    venv = _standin_vllm_venv(server_venv, tmp_path)
    workload = _workload(tmp_path, models["tiny"], concurrency=[2], num_prompts=8,
                         output_len=16, warmup_prompts=1,
                         engine={"args": ["--max-model-len", "64"],
                                 "env": {"OMP_NUM_THREADS": "1"}})
    proc, result, out = _ab(repo_root, tmp_path, workload, f"venv:{venv}", f"venv:{venv}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["verdict"] == "pass"
    logs = sorted(p.name for p in (out / "servers").iterdir())
    assert logs == sorted(f"{arm}-round{n}.log" for arm in ("baseline", "candidate")
                          for n in range(1, 7))  # 5 runs round up to 6 (ABBA balance)
    model = models["tiny"]
    ports = []
    for name in logs:
        text = (out / "servers" / name).read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("stand-in vllm argv:"))
        assert line.startswith(f"stand-in vllm argv: serve {model} --served-model-name {model}"
                               " --host 127.0.0.1 --port "), line
        assert line.endswith("--load-format dummy --seed 0 --no-enable-prefix-caching "
                             "--max-model-len 64 | OMP_NUM_THREADS=1"), line
        ports.append(line.split(" --port ")[1].split()[0])
    arm = result["arms"]["candidate"]
    assert arm["kind"] == "venv" and arm["versions"]["torch"].startswith("2.13.0")
    assert str(venv / "bin" / "vllm") in arm["command"]
    # Every server was stopped with its process group: none is left behind (the module's
    # url: servers serve the same model, so the stand-ins are told apart by their ports).
    assert len(set(ports)) >= 2
    for port in set(ports):
        assert _processes_mentioning(f"--port {port} --device cpu") == [], port
