#!/usr/bin/env bash
# Builds the VM lab's images from Debian packages, cached by a hash of the build inputs:
#   guest.qcow2             a BIOS-bootable Debian disk ("any Linux" box: GRUB, sshd, disk tools, nix, kexec)
#   kexec-installer.tar.gz  a test installer in nixos-images format (kexec/run, kexec/bzImage, kexec/initrd)
#   vmlinuz                 the kernel both use
# Usage: build-images.sh SRC_DIR CACHE_DIR   (SRC_DIR holds this script and its *.sh companions)
# Prints the directory holding the images on its last stdout line. Progress goes to stderr.
set -euo pipefail
# Everything is in main, so bash has read the whole file before running any of it.
main() {
local SRC CACHE
SRC=$(cd "$1" && pwd)
CACHE=$2
MIRROR=${NIXPAVE_LAB_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${NIXPAVE_LAB_SUITE:-bookworm}
PACKAGES=openssh-server,openssh-client,kexec-tools,gdisk,parted,fdisk,cryptsetup-bin,lvm2,thin-provisioning-tools,mdadm,dosfstools,e2fsprogs,btrfs-progs,xfsprogs,util-linux,mount,kmod,iproute2,procps,udev,busybox,nix-bin,grub-pc-bin,grub2-common,cpio,zstd,libdbi-perl,sudo,grub-efi-amd64-bin,systemd-boot,efibootmgr,mtools
# Kernel modules the guest and the installer keep (with their dependencies): storage, filesystems, net, crypto.
MODULES="virtio_pci virtio_blk virtio_net virtio_rng virtio_scsi sd_mod ext4 vfat nls_cp437 nls_iso8859_1 nls_ascii btrfs xfs dm_mod dm_crypt dm_thin_pool dm_snapshot dm_mirror dm_raid raid0 raid1 raid10 raid456 md_mod loop qemu_fw_cfg crc32c_generic crc32c_intel xts aes_generic aesni_intel sha256_generic sha512_generic af_packet efivarfs squashfs overlay isofs zram"
STAGE1_MODULES="virtio_pci virtio_blk ext4 crc32c_generic crc32c_intel"

log() { printf '[images %s] %s\n' "$(date +%T)" "$*" >&2; }

kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KERNEL_PKG=$(kernel_pkg)
if [ -z "$KERNEL_PKG" ]; then apt-get update -qq >&2 || true; KERNEL_PKG=$(kernel_pkg); fi
[ -n "$KERNEL_PKG" ] || { echo "cannot resolve linux-image-amd64 with apt-cache (run apt-get update)" >&2; exit 1; }
HASH=$( { cat "$SRC"/*.sh; echo "$MIRROR $SUITE $PACKAGES $KERNEL_PKG $MODULES"; } | sha256sum | cut -c1-16)
OUT=$CACHE/images-$HASH
if [ -f "$OUT/done" ]; then
  log "cached: $OUT"
  echo "$OUT"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9   # one build at a time; a concurrent caller waits, then finds the cache filled
if [ -f "$OUT/done" ]; then echo "$OUT"; exit 0; fi

W=$CACHE/build-$HASH
rm -rf "$CACHE"/build-*; mkdir -p "$W"   # leftovers of interrupted builds (we hold the lock: none is running)
cleanup() { for m in "$W"/mnt/dev "$W"/mnt/proc "$W"/mnt/sys "$W"/mnt; do mountpoint -q "$m" && umount -l "$m"; done
            [ -n "${LOOP:-}" ] && { partx -d "$LOOP" 2>/dev/null; losetup -d "$LOOP" 2>/dev/null; }; true; }
trap cleanup EXIT
T0=$(date +%s)

# 1. Debian root with the tools (debootstrap downloads are kept between builds).
R=$W/rootfs
mkdir -p "$CACHE/debs"
log "debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PACKAGES" "$SUITE" "$R" "$MIRROR" >"$W/debootstrap.log" 2>&1 ||
  { tail -20 "$W/debootstrap.log" >&2; exit 1; }
T1=$(date +%s); log "debootstrap done in $((T1-T0))s"

# 2. Kernel from the Debian package (only a subset of its modules is kept).
log "kernel $KERNEL_PKG"
mkdir -p "$W/kpkg"
(cd "$CACHE/debs" && { ls "$KERNEL_PKG"_*.deb >/dev/null 2>&1 || apt-get download "$KERNEL_PKG" >/dev/null; })
dpkg -x "$CACHE/debs/$KERNEL_PKG"_*.deb "$W/kpkg"
KV=$(ls "$W/kpkg/lib/modules")
K=$W/kpkg/lib/modules/$KV
depmod -b "$W/kpkg" "$KV"
copy_modules() { # DEST_ROOT MODULE...
  local dest=$1; shift
  for m in "$@"; do modprobe -d "$W/kpkg" -S "$KV" --show-depends "$m" 2>/dev/null | awk '/^insmod/{print $2}'; done | sort -u |
    while read -r f; do rel=${f#"$W"/kpkg/}; mkdir -p "$dest/$(dirname "$rel")"; cp "$f" "$dest/$rel"; done
  mkdir -p "$dest/lib/modules/$KV"
  cp "$K"/modules.order "$K"/modules.builtin* "$dest/lib/modules/$KV/"
  depmod -b "$dest" "$KV"
}
rm -rf "$R/lib/modules"; copy_modules "$R" $MODULES
cp "$W/kpkg/boot/vmlinuz-$KV" "$W/vmlinuz"

# 3. Configure and slim the root.
log "configure root"
rm -rf "$R"/usr/share/{doc,man,info,locale,lintian,linda} "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/*
install -m 0755 "$SRC/guest-init.sh" "$R/sbin/nixpave-init"
install -m 0755 "$SRC/power.sh" "$R/usr/local/sbin/reboot"
ln -sf reboot "$R/usr/local/sbin/poweroff"
# The lab's nixos-install and nixos-enter, off PATH: a test links them into /usr/local/sbin when the installer
# should stand for the real NixOS one (which has them); otherwise it stands for an installer without them.
install -D -m 0755 "$SRC/nixos-install.sh" "$R/usr/local/lib/nixpave-lab/nixos-install"
install -D -m 0755 "$SRC/nixos-enter.sh" "$R/usr/local/lib/nixpave-lab/nixos-enter"
mkdir -p "$R/etc/nix" "$R/root/.ssh" "$R/nix/var/nix/profiles"
chmod 700 "$R/root/.ssh"
printf 'build-users-group =\nsandbox = false\nsubstituters =\nexperimental-features = nix-command flakes\n' > "$R/etc/nix/nix.conf"
echo nixpave-guest > "$R/etc/hostname"
printf 'LABEL=nixpave-root / ext4 defaults 0 1\n' > "$R/etc/fstab"
printf 'PermitRootLogin prohibit-password\nUsePAM no\nPasswordAuthentication no\n' > "$R/etc/ssh/sshd_config.d/nixpave.conf"
rm -f "$R"/etc/ssh/ssh_host_*   # each VM gets its own (from fw_cfg, else generated at boot)

# 4. Test installer: the same root as an in-RAM initramfs, booted by kexec/run.
log "installer initrd"
I=$W/installer
mkdir -p "$I/kexec"
install -m 0755 "$SRC/installer-init.sh" "$R/init"
# Left out of the in-RAM copy (it travels at ~4.5 MB/s under TCG): interpreters and data no tool of ours uses.
SLIM=('./boot/*' './usr/lib/python3*' './usr/bin/python3*' './usr/share/perl*' './usr/lib/x86_64-linux-gnu/perl*'
      './usr/bin/perl*' './usr/lib/x86_64-linux-gnu/libperl*' './usr/lib/udev/hwdb.bin'
      './usr/lib/x86_64-linux-gnu/gconv' './usr/share/zoneinfo' './var/lib/dpkg/*' './var/lib/apt/*' './var/cache/*'
      './var/log/*' './usr/bin/grub-mkrescue' './usr/bin/grub-fstest' './usr/bin/grub-render-label'
      './usr/bin/grub-syslinux2cfg' './usr/bin/grub-mount' './usr/share/grub/unicode.pf2'
      './usr/lib/x86_64-linux-gnu/libicu[it]*' './usr/lib/x86_64-linux-gnu/libapt*')
prune=(); for p in "${SLIM[@]}"; do prune+=(-path "$p" -o); done
(cd "$R" && find . -xdev \( "${prune[@]}" -false \) -prune -o -print | cpio -o -H newc --quiet |
  zstd -q -T0 -${NIXPAVE_LAB_ZSTD_LEVEL:-9}) > "$I/kexec/initrd"
rm -f "$R/init"
truncate -s %4 "$I/kexec/initrd"   # the kernel only finds an appended cpio (kexec/run adds one) at a 4-byte boundary
cp "$W/vmlinuz" "$I/kexec/bzImage"
install -m 0755 "$SRC/kexec-run.sh" "$I/kexec/run"
cp /bin/busybox "$I/kexec/busybox"   # static: kexec/run needs cpio even where the old system has none
tar -C "$I" -cf - kexec | gzip -1 > "$W/kexec-installer.tar.gz"
T2=$(date +%s); log "installer done ($(du -h "$I/kexec/initrd" | cut -f1) initrd) in $((T2-T1))s"

# 5. Guest disk: stage-1 busybox initrd, GRUB (BIOS) in the MBR, ext4 root on partition 1, and an EFI system
#    partition 2 with a standalone GRUB at the removable path, so the same disk boots under SeaBIOS and OVMF.
log "guest disk"
S1=$W/stage1
mkdir -p "$S1"/{bin,proc,sys,dev,newroot}
cp /bin/busybox "$S1/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$S1/bin/$a"; done
copy_modules "$S1" $STAGE1_MODULES
install -m 0755 "$SRC/stage1-init.sh" "$S1/init"
mkdir -p "$R/boot/grub"
(cd "$S1" && find . | cpio -o -H newc --quiet | gzip -1) > "$R/boot/initrd"
cp "$W/vmlinuz" "$R/boot/vmlinuz"
cat > "$R/boot/grub/grub.cfg" <<'GRUB'
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "nixpave lab guest" {
  linux /boot/vmlinuz root=LABEL=nixpave-root console=ttyS0 net.ifnames=0 panic=-1 quiet
  initrd /boot/initrd
}
GRUB
ROOT_MB=$(( $(du -sm "$R" | cut -f1) + 700 ))
ESP_MB=32
truncate -s "$((ROOT_MB + ESP_MB + 2))M" "$W/guest.img"
printf 'label: dos\nstart=2048, size=%dM, type=83, bootable\ntype=ef\n' "$ROOT_MB" | sfdisk -q "$W/guest.img"
truncate -s "${ROOT_MB}M" "$W/root.ext4"
mkfs.ext4 -q -F -L nixpave-root -d "$R" "$W/root.ext4"
dd if="$W/root.ext4" of="$W/guest.img" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$W/root.ext4"
LOOP=$(losetup -f --show "$W/guest.img")
partx -d "$LOOP" 2>/dev/null || true   # stale partition nodes of an earlier user of this loop device
partx -a "$LOOP"
mkdir -p "$W/mnt"; mount "${LOOP}p1" "$W/mnt"
mount --bind /dev "$W/mnt/dev"; mount -t proc proc "$W/mnt/proc"; mount -t sysfs sys "$W/mnt/sys"
chroot "$W/mnt" grub-install --target=i386-pc --modules="part_msdos ext2 biosdisk serial" "$LOOP" >"$W/grub.log" 2>&1 ||
  { cat "$W/grub.log" >&2; exit 1; }
# The ESP is made as a file (mtools cannot size a loop partition) and written onto partition 2.
truncate -s "$((ESP_MB - 1))M" "$W/mnt/tmp/esp.img"
mkfs.vfat -n ESP "$W/mnt/tmp/esp.img" >/dev/null
# Filesystem drivers are not autoloaded from a standalone image's memdisk: load them, then find the root.
printf 'insmod part_msdos\ninsmod ext2\ninsmod search_label\nset root=(hd0,msdos1)\nsearch --no-floppy --label nixpave-root --set=root\nconfigfile ($root)/boot/grub/grub.cfg\n' > "$W/mnt/tmp/efi.cfg"
chroot "$W/mnt" sh -c "grub-mkstandalone -O x86_64-efi -o /tmp/BOOTX64.EFI 'boot/grub/grub.cfg=/tmp/efi.cfg' &&
  mmd -i /tmp/esp.img ::/EFI ::/EFI/BOOT && mcopy -i /tmp/esp.img /tmp/BOOTX64.EFI ::/EFI/BOOT/BOOTX64.EFI" >>"$W/grub.log" 2>&1 ||
  { cat "$W/grub.log" >&2; exit 1; }
dd if="$W/mnt/tmp/esp.img" of="${LOOP}p2" bs=1M conv=fsync status=none
rm -f "$W/mnt/tmp/esp.img"
rm -f "$W/mnt/tmp/efi.cfg" "$W/mnt/tmp/BOOTX64.EFI"
cleanup; LOOP=
qemu-img convert -O qcow2 "$W/guest.img" "$W/guest.qcow2"; rm -f "$W/guest.img"
T3=$(date +%s); log "guest disk done in $((T3-T2))s"

mkdir -p "$OUT"
mv "$W/guest.qcow2" "$W/kexec-installer.tar.gz" "$W/vmlinuz" "$OUT/"
printf '{"kernel": "%s", "packages": "%s", "build_seconds": %d}\n' "$KV" "$PACKAGES" "$((T3-T0))" > "$OUT/manifest.json"
touch "$OUT/done"
rm -rf "$W"
# Older image sets go, unless a running VM still reads its backing disk from one.
for old in "$CACHE"/images-*; do
  [ "$old" = "$OUT" ] && continue
  fuser -s "$old/guest.qcow2" 2>/dev/null || rm -rf "$old"
done
log "built $OUT in $((T3-T0))s"
echo "$OUT"
}
main "$@"
exit
