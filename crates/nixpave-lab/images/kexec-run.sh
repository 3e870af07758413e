#!/bin/sh
# kexec/run of the nixpave test installer (nixos-images format): boots kexec/bzImage + kexec/initrd in place of the
# running system and carries over root's authorized keys, the SSH host keys and the network configuration, so the
# machine comes back on the same address with the same host key.
set -eu
# nixos-images' interface: --kexec-extra-flags FLAGS go to `kexec --load` and `kexec -e`.
extra=
while [ $# -gt 0 ]; do
  case "$1" in --kexec-extra-flags) extra=$2; shift ;; esac
  shift
done
here=$(cd "$(dirname "$0")" && pwd)
bb=$here/busybox
work=$(mktemp -d "${TMPDIR:-/tmp}/nixpave-kexec.XXXXXX")
carry=$work/extra/nixpave-kexec
mkdir -p "$carry/ssh"

# 1. keys: root's, the sudo user's and /etc/ssh/authorized_keys.d; the host keys unchanged.
for f in /root/.ssh/authorized_keys /root/.ssh/authorized_keys2 /etc/ssh/authorized_keys.d/*; do
  [ -f "$f" ] && cat "$f" >> "$carry/ssh/authorized_keys"
done
if [ -n "${SUDO_USER:-}" ]; then
  home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
  [ -f "$home/.ssh/authorized_keys" ] && cat "$home/.ssh/authorized_keys" >> "$carry/ssh/authorized_keys"
fi
for f in /etc/ssh/ssh_host_*; do [ -f "$f" ] && cp -p "$f" "$carry/ssh/"; done
chmod 700 "$carry/ssh"

# 2. network: global addresses and default routes, keyed by the interface's MAC address (names may change).
mac_of() { cat "/sys/class/net/$1/address" 2>/dev/null || echo unknown; }
: > "$carry/net"
ip -o addr show scope global | while read -r _ dev family cidr _; do
  case $family in inet|inet6) echo "addr $(mac_of "$dev") $cidr" >> "$carry/net" ;; esac
done
for fam in -4 -6; do
  ip $fam route show default | while read -r _ _ gw _ dev _; do
    echo "route $(mac_of "$dev") $gw" >> "$carry/net"
  done
done
hostname > "$carry/hostname" 2>/dev/null || true
[ -f /etc/machine-id ] && cp /etc/machine-id "$carry/machine-id"

# 3. the carried-over state as an extra cpio archive after the installer's (the kernel unpacks both).
(cd "$work/extra" && find . | "$bb" cpio -o -H newc 2>/dev/null) > "$work/extra.cpio"
cat "$here/initrd" "$work/extra.cpio" > "$work/initrd"

# 4. load, keeping the serial console settings of the running kernel.
console=$(tr ' ' '\n' < /proc/cmdline | grep '^console=' | tr '\n' ' ' || true)
cmdline="${console}net.ifnames=0 panic=-1 quiet nixpave.installer=1"
# shellcheck disable=SC2086 # the extra flags are words
if ! kexec --load "$here/bzImage" --kexec-syscall-auto $extra --initrd="$work/initrd" --command-line="$cmdline" 2>"$work/kexec.err" &&
   ! kexec --load "$here/bzImage" $extra --initrd="$work/initrd" --command-line="$cmdline" 2>>"$work/kexec.err"; then
  echo "kexec --load failed:" >&2; cat "$work/kexec.err" >&2
  echo "dmesg:" >&2; dmesg 2>/dev/null | tail -n 40 >&2
  exit 1
fi
echo "machine will boot into the nixpave installer"
# Detached, so the caller's ssh session can end cleanly before the old kernel goes away.
setsid nohup sh -c "sleep 2; sync; kexec -e $extra" >/dev/null 2>&1 < /dev/null &
