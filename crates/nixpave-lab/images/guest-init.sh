#!/bin/sh
# PID 1 of the lab guest (no systemd: boots to sshd in seconds under TCG).
# SSH keys come from qemu's fw_cfg (opt/nixpave/*), so every VM has its own and the host knows them up front.
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null; mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run
mount -o remount,rw /
echo "nixpave-guest: stage2 uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
for m in virtio_net virtio_rng qemu_fw_cfg dm_mod dm_crypt dm_thin_pool raid1 md_mod vfat btrfs xfs loop; do modprobe "$m" 2>/dev/null; done
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/nixpave
if [ -r $fw/authorized_keys/raw ]; then
  mkdir -p /root/.ssh; chmod 700 /root/.ssh
  cat $fw/authorized_keys/raw > /root/.ssh/authorized_keys; chmod 600 /root/.ssh/authorized_keys
fi
if [ -r $fw/ssh_host_ed25519_key/raw ]; then
  rm -f /etc/ssh/ssh_host_*
  (umask 077; cat $fw/ssh_host_ed25519_key/raw > /etc/ssh/ssh_host_ed25519_key)
  ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key.pub
fi
ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A
[ -r $fw/hostname/raw ] && cat $fw/hostname/raw > /etc/hostname
hostname "$(cat /etc/hostname)"
/lib/systemd/systemd-udevd --daemon 2>/dev/null; udevadm trigger --action=add; udevadm settle -t 10
ip link set lo up
IF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set "$IF" up; ip addr add 10.0.2.15/24 dev "$IF"; ip route add default via 10.0.2.2
mkdir -p /run/sshd; /usr/sbin/sshd -E /run/sshd.log
echo "nixpave-guest: sshd up uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
trap 'exec /usr/local/sbin/reboot' INT   # ctrl-alt-del
while true; do setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'; sleep 1; done
