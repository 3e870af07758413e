#!/usr/bin/env bash
# Installs the Debian packages nixpave's tests and demo need (idempotent; root only).
set -euo pipefail
PKGS=(nix-bin openssh-server openssh-client gdisk parted fdisk util-linux dosfstools btrfs-progs xfsprogs
      e2fsprogs iproute2 kexec-tools cpio zstd kmod socat busybox-static debootstrap cryptsetup lvm2 mdadm
      procps psmisc curl python3 jq sudo openssl bc patchelf git man-db ovmf tmux time)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# qemu-system-x86 comes from bookworm-backports (bookworm's 7.2 conflicts with the preinstalled qemu-utils 10).
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v qemu-img >/dev/null; then
  src=/etc/apt/sources.list.d/nixpave-backports.sources
  if [ ! -f "$src" ]; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > "$src"
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi
