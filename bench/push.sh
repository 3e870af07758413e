#!/usr/bin/env bash
# How the push could cost less: N lab hosts (default 20), masters already open (as nixpave has them), each
# round a fresh test-system closure pushed to all hosts at once in two ways:
#   - one `nix copy --to ssh://hostK` per host (what `nixpave deploy` runs today), and
#   - one `nix-store --export` of the closure, then one `nix-store --import` per host, fed on stdin.
# Prints the wall time of each. On this bench the push is CPU-bound, so the wall time is its CPU over the
# cores. The closure here is the test system (one small path), so the figures show fixed costs per host and
# process, not bandwidth; a real export would carry only the paths the hosts miss. Needs root.
#
#   bench/push.sh
#   SSH=current HOSTS=5 ROUNDS=2 bench/push.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

HOSTS=${HOSTS:-20}
ROUNDS=${ROUNDS:-3}
bench_setup nixpave-push
LAB=push$$
LABS+=("$LAB")
"$NIXPAVE" lab up --name "$LAB" --hosts "$HOSTS" "${LAB_UP_ARGS[@]}" >/dev/null
CFG=$NIXPAVE_LAB_DIR/$LAB/ssh_config
bench_extra_cleanup() {
  for i in $(seq "$HOSTS"); do ssh -F "$CFG" -o ControlPath="$WORK/c$i" -O exit "host$i" 2>/dev/null || true; done
}
for i in $(seq "$HOSTS"); do
  ssh -F "$CFG" -o ControlMaster=yes -o ControlPath="$WORK/c$i" -o ControlPersist=300 -fN "host$i"
done

build() { # TAG: prints the store path of a test system tagged TAG
  mkdir -p "$WORK/sys-$1"
  cp crates/nixpave-deploy/tests/fixtures/system.nix "$WORK/sys-$1/"
  nix-build --no-out-link "$WORK/sys-$1/system.nix" --argstr tag "$1" 2>/dev/null
}
now() { date +%s.%N; }

for round in $(seq "$ROUNDS"); do
  path=$(build "copy-$round-$$")
  t0=$(now)
  for i in $(seq "$HOSTS"); do
    NIX_SSHOPTS="-F $CFG -o ControlPath=$WORK/c$i -o ControlMaster=no" \
      nix --extra-experimental-features nix-command copy --to "ssh://host$i" "$path" 2>/dev/null &
  done
  wait
  t1=$(now)
  path=$(build "import-$round-$$")
  t2=$(now)
  # shellcheck disable=SC2046 # one argument per path
  nix-store --export $(nix-store -qR "$path") > "$WORK/closure.export"
  for i in $(seq "$HOSTS"); do
    ssh -F "$CFG" -o ControlPath="$WORK/c$i" -o ControlMaster=no "host$i" nix-store --import \
      < "$WORK/closure.export" >/dev/null &
  done
  wait
  t3=$(now)
  for i in $(seq "$HOSTS"); do
    ssh -F "$CFG" -o ControlPath="$WORK/c$i" -o ControlMaster=no "host$i" test -e "$path" \
      || { echo "host$i lacks $path after the import" >&2; exit 1; }
  done
  printf 'round %s  hosts=%s  %s x nix copy %6.2f s   export once + %s x import %6.2f s   (%s bytes exported)\n' \
    "$round" "$HOSTS" "$HOSTS" "$(echo "$t1 - $t0" | bc)" "$HOSTS" "$(echo "$t3 - $t2" | bc)" \
    "$(stat -c %s "$WORK/closure.export")"
done
