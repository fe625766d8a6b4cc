#!/usr/bin/env bash
# Issue 19's lease, before verify/gpu/ab_official.sh: what the two arms need on a bare GPU
# machine that cannot reach PyPI, carried in device calls of at most 64 MiB each.
#
#   verify/gpu/ab_prepare.sh STAGE ...      (stages run in the order named)
#     stash          copy what this call carried (.carry/*) into $W/stash/
#     tools          the harness's own packages (pyelftools, installer, packaging) into
#                    $W/tools: PYTHONPATH=$W/tools for ab_official.sh
#     venv-ours      a venv over the machine's torch with the carried runtime wheels and
#                    our wheel ($W/stash/ours/vllm-*.whl, built by the pipeline elsewhere),
#                    then verify_abi of that wheel against this venv, with the GPU
#     venv-official  join PyPI's official wheel from its parts (official.part-*), check its
#                    sha256, and the same venv with it
# State: W (default /tmp/abo, shared with ab_official.sh), OUT. Evidence goes to
# $W/evidence/prepare/, which ab_official.sh packs with its own.
set -uo pipefail
REPO=$PWD
W=${W:-/tmp/abo}
OUT=${OUT:-$W/out}
EV=$W/evidence/prepare
mkdir -p "$W/stash" "$OUT" "$EV"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$EV/steps.log"; }
# shellcheck source=verify/gpu/arm_venvs.sh
. "$REPO/verify/gpu/arm_venvs.sh"

for STAGE in "$@"; do
case "$STAGE" in
stash)
  [ -d .carry ] && for f in .carry/*/*; do [ -e "$f" ] && cp -a "$f" "$W/stash/"; done
  say "stash: $(ls "$W/stash" | tr '\n' ' ')"
  ;;
tools)
  python3 -m pip install -q --no-deps --target "$W/tools" "$W"/stash/tools/*.whl || exit 3
  {
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    echo "cores $(nproc)"; free -g | sed -n 2p
    python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)'
    python3 "$REPO/verify/gpu/host_jitter.py" 3   # CPU, steal, wake-up lateness (idle host)
    # the same with keep_awake.py's SCHED_IDLE loops: whether KEEP_AWAKE=1 would help here
    setsid python3 "$REPO/verify/gpu/keep_awake.py" > /dev/null 2>&1 < /dev/null &
    local_ka=$!; sleep 1
    echo "with keep_awake: $(python3 "$REPO/verify/gpu/host_jitter.py" 3)"
    kill -TERM -- "-$local_ka" 2>/dev/null
  } > "$EV/machine.txt" 2>&1
  cat "$EV/machine.txt"
  ;;
venv-ours)
  ours=$(ls "$W"/stash/ours/vllm-*.whl 2>/dev/null | head -1)
  [ -n "$ours" ] || { say "no carried wheel in $W/stash/ours/"; exit 2; }
  sha256sum "$ours" | tee "$EV/ours-sha256.txt"
  make_arm_venv ours "$ours" || exit 3
  # The CPU host built it; this proves it against a GPU host's runtime (imports, archs
  # against the real GPU, symbols), before any server is started.
  say "verify_abi of our wheel against venv-ours, with the GPU"
  PYTHONPATH=$REPO/src:$W/tools python3 -m vllm_wheels verify-abi --wheels "$ours" \
    --python "$W/venv-ours/bin/python" --json "$EV/verify-abi-ours.json" \
    > "$EV/verify-abi-ours.txt" 2>&1
  echo "verify-abi exit $?" | tee -a "$EV/verify-abi-ours.txt"
  grep -E "^ *(PASS|FAIL|\?\?|n/a) " "$EV/verify-abi-ours.txt" | cut -c1-160
  ;;
venv-official)
  join_official || exit 4
  make_arm_venv official "$W/$OFFICIAL_NAME" || exit 3
  ;;
*) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
done
