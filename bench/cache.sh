#!/usr/bin/env bash
# Bytes the deployer sends for N lab hosts (default 20) and a ~50 MiB closure: directly (`nix copy` to each
# host) versus through a binary cache (`--cache`: pushed once to a signed file:// cache, served over HTTP by
# another machine — here one more lab host's network namespace — from which the targets fetch in parallel).
# The deployer's bytes are the TX counter of the lab bridge in the root namespace (/proc/net/dev): everything
# this machine sends to the lab; the cache's are what its veth brings into the bridge. Needs root, python3 (the HTTP server).
#
#   bench/cache.sh                # 20 hosts, 50 MiB
#   HOSTS=5 MIB=10 bench/cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

HOSTS=${HOSTS:-20}
MIB=${MIB:-50}
bench_setup nixpave-cache-bench
mkdir -p "$WORK/cache"
LAB=cb$$
LABS+=("$LAB")
SERVER=
bench_extra_cleanup() { [ -z "$SERVER" ] || kill "$SERVER" 2>/dev/null; }
# One host more than the targets: the last one serves the cache.
"$NIXPAVE" lab up --name "$LAB" --hosts "$((HOSTS + 1))" "${LAB_UP_ARGS[@]}" >/dev/null
bridge=$(jq -r .bridge "$NIXPAVE_LAB_DIR/$LAB/state.json")
cache_ns=$(jq -r ".hosts[$HOSTS].netns" "$NIXPAVE_LAB_DIR/$LAB/inventory.json")
cache_ip=$(jq -r ".hosts[$HOSTS].host" "$NIXPAVE_LAB_DIR/$LAB/inventory.json")
cache_veth=$(jq -r ".hosts[$HOSTS].veth // empty" "$NIXPAVE_LAB_DIR/$LAB/state.json")
nix --extra-experimental-features nix-command key generate-secret --key-name bench-cache > "$WORK/cache.sec"
ip netns exec "$cache_ns" python3 -m http.server --bind "$cache_ip" 8080 --directory "$WORK/cache" \
  >/dev/null 2>&1 &
SERVER=$!

# A flake whose HOSTS nodes share one system with MIB MiB of incompressible data in its closure.
write_flake() { # DIR TAG
  mkdir -p "$1"
  cp crates/nixpave-deploy/tests/fixtures/system.nix "$1/system.nix"
  cat > "$1/flake.nix" <<NIX
{ outputs = { self }: let
    blob = builtins.derivation { name = "blob-$2"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "/usr/bin/head -c $((MIB * 1024 * 1024)) /dev/urandom > \$out" ]; };
    base = import ./system.nix { tag = "$2"; };
    sys = builtins.derivation { name = "cache-bench-$2"; system = "x86_64-linux"; builder = "/bin/sh";
      inherit base blob; args = [ "-c" "/bin/cp -r \$base \$out; /bin/chmod u+w \$out; /bin/ln -s \$blob \$out/blob" ]; };
  in {
  deploy.nodes = builtins.listToAttrs (map (i: {
    name = "host\${toString i}";
    value = { hostname = "host\${toString i}"; profiles.system.path = sys; };
  }) (builtins.genList (i: i + 1) $HOSTS));
}; }
NIX
}

# Counters of interface $1 in the root namespace: TX (what this machine sent on it) and RX (what came in).
counter() { sed 's/:/ /' /proc/net/dev | awk -v d="$1" -v f="$2" '$1 == d { print $f }'; }
tx() { counter "$1" 10; }
rx() { counter "$1" 2; }
mib() { echo "scale=1; $1 / 1048576" | bc; }

for mode in direct cache; do
  flake=$WORK/flake-$mode
  write_flake "$flake" "$mode-$(date +%s%N)"
  # Build first, so both modes measure the deploy alone.
  "$NIXPAVE" deploy "path:$flake" --lab "$LAB" --dry-run >/dev/null 2>&1
  extra=()
  [ "$mode" = direct ] || extra=(--cache "file://$WORK/cache?secret-key=$WORK/cache.sec&compression=none"
                                 --cache-url "http://$cache_ip:8080")
  before=$(tx "$bridge"); cache_before=$(rx "$cache_veth")
  t0=$(date +%s.%N)
  "$NIXPAVE" deploy "path:$flake" --lab "$LAB" "${extra[@]}" --json > "$WORK/$mode.json" 2>/dev/null || true
  t1=$(date +%s.%N)
  sent=$(( $(tx "$bridge") - before )); served=$(( $(rx "$cache_veth") - cache_before ))
  printf '%-6s hosts=%s closure=%sMiB  deployer sent %8s MiB  cache served %8s MiB  wall %5.1fs  %s\n' \
    "$mode" "$HOSTS" "$MIB" "$(mib "$sent")" "$(mib "$served")" "$(echo "$t1 - $t0" | bc)" \
    "$(tail -n 1 "$WORK/$mode.json" | jq -r '[.hosts[].outcome] | group_by(.) | map("\(.[0])=\(length)") | join(",")')"
done
