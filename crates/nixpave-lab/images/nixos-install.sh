#!/bin/bash
# nixos-install of the nixpave test installer, written for the lab from the documented behaviour of NixOS's
# nixos-install, for a system that is already built (`--system`; there is no nixpkgs here to build one):
#   - checks the root exists and that every directory up to it is world-readable and -searchable;
#   - sets the root's system profile to the system with `nix-env --store ROOT --extra-substituters
#     auto?trusted=1`, so any path of the closure not yet in the root's store comes from the installer's store;
#   - marks the root as NixOS (`ROOT/etc/NIXOS`), rbinds the root onto ROOT/ROOT (for `boot.initrd.secrets`),
#   - links ROOT/etc/mtab to /proc/mounts (GRUB needs it) and runs
#     `NIXOS_INSTALL_BOOTLOADER=1 nixos-enter --root ROOT -- /run/current-system/bin/switch-to-configuration boot`
#     (the system's activation, run by nixos-enter, links /run/current-system);
#   - asks for a root password only on a terminal and without --no-root-passwd.
# It is not on PATH by default (the lab's installer stands for one without nixos-install); a test links it and
# nixos-enter into /usr/local/sbin to stand for the real NixOS installer.
set -e
umask 0022
root=/mnt
system=
no_bootloader=
no_root_passwd=
nix_flags=()
while [ $# -gt 0 ]; do
  arg=$1; shift
  case $arg in
    --root) root=$1; shift ;;
    --system|--closure) system=$1; shift ;;
    --option) nix_flags+=(--option "$1" "$2"); shift 2 ;;
    --max-jobs|-j|--cores|--substituters) nix_flags+=("$arg" "$1"); shift ;;
    --show-trace|--keep-going) nix_flags+=("$arg") ;;
    --no-channel-copy) ;;   # the lab installer has no channel
    --no-root-passwd|--no-root-password) no_root_passwd=1 ;;
    --no-bootloader) no_bootloader=1 ;;
    --flake|--channel) echo "$0: $arg needs nixpkgs, which the lab installer does not have; pass --system" >&2; exit 1 ;;
    *) echo "$0: unknown option \`$arg'" >&2; exit 1 ;;
  esac
done
if [ ! -e "$root" ]; then echo "mount point $root doesn't exist" >&2; exit 1; fi
dir=$(realpath "$root")
while [ "$dir" != / ]; do
  mode=$(stat -c %a "$dir")
  if [ "${mode: -1}" -lt 5 ]; then
    echo "path $dir should have permissions 755, but had permissions $mode" >&2; exit 1
  fi
  dir=$(dirname "$dir")
done
if [ -z "$system" ]; then echo "$0: no --system given, and the lab installer cannot build a configuration" >&2; exit 1; fi

work=$(mktemp -d -p "$root")
cleanup() { [ -n "${bound:-}" ] && umount -R "$root$root" && rmdir "$root$root"; rm -rf "$work"; }
trap cleanup EXIT
export TMPDIR=${TMPDIR:-$work}

nix-env --store "$root" "${nix_flags[@]}" --extra-substituters 'auto?trusted=1' \
  -p "$root/nix/var/nix/profiles/system" --set "$system"

mkdir -m 0755 -p "$root/etc"
touch "$root/etc/NIXOS"

# util-linux 2.38 (Debian 12) has no `mount --mkdir`.
mkdir -p "$root$root"
mount --rbind "$root" "$root$root"
bound=1
mount --make-rslave "$root$root"

if [ -z "$no_bootloader" ]; then
  echo "installing the boot loader..."
  ln -sfn /proc/mounts "$root/etc/mtab"
  NIXOS_INSTALL_BOOTLOADER=1 nixos-enter --root "$root" -- /run/current-system/bin/switch-to-configuration boot
fi

if [ -z "$no_root_passwd" ] && [ -t 0 ]; then
  if nixos-enter --root "$root" -c 'test -e /nix/var/nix/profiles/system/sw/bin/passwd'; then
    nixos-enter --root "$root" -c 'echo "setting root password..." && /nix/var/nix/profiles/system/sw/bin/passwd'
  fi
fi
echo "installation finished!"
