#!/bin/sh
# PID 1 of the nixpave test installer (an in-RAM Debian with sshd, the disk tools and nix).
# Restores what kexec/run carried over in /nixpave-kexec: authorized keys, host keys, network, hostname.
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run /tmp /mnt; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run
log() { echo "nixpave-installer: $* uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console; }
log "init"
for m in virtio_pci virtio_blk virtio_scsi sd_mod virtio_net virtio_rng dm_mod dm_crypt dm_thin_pool raid0 raid1 raid10 md_mod ext4 vfat nls_cp437 nls_iso8859_1 btrfs xfs loop efivarfs; do
  modprobe "$m" 2>/dev/null
done
# Booted with UEFI (the firmware's runtime services survive kexec): boot entries can be written.
[ -d /sys/firmware/efi ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
k=/nixpave-kexec
mkdir -p /root/.ssh; chmod 700 /root/.ssh
[ -f $k/ssh/authorized_keys ] && install -m 600 $k/ssh/authorized_keys /root/.ssh/authorized_keys
if ls $k/ssh/ssh_host_*_key >/dev/null 2>&1; then
  rm -f /etc/ssh/ssh_host_*; cp -p $k/ssh/ssh_host_* /etc/ssh/; chmod 600 /etc/ssh/ssh_host_*_key
else
  ssh-keygen -A
fi
[ -s $k/hostname ] && hostname "$(cat $k/hostname)"
[ -s $k/machine-id ] && cp $k/machine-id /etc/machine-id
/lib/systemd/systemd-udevd --daemon 2>/dev/null; udevadm trigger --action=add; udevadm settle -t 10
log "udev settled"
ip link set lo up
dev_of() { for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "$1" ] && basename "$d" && return; done; }
restored=0
if [ -f $k/net ]; then
  while read -r kind mac value; do
    dev=$(dev_of "$mac"); [ -n "$dev" ] || continue
    ip link set "$dev" up
    case $kind in
      addr) ip addr add "$value" dev "$dev" && restored=1 ;;
      route) ip route add default via "$value" dev "$dev" ;;
    esac
  done < $k/net
fi
if [ $restored = 0 ]; then  # nothing carried over: DHCP on every interface
  for d in /sys/class/net/*; do d=$(basename "$d"); [ "$d" = lo ] && continue
    ip link set "$d" up; busybox udhcpc -b -q -i "$d" -s /etc/udhcpc/default.script >/dev/null 2>&1; done
fi
# Shows itself the way the real NixOS installer does: os-release with ID=nixos and VARIANT_ID=installer.
rm -f /etc/os-release
cat > /etc/os-release <<'OSR'
NAME=NixOS
ID=nixos
PRETTY_NAME="NixOS (nixpave test installer)"
VARIANT="Installer"
VARIANT_ID=installer
OSR
mkdir -p /run/sshd; /usr/sbin/sshd -E /run/sshd.log
log "sshd up"
trap 'exec /usr/local/sbin/reboot' INT
while true; do setsid sh -c 'exec sh </dev/console >/dev/console 2>&1'; sleep 1; done
