#!/usr/bin/env bash
# Issue 19 on one GPU: our vLLM build against PyPI's official wheel of the same release,
# with verify_throughput over url: arms (servers started once, not per round).
#
#   verify/gpu/ab_official.sh OURS_VENV OFFICIAL_VENV [FAMILY:STEP ...]
#
# Both venvs are installed already (vllm in each). FAMILY is a workload family of
# verify/workloads/ (llama-8b, mixtral-small, llama-8b-fp8: FAMILY.toml = vLLM's defaults,
# FAMILY-forced.toml = the same backends forced on both arms); STEP is one of
#   aa          A/A: ours (forced backends) against itself, one server as both arms
#   aa-default  A/A: ours at vLLM's defaults against itself, one server as both arms (the
#               server ab-default then uses, already burnt in)
#   aa-official A/A: the official wheel at vLLM's defaults against itself, one server as
#               both arms (the baseline's own noise, on the backends it chooses)
#   ab-forced   (a) ours vs official, the same backends forced on both
#   ab-default  (b) ours vs official, vLLM's defaults, plus the `vllm bench serve`
#               cross-check (the official venv's) against both servers (CROSS_CHECK=0:
#               without it)
#   eager       planted regression: ours with --enforce-eager (candidate) vs ours
#               (baseline), forced backends; expected: exit 11, "CUDA graphs off on candidate"
#   probe       where a request's time to first token goes (verify/gpu/ttft_probe.py: the
#               HTTP layer, the tokenizer, the first token back to back and with random
#               gaps, vLLM's own TTFT/queue/prefill) on each running default server of
#               FAMILY (ours, official), or ours at its defaults when none runs, and once
#               more on the first with the GPU clock sampler stopped (GPU_CLOCKS=1); ~25 s each
# Default steps, in priority order: see STEPS below. Each step runs only when the time it
# needs is left in BUDGET (seconds, default 540: one device call of 10 minutes); a step
# that ran is marked done in $W/done/ and skipped by the next call, so a second call with
# the same arguments goes on where the first stopped (servers are kept between calls
# with KEEP_SERVERS=1; the lease keeps /tmp while it is held).
#
# Servers: at most four at a time (0.2 of the GPU each at start-up and a fixed 2 GiB KV
# cache, from the workloads), started with `setsid` as direct background children (so $!
# is the server and its session id: issue 23 item 13), stopped by their own process group.
# Evidence: $OUT/ab-official.tar.gz (server logs, every report, the step log) and
# $OUT/ab-official-summary.txt, rewritten after every step.
#
# Step "none" runs nothing (a call that only starts PRESTART servers).
# Environment: PRESTART (servers to start without waiting, see below; PRESTART_WAIT=1
# waits for them before the first step), BUDGET (s), W (state dir, default /tmp/abo), OUT,
# HARNESS_PY (the Python
# that runs the harness and make_model.py: needs numpy, tokenizers, aiohttp, matplotlib;
# default python3), RUNS (runs per arm, default the workload's 6; "auto": --runs auto
# within what is left of BUDGET), KEEP_SERVERS=1,
# READY_S (server start-up limit, default 420), KEEP_AWAKE=1 (keep_awake.py while the
# steps run), GPU_CLOCKS=1 (an nvidia-smi sampler, one reading a second, into gpu-clocks.csv;
# default: a reading before and after each step).
set -uo pipefail
OURS=$(readlink -f "${1:?usage: $0 OURS_VENV OFFICIAL_VENV [FAMILY:STEP ...]}")
OFFICIAL=$(readlink -f "${2:?usage: $0 OURS_VENV OFFICIAL_VENV [FAMILY:STEP ...]}")
shift 2
STEPS=("$@")
# The servers each step uses, so that PRESTART's clean-up keeps them (see below).
STEPS_SERVERS=""
for s in "${STEPS[@]}"; do
  f=${s%%:*}
  case ${s#*:} in
    aa) STEPS_SERVERS+=" $f.ours-forced" ;;
    aa-default) STEPS_SERVERS+=" $f.ours-default" ;;
    aa-official) STEPS_SERVERS+=" $f.official-default" ;;
    ab-forced) STEPS_SERVERS+=" $f.ours-forced $f.official-forced" ;;
    ab-default) STEPS_SERVERS+=" $f.ours-default $f.official-default" ;;
    eager) STEPS_SERVERS+=" $f.ours-forced $f.ours-eager" ;;
    probe) STEPS_SERVERS+=" $f.ours-default $f.official-default" ;;
  esac
