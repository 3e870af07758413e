#!/usr/bin/env bash
# Second test pass: the nix-facing tests (nixpave-nix, deploy, flakes, disk layout loading, install
# preparation) again with current Nix (2.26, scripts/nix-current.sh) as the deployer's nix, plus the
# mixed-version deploy tests. Root only.
#
# Nix 2.26 runs in a private mount namespace with its own empty /nix: the machine's /nix belongs to
# Debian's nix 2.8 (and to whoever else runs tests here), and the two versions should not share one
# store database. Lab hosts get their own /nix as always; hosts asked for 2.26 run it from the same bin dir.
#
# Extra arguments go to every `cargo test` (e.g. `-- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(bash scripts/nix-current.sh)
# major.minor of that nix (2.26): the tests check that the nix they run is this one.
version=$("$bin/nix" --version | grep -oE '[0-9]+\.[0-9]+' | head -n1)
# Built first, outside the namespace, so the pass measures tests only.
cargo build --workspace --tests -q

store=$(mktemp -d /var/tmp/nixpave-nix-current-store.XXXXXX)
chmod 755 "$store" # tests activate profiles as other users, who must reach /nix/store
cleanup() { rm -rf "$store"; }
trap cleanup EXIT
mkdir -p /nix

# Test binaries, by package: `PKG` alone runs all of a package's tests, `PKG:TEST` one integration test.
tests=(
  nixpave-nix
  nixpave-deploy
  nixpave-disk:plan_loader
  nixpave-install:install_local
  nixpave-install:install_substitute
  nixpave:deploy_cli
  nixpave:deploy_rs_flake
  nixpave:rollback_cli
  nixpave:init_cli
  nixpave:root_flake
)
args=()
for t in "${tests[@]}"; do
  case "$t" in
    *:*) args+=("${t%%:*}:--test:${t#*:}") ;;
    *) args+=("$t:") ;;
  esac
done

start=$SECONDS
# `--propagation slave`: the host's later mounts still reach us; our /nix stays ours.
unshare --mount --propagation slave bash -euo pipefail -c '
  store=$1; bin=$2; version=$3; shift 3
  mount --bind "$store" /nix
  export PATH="$bin:$PATH" NIXPAVE_TEST_NIX="$version" NIXPAVE_TEST_NIX_CURRENT_BIN="$bin"
  nix --version
  # Created once here: concurrent first uses of an empty store race on its directories (gcroots/profiles).
  nix-store --init
  extra=()
  while [ "$1" != "--" ]; do extra+=("$1"); shift; done
  shift
  failed=()
  for spec in "${extra[@]}"; do
    pkg=${spec%%:*}; rest=${spec#*:}
    sel=()
    [ -n "$rest" ] && IFS=: read -r -a sel <<<"$rest"
    printf "\n--> cargo test -p %s %s (nix %s)\n" "$pkg" "${sel[*]:-}" "$version"
    cargo test -q --no-fail-fast -p "$pkg" "${sel[@]}" "$@" || failed+=("$pkg ${sel[*]:-}")
  done
  if [ ${#failed[@]} -gt 0 ]; then printf "\nfailed with nix $version: %s\n" "${failed[@]}"; exit 1; fi
' _ "$store" "$bin" "$version" "${args[@]}" -- "$@"
echo "second pass (nix $version) took $((SECONDS - start)) s"
