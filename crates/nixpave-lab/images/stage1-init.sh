#!/bin/sh
# Stage 1 of the lab guest (busybox initramfs): load the disk drivers, mount the root by label, switch to it.
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci virtio_blk crc32c_intel crc32c_generic ext4; do modprobe "$m" 2>/dev/null; done
root=
for i in $(seq 100); do
  root=$(findfs LABEL=nixpave-root 2>/dev/null) && break
  sleep 0.1
done
if [ -z "$root" ] || ! mount -t ext4 "$root" /newroot; then
  echo "nixpave stage1: root filesystem LABEL=nixpave-root not found; dropping to a shell"
  exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/nixpave-init
