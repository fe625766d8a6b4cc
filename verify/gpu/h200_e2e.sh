#!/usr/bin/env bash
# The end-to-end run of a pipeline-built vLLM on the lent H200, in device calls of at most
# 10 minutes (the machine keeps /tmp between the calls of one lease, never beyond it):
#
#   verify/gpu/h200_e2e.sh build     set up, start `nox -s build_wheels -- --bundle ...`
#                                    detached (it outlives the call), follow it
#   verify/gpu/h200_e2e.sh wait      follow the build until it ends
#   verify/gpu/h200_e2e.sh check     verify_abi with the GPU, vLLM kernel checks, install the
#                                    wheels with the carried runtime wheels, serve one request
#   verify/gpu/h200_e2e.sh ab NAME   verify_throughput A/A of the build on workload NAME
#   verify/gpu/h200_e2e.sh serve-ab  verify, install, kernels, one server, A/As on it (url arms)
#
# What it expects in the repository copy (git-ignored, carried by the device tool):
#   .bundle/       the source bundle: nox -s build_wheels -- --stack
#                  build/stacks/h200-cu130-verify.toml --export-bundle .bundle
#   .whl/tools/    verify/gpu/tools-wheels.txt: nox and its dependencies, pyelftools, and the
#                  build requirements the machine lacks (setuptools<81, setuptools-scm, ...)
#   .whl/runtime/  verify/gpu/runtime-wheels.txt: vLLM's runtime dependencies it lacks
#   (both downloaded by verify/gpu/fetch_wheels.sh; each fits one 64 MiB carry)
# Evidence goes to $OUT/<stage>.tar.gz (logs, JSON reports) and the last lines of output.
set -uo pipefail
STAGE=${1:?stage: build | wait | check | ab NAME}
REPO=$PWD
W=/tmp/e2e                       # state shared by the calls of one lease
OUT=${OUT:-$W/out}
EV=$W/evidence/$STAGE${2:+-$2}
mkdir -p "$W" "$OUT" "$EV"
STACK=build/stacks/h200-cu130-verify.toml
LIMIT=${LIMIT:-540}              # seconds this call may follow the build
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_FIND_LINKS=$REPO/.whl/tools
export VLLM_WHEELS_CACHE=$W/cache

# start_detached / stop_detached: the vLLM server in a session of its own, stopped alone.
# shellcheck source=verify/gpu/detached.sh
. "$REPO/verify/gpu/detached.sh"

say() { echo "[$(date +%H:%M:%S)] $*"; }
finish() {  # the evidence of the stage whose directory $EV is, as $OUT/<that name>.tar.gz
  local name; name=$(basename "$EV")
  tar -C "$W/evidence" -czf "$OUT/$name.tar.gz" "$name" 2>/dev/null
  say "evidence: $OUT/$name.tar.gz"
}

machine_facts() {
  {
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
    nproc; free -g | sed -n 2p
    python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'
    nvcc --version | tail -2; cmake --version | head -1; ninja --version
  } > "$EV/machine.txt" 2>&1
  cat "$EV/machine.txt"
}

# machine_site_pth (arm_venvs.sh): the machine's torch after the venv's own packages, so
# the venv's pins (setuptools<81) win and torch is exactly the machine's; then say so.
# shellcheck source=verify/gpu/arm_venvs.sh
. "$REPO/verify/gpu/arm_venvs.sh"
machine_torch() {
  machine_site_pth "$1"
  "$1/bin/python" -c 'import torch; print("venv", "'"$1"'", "sees torch", torch.__version__, torch.__file__)'
}

