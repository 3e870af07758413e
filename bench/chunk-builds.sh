#!/usr/bin/env bash
# Chunks' builds in parallel: a fresh deploy of N lab hosts (default 20) whose nodes each have their own
# system, each taking BUILD_DELAY seconds to build (default 1), listed and evaluated CHUNK nodes at a time
# (default 5, through NIXPAVE_EVAL_NODE_LIMIT). Prints each run's wall time. MAX_JOBS sets nix's max-jobs
# (default 1, nix's own default). Needs root.
#
#   ROUNDS=3 NIXPAVE="/var/tmp/nixpave-before target/release/nixpave" bench/chunk-builds.sh   # alternating
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

HOSTS=${HOSTS:-20}
CHUNK=${CHUNK:-5}
BUILD_DELAY=${BUILD_DELAY:-1}
MAX_JOBS=${MAX_JOBS:-1}
ROUNDS=${ROUNDS:-1}
bench_setup nixpave-chunk-builds
echo "max-jobs = $MAX_JOBS" >> "$NIX_CONF_DIR/nix.conf"
read -r -a BINARIES <<< "$NIXPAVE"
NIXPAVE=${BINARIES[0]}
LAB=cb$$
LABS+=("$LAB")
"$NIXPAVE" lab up --name "$LAB" --hosts "$HOSTS" "${LAB_UP_ARGS[@]}" >/dev/null

write_distinct_flake() { # DIR N TAG: like write_fleet_flake, but a system of its own per node
  mkdir -p "$1"
  cp crates/nixpave-deploy/tests/fixtures/system.nix "$1/system.nix"
  cat > "$1/flake.nix" <<NIX
{ outputs = { self }: {
  deploy.nodes = builtins.listToAttrs (map (i: {
    name = "host\${toString i}";
    value = { hostname = "host\${toString i}";
      profiles.system.path = import ./system.nix { tag = "$3-\${toString i}"; buildDelay = "$BUILD_DELAY"; }; };
  }) (builtins.genList (i: i + 1) $2));
}; }
NIX
}

for round in $(seq "$ROUNDS"); do
  for bin in "${BINARIES[@]}"; do
    rm -rf "$WORK/flake"
    write_distinct_flake "$WORK/flake" "$HOSTS" "chunk-builds-$(date +%s%N)"
    load=$(cut -d' ' -f1 /proc/loadavg)
    t0=$(date +%s.%N)
    NIXPAVE_EVAL_NODE_LIMIT=$CHUNK "$bin" deploy "path:$WORK/flake" --lab "$LAB" --json > "$WORK/out.json" 2> "$WORK/out.log"
    t1=$(date +%s.%N)
    outcomes=$(tail -n 1 "$WORK/out.json" | jq -r '[.hosts[].outcome] | group_by(.) | map("\(.[0])=\(length)") | join(",")')
    echo "round $round $bin: wall $(echo "$t1 - $t0" | bc) s, load before $load, $outcomes"
  done
done
