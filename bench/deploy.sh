#!/usr/bin/env bash
# Deploy benchmark on lab hosts (network namespaces with their own sshd and /nix):
# for 1, 5 and 20 hosts, with --parallel 1 (like deploy-rs's one host after the other) and the default
# (16 per core, 10..64), deploy a fresh closure and then a no-op.
# Prints wall times and ssh handshakes per host (from the deploy's JSON report). Needs root.
#
#   bench/deploy.sh            # all sizes
#   SIZES="1 5" bench/deploy.sh
#   DEPLOY_ARGS="--ssh-opts '-o KexAlgorithms=curve25519-sha256'" bench/deploy.sh   # extra deploy arguments
#   SSH=current bench/deploy.sh   # OpenSSH 10 on both ends (bench/common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

SIZES=${SIZES:-"1 5 20"}
eval "extra=(${DEPLOY_ARGS:-})"
bench_setup nixpave-bench

now() { date +%s.%N; }
run() { # LABEL N PARALLEL FLAKE LAB
  local t0 t1 report
  t0=$(now)
  local par=()
  [ "$3" = default ] || par=(--parallel "$3")
  report=$("$NIXPAVE" deploy "path:$4" --lab "$5" "${par[@]}" "${extra[@]}" --json | tail -n 1)
  t1=$(now)
  local failed hs outcomes
  failed=$(echo "$report" | jq .failed)
  hs=$(echo "$report" | jq .ssh_handshakes)
  outcomes=$(echo "$report" | jq -r '[.hosts[].outcome] | group_by(.) | map("\(.[0])=\(length)") | join(",")')
  printf '%-8s hosts=%-3s parallel=%-7s wall=%6.2fs  handshakes/host=%s  %s  failed=%s\n' \
    "$1" "$2" "$3" "$(echo "$t1 - $t0" | bc)" "$(echo "scale=1; $hs / $2" | bc)" "$outcomes" "$failed"
}

for n in $SIZES; do
  lab=bench$n
  LABS+=("$lab")
  "$NIXPAVE" lab up --name "$lab" --hosts "$n" "${LAB_UP_ARGS[@]}" >/dev/null
  for par in 1 default; do
    flake=$WORK/flake-$n-$par
    write_fleet_flake "$flake" "$n" "bench-$n-$par-$(date +%s%N)"
    run fresh "$n" "$par" "$flake" "$lab"
    run no-op "$n" "$par" "$flake" "$lab"
  done
  "$NIXPAVE" lab down --name "$lab" >/dev/null
done
