#!/usr/bin/env bash
# Issue 20 on the lent GPU machine: the default stack (build/stack.toml, 12.0, every kernel
# family) built in full by `nox -s build_wheels` from an offline bundle, then verified
# against the machine's runtime with --arch 12.0 and compared with PyPI's official wheel.
# The machine keeps /tmp only while the lease is held, and one call carries at most 64 MiB,
# so the work is split into device calls of at most 10 minutes:
#
#   verify/gpu/full_12_0.sh stash         move what this call carried (.carry/*) into
#                                         $W/stash/ (bundle parts, wheel parts, wheels)
#   verify/gpu/full_12_0.sh start         tools, build venv over the machine's torch,
#                                         bundle from the stash; the build starts detached
#   verify/gpu/full_12_0.sh wait          follow the build for $WAIT_S seconds (default 30)
#   verify/gpu/full_12_0.sh official      join the official wheel's parts, check its sha256
#   verify/gpu/full_12_0.sh verify        verify_abi --arch 12.0 against the machine's
#                                         python, compare-wheels against the official wheel
#   verify/gpu/full_12_0.sh venvs         runtime venvs for the A/B: ours (a carried wheel)
#                                         and official, over the machine's torch
# Several stages may be named in one call, in order. Evidence: $OUT/full-12.0.tar.gz.
#
# Machine-level choices (not the stack's): the toolkit is the machine's own CUDA 13.0
# (`--cuda-toolkit system`: it cannot reach PyPI's cuda-toolkit wheels); the build runs at
# nice 10, so a benchmark started beside it on the GPU keeps its host threads responsive.
set -uo pipefail
REPO=$PWD
W=${W:-/tmp/f12}
OUT=${OUT:-$W/out}
EV=$W/evidence/full-12.0
mkdir -p "$W/stash" "$OUT" "$EV"
# shellcheck source=verify/gpu/detached.sh
. "$REPO/verify/gpu/detached.sh"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_FIND_LINKS=$W/stash/tools   # nox installs the pipeline from these, offline
export VLLM_WHEELS_CACHE=$W/cache
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$EV/steps.log"; }
# shellcheck source=verify/gpu/arm_venvs.sh
. "$REPO/verify/gpu/arm_venvs.sh"
pack() { tar -C "$W/evidence" -czf "$OUT/full-12.0.tar.gz" full-12.0 2>/dev/null; }

machine_facts() {
  {
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
    echo "cores $(nproc)"; free -g | sed -n 2p
    python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'
    nvcc --version | tail -2; cmake --version | head -1; echo "ninja $(ninja --version)"
  } > "$EV/machine.txt" 2>&1
  cat "$EV/machine.txt"
}

