#!/usr/bin/env bash
# The README's first-host tour for real, on a qemu VM with a system disk and two blank disks:
#   nixpave lab vm up → nixpave init (facts → flake.nix, disk.nix, hardware-configuration.nix)
#   → nixpave disk plan disk.nix → nixpave install (kexec into the test installer, disks, install,
#   reboot, verify) → the VM runs the installed system.
# What cannot be done here: nixpkgs is out of reach, so the flake init writes cannot be built. The
# install puts the test system in its place (tests/fixtures/system.nix: kernel, initrd, sshd taken
# from the guest) with its own one-disk layout; deploying after the install is shown on lab hosts by
# scripts/demo.sh (the stand-in system has no nix to deploy into).
# Usage: scripts/tour-vm.sh   (root, Debian 12; about 3-4 minutes under TCG)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
now() { date +%s; }
T0=$(now)
if [ "${NIXPAVE_SKIP_DEPS:-}" != 1 ]; then bash scripts/install-deps.sh; fi
cargo build -q -p nixpave
N=${CARGO_TARGET_DIR:-$repo/target}/debug/nixpave
export NIXPAVE_LAB_VM_DIR=${NIXPAVE_LAB_VM_DIR:-/var/tmp/nixpave-tour-vms} NO_COLOR=1
work=$(mktemp -d /var/tmp/nixpave-tour.XXXXXX)
export NIX_CONF_DIR=$work/nixconf
mkdir -p "$NIX_CONF_DIR"
printf 'experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nsandbox = false\n' \
  > "$NIX_CONF_DIR/nix.conf"
vm=tour$$
cleanup() { "$N" lab vm down "$vm" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
run() { printf '\n$ nixpave %s\n' "$*"; "$N" "$@"; }

printf '$ nixpave lab vm up %s --disks 2 --disk-size 4G --json\n' "$vm"
"$N" lab vm up "$vm" --disks 2 --disk-size 4G --json > "$work/vm.json"
cat "$work/vm.json"
port=$(jq -r '.hosts[0].port' "$work/vm.json")
key=$(jq -r '.hosts[0].identity_file' "$work/vm.json")
kh=$(jq -r '.hosts[0].known_hosts' "$work/vm.json")
ssh_args=(-i "$key" --known-hosts "$kh")

cd "$work"
run init web1 --target "root@127.0.0.1:$port" "${ssh_args[@]}"
run disk plan web1/disk.nix | head -n 12
echo "…"

# The stand-in system, built from the guest's own kernel and sshd.
ssh -p "$port" -i "$key" -o UserKnownHostsFile="$kh" -o StrictHostKeyChecking=yes root@127.0.0.1 sh -s \
  < "$repo/crates/nixpave-install/tests/fixtures/harvest.sh" > "$work/harvest.tar.gz"
system=$(nix-build --no-out-link "$repo/crates/nixpave-install/tests/fixtures/system.nix" \
  --argstr busybox /bin/busybox --argstr device /dev/vda --argstr tag tour --arg harvest "$work/harvest.tar.gz")
tarball=$("$N" -q lab vm images --json | jq -r .installer_tarball)
# The stand-in system's sshd reads /etc/ssh/authorized_keys.d/root (a NixOS system gets the keys
# init wrote into flake.nix instead).
mkdir -p "$work/extra/etc/ssh/authorized_keys.d"
cp "$key.pub" "$work/extra/etc/ssh/authorized_keys.d/root"

run install web1 --system "$system" --target "root@127.0.0.1:$port" "${ssh_args[@]}" \
  --kexec "$tarball" --disk-config "$repo/crates/nixpave-install/tests/fixtures/layout-root.nix" \
  --extra-files "$work/extra" --yes-wipe-all-disks --state-dir "$work/state" --kexec-timeout 400 --reboot-timeout 400

printf '\n$ ssh root@vm readlink /run/current-system\n'
ssh -p "$port" -i "$key" -o UserKnownHostsFile="$kh" -o StrictHostKeyChecking=yes root@127.0.0.1 \
  readlink /run/current-system
echo "tour: $(( $(now) - T0 )) s"
