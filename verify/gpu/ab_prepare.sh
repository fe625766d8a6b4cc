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
# PyPI's vllm-0.20.0 for cp38-abi3, manylinux_2_35 (the release the pipeline builds).
OFFICIAL_NAME=vllm-0.20.0-cp38-abi3-manylinux_2_35_x86_64.whl
OFFICIAL_SHA=24d28892e210200f6e1bd13f699c42a74cd2bb7364c11248e2348f677c7f6dfb
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$EV/steps.log"; }

# The machine's torch lives in the site-packages of its python3 (itself a venv): a .pth
# file puts that directory after the new venv's own, so the arm's packages win and torch is
# exactly the machine's, the same for both arms.
machine_site_pth() {
  python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' \
    > "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/machine-torch.pth"
}

make_venv() {  # WHO WHEEL
  local v=$W/venv-$1
  python3 -m venv --system-site-packages "$v" && machine_site_pth "$v" || return 1
  "$v/bin/python" -m pip install -q --no-deps "$W"/stash/runtime/*.whl "$2" 2>&1 | tail -3
  "$v/bin/python" -m pip list 2>/dev/null | grep -iE '^(vllm|torch|flashinfer-python|triton) ' \
    | sed "s/^/$1: /" | tee -a "$EV/venvs.txt"
}

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
  } > "$EV/machine.txt" 2>&1
  cat "$EV/machine.txt"
  ;;
venv-ours)
  ours=$(ls "$W"/stash/ours/vllm-*.whl 2>/dev/null | head -1)
  [ -n "$ours" ] || { say "no carried wheel in $W/stash/ours/"; exit 2; }
  sha256sum "$ours" | tee "$EV/ours-sha256.txt"
  make_venv ours "$ours" || exit 3
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
  if [ ! -f "$W/$OFFICIAL_NAME" ]; then
    cat "$W"/stash/official.part-* > "$W/$OFFICIAL_NAME.tmp"
    got=$(sha256sum "$W/$OFFICIAL_NAME.tmp" | cut -d' ' -f1)
    if [ "$got" != "$OFFICIAL_SHA" ]; then
      say "official wheel: sha256 $got, expected $OFFICIAL_SHA ($(ls "$W"/stash/official.part-* | wc -l) parts)"
      exit 4
    fi
    mv "$W/$OFFICIAL_NAME.tmp" "$W/$OFFICIAL_NAME"; say "official wheel joined, sha256 ok"
  fi
  make_venv official "$W/$OFFICIAL_NAME" || exit 3
  ;;
*) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
done
