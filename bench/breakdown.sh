#!/usr/bin/env bash
# Where a deploy's wall time goes, on N lab hosts (default 20): a fresh deploy and a no-op redeploy, each
# with nixpave's timing events on (`NIXPAVE_LOG=nixpave::timing=info`, see crates/nixpave-deploy/src/timing.rs).
# Prints the median wall time and per step: how many times it ran, its mean and max per host, and its sum over
# hosts; fleet-wide steps (eval, build) once. Steps: eval, checks, build (fleet), connect (ssh master), probe, push (nix copy),
# activate (agent upload + start + activation + the agent's "ready" poll), confirm (the fresh login), wait
# (the final record; includes the agent's confirmation poll). Needs root.
#
#   bench/breakdown.sh                 # 20 hosts, release build
#   HOSTS=5 PARALLEL=1 bench/breakdown.sh
#   DEPLOY_ARGS="--ssh-opts '-o KexAlgorithms=curve25519-sha256'" bench/breakdown.sh   # extra deploy arguments
#   ROUNDS=3 NIXPAVE="/tmp/nixpave-old target/release/nixpave" bench/breakdown.sh   # two builds, alternating
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

HOSTS=${HOSTS:-20}
PARALLEL=${PARALLEL:-}
ROUNDS=${ROUNDS:-1}
eval "extra=(${DEPLOY_ARGS:-})"
bench_setup nixpave-breakdown
# NIXPAVE may name several binaries (before/after a change): the first one runs the lab.
read -r -a BINARIES <<< "$NIXPAVE"
NIXPAVE=${BINARIES[0]}
LAB=bd$$
LABS+=("$LAB")
"$NIXPAVE" lab up --name "$LAB" --hosts "$HOSTS" "${LAB_UP_ARGS[@]}" >/dev/null

par=()
[ -z "$PARALLEL" ] || par=(--parallel "$PARALLEL")
# Rounds alternate the binaries, so a busy machine hurts them alike; the summary is per binary and kind.
for round in $(seq "$ROUNDS"); do
  for bin in "${BINARIES[@]}"; do
    b=$(basename "$bin")
    rm -rf "$WORK/flake"
    write_fleet_flake "$WORK/flake" "$HOSTS" "breakdown-$(date +%s%N)"
    for kind in fresh no-op; do
      t0=$(date +%s.%N)
      NIXPAVE_LOG=nixpave::timing=info "$bin" deploy "path:$WORK/flake" --lab "$LAB" "${par[@]}" "${extra[@]}" --json \
        > "$WORK/out.json" 2> "$WORK/out.log"
      t1=$(date +%s.%N)
      outcomes=$(tail -n 1 "$WORK/out.json" | jq -r '[.hosts[].outcome] | group_by(.) | map("\(.[0])=\(length)") | join(",")')
      echo "round $round $b $kind: wall $(echo "$t1 - $t0" | bc) s, $outcomes" >&2
      { echo "run $b $kind wall_ms $(echo "($t1 - $t0) * 1000 / 1" | bc)"; grep -o 'step=[^ ]* host=[^ ]* ms=[0-9]*' "$WORK/out.log" | sed "s/^/run $b $kind /"; } >> "$WORK/all"
    done
  done
done
python3 - "$WORK/all" "$HOSTS" <<'PY'
import sys, re, statistics, collections
walls = collections.defaultdict(list)
steps = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    f = line.split()
    if f[3] == "wall_ms":
        walls[(f[1], f[2])].append(int(f[4]))
    else:
        m = re.match(r"step=(\S+) host=(\S+) ms=(\d+)", " ".join(f[3:]))
        steps[(f[1], f[2])][m.group(1)].append(int(m.group(3)))
for key in walls:
    w = walls[key]
    print(f"== {key[0]} {key[1]}, {sys.argv[2]} hosts: wall median {statistics.median(w)/1000:.2f} s (runs: {', '.join(f'{x/1000:.2f}' for x in w)})")
    print(f"  {'step':<9} {'n':>4} {'mean ms':>8} {'max ms':>7} {'sum ms':>8}")
    for step, ms in steps[key].items():
        print(f"  {step:<9} {len(ms):>4} {sum(ms)/len(ms):>8.0f} {max(ms):>7} {sum(ms):>8}")
PY