follow() {  # SECONDS
  local until=$((SECONDS + ${1:-30}))
  while [ ! -f "$W/build.rc" ] && [ "$SECONDS" -lt "$until" ]; do
    sleep 15
    say "$(grep -aE '^==>|[0-9]+/[0-9]+ \([0-9]+%\)' "$W/build.log" | tail -1 | cut -c1-150)"
  done
  # What there is so far, in case the lease ends before the build does.
  tail -c 200000 "$W/build.log" > "$EV/build-tail.log" 2>/dev/null
  cp "$W/memory.tsv" "$EV/" 2>/dev/null
  find "$W/cache/staging" -name 'compile-units.jsonl' -exec cp {} "$EV/" \; 2>/dev/null
  if [ -f "$W/build.rc" ]; then
    say "build finished: exit $(cat "$W/build.rc")"
    cp "$W/build.log" "$EV/build.log"; cp "$W/memory.tsv" "$W/build-rusage.json" "$EV/" 2>/dev/null
    cp "$W"/wheels/*.json "$EV/" 2>/dev/null
    find "$W/cache/staging" -name 'build-telemetry.json' -exec cp {} "$EV/" \; 2>/dev/null
    find "$W/cache" -name 'build-telemetry.json' -newer "$W/build.pid" -exec cp {} "$EV/" \; 2>/dev/null
    find "$W/cache/src" -maxdepth 4 -name .ninja_log -path '*vllm*' -exec cp {} "$EV/vllm.ninja_log" \;
    ls -la "$W/wheels" > "$EV/wheels.txt" 2>&1; cat "$EV/wheels.txt"
    tail -30 "$W/build.log"
  fi
}

for STAGE in "$@"; do
case "$STAGE" in
stash)
  if [ -d .carry ]; then
    for f in .carry/*; do [ -e "$f" ] && cp -a "$f" "$W/stash/"; done
    say "stash: $(ls "$W/stash" | tr '\n' ' ')"
  fi
  du -sh "$W/stash"/* 2>/dev/null
  ;;
start)
  machine_facts
  say "tools into $W/tools, build venv over the machine's torch"
  BUILD_REQS='/(setuptools|setuptools_scm|vcs_versioning|apache_tvm_ffi|build|pyproject_hooks|wheel|regex|protobuf)-'
  python3 -m pip install -q --no-deps --target "$W/tools" \
    $(ls "$W"/stash/tools/*.whl | grep -vE "$BUILD_REQS") || exit 3
  python3 -m venv --system-site-packages "$W/bv"; machine_site_pth "$W/bv"
  "$W/bv/bin/python" -m pip install -q --no-deps $(ls "$W"/stash/tools/*.whl | grep -E "$BUILD_REQS") \
    "$W"/stash/tools/packaging-*.whl || exit 3
  ln -sf "$(command -v cmake)" "$W/bv/bin/cmake"; ln -sf "$(command -v ninja)" "$W/bv/bin/ninja"
  # The bundle's parts (part-NN/) go into one directory, in any order (docs/build.md).
  mkdir -p "$W/bundle"
  if ls -d "$W"/stash/bundle/part-* >/dev/null 2>&1; then
    for p in "$W"/stash/bundle/part-*/; do cp -a "$p". "$W/bundle/"; done
  else cp -a "$W/stash/bundle/." "$W/bundle/"; fi
  say "bundle: $(du -sh "$W/bundle" | cut -f1); the build starts detached at nice 10"
  setsid nohup bash -c "while true; do echo \"\$(date +%s) \$(awk '/MemTotal/{t=\$2}/MemAvailable/{a=\$2}END{print (t-a)/1048576}' /proc/meminfo)\"; sleep 2; done" > "$W/memory.tsv" 2>/dev/null &
  echo $! > "$W/memory.pid"
  start_detached "$W/build.pid" "$W/build.log" "$REPO" nice -n 10 bash -c \
    "PYTHONPATH='$W/tools' python3 verify/gpu/rusage.py '$W/build-rusage.json' \
     python3 -m nox -s build_wheels -- --bundle '$W/bundle' --build-venv '$W/bv' \
     --output-dir '$W/wheels' --max-jobs ${MAX_JOBS:-16} --only vllm --cuda-toolkit system; \
     echo \$? > '$W/build.rc'"
  follow 45
  ;;
wait)
  follow "${WAIT_S:-30}"
  ;;
official)
  # split -b 59M parts: official.part-aa, -ab, ... carried one per call
  join_official
  ;;
verify)
  pkill -F "$W/memory.pid" 2>/dev/null
  export PYTHONPATH=$REPO/src:$W/tools
  ours=$(ls "$W"/wheels/vllm-*.whl 2>/dev/null | head -1)
  [ -n "$ours" ] || { say "no vLLM wheel built"; pack; exit 1; }
  sha256sum "$ours" | tee "$EV/wheel-sha256.txt"; ls -l "$ours" >> "$EV/wheel-sha256.txt"
  python3 -m zipfile -l "$ours" > "$EV/wheel-files.txt" 2>&1
  say "verify_abi --arch 12.0 against the machine's runtime (the host GPU is sm_90)"
  python3 -m vllm_wheels verify-abi --wheels "$ours" --python "$(command -v python3)" --arch 12.0 \
    --json "$EV/verify-abi-12.0.json" > "$EV/verify-abi-12.0.txt" 2>&1
  echo "verify-abi exit $?" | tee -a "$EV/verify-abi-12.0.txt"
  grep -E "^ *(PASS|FAIL|\?\?|n/a) " "$EV/verify-abi-12.0.txt"
  if [ -f "$W/$OFFICIAL_NAME" ]; then
    say "compare-wheels: ours vs the official wheel, for 12.0"
    python3 -m vllm_wheels compare-wheels "$ours" "$W/$OFFICIAL_NAME" --arch 12.0 \
      --json "$EV/compare-12.0.json" --markdown "$EV/compare-12.0.md" > /dev/null 2>&1
    echo "compare exit $?"; grep -E "MISSING|^\| \`" "$EV/compare-12.0.md" | cut -c1-220
  fi
  pack
  ;;
venvs)
  # ours: the carried wheel in $W/stash/ours/ (the A/B candidate, built on the CPU host);
  # official: the joined PyPI wheel. Both over the machine's torch with the runtime wheels.
  for who in ours official; do
    w=$W/$OFFICIAL_NAME
    if [ "$who" = ours ]; then
      # Without a carried candidate both venvs hold the official wheel: an A/A of two
      # servers, each its own venv (the method's spread, not a comparison of builds).
      w=$(ls "$W"/stash/ours/vllm-*.whl 2>/dev/null | head -1); [ -n "$w" ] || w=$W/$OFFICIAL_NAME
    fi
    make_arm_venv "$who" "$w"
  done
  ;;
*) echo "unknown stage $STAGE"; exit 2 ;;
esac
done
pack