follow_build() {
  local started=$SECONDS
  while [ ! -f "$W/build.rc" ] && [ $((SECONDS - started)) -lt "$LIMIT" ]; do
    sleep 20
    say "$(grep -aE '^==>|\[[0-9]+/[0-9]+\]' "$W/build.log" | tail -1 | cut -c1-160)"
  done
  cp "$W/build.log" "$EV/build.log" 2>/dev/null
  [ -f "$W/memory.tsv" ] && cp "$W/memory.tsv" "$EV/"
  if [ -f "$W/build.rc" ]; then
    say "build finished: exit $(cat "$W/build.rc")"
    cp "$W/build-rusage.json" "$EV/" 2>/dev/null
    find "$W/cache/src" -maxdepth 4 -name .ninja_log -path '*vllm*' -exec cp {} "$EV/vllm.ninja_log" \;
    cp "$W"/wheels/*.json "$EV/" 2>/dev/null
    ls -la "$W/wheels" | tee "$EV/wheels.txt"
    tail -40 "$W/build.log"
  else
    say "build still running after ${LIMIT}s (pid $(cat "$W/build.pid")); run the 'wait' stage"
    tail -5 "$W/build.log"
  fi
}

do_check() {
  [ -f "$W/build.rc" ] && [ "$(cat "$W/build.rc")" = 0 ] || { say "no finished build"; exit 1; }
  pkill -f "MemAvailable" 2>/dev/null
  export PYTHONPATH=$REPO/src:$W/tools
  say "1/4 verify_abi against the machine's runtime, the H200 considered (import + GPU ops)"
  python3 -m vllm_wheels verify-abi --wheels "$W"/wheels/*.whl --python "$(command -v python3)" \
    --json "$EV/verify-abi-h200.json" 2>&1 | tee "$EV/verify-abi-h200.txt"
  echo "verify-abi exit ${PIPESTATUS[0]}" | tee -a "$EV/verify-abi-h200.txt"
  say "2/4 install the wheels beside the machine's torch (runtime venv, carried wheels)"
  python3 -m venv --system-site-packages "$W/rv"
  machine_torch "$W/rv"
  "$W/rv/bin/python" -m pip install -q --no-deps .whl/runtime/*.whl .whl/tools/apache_tvm_ffi-*.whl \
    "$W"/wheels/*.whl 2>&1 | tail -3
  "$W/rv/bin/python" -m pip list 2>/dev/null | grep -iE '^(vllm|flashinfer|torch) ' | tee "$EV/installed.txt"
  say "3/4 vLLM kernels from the built _C against float64 references"
  "$W/rv/bin/python" verify/gpu/kernel_checks.py --json "$EV/kernels.json" 2>&1 | tee "$EV/kernels.txt"
  say "4/4 tiny Llama (config + tokenizer), vllm serve, one completion"
  python3 verify/gpu/make_tiny_llama.py "$W/model" > "$EV/model.json"
  start_detached "$W/serve.pid" "$EV/serve.log" "$W" "$W/rv/bin/vllm" serve "$W/model" \
      --served-model-name tiny-llama --load-format dummy --enforce-eager \
      --attention-backend TRITON_ATTN --port 8011 --max-model-len 2048 \
      --gpu-memory-utilization 0.30
  for _ in $(seq 1 90); do curl -sf localhost:8011/health >/dev/null && break; sleep 2; done
  curl -s localhost:8011/v1/completions -H 'Content-Type: application/json' \
    -d '{"model": "tiny-llama", "prompt": "abc def", "max_tokens": 32, "ignore_eos": true}' \
    | tee "$EV/completion.json"; echo
  curl -s localhost:8011/metrics | grep -E '^vllm:(generation_tokens_total|request_success_total)' | tee "$EV/metrics.txt"
  stop_detached "$W/serve.pid"
  grep -aE "attention backend|Using .*backend|Loading weights|ERROR|Error" "$EV/serve.log" | head -20
}

case "$STAGE" in
build)
  machine_facts
  say "tools: nox, pyelftools into $W/tools; build venv over the machine's torch"
  # $W/tools is on PYTHONPATH for nox and the pipeline (and so for their children): it holds
  # nox, its dependencies and pyelftools; the build requirements go into the build venv only.
  BUILD_REQS='/(setuptools|setuptools_scm|vcs_versioning|apache_tvm_ffi|build|pyproject_hooks|wheel|regex|protobuf)-'
  python3 -m pip install -q --no-deps --target "$W/tools" \
    $(ls .whl/tools/*.whl | grep -vE "$BUILD_REQS") || exit 3
  python3 -m venv --system-site-packages "$W/bv"
  machine_torch "$W/bv"
  # vLLM's requirements/build/cuda.txt and FlashInfer's build-system that the machine lacks
  # or has in other versions (setuptools 81; vcs-versioning needs packaging>=26.2).
  "$W/bv/bin/python" -m pip install -q --no-deps $(ls .whl/tools/*.whl | grep -E "$BUILD_REQS") \
    .whl/tools/packaging-*.whl || exit 3
  # cmake and ninja are the machine's (its pip packages); the venv gets links to them.
  ln -sf "$(command -v cmake)" "$W/bv/bin/cmake"; ln -sf "$(command -v ninja)" "$W/bv/bin/ninja"
  say "starting the build, detached: nox -s build_wheels -- --bundle .bundle ..."
  # Memory of the whole machine every 2 s: the build's peak is read from it.
  setsid nohup bash -c "while true; do echo \"\$(date +%s) \$(awk '/MemTotal/{t=\$2}/MemAvailable/{a=\$2}END{print (t-a)/1048576}' /proc/meminfo)\"; sleep 2; done" > "$W/memory.tsv" 2>/dev/null &
  setsid nohup bash -c "cd '$REPO' && PYTHONPATH='$W/tools' python3 verify/gpu/rusage.py '$W/build-rusage.json' \
      python3 -m nox -s build_wheels -- --bundle .bundle --build-venv '$W/bv' \
      --output-dir '$W/wheels' --max-jobs 16; echo \$? > '$W/build.rc'" > "$W/build.log" 2>&1 &
  echo $! > "$W/build.pid"
  follow_build
  # One call can hold both when the build is quick: the check needs ~2 minutes.
  finish
  if [ "${THEN_CHECK:-0}" = 1 ] && [ "$(cat "$W/build.rc" 2>/dev/null)" = 0 ] && [ "$SECONDS" -lt 450 ]; then
    EV=$W/evidence/check; mkdir -p "$EV"; do_check; finish
  fi
  ;;
wait)
  follow_build
  finish
  ;;
check)
  do_check
  finish
  ;;
ab)
  NAME=${2:?workload name}
  export PYTHONPATH=$REPO/src:$W/tools
  say "verify_throughput A/A on $NAME: the same build as candidate and baseline"
  python3 -m vllm_wheels verify-throughput --workload "$NAME" --candidate "venv:$W/rv" \
    --baseline "venv:$W/rv" --model "$W/model" --results-dir "$EV" 2>&1 | tee "$EV/ab.txt"
  echo "verify-throughput exit ${PIPESTATUS[0]}" | tee -a "$EV/ab.txt"
  finish
  ;;
serve-ab)
  # The wheels of this lease's build ($W/wheels, the default) or wheels built elsewhere
  # (WHEELS=.e2e/wheels, carried): verify, install, kernels, then ONE server and
  # verify_throughput A/As as url: arms on it (the same server as both arms: vLLM's own
  # run-to-run spread, without 10 server starts per A/A).
  WHEELS=${WHEELS:-$W/wheels}
  EV=$W/evidence/serve-ab; mkdir -p "$EV"; machine_facts
  [ -d "$W/tools/elftools" ] || python3 -m pip install -q --no-deps --target "$W/tools" .whl/tools/pyelftools-*.whl || exit 3
  export PYTHONPATH=$REPO/src:$W/tools
  say "1/5 verify_abi of the carried wheels against the machine's runtime, the H200 considered"
  python3 -m vllm_wheels verify-abi --wheels "$WHEELS"/*.whl --python "$(command -v python3)" \
    --json "$EV/verify-abi-h200.json" > "$EV/verify-abi-h200.txt" 2>&1
  echo "verify-abi exit $?" | tee -a "$EV/verify-abi-h200.txt"; grep -E "^  (PASS|FAIL)  (import|gpu-archs)" "$EV/verify-abi-h200.txt"
  say "2/5 runtime venv: the machine's torch + carried runtime wheels + the vLLM wheel"
  python3 -m venv --system-site-packages "$W/rv"; machine_torch "$W/rv"
  # verify/gpu/runtime-wheels.txt: apache-tvm-ffi 0.1.9 as vLLM pins it, with xgrammar 0.1.33.
  # FlashInfer's wheel is left out: vLLM finds it with find_spec, and Llama on TRITON_ATTN
  # does not use it.
  "$W/rv/bin/python" -m pip install -q --no-deps .whl/runtime/*.whl "$WHEELS"/vllm-*.whl 2>&1 | tail -2
  "$W/rv/bin/python" -m pip list 2>/dev/null | grep -iE '^(vllm|torch|apache-tvm-ffi|xgrammar) ' | tee "$EV/installed.txt"
  say "3/5 vLLM kernels from the built _C against float64 references"
  "$W/rv/bin/python" verify/gpu/kernel_checks.py --json "$EV/kernels.json" > "$EV/kernels.txt" 2>&1
  echo "kernel checks exit $?"; grep -c PASS "$EV/kernels.txt"
  say "4/5 tiny Llama, one vllm serve (eager, TRITON_ATTN), one completion"
  python3 verify/gpu/make_tiny_llama.py "$W/model" > "$EV/model.json"
  t0=$SECONDS
  start_detached "$W/serve.pid" "$EV/serve.log" "$W" env PYTHONPATH= "$W/rv/bin/vllm" serve \
      "$W/model" --served-model-name tiny-llama --load-format dummy --seed 0 \
      --no-enable-prefix-caching --enforce-eager --attention-backend TRITON_ATTN --port 8011 \
      --max-model-len 2048 --max-num-seqs 64 --gpu-memory-utilization 0.30
  for _ in $(seq 1 120); do curl -sf localhost:8011/health >/dev/null && break; sleep 1; done
  echo "server ready after $((SECONDS - t0)) s" | tee "$EV/startup.txt"
  curl -s localhost:8011/v1/completions -H 'Content-Type: application/json' \
    -d '{"model": "tiny-llama", "prompt": "abc def", "max_tokens": 32, "ignore_eos": true}' \
    > "$EV/completion.json"; head -c 400 "$EV/completion.json"; echo
  say "5/5 verify_throughput A/A (url arms, same server): single-stream, then throughput"
  for wl in h200-tiny-llama-single h200-tiny-llama-throughput; do
    timeout "${AB_TIMEOUT:-150}" python3 -m vllm_wheels verify-throughput --workload "$wl" \
      --candidate url:http://127.0.0.1:8011 --baseline url:http://127.0.0.1:8011 \
      --model "$W/model" --results-dir "$EV/ab" > "$EV/ab-$wl.txt" 2>&1
    echo "verify-throughput $wl exit $?" | tee -a "$EV/ab-$wl.txt"
    grep -aE "CV|median|verdict|tok/s|PASS|INCONCLUSIVE|REGRESSION|inconclusive|pass" "$EV/ab-$wl.txt" | head -12
    finish
  done
  curl -s localhost:8011/metrics | grep -E '^vllm:(generation_tokens|request_success|num_requests)' > "$EV/metrics.txt"
  # The server's own session only (detached.sh: the old `( cd && setsid ... & echo $! )`
  # recorded a subshell of this script's session, and its pkill -s ended this script).
  stop_detached "$W/serve.pid"
  finish
  ;;
*)
  echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
