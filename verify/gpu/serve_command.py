"""Prints the `vllm serve` command line the throughput harness would give a venv: arm for a
workload, as one shell line (`env -u PYTHONPATH K=V ... VENV/bin/vllm serve ...`; with
--lines one argument per line, for bash's mapfile), so a
script that starts servers itself (verify/gpu/ab_official.sh, url: arms) starts exactly
what the harness would. Extra arguments are appended (e.g. --enforce-eager for a planted
regression). Run with the repository's src/ on PYTHONPATH:

    python verify/gpu/serve_command.py [--lines] VENV WORKLOAD.toml MODEL_DIR PORT [EXTRA_ARG ...]
"""

import shlex
import sys
from pathlib import Path

from vllm_wheels.verify.throughput.arms import VenvArm, parse_arm_spec
from vllm_wheels.verify.throughput.workload import load_workload


def command(venv: str, workload: str, model: str, port: str, *extra: str) -> list[str]:
    w = load_workload(Path(workload)).with_overrides(model=Path(model))
    argv, env = VenvArm("server", parse_arm_spec(f"venv:{venv}"), w).command(int(port))
    unset = [x for k, v in sorted(env.items()) if v is None for x in ("-u", k)]
    assign = [f"{k}={v}" for k, v in sorted(env.items()) if v is not None]
    return ["env", *unset, *assign, *argv, *extra]


if __name__ == "__main__":
    args = sys.argv[1:]
    lines = args[:1] == ["--lines"]  # one argument per line, for bash's mapfile
    if lines:
        args = args[1:]
    if len(args) < 4:
        raise SystemExit(__doc__)
    argv = command(*args)
    print("\n".join(argv) if lines else shlex.join(argv))
