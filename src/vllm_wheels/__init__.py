"""Source-build pipeline for custom vLLM and FlashInfer wheels pinned to one PyTorch.

Stages, one package each, in the order a wheel goes through them (README's sessions):
build/ (stack -> sources -> patches -> externals -> toolchain -> builders -> wheels/<stack>/),
verify/ (verify_abi, verify_throughput), trial/ (upgrade trials), index/ (the wheel
index: publish, serve), images/ (containers). Infrastructure, flat: cli and commands (the
command line and its registry), layout (where things are), config (TOML tables), runner
(subprocesses), cache, log (Reporter), errors (exit codes); helpers/ holds the programs
run inside other venvs.
"""

__version__ = "0.1.0"
