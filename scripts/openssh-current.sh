#!/usr/bin/env bash
# Provides a current OpenSSH (Debian trixie's, 10.0) runnable from this Debian 12 host (OpenSSH 9.2)
# without a chroot, for testing and benchmarking nixpave with current OpenSSH on both ends: its default
# key exchange is mlkem768x25519-sha256, where 9.2's is sntrup761x25519 (~8 times the CPU per handshake).
# Prints the `bin/` directory to put first on PATH (the deployer side: nixpave and nix run `ssh` by name).
#
#   bin/ssh, bin/ssh-keygen                      the client
#   sbin/sshd, sbin/sshd-session, sbin/sshd-auth the server and its two helpers, which sshd 10 finds through
#                                                sshd_config's SshdSessionPath and SshdAuthPath
#
# Lab hosts run that sshd with `nixpave lab up --sshd DIR/sbin/sshd` (which adds those two lines). sbin/ is
# apart from bin/ so that putting bin/ first on PATH never makes an sshd 10 the lab's default sshd.
#
# The programs come from the trixie root of scripts/trixie-root.sh (shared with scripts/nix-current.sh;
# an existing root gets openssh-server once), copied out and patched (patchelf) to load their dynamic
# loader and libraries from that root. Cached in $NIXPAVE_NIX_CACHE/openssh-current, redone when the
# root or its openssh-server changes. Environment: as scripts/nix-current.sh. Root only.
set -euo pipefail
LOG_NAME=openssh-current
. "$(dirname "$0")/trixie-root.sh"

out=$cache/openssh-current
# name in the root -> name in $out
programs=(
  /usr/bin/ssh:bin/ssh
  /usr/bin/ssh-keygen:bin/ssh-keygen
  /usr/sbin/sshd:sbin/sshd
  /usr/lib/openssh/sshd-session:sbin/sshd-session
  /usr/lib/openssh/sshd-auth:sbin/sshd-auth
)

ensure_programs() {
  local stamp
  stamp="$(stat -c %Y "$root/.nixpave-complete") $(trixie_package_version openssh-server) $(trixie_package_version openssh-client)"
  if [ -x "$out/sbin/sshd-auth" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then return; fi
  local tmp entry
  tmp=$(mktemp -d "$cache/.openssh-current.XXXXXX")
  chmod 755 "$tmp"
  mkdir -p "$tmp/bin" "$tmp/sbin"
  for entry in "${programs[@]}"; do
    [ -f "$root${entry%%:*}" ] || { rm -rf "$tmp"; die "the trixie root has no ${entry%%:*}"; }
    trixie_patch_copy "$root${entry%%:*}" "$tmp/${entry#*:}"
  done
  echo "$stamp" > "$tmp/.stamp"
  rm -rf "$out"
  mv "$tmp" "$out"
}

trixie_lock
ensure_trixie_root openssh-client openssh-server
ensure_programs
trixie_unlock
# Both version banners must name OpenSSH 10 or later (`-V` prints to stderr).
for program in bin/ssh sbin/sshd; do
  version=$("$out/$program" -V 2>&1) || die "the patched $program does not run: $version"
  case "$version" in
    OpenSSH_[1-9][0-9].*) ;;
    *) die "unexpected version from $out/$program: $version" ;;
  esac
done
log "${version%%,*} at $out/bin (sshd and its helpers in $out/sbin)"
echo "$out/bin"
