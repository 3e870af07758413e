#!/usr/bin/env bash
# Builds deploy-rs (the baseline of bench/deploy-rs.sh) once with cargo and prints the directory holding its
# two programs: `deploy` (the deployer) and `activate` (what a deploy-rs profile's `activate-rs` runs on the
# target). Nothing of deploy-rs goes into nixpave: it is only measured against.
#
#   bench/deploy-rs-build.sh               # prints e.g. /var/cache/nixpave/deploy-rs/bin
#
# Source: a git repository of deploy-rs (a bare mirror or a clone) in DEPLOY_RS_SRC, default
# /work/.mirror/serokell+deploy-rs/repo, at the commit DEPLOY_RS_REV (default: the one measured in
# bench/RESULTS.md). Built with `cargo build --release --locked` (deploy-rs's own release profile: LTO,
# opt-level "s"), crates from crates.io. Cached in $NIXPAVE_NIX_CACHE/deploy-rs (default
# /var/cache/nixpave/deploy-rs): bin/ is reused while its stamp names the same commit; target/ keeps cargo's
# build so a new commit rebuilds incrementally. The binaries link this machine's glibc dynamically: lab
# hosts share /usr, so they run there too. Root only (the cache).
set -euo pipefail

DEPLOY_RS_SRC=${DEPLOY_RS_SRC:-/work/.mirror/serokell+deploy-rs/repo}
DEPLOY_RS_REV=${DEPLOY_RS_REV:-d5eff7f948535b9c723d60cd8239f8f11ddc90fa}
cache=${NIXPAVE_NIX_CACHE:-/var/cache/nixpave}/deploy-rs
out=$cache/bin

log() { printf 'deploy-rs-build: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

if ! [ -x "$out/deploy" ] || ! [ -x "$out/activate" ] || [ "$(cat "$cache/.stamp" 2>/dev/null)" != "$DEPLOY_RS_REV" ]; then
  command -v cargo >/dev/null || die "cargo is missing"
  git -C "$DEPLOY_RS_SRC" rev-parse --verify --quiet "$DEPLOY_RS_REV^{commit}" >/dev/null ||
    die "no commit $DEPLOY_RS_REV in $DEPLOY_RS_SRC (set DEPLOY_RS_SRC to a clone of serokell/deploy-rs)"
  src=$cache/src
  rm -rf "$src"
  mkdir -p "$src"
  # The tree of that commit, without a checkout (the source may be a bare mirror); -m: files dated now, so
  # cargo rebuilds deploy-rs itself whatever the commit's date.
  git -C "$DEPLOY_RS_SRC" archive "$DEPLOY_RS_REV" | tar -x -m -C "$src"
  log "building deploy-rs ${DEPLOY_RS_REV:0:12} (cargo build --release, ~1 min on 2 cores)"
  (cd "$src" && cargo build --release --locked --bins --target-dir "$cache/target" >&2) ||
    die "cargo build failed in $src (output above)"
  tmp=$(mktemp -d "$cache/.bin.XXXXXX")
  chmod 755 "$tmp"
  cp "$cache/target/release/deploy" "$cache/target/release/activate" "$tmp/"
  rm -rf "$out"
  mv "$tmp" "$out"
  echo "$DEPLOY_RS_REV" > "$cache/.stamp"
fi
exec 9>&-

version=$("$out/deploy" --version 2>&1) || die "$out/deploy does not run: $version"
"$out/activate" --version >/dev/null 2>&1 || die "$out/activate does not run"
log "$version (${DEPLOY_RS_REV:0:12}) at $out"
echo "$out"
