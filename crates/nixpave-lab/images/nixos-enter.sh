#!/bin/bash
# nixos-enter of the nixpave test installer, written for the lab from the documented behaviour of NixOS's
# nixos-enter: re-runs itself in new mount, UTS and PID namespaces (so every mount below goes with it),
# refuses a root without etc/NIXOS (exit 126), binds /dev and /sys and the installer's resolv.conf into it,
# runs the system's `activate` in the chroot with IN_NIXOS_ENTER=1 (its failure is tolerated), then the
# command: `-c CMD` through the system's bash, `-- ARGV` as it is, else a login shell.
set -e
if [ -z "${NIXOS_ENTER_REEXEC:-}" ]; then
  export NIXOS_ENTER_REEXEC=1
  exec unshare --fork --mount --uts --mount-proc --pid -- "$0" "$@"
fi
mount --make-rprivate /
root=/mnt
system=/nix/var/nix/profiles/system
command=("$system/sw/bin/bash" --login)
silent=
while [ $# -gt 0 ]; do
  arg=$1; shift
  case $arg in
    --root) root=$1; shift ;;
    --system) system=$1; shift ;;
    -c|--command) command=("$system/sw/bin/bash" -c "$1"); shift ;;
    --silent) silent=1 ;;
    --) command=("$@"); break ;;
    *) echo "$0: unknown option \`$arg'" >&2; exit 1 ;;
  esac
done
if [ ! -e "$root/etc/NIXOS" ]; then echo "$0: '$root' is not a NixOS installation" >&2; exit 126; fi
mkdir -p "$root/dev" "$root/sys"
chmod 0755 "$root/dev" "$root/sys"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
resolv() {
  [ -e /etc/resolv.conf ] || return 0
  local target=$root/etc/resolv.conf link
  if [ -L "$target" ]; then
    link=$(readlink "$target")
    case $link in /*) target=$root$link ;; *) target=$root/etc/$link ;; esac
  fi
  [ -f "$target" ] || install -D -m 644 /dev/null "$target" || return 1
  mount --bind /etc/resolv.conf "$target"
}
resolv || echo "$0: could not set up resolv.conf" >&2
(
  [ -z "$silent" ] || exec 2>/dev/null
  IN_NIXOS_ENTER=1 chroot "$root" "$system/activate" 1>&2 || true
  chroot "$root" "$system/sw/bin/systemd-tmpfiles" --create --remove -E 2>/dev/null || true
)
unset TMPDIR
exec chroot "$root" "${command[@]}"
