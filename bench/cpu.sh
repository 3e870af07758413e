#!/usr/bin/env bash
# Whose CPU a deploy costs: wall time, the deployer's CPU (nixpave and its ssh/nix children) and the lab
# targets' CPU (their sshd, nix-store --serve, nix-env, the agent, the activation), measured with cgroup CPU
# accounting (v1 cpuacct or v2), for a fresh deploy and a no-op on N lab hosts. On this bench deployer and
# targets share the machine's cores, so the wall time cannot go below (deployer + targets) / cores.
# Several binaries (before/after a change) alternate round by round. Needs root.
#
#   bench/cpu.sh                                     # 20 hosts, release build, 2 rounds
#   HOSTS=1 ROUNDS=3 NIXPAVE="/tmp/nixpave-old target/release/nixpave" bench/cpu.sh
#   DEPLOY_ARGS="--ssh-opts '-o KexAlgorithms=curve25519-sha256'" bench/cpu.sh
#   SSH=current bench/cpu.sh   # OpenSSH 10 on both ends (bench/common.sh)
#   BUSY=1 bench/cpu.sh        # also how busy the machine's CPUs were in each 100 ms of each deploy
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

HOSTS=${HOSTS:-20}
ROUNDS=${ROUNDS:-2}
eval "extra=(${DEPLOY_ARGS:-})"
bench_setup nixpave-cpu
read -r -a BINARIES <<< "$NIXPAVE"
NIXPAVE=${BINARIES[0]}

# Two cgroups, one for the lab's processes and one for the deploy's; usage() prints nanoseconds.
if [ -d /sys/fs/cgroup/cpuacct ]; then
  CG=/sys/fs/cgroup/cpuacct
  usage() { cat "$CG/$1/cpuacct.usage"; }
else
  CG=/sys/fs/cgroup
  echo +cpu > "$CG/cgroup.subtree_control" 2>/dev/null || true
  usage() { awk '/^usage_usec/ { print $2 * 1000 }' "$CG/$1/cpu.stat"; }
fi
LAB_CG=nixpave-bench-lab-$$ DEPLOY_CG=nixpave-bench-deploy-$$
mkdir "$CG/$LAB_CG" "$CG/$DEPLOY_CG"
bench_extra_cleanup() {
  # The lab is down by now (bench_cleanup runs this first, so take it down here).
  for lab in "${LABS[@]}"; do "$NIXPAVE" lab down --name "$lab" >/dev/null 2>&1 || true; done
  rmdir "$CG/$LAB_CG" "$CG/$DEPLOY_CG" 2>/dev/null || true
}
LAB=cpu$$
LABS+=("$LAB")
( echo "$BASHPID" > "$CG/$LAB_CG/cgroup.procs"; exec "$NIXPAVE" lab up --name "$LAB" --hosts "$HOSTS" "${LAB_UP_ARGS[@]}" >/dev/null )

seconds() { awk -v ns="$1" 'BEGIN { printf "%.2f", ns / 1e9 }'; }
# BUSY=1: samples /proc/stat's first line every 100 ms until file $1 exists, then prints busy % per sample.
busy_sampler() {
  local done=$1 prev_total=0 prev_idle=0 line=() total idle out=()
  while :; do
    read -r -a line < /proc/stat
    total=0; for v in "${line[@]:1}"; do total=$((total + v)); done
    idle=$((line[4] + line[5]))
    if [ "$prev_total" -gt 0 ] && [ "$total" -gt "$prev_total" ]; then
      out+=($((100 - 100 * (idle - prev_idle) / (total - prev_total))))
    fi
    prev_total=$total prev_idle=$idle
    [ -e "$done" ] && break
    sleep 0.1
  done
  echo "  busy % per 100 ms: ${out[*]}"
}
for round in $(seq "$ROUNDS"); do
  for bin in "${BINARIES[@]}"; do
    rm -rf "$WORK/flake"
    write_fleet_flake "$WORK/flake" "$HOSTS" "cpu-$(date +%s%N)"
    for kind in fresh no-op; do
      rm -f "$WORK/deployed"
      if [ -n "${BUSY:-}" ]; then busy_sampler "$WORK/deployed" > "$WORK/busy.txt" & fi
      l0=$(usage "$LAB_CG"); d0=$(usage "$DEPLOY_CG"); t0=$(date +%s%N)
      ( echo "$BASHPID" > "$CG/$DEPLOY_CG/cgroup.procs"
        exec "$bin" deploy "path:$WORK/flake" --lab "$LAB" "${extra[@]}" --json > "$WORK/out.json" )
      t1=$(date +%s%N)
      touch "$WORK/deployed"
      sleep 0.5 # the targets' last processes (the agent's exit) are counted too
      l1=$(usage "$LAB_CG"); d1=$(usage "$DEPLOY_CG")
      outcomes=$(tail -n 1 "$WORK/out.json" | jq -r '[.hosts[].outcome] | group_by(.) | map("\(.[0])=\(length)") | join(",")')
      printf 'round %s %-14s %-6s wall %5s s  deployer cpu %5s s  targets cpu %5s s  %s\n' "$round" \
        "$(basename "$bin")" "$kind" "$(seconds $((t1 - t0)))" "$(seconds $((d1 - d0)))" "$(seconds $((l1 - l0)))" "$outcomes"
      if [ -n "${BUSY:-}" ]; then wait; cat "$WORK/busy.txt"; fi
    done
  done
done
