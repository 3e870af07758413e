#!/usr/bin/env bash
# Where a deploy's wall time goes, on N lab hosts (default 20): a fresh deploy and a no-op redeploy, each
# with nixpave's timing events on (`NIXPAVE_LOG=nixpave::timing=info`, see crates/nixpave-deploy/src/timing.rs).
# Prints per step: how many times it ran, its mean and max per host, and its sum over hosts; fleet-wide steps
# (eval, build) once. Steps: eval, checks, build (fleet), connect (ssh master), probe, push (nix copy),
# activate (agent upload + start + activation + the agent's "ready" poll), confirm (the fresh login), wait
# (the final record; includes the agent's confirmation poll). Needs root.
#
#   bench/breakdown.sh                 # 20 hosts, release build
#   HOSTS=5 PARALLEL=1 bench/breakdown.sh
set -euo pipefail
cd "$(dirname "$0")/.."

HOSTS=${HOSTS:-20}
PARALLEL=${PARALLEL:-}
NIXPAVE=${NIXPAVE:-}
if [ -z "$NIXPAVE" ]; then
  cargo build --release -p nixpave >&2
  NIXPAVE=${CARGO_TARGET_DIR:-target}/release/nixpave
fi
mkdir -p /var/tmp
WORK=$(mktemp -d /var/tmp/nixpave-breakdown.XXXXXX)
export NIXPAVE_LAB_DIR=$WORK/labs
export NIX_CONF_DIR=$WORK/nixconf
mkdir -p "$NIX_CONF_DIR" "$NIXPAVE_LAB_DIR"
printf 'experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nsandbox = false\n' \
  > "$NIX_CONF_DIR/nix.conf"
LAB=bd$$
cleanup() {
  "$NIXPAVE" lab down --name "$LAB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"$NIXPAVE" lab up --name "$LAB" --hosts "$HOSTS" >/dev/null

flake=$WORK/flake
mkdir -p "$flake"
cp crates/nixpave-deploy/tests/fixtures/system.nix "$flake/system.nix"
cat > "$flake/flake.nix" <<NIX
{ outputs = { self }: let sys = import ./system.nix { tag = "breakdown-$(date +%s%N)"; }; in {
  deploy.nodes = builtins.listToAttrs (map (i: {
    name = "host\${toString i}";
    value = { hostname = "host\${toString i}"; profiles.system.path = sys; };
  }) (builtins.genList (i: i + 1) $HOSTS));
}; }
NIX

par=()
[ -z "$PARALLEL" ] || par=(--parallel "$PARALLEL")
for run in fresh no-op; do
  t0=$(date +%s.%N)
  NIXPAVE_LOG=nixpave::timing=info "$NIXPAVE" deploy "path:$flake" --lab "$LAB" "${par[@]}" --json \
    > "$WORK/$run.json" 2> "$WORK/$run.log"
  t1=$(date +%s.%N)
  echo "== $run: $HOSTS hosts, wall $(echo "$t1 - $t0" | bc) s, $(tail -n 1 "$WORK/$run.json" | jq -r '[.hosts[].outcome] | group_by(.) | map("\(.[0])=\(length)") | join(",")')"
  python3 - "$WORK/$run.log" <<'PY'
import re, sys, collections
steps = collections.OrderedDict()
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"step=(\S+) host=(\S+) ms=(\d+)", line)
    if m:
        steps.setdefault(m.group(1), []).append(int(m.group(3)))
print(f"  {'step':<9} {'n':>4} {'mean ms':>8} {'max ms':>7} {'sum ms':>8}")
for step, ms in steps.items():
    print(f"  {step:<9} {len(ms):>4} {sum(ms)/len(ms):>8.0f} {max(ms):>7} {sum(ms):>8}")
PY
done
