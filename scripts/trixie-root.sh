# Sourced by scripts/nix-current.sh and scripts/openssh-current.sh: the one Debian trixie root both take
# current programs from (nix 2.26, OpenSSH 10), and how such a program is made to run on this Debian 12
# host without a chroot. The caller sets LOG_NAME (its messages' prefix) and `set -euo pipefail`.
#
# The root is bootstrapped once into $NIXPAVE_NIX_CACHE/trixie-nix (named before OpenSSH joined it) with
# every package of TRIXIE_PACKAGES, and marked complete only after debootstrap succeeded. A complete root
# that lacks a package its caller needs (one bootstrapped before the package joined the list) gets it with
# apt-get inside the root: chroot, in a private mount namespace with /proc, /dev and resolv.conf, no services
# started. Callers hold the cache lock (`trixie_lock`) around `ensure_trixie_root` and their own copies.
#
# Environment: NIXPAVE_NIX_CACHE (default /var/cache/nixpave), NIXPAVE_DEBIAN_MIRROR (default: the mirror
# of this machine's apt sources). Root only (debootstrap, chroot).

TRIXIE_PACKAGES=(libdbi-perl nix-bin openssh-client openssh-server)
cache=${NIXPAVE_NIX_CACHE:-/var/cache/nixpave}
root=$cache/trixie-nix
arch_triplet=x86_64-linux-gnu

log() { printf '%s: %s\n' "${LOG_NAME:-trixie-root}" "$*" >&2; }
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

# One bootstrap or package install at a time on this machine (parallel test runs share the cache); the
# lock is held until the caller's `trixie_unlock` (or its exit).
trixie_lock() {
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
}
trixie_unlock() { exec 9>&-; }

# The packages of $@ the root's dpkg does not list as installed, one a line.
trixie_missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}\n' "$p" 2>/dev/null |
      grep -q 'ok installed' || echo "$p"
  done
}

# The installed version of package $1 in the root.
trixie_package_version() {
  dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Version}' "$1"
}

# The trixie root, complete and with the packages $@ (a new root gets all of TRIXIE_PACKAGES).
ensure_trixie_root() {
  if [ -f "$root/.nixpave-complete" ]; then
    local missing
    missing=$(trixie_missing_packages "$@")
    if [ -n "$missing" ]; then
      # shellcheck disable=SC2086 # one package a word
      trixie_add_packages $missing
    fi
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/install-deps.sh installs it)"
  local mirror tmp
  mirror=$(debian_mirror)
  tmp=$(mktemp -d "$cache/.trixie-nix.XXXXXX")
  chmod 755 "$tmp"
  log "bootstrapping a trixie root with ${TRIXIE_PACKAGES[*]} from $mirror (once, ~40 s)"
  if ! debootstrap --variant=minbase --include="$(IFS=,; echo "${TRIXIE_PACKAGES[*]}")" \
      trixie "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    rm -rf "$tmp"
    die "debootstrap failed, see $cache/debootstrap.log"
  fi
  rm -rf "$root"
  mv "$tmp" "$root"
  touch "$root/.nixpave-complete"
}

# apt-get install PACKAGES… inside the (complete) root. Its mounts live in a private mount namespace, so
# they go away with it whatever happens; policy-rc.d keeps the packages' scripts from starting services
# (an sshd started in the chroot would listen on this machine's network).
trixie_add_packages() {
  local apt_log=$cache/apt-trixie.log
  log "adding $* to the trixie root $root (once, ~5 s)"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  [ -f "$root/etc/resolv.conf" ] && [ ! -L "$root/etc/resolv.conf" ] || {
    rm -f "$root/etc/resolv.conf"; : > "$root/etc/resolv.conf"; }
  local ok=1
  unshare --mount --propagation private sh -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
    export DEBIAN_FRONTEND=noninteractive
    chroot "$root" apt-get update -qq
    chroot "$root" apt-get install -y -qq --no-install-recommends "$@"
  ' _ "$root" "$@" >"$apt_log" 2>&1 || ok=0
  rm -f "$root/usr/sbin/policy-rc.d"
  [ "$ok" = 1 ] || die "apt-get install $* in the trixie root failed, see $apt_log"
  local missing
  missing=$(trixie_missing_packages "$@")
  [ -z "$missing" ] || die "still missing in the trixie root after apt-get: $missing (see $apt_log)"
}

# The root's dynamic loader.
trixie_interpreter() {
  local interp=$root/usr/lib/$arch_triplet/ld-linux-x86-64.so.2
  [ -e "$interp" ] || interp=$root/lib64/ld-linux-x86-64.so.2
  echo "$interp"
}

# Copies the root's executable $1 to $2, patched to load the root's dynamic loader and libraries (plus the
# library directories $3…, inside the root). DT_RPATH (not RUNPATH), so that the libraries' own
# dependencies come from the root too. Fails unless every library then resolves.
trixie_patch_copy() {
  command -v patchelf >/dev/null || die "patchelf is missing (scripts/install-deps.sh installs it)"
  local src=$1 dest=$2 rpath interp dir listed
  shift 2
  interp=$(trixie_interpreter)
  rpath=$root/usr/lib/$arch_triplet
  for dir in "$@"; do rpath=$rpath:$root$dir; done
  rpath=$rpath:$root/usr/lib
  cp "$src" "$dest"
  patchelf --force-rpath --set-rpath "$rpath" --set-interpreter "$interp" "$dest"
  listed=$("$interp" --list "$dest" 2>&1) || die "the patched $dest does not load: $listed"
  if grep -q 'not found' <<<"$listed"; then die "the patched $dest lacks libraries: $listed"; fi
}
