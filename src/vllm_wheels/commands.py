"""The command registry: command name -> (module implementing it, one-line help).

Each module provides `add_arguments(parser)` and `run(args) -> int`; `cli.main` imports
only the module of the command it runs. A nox session `x_y` runs the command `x-y`.
"""

from __future__ import annotations

# command -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "runtime-image": ("vllm_wheels.images.cli_runtime",
                      "build the runtime image (our wheels + exact torch, ABI-checked, vllm serve)"),
    "update-images": ("vllm_wheels.images.cli_update",
                      "look up and record base image digests; sync Dockerfile ARG defaults"),
    "check-images": ("vllm_wheels.images.cli_check",
                     "fail when docker/ and the stack disagree"),
    "verify-abi": ("vllm_wheels.verify.cli_abi",
                   "check built wheels against a runtime environment before import"),
    "compare-wheels": ("vllm_wheels.verify.cli_compare",
                       "compare a built wheel with the official one: extensions, packages, "
                       "machine code per arch"),
    "verify-throughput": ("vllm_wheels.verify.cli_throughput",
                          "A/B the custom wheels against the vllm/vllm-openai nightly image"),
    "trial": ("vllm_wheels.trial.cli_trial",
              "upgrade trial: what moving to another vLLM means, then build/abi/throughput"),
    "publish": ("vllm_wheels.index.cli_publish",
                "add verified wheels to the internal wheel index (wheels/index/)"),
    "serve-index": ("vllm_wheels.index.cli_serve",
                    "serve the wheel index over HTTP (PEP 503/691) for pip and uv"),
    "index-list": ("vllm_wheels.index.cli_list",
                   "what the wheel index holds: versions, labels, torch/CUDA/arch, yanked"),
    "index-yank": ("vllm_wheels.index.cli_yank",
                   "yank (PEP 592) or un-yank files of the wheel index, with a reason"),
    "index-root": ("vllm_wheels.index.cli_root",
                   "print the index root (<base>/<target>/simple/) for this machine's GPU"),
    "index-server-config": ("vllm_wheels.index.cli_server_config",
                            "write nginx and object-storage (S3) configuration for the index"),
    "index-mirror": ("vllm_wheels.index.cli_mirror",
                     "copy companion wheels (e.g. the torch CUDA build) into the index by hash"),
    "build-wheels": ("vllm_wheels.build.cli_build_wheels", "build the stack's wheels into wheels/<stack>/"),
}
