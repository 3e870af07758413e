#!/usr/bin/env bash
# Provides a current Nix (Debian trixie's nix-bin, 2.26) runnable from this Debian 12 host without a chroot,
# for testing nixpave against both Debian 12's nix 2.8 and current Nix. Prints the `bin/` directory to put
# first on PATH.
#
# trixie's nix needs glibc 2.38, so it comes from the minimal trixie root of scripts/trixie-root.sh
# (bootstrapped once, shared with scripts/openssh-current.sh); the nix executable is copied out of it and
# patched (patchelf) to load its libraries and dynamic loader from that root. The multi-call names
# (nix-store, nix-daemon, ...) are symlinks to it, so argv[0] dispatch and /proc/self/exe keep working.
#
# Environment: NIXPAVE_NIX_CACHE (default /var/cache/nixpave), NIXPAVE_DEBIAN_MIRROR (default: the mirror
# of this machine's apt sources). Root only (debootstrap).
set -euo pipefail
LOG_NAME=nix-current
. "$(dirname "$0")/trixie-root.sh"

out=$cache/nix-current

# bin/nix patched to run from the host with the trixie root's loader and libraries.
ensure_bin() {
  local real stamp
  real=$(readlink -f "$root/usr/bin/nix")
  stamp="$(stat -c %Y "$root/.nixpave-complete") $real"
  if [ -x "$out/bin/nix" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then return; fi
  local tmp name
  tmp=$(mktemp -d "$cache/.nix-current.XXXXXX")
  chmod 755 "$tmp"
  mkdir -p "$tmp/bin"
  trixie_patch_copy "$real" "$tmp/bin/nix" "/usr/lib/$arch_triplet/nix"
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

trixie_lock
ensure_trixie_root nix-bin
ensure_bin
trixie_unlock
version=$("$out/bin/nix" --version) || die "the patched nix does not run: $out/bin/nix"
case "$version" in
  *" 2."[0-9][0-9]*) ;;
  *) die "unexpected version from $out/bin/nix: $version" ;;
esac
log "$version at $out/bin"
echo "$out/bin"