done
if [ ${#STEPS[@]} -eq 0 ]; then
  STEPS=(llama-8b:aa llama-8b:ab-forced llama-8b:ab-default llama-8b:eager
         mixtral-small:ab-default mixtral-small:ab-forced
         llama-8b-fp8:ab-default llama-8b-fp8:ab-forced mixtral-small:aa llama-8b-fp8:aa)
fi
REPO=$PWD
BUDGET=${BUDGET:-540}
W=${W:-/tmp/abo}
OUT=${OUT:-$W/out}
PY=${HARNESS_PY:-python3}
READY_S=${READY_S:-420}
RESERVE=25                       # seconds kept for stopping servers and packing
EV=$W/evidence
mkdir -p "$W/done" "$W/run" "$W/burned" "$OUT" "$EV/servers" "$EV/results"
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# The harness's own imports, checked before any server starts (a GPU lease found the
# machine's python3 without pyelftools only after two 8B servers had started: every A/B
# exited 1 at its first fact). Put the carried tools on PYTHONPATH (full_12_0.sh: $W/tools).
if ! missing=$("$PY" - <<'PYEOF' 2>&1
import importlib.util, sys
need = ["elftools", "numpy", "aiohttp", "tokenizers", "matplotlib", "packaging", "installer",
        "prometheus_client"]
gone = [m for m in need if importlib.util.find_spec(m) is None]
print(" ".join(gone)); sys.exit(1 if gone else 0)
PYEOF
); then
  echo "ab_official: $PY lacks the harness's modules: $missing" >&2
  echo "  fix: install them there, or put a directory holding them on PYTHONPATH" \
       "(e.g. PYTHONPATH=/tmp/f12/tools, the tools full_12_0.sh installs)" >&2
  exit 2
fi
T0=$SECONDS
LOG=$EV/steps.log

say() { echo "[$(date +%H:%M:%S) +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - (SECONDS - T0) - RESERVE)); }
pack() {
  tar -C "$W" -czf "$OUT/ab-official.tar.gz.tmp" evidence 2>/dev/null \
    && mv "$OUT/ab-official.tar.gz.tmp" "$OUT/ab-official.tar.gz"
  cp "$LOG" "$OUT/ab-official-summary.txt" 2>/dev/null
}

# ------------------------------------------------------------------ servers
# A server is NAME = FAMILY.WHO-MODE (who: ours|official, mode: forced|default|eager);
# its port, pid and log live in $W/run/ and $EV/servers/.
venv_of() { case $1 in ours*) echo "$OURS" ;; *) echo "$OFFICIAL" ;; esac; }
model_of() { case $1 in mixtral-small*) echo mixtral-small ;; *) echo llama-8b ;; esac; }
workload_of() {  # FAMILY MODE
  case $2 in default) echo "$REPO/verify/workloads/$1.toml" ;;
             *) echo "$REPO/verify/workloads/$1-forced.toml" ;; esac
}
port_of() {
  local f=$W/run/$1.port
  if [ ! -f "$f" ]; then
    local n; n=$(ls "$W"/run/*.port 2>/dev/null | wc -l); echo $((8100 + n)) > "$f"
  fi
  cat "$f"
}
alive() { local p; p=$(cat "$W/run/$1.pid" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
healthy() { curl -sf "http://127.0.0.1:$(port_of "$1")/health" >/dev/null 2>&1; }

start_server() {  # NAME
  local name=$1 family=${1%%.*} rest=${1#*.}
  local who=${rest%%-*} mode=${rest#*-} extra=()
  [ "$mode" = eager ] && extra=(--enforce-eager)
  local argv=()
  mapfile -t argv < <("$PY" "$REPO/verify/gpu/serve_command.py" --lines "$(venv_of "$who")" \
        "$(workload_of "$family" "$mode")" "$W/models/$(model_of "$family")" \
        "$(port_of "$name")" "${extra[@]}")
  [ ${#argv[@]} -gt 3 ] || { say "cannot make the command of $name"; return 1; }
  printf '%q ' "${argv[@]}" > "$EV/servers/$name.cmd"
  say "start $name: $(cat "$EV/servers/$name.cmd")"
  # setsid as the direct background child (a simple command, so the forked child execs
  # it): $! is the server itself, setsid does not fork again (a background job is no
  # process-group leader), so its pid is its session and process-group id.
  setsid "${argv[@]}" > "$EV/servers/$name.log" 2>&1 < /dev/null &
  echo $! > "$W/run/$name.pid"
}

stop_server() {  # NAME: TERM its own process group, then KILL what is left
  local name=$1 pid sid
  pid=$(cat "$W/run/$name.pid" 2>/dev/null) || return 0
  sid=$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')
  if [ -n "$pid" ] && [ "$sid" = "$pid" ]; then
    say "stop $name (session $sid)"
    kill -TERM -- "-$pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null
  elif [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    say "stop $name: pid $pid is not its own session leader ($sid); TERM to the pid only"
    kill -TERM "$pid" 2>/dev/null
  fi
  rm -f "$W/run/$name.pid" "$W/burned/$name"
}

stop_servers_except() {  # NAME...: stop every running server not named (GPU memory)
  local want=" $* " f name
  for f in "$W"/run/*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    case $want in *" $name "*) ;; *) stop_server "$name" ;; esac
  done
}

ensure_servers() {  # NAME...: these running; others stopped first (GPU memory), except
  # those PRESTART names: they are the next steps' servers, starting up meanwhile.
  local name
  # shellcheck disable=SC2086  # PRESTART is a list of names
  stop_servers_except "$@" ${PRESTART:-}
  for name in "$@"; do
    if alive "$name" && healthy "$name"; then continue; fi
    alive "$name" || start_server "$name" || return 1
  done
  local t=$SECONDS limit=$READY_S
  [ "$(left)" -lt "$limit" ] && limit=$(left)
  for name in "$@"; do
    while ! healthy "$name"; do
      if ! alive "$name"; then
        say "server $name exited before it was ready; its log's tail:"
        tail -25 "$EV/servers/$name.log" | tee -a "$LOG"
        "$PY" -c 'import sys; from vllm_wheels.verify.throughput.parity import start_failure
print("why:", start_failure(open(sys.argv[1], errors="replace").read()) or "not recognised")' \
          "$EV/servers/$name.log" 2>&1 | tee -a "$LOG"
        return 1
      fi
      if [ $((SECONDS - t)) -ge "$limit" ]; then say "server $name not ready after ${limit}s"; return 1; fi
      sleep 2
    done
    say "server $name ready (port $(port_of "$name"))"
  done
}

# ------------------------------------------------------------------ steps
GPU_QUERY=timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu
clocks_once() {  # without the sampler (the default): one reading before and after a step
  [ -n "${SMI:-}" ] || nvidia-smi --query-gpu=$GPU_QUERY --format=csv,noheader \
    >> "$EV/gpu-clocks.csv" 2>/dev/null
}

ab() {  # STEP_ID CANDIDATE BASELINE [harness args...]: one verify-throughput call
  local id=$1 cand=$2 base=$3; shift 3
  local family=${cand%%.*} rest=${cand#*.} limit
  local mode=${rest#*-}            # FAMILY.WHO-MODE; families have dashes, WHO has none
  [ "$mode" = eager ] && mode=forced
  limit=$(left)
  local runs=() burn=()
  [ -n "${RUNS:-}" ] && runs=(--runs "$RUNS")
  # --runs auto plans its rounds within a time budget: what is left of this call's,
  # less the report and the host readings after the step
  [ "${RUNS:-}" = auto ] && runs+=(--time-budget "$((limit - 20))")
  # The workloads burn each server in for a minute before round 1 (burn_in_s); a server
  # an earlier step of this lease already loaded is warm: no second burn-in.
  [ -f "$W/burned/$cand" ] && [ -f "$W/burned/$base" ] && burn=(--burn-in 0)
  # The host's own noise just before (idle servers) and after the step: CPU, steal, how
  # late a thread wakes from a 1 ms sleep (verify/gpu/host_jitter.py). An A/A whose TTFT
  # spreads on a host that wakes late is the host, not the build.
  "$PY" "$REPO/verify/gpu/host_jitter.py" 3 > "$EV/results/$id.host-before.json" 2>&1
  clocks_once
  say "host before $id: $(cat "$EV/results/$id.host-before.json")"
  say "verify-throughput $id: candidate $cand, baseline $base (limit ${limit}s)"
  timeout -k 10 "$limit" "$PY" -m vllm_wheels verify-throughput \
    --workload "$(workload_of "$family" "$mode")" --model "$W/models/$(model_of "$family")" \
    --candidate "url:http://127.0.0.1:$(port_of "$cand")" \
    --baseline "url:http://127.0.0.1:$(port_of "$base")" \
    --candidate-log "$EV/servers/$cand.log" --baseline-log "$EV/servers/$base.log" \
    --candidate-venv "$(venv_of "${cand#*.}")" --baseline-venv "$(venv_of "${base#*.}")" \
    --results-dir "$EV/results/$id" "${runs[@]}" "${burn[@]}" "$@" > "$EV/results/$id.txt" 2>&1
  local rc=$?
  touch "$W/burned/$cand" "$W/burned/$base"
  clocks_once
  "$PY" "$REPO/verify/gpu/host_jitter.py" 3 > "$EV/results/$id.host-after.json" 2>&1
  say "verify-throughput $id exit $rc (0 pass, 11 regression, 12 inconclusive, 13 could not run, 124 time limit)"
  grep -hA12 "^# Throughput" "$EV"/results/"$id"/*/report.md 2>/dev/null | head -14 | tee -a "$LOG"
  return 0
}

probe() {  # FILE_STEM SERVER FAMILY: verify/gpu/ttft_probe.py, 200 requests a phase
  say "ttft_probe $2 ($1)"
  timeout 120 "$PY" "$REPO/verify/gpu/ttft_probe.py" "http://127.0.0.1:$(port_of "$2")" \
    "$(model_of "$3")" 200 > "$EV/results/$1.json" 2> "$EV/results/$1.txt"
  say "ttft_probe $1 exit $?: $(tail -3 "$EV/results/$1.txt")"
}

need_s() {  # rough seconds a step needs with its servers up (6 rounds x 2 arms; 128 prompts
  # at concurrency 16), plus
  # two one-minute burn-ins where its servers are new
  local extra=126                  # two burn-ins, and host_jitter.py before and after
  case $1 in *:aa|*:aa-default|*:aa-official) extra=66 ;; *:probe) echo 90; return ;; esac
  case $1 in *:ab-default) echo $((260 + extra)) ;; *) echo $((220 + extra)) ;; esac
}

