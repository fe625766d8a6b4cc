"""Upgrade trials: `vllm-wheels trial vllm==VERSION` says what moving the stack to another
vLLM release means (pins, external sources, arch lists, patches, build switches), writes the
candidate stack, and runs the stages this machine can run (build, ABI check, throughput).

  release.py       read a release's own requirements from its unpacked source
  compare.py       current vs candidate, side by side; the torch decision
  plan.py          the plan stage: fetch both sources, compare, re-check patches
  stack_writer.py  write and verify build/stacks/trial-vllm-VERSION.toml
  stages.py        plan/build/abi/throughput, resumable through a state file
  report.py        markdown + JSON report in verify/trials/
  cli_trial.py     the `trial` command
"""
