#!/usr/bin/env bash
# Lab and exec benchmark: wall time of `nixpave lab up --hosts N`, `nixpave exec LAB -- true`
# (connect + one command on every host, in parallel), `nixpave facts` on one host, and
# `nixpave lab down`, for N in SIZES, REPEAT times each; prints every run and the median.
# Needs root.
#
#   bench/lab.sh                     # SIZES="1 5 20" REPEAT=3
#   NIXPAVE=target/debug/nixpave SIZES=5 bench/lab.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"1 5 20"}
REPEAT=${REPEAT:-3}
NIXPAVE=${NIXPAVE:-}
if [ -z "$NIXPAVE" ]; then
  cargo build --release -p nixpave >&2
  NIXPAVE=${CARGO_TARGET_DIR:-target}/release/nixpave
fi
# Not under /tmp: lab hosts get a private /tmp.
mkdir -p /var/tmp
WORK=$(mktemp -d /var/tmp/nixpave-bench-lab.XXXXXX)
export NIXPAVE_LAB_DIR=$WORK
NAME=bench$$
trap '"$NIXPAVE" lab down --name "$NAME" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

printf '%-6s %-8s %s\n' hosts step "seconds (runs … | median)"
for n in $SIZES; do
  up=(); ex=(); fa=(); dn=()
  for _ in $(seq "$REPEAT"); do
    t=$(now); "$NIXPAVE" lab up --name "$NAME" --hosts "$n" >/dev/null; up+=("$(echo "$(now) - $t" | bc)")
    t=$(now); "$NIXPAVE" exec "$NAME" -- true >/dev/null 2>&1; ex+=("$(echo "$(now) - $t" | bc)")
    t=$(now); "$NIXPAVE" facts "$NAME:host1" >/dev/null; fa+=("$(echo "$(now) - $t" | bc)")
    t=$(now); "$NIXPAVE" lab down --name "$NAME" >/dev/null; dn+=("$(echo "$(now) - $t" | bc)")
  done
  for step in up exec facts down; do
    case $step in up) v=("${up[@]}");; exec) v=("${ex[@]}");; facts) v=("${fa[@]}");; down) v=("${dn[@]}");; esac
    printf '%-6s %-8s %s | %s\n' "$n" "$step" "$(printf '%.2f ' "${v[@]}")" \
      "$(printf '%s\n' "${v[@]}" | median | xargs printf '%.2f')"
  done
done