run_step() {  # FAMILY:STEP
  local family=${1%%:*} step=${1#*:} id=${1/:/-}
  [ -f "$W/done/$id" ] && { say "$1: done in an earlier call, skipped"; return; }
  if [ "$(left)" -lt "$(need_s "$1")" ]; then say "$1: skipped, $(left)s left of the budget"; return; fi
  local O=$family.ours P=$family.official
  case $step in
    aa) ensure_servers "$O-forced" || return
        ab "$id" "$O-forced" "$O-forced" ;;
    aa-default) ensure_servers "$O-default" || return
        ab "$id" "$O-default" "$O-default" ;;
    aa-official) ensure_servers "$P-default" || return
        ab "$id" "$P-default" "$P-default" ;;
    ab-forced) ensure_servers "$O-forced" "$P-forced" || return
        ab "$id" "$O-forced" "$P-forced" ;;
    ab-default) ensure_servers "$O-default" "$P-default" || return
        if [ "${CROSS_CHECK:-1}" = 1 ]; then
          ab "$id" "$O-default" "$P-default" --cross-check-venv "$OFFICIAL"
        else ab "$id" "$O-default" "$P-default"; fi ;;
    eager) ensure_servers "$O-forced" "$O-eager" || return
        ab "$id" "$O-eager" "$O-forced" ;;
    probe) local names=() name
        for name in "$O-default" "$P-default"; do alive "$name" && names+=("$name"); done
        [ ${#names[@]} -gt 0 ] || names=("$O-default")
        ensure_servers "${names[@]}" || return
        for name in "${names[@]}"; do probe "$id.$name" "$name" "$family"; done
        # the same with the GPU clock sampler stopped (SIGSTOP: it holds nothing while
        # stopped): does a once-a-second NVML query delay the requests?
        if [ -n "$SMI" ] && kill -STOP "$SMI" 2>/dev/null; then
          probe "$id.${names[0]}.sampler-stopped" "${names[0]}" "$family"
          kill -CONT "$SMI"
        fi ;;
    *) say "unknown step $1"; return ;;
  esac
  touch "$W/done/$id"
  pack
}

