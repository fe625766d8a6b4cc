# Sourced by verify/gpu/ab_prepare.sh, full_12_0.sh and h200_e2e.sh: the A/B arms' venvs on
# the lent GPU machine, which cannot reach PyPI. Needs W (state dir), EV (evidence dir) and
# a say() function from the caller.

# PyPI's vllm-0.20.0 for cp38-abi3, manylinux_2_35 (the release the pipeline builds).
OFFICIAL_NAME=vllm-0.20.0-cp38-abi3-manylinux_2_35_x86_64.whl
OFFICIAL_SHA=24d28892e210200f6e1bd13f699c42a74cd2bb7364c11248e2348f677c7f6dfb

# The machine's torch lives in the site-packages of its python3 (itself a venv): a .pth
# file puts that directory after the new venv's own, so the arm's packages win and torch is
# exactly the machine's, the same for both arms.
machine_site_pth() {  # VENV
  python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' \
    > "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/machine-torch.pth"
}

# The official wheel from its carried parts ($W/stash/official.part-*, one per device
# call), at $W/$OFFICIAL_NAME once its sha256 is right; 1 (and a message) when it is not.
join_official() {
  [ -f "$W/$OFFICIAL_NAME" ] && return 0
  cat "$W"/stash/official.part-* > "$W/$OFFICIAL_NAME.tmp"
  local got
  got=$(sha256sum "$W/$OFFICIAL_NAME.tmp" | cut -d' ' -f1)
  if [ "$got" != "$OFFICIAL_SHA" ]; then
    say "official wheel: sha256 $got, expected $OFFICIAL_SHA ($(ls "$W"/stash/official.part-* | wc -l) parts)"
    return 1
  fi
  mv "$W/$OFFICIAL_NAME.tmp" "$W/$OFFICIAL_NAME"; say "official wheel joined, sha256 ok"
}

# $W/venv-WHO over the machine's torch with the carried runtime wheels and WHEEL.
make_arm_venv() {  # WHO WHEEL
  local v=$W/venv-$1
  python3 -m venv --system-site-packages "$v" && machine_site_pth "$v" || return 1
  "$v/bin/python" -m pip install -q --no-deps "$W"/stash/runtime/*.whl "$2" 2>&1 | tail -3
  "$v/bin/python" -m pip list 2>/dev/null | grep -iE '^(vllm|torch|flashinfer-python|triton) ' \
    | sed "s/^/$1: /" | tee -a "$EV/venvs.txt"
}
