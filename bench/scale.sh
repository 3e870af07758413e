#!/usr/bin/env bash
# A 200-host lab fleet (HOSTS), fresh deploy then no-op, with --parallel 50 (PARALLEL; empty: the default).
# Records wall time, the deployer's peak RSS (GNU time), and its peak threads and open file descriptors
# (sampled from /proc every 100 ms), and keeps screenshots of the terminal view (tmux capture-pane of a
# 120x50 window: one mid-deploy, the last one) in bench/scale-tty.txt (TTY=path to change). Needs root, tmux.
#
#   bench/scale.sh
#   HOSTS=50 PARALLEL= bench/scale.sh
#   DEPLOY_ARGS="--ssh-persist 300" KINDS="fresh no-op fresh-again no-op" TTY=/dev/null bench/scale.sh
#     (extra deploy arguments; fresh-again deploys a new generation, here over the masters kept open)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
for tool in tmux /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench/scale.sh needs $tool (scripts/install-deps.sh installs it: apt-get install tmux time)" >&2; exit 1; }
done

HOSTS=${HOSTS:-200}
PARALLEL=${PARALLEL-50}
TTY=${TTY:-bench/scale-tty.txt}
bench_setup nixpave-scale
NIXPAVE=$(realpath "$NIXPAVE")
LAB=sc$$
LABS+=("$LAB")
t0=$(date +%s.%N)
"$NIXPAVE" lab up --name "$LAB" --hosts "$HOSTS" "${LAB_UP_ARGS[@]}" >/dev/null
echo "lab up: $HOSTS hosts in $(echo "$(date +%s.%N) - $t0" | bc) s"

flake=$WORK/flake
write_fleet_flake "$flake" "$HOSTS" "scale-$(date +%s%N)"

par=()
[ -z "$PARALLEL" ] || par=(--parallel "$PARALLEL")
eval "par+=(${DEPLOY_ARGS:-})"
# Peak threads and fds of the nixpave process, sampled while it runs.
sample() { # PIDFILE OUT
  local pid= threads=0 fds=0 t f tries=0
  while [ -z "$pid" ] && [ "$tries" -lt 600 ]; do
    pid=$(pgrep -n -P "$(cat "$1" 2>/dev/null || echo 0)" 2>/dev/null || true)
    tries=$((tries + 1))
    sleep 0.05
  done
  while [ -n "$pid" ] && [ -d "/proc/$pid" ]; do
    t=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    f=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l || true) # the process may be gone by now
    [ "${t:-0}" -gt "$threads" ] && threads=$t
    [ "$f" -gt "$fds" ] && fds=$f
    sleep 0.1
  done
  echo "$threads $fds" > "$2"
}
for kind in ${KINDS:-fresh no-op}; do
  [ "$kind" != fresh-again ] || write_fleet_flake "$flake" "$HOSTS" "scale-$(date +%s%N)"
  # GNU time around nixpave, in a detached tmux window (so nixpave sees a 120x50 terminal); the pane is
  # captured every second: the screenshots of the TTY view.
  rm -f "$WORK/pid" "$WORK/time"
  # The runner's pid is GNU time's (exec); nixpave is its child.
  cat > "$WORK/run.sh" <<RUN
#!/bin/sh
echo \$\$ > $WORK/pid
exec /usr/bin/time -f '%e %M' -o $WORK/time $NIXPAVE deploy path:$flake --lab $LAB ${par[*]@Q}
RUN
  chmod +x "$WORK/run.sh"
  tmux new-session -d -s "$LAB" -x 120 -y 50 "$WORK/run.sh; sleep 3"
  sample "$WORK/pid" "$WORK/peak" &
  sampler=$!
  n=0
  mkdir -p "$WORK/frames-$kind"
  while tmux has-session -t "$LAB" 2>/dev/null; do
    tmux capture-pane -p -t "$LAB" > "$WORK/frames-$kind/$(printf %04d $n)" 2>/dev/null || true
    n=$((n + 1))
    sleep 1
  done
  wait "$sampler" || true
  read -r wall rss_kib < "$WORK/time"
  read -r threads fds < "$WORK/peak"
  printf '%-6s hosts=%s parallel=%s  wall %6.1f s  peak RSS %5.1f MiB  peak threads %s  peak fds %s\n' \
    "$kind" "$HOSTS" "${PARALLEL:-default}" "$wall" "$(echo "scale=1; $rss_kib / 1024" | bc)" "$threads" "$fds"
done
{
  frames=("$WORK"/frames-fresh/*)
  mid=${frames[$(( ${#frames[@]} / 2 ))]}
  echo "# nixpave deploy of $HOSTS lab hosts (--parallel ${PARALLEL:-default}) in a 120x50 terminal (tmux capture-pane)"
  echo "# --- during the fresh deploy ($(basename "$mid") s after its start) ---"
  sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$mid"
  echo "# --- its last screen ---"
  sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "${frames[-1]}"
} > "$TTY"
echo "TTY capture: $TTY"
