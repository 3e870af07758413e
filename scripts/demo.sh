#!/usr/bin/env bash
# Demo of nixpave's main job on a fresh Debian 12 machine (as root): a lab fleet of three hosts
# (network namespaces, each with its own sshd and /nix store) gets a release deployed in
# parallel with health checks and keys; then a broken release is rolled out and magic rollback
# brings the failing host back by itself. Ends with `nixpave disk plan` of a server layout.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

bash scripts/install-deps.sh
nixpave=${NIXPAVE:-}
if [ -z "$nixpave" ]; then
  cargo build --release -q -p nixpave
  nixpave=${CARGO_TARGET_DIR:-$repo/target}/release/nixpave
fi

# Everything lives in one scratch directory (not under /tmp: lab hosts get a private /tmp).
mkdir -p /var/tmp
work=$(mktemp -d /var/tmp/nixpave-demo.XXXXXX)
export NIXPAVE_LAB_DIR=$work/labs NIX_CONF_DIR=$work/nixconf
mkdir -p "$NIX_CONF_DIR"
printf 'experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nsandbox = false\n' \
  > "$NIX_CONF_DIR/nix.conf"
cp -r examples/fleet "$work/fleet"
cleanup() { "$nixpave" lab down --name demo >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "nixpave lab up --name demo --hosts 3"
"$nixpave" lab up --name demo --hosts 3
"$nixpave" exec --lab-dir "$NIXPAVE_LAB_DIR" demo -- uname -n

say "release v1 to every host in parallel (push, keys, activate, new-login proof, health checks, confirm)"
echo '{ name = "v1"; brokenHost = ""; }' > "$work/fleet/release.nix"
"$nixpave" deploy "path:$work/fleet" --lab demo

say "same release again: a no-op costs one round trip per host"
"$nixpave" deploy "path:$work/fleet" --lab demo

say "release v2, broken on host2: host2 rolls back by itself, the others move on"
echo '{ name = "v2"; brokenHost = "host2"; }' > "$work/fleet/release.nix"
"$nixpave" deploy "path:$work/fleet" --lab demo || echo "(exit status $?: some hosts failed, as expected)"

say "nixpave status"
"$nixpave" status "path:$work/fleet" --lab demo

say "nixpave disk plan examples/server.nix"
"$nixpave" disk plan examples/server.nix | tail -n 25
