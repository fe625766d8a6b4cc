#!/usr/bin/env bash
# Downloads the wheels the lent H200 lacks into the git-ignored carry directories that
# h200_e2e.sh reads: .whl/tools/ (tools-wheels.txt) and .whl/runtime/ (runtime-wheels.txt).
# Exact pins, no dependency resolution (--no-deps): the lists are the resolution, made for
# the machine's Python 3.12 and x86_64 manylinux, and each must fit one 64 MiB device carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
platform=(--only-binary=:all: --python-version 3.12 --implementation cp
          --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
for set in tools runtime; do
  mkdir -p ".whl/$set"
  python3 -m pip download -q --no-deps "${platform[@]}" -r "verify/gpu/$set-wheels.txt" -d ".whl/$set"
  echo ".whl/$set: $(ls .whl/$set/*.whl | wc -l) wheels, $(du -cb .whl/$set/*.whl | tail -1 | cut -f1) bytes"
done
