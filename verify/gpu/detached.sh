# Start a long-running command in a session of its own and stop exactly that session
# (sourced by h200_e2e.sh, and by tests/unit/test_detached_sh.py, which runs these
# functions with a harmless `sleep`).
#
# Why not `( cd "$W" && setsid nohup CMD & echo $! > PIDFILE )`: the `&` backgrounds the
# whole `cd && setsid` list, so bash forks a subshell for it and `$!` is that subshell, a
# process of the script's own session (reproduced with bash 5.2.15). `pkill -s` of its
# session id then signals the script itself. Here the pid is written by the process that
# becomes CMD (`exec`), after setsid made it the leader of a new session, so PIDFILE holds
# the real session leader whatever setsid had to fork.

# start_detached PIDFILE LOGFILE DIR CMD [ARGS...]: CMD in DIR, in a new session, stdout
# and stderr to LOGFILE, its pid (= its session id) in PIDFILE once this returns.
start_detached() {
  local pidfile=$1 log=$2 dir=$3
  shift 3
  rm -f "$pidfile"
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  ( cd "$dir" && exec setsid nohup bash -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
      "$pidfile" "$@" > "$log" 2>&1 < /dev/null ) &
  local _
  for _ in $(seq 1 100); do [ -s "$pidfile" ] && return 0; sleep 0.05; done
  echo "start_detached: $1 did not start (no $pidfile)" >&2
  return 1
}

# stop_detached PIDFILE [GRACE_S]: SIGTERM to every process of the session whose leader
# PIDFILE names, SIGKILL to what is left after GRACE_S (default 15). Never this shell's own
# session: a pid that is not a session leader, or leads ours, gets a signal of its own only.
stop_detached() {
  local pidfile=$1 grace=${2:-15} pid sid own _
  pid=$(cat "$pidfile" 2>/dev/null) || return 0
  [ -n "$pid" ] || return 0
  sid=$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')
  [ -n "$sid" ] || return 0  # already gone
  own=$(ps -o sid= -p $$ | tr -d ' ')
  if [ "$sid" != "$pid" ] || [ "$sid" = "$own" ]; then
    echo "stop_detached: $pid does not lead a session of its own (sid $sid, ours $own):" \
         "stopping that process only" >&2
    kill -TERM "$pid" 2>/dev/null
    return 0
  fi
  pkill -TERM -s "$sid"
  for _ in $(seq 1 $((grace * 10))); do
    pgrep -s "$sid" > /dev/null || return 0
    sleep 0.1
  done
  pkill -KILL -s "$sid"
}
