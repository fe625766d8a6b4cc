"""verify_throughput: A/B the custom wheels against the vllm/vllm-openai nightly image.

    workload.py  TOML workloads (verify/workloads/*.toml) -> frozen Workload
    arms.py      the two servers: venv:PATH, image:REF, url:http://HOST:PORT
    client.py    built-in streaming client; metrics defined as in `vllm bench serve`
    stats.py     median ratios, bootstrap confidence intervals, the decision
    harness.py   warm-up, balanced round order (ABBA / seeded random), --runs auto
    parity.py    what each server chose (its log lines), archs vs the GPU, differences
    crosscheck.py  `vllm bench serve` against the same url: server, compared
    anchor.py    single-stream tok/s against the GPU's memory-bandwidth ceiling
    report.py    JSON, markdown and PNG under verify/results/<stamp>-<workload>/
    ../cli_throughput.py  `python -m vllm_wheels verify-throughput` (nox -s verify_throughput)
"""