# ------------------------------------------------------------------ main
say "ab_official: ours $OURS, official $OFFICIAL, budget ${BUDGET}s, steps: ${STEPS[*]}"
{
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv
  for v in "$OURS" "$OFFICIAL"; do
    echo "== $v"; "$v/bin/python" -m pip list 2>/dev/null | grep -iE '^(vllm|torch|flashinfer|triton|transformers) '
  done
} > "$EV/machine.txt" 2>&1
cat "$EV/machine.txt"
# The GPU's clocks, temperature, power and load, read against an A/A's spread (a clock that
# drops mid-run shows here, not in the numbers).
# GPU_CLOCKS=1: the sampler; by default one reading before and after each step instead.
# Each reading is an NVML query of the driver, and on lease 5 (verify/results/
# 2026-12-07-ab-official/) vLLM's own prefill time was 3-5 ms longer with the sampler
# running, in both orders of two probe pairs.
SMI=
if [ "${GPU_CLOCKS:-0}" = 1 ]; then
  nvidia-smi --query-gpu=$GPU_QUERY --format=csv,noheader -l 1 >> "$EV/gpu-clocks.csv" 2>/dev/null &
  SMI=$!
fi
trap '[ -n "$SMI" ] && kill $SMI 2>/dev/null' EXIT
for m in $(for s in "${STEPS[@]}" ${PRESTART:-}; do model_of "$s"; done | sort -u); do
  [ -f "$W/models/$m/config.json" ] && continue
  say "model $m: config + tokenizer (verify/gpu/make_model.py)"
  timeout 120 "$PY" "$REPO/verify/gpu/make_model.py" "$m" "$W/models/$m" >> "$LOG" 2>&1 \
    || say "make_model $m failed"
