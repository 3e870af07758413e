#!/usr/bin/env bash
# Measures `nixpave disk plan --json` per layout, with nix evaluation (.nix) and without it
# (the same layout pre-evaluated to .json), as the mean wall time of RUNS runs.
#
# Usage: bench/disk-plan.sh [path/to/nixpave] [RUNS]
# Layouts: examples/*.nix, crates/nixpave-disk/fixtures/*.nix and, when ../shared exists,
# the upstream disko examples. Function-valued layouts are only timed with evaluation.
set -euo pipefail

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
nixpave=${1:-}
runs=${2:-20}
if [ -z "$nixpave" ]; then
  (cd "$repo" && cargo build -q --release -p nixpave)
  nixpave="${CARGO_TARGET_DIR:-$repo/target}/release/nixpave"
fi
layouts=("$repo"/examples/*.nix "$repo"/crates/nixpave-disk/fixtures/*.nix)
if [ -d "$repo/../shared/reference/disko/examples" ]; then
  layouts+=("$repo"/../shared/reference/disko/examples/*.nix)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mean_ms() { # command... -> mean milliseconds over $runs runs
  local start end
  start=$(date +%s%N)
  for _ in $(seq "$runs"); do "$@" >/dev/null; done
  end=$(date +%s%N)
  echo $(( (end - start) / runs / 1000000 ))
}

printf '%-34s %12s %12s\n' layout "with nix ms" "json ms"
total_nix=0 total_json=0 n_json=0
for f in "${layouts[@]}"; do
  name=$(basename "$f" .nix)
  with_nix=$(mean_ms "$nixpave" disk plan --json "$f")
  total_nix=$((total_nix + with_nix))
  json="$tmp/$name.json"
  if nix-instantiate --eval --strict --json "$f" >"$json" 2>/dev/null; then
    without=$(mean_ms "$nixpave" disk plan --json "$json")
    total_json=$((total_json + without)); n_json=$((n_json + 1))
  else
    without="(function)"
  fi
  printf '%-34s %12s %12s\n' "$name" "$with_nix" "$without"
done
echo "layouts: ${#layouts[@]}, runs each: $runs, binary: $nixpave"
echo "mean with nix evaluation: $((total_nix / ${#layouts[@]})) ms; mean from JSON: $((total_json / (n_json > 0 ? n_json : 1))) ms"
