#!/usr/bin/env bash
# Provides a current Nix (Debian trixie's nix-bin, 2.26) runnable from this Debian 12 host without a chroot,
# for testing nixpave against both Debian 12's nix 2.8 and current Nix. Prints the `bin/` directory to put
# first on PATH.
#
# trixie's nix needs glibc 2.38, so a minimal trixie root is bootstrapped once into the cache (reused while
# complete); the nix executable is copied out of it and patched (patchelf) to load its libraries and dynamic
# loader from that root. The multi-call names (nix-store, nix-daemon, ...) are symlinks to it, so argv[0]
# dispatch and /proc/self/exe keep working.
#
# Environment: NIXPAVE_NIX_CACHE (default /var/cache/nixpave), NIXPAVE_DEBIAN_MIRROR (default: the mirror
# of this machine's apt sources). Root only (debootstrap).
set -euo pipefail

cache=${NIXPAVE_NIX_CACHE:-/var/cache/nixpave}
root=$cache/trixie-nix
out=$cache/nix-current
arch_triplet=x86_64-linux-gnu

log() { printf 'nix-current: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The mirror this machine's apt already uses for Debian (deb822 or one-line sources).
debian_mirror() {
  if [ -n "${NIXPAVE_DEBIAN_MIRROR:-}" ]; then echo "$NIXPAVE_DEBIAN_MIRROR"; return; fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # First stanza listing a plain Debian suite (not -security): its first URI.
    uri=$(awk 'BEGIN{RS=""} /Suites:[^\n]*(bookworm|trixie|stable)([ \n]|$)/ && !/-security/ {
                 if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s=substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", s); print s; exit } }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk '$1=="deb" && $0 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  die "no Debian mirror found in /etc/apt/sources*; set NIXPAVE_DEBIAN_MIRROR"
}

# The trixie root: bootstrapped once, marked complete only after debootstrap succeeded.
ensure_root() {
  if [ -f "$root/.nixpave-complete" ] && [ -x "$root/usr/bin/nix" ]; then return; fi
  command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/install-deps.sh installs it)"
  local mirror tmp
  mirror=$(debian_mirror)
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.trixie-nix.XXXXXX")
  chmod 755 "$tmp"
  log "bootstrapping a trixie root with nix-bin from $mirror (once, ~35 s)"
  if ! debootstrap --variant=minbase --include=libdbi-perl,nix-bin,openssh-client \
      trixie "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    rm -rf "$tmp"
    die "debootstrap failed, see $cache/debootstrap.log"
  fi
  rm -rf "$root"
  mv "$tmp" "$root"
  touch "$root/.nixpave-complete"
}

# bin/nix patched to run from the host with the trixie root's loader and libraries.
ensure_bin() {
  local real stamp
  real=$(readlink -f "$root/usr/bin/nix")
  stamp="$(stat -c %Y "$root/.nixpave-complete") $real"
  if [ -x "$out/bin/nix" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then return; fi
  command -v patchelf >/dev/null || die "patchelf is missing (scripts/install-deps.sh installs it)"
  local tmp rpath interp name
  tmp=$(mktemp -d "$cache/.nix-current.XXXXXX")
  chmod 755 "$tmp"
  mkdir -p "$tmp/bin"
  cp "$real" "$tmp/bin/nix"
  interp=$root/usr/lib/$arch_triplet/ld-linux-x86-64.so.2
  [ -e "$interp" ] || interp=$root/lib64/ld-linux-x86-64.so.2
  # DT_RPATH (not RUNPATH) so that the libraries' own dependencies come from the trixie root too.
  rpath=$root/usr/lib/$arch_triplet:$root/usr/lib/$arch_triplet/nix:$root/usr/lib
  patchelf --force-rpath --set-rpath "$rpath" --set-interpreter "$interp" "$tmp/bin/nix"
  # Every name Debian's nix-bin installs as a link to the nix executable.
  for name in $(find "$root/usr/bin" -maxdepth 1 -type l -name 'nix*' -printf '%f\n'); do
    if [ "$(readlink -f "$root/usr/bin/$name")" = "$real" ]; then ln -sf nix "$tmp/bin/$name"; fi
  done
  for name in nix-store nix-env nix-build nix-instantiate nix-shell nix-daemon nix-copy-closure \
      nix-collect-garbage nix-hash nix-prefetch-url nix-channel; do
    [ -e "$tmp/bin/$name" ] || ln -sf nix "$tmp/bin/$name"
  done
  echo "$stamp" > "$tmp/.stamp"
  rm -rf "$out"
  mv "$tmp" "$out"
}

mkdir -p "$cache"
# One bootstrap at a time on this machine (parallel test runs share the cache).
exec 9>"$cache/.lock"
flock 9
ensure_root
ensure_bin
exec 9>&-
version=$("$out/bin/nix" --version) || die "the patched nix does not run: $out/bin/nix"
case "$version" in
  *" 2."[0-9][0-9]*) ;;
  *) die "unexpected version from $out/bin/nix: $version" ;;
esac
log "$version at $out/bin"
echo "$out/bin"