done
# PRESTART: the servers of later steps (or of the next call), started now without waiting
# for them, so their start-up (about 100 s each) overlaps this call's steps or the next
# call's transfer. Servers named neither there nor by a step of this call are stopped
# first: the GPU holds four of the workloads' servers at most.
if [ -n "${PRESTART:-}" ]; then
  # shellcheck disable=SC2086  # lists of names
  stop_servers_except $PRESTART $STEPS_SERVERS
  for name in $PRESTART; do alive "$name" || start_server "$name"; done
  # PRESTART_WAIT=1: wait for them all before the first step, so that no server's start
  # (compile on the CPUs, weight init and graph capture on the GPU) overlaps a measurement.
  if [ "${PRESTART_WAIT:-0}" = 1 ]; then
    for name in $PRESTART; do
      while alive "$name" && ! healthy "$name" && [ "$(left)" -gt 0 ]; do sleep 2; done
      if healthy "$name"; then say "server $name ready (port $(port_of "$name"))"
      else say "server $name not ready (exited or out of time)"; fi
    done
  fi
fi
# KEEP_AWAKE=1: keep the CPUs out of idle while the steps measure (verify/gpu/keep_awake.py:
# a host whose threads wake late adds milliseconds to each request's TTFT at concurrency
# 1). Started after the servers are up, stopped with this call.
if [ "${KEEP_AWAKE:-0}" = 1 ]; then
  setsid "$PY" "$REPO/verify/gpu/keep_awake.py" >> "$LOG" 2>&1 < /dev/null &
  KA=$!
  trap '[ -n "$SMI" ] && kill $SMI 2>/dev/null; kill -TERM -- "-$KA" 2>/dev/null' EXIT
  sleep 1
  say "keep_awake on (session $KA)"
fi
for s in "${STEPS[@]}"; do [ "$s" = none ] || run_step "$s"; done
if [ "${KEEP_SERVERS:-0}" != 1 ]; then
  stop_servers_except  # none kept
fi
say "end: $(ls "$W/done" | tr '\n' ' ')"
pack
