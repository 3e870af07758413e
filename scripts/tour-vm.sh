#!/usr/bin/env bash
# The README's first-host tour for real, on a qemu VM with a system disk and two blank disks:
#   nixpave lab vm up → nixpave init (facts → flake.nix, disk.nix, hardware-configuration.nix)
#   → nixpave disk plan disk.nix → nixpave install (kexec into the test installer, disks, install,
#   reboot, verify) → the VM runs the installed system → nixpave status → nixpave deploy of a second
#   generation (push, activation agent, new-login proof, confirm) → nixpave status → /run/current-system.
# What cannot be done here: nixpkgs is out of reach, so the flake init writes cannot be built. The
# install puts the test system in its place (tests/fixtures/system.nix: kernel, initrd, sshd taken
# from the guest, nix 2.8 from this machine's Debian) with its own one-disk layout, and the deploy
# gets its store path through a deploy-rs-shaped inventory instead of the flake's derivation.
# Usage: scripts/tour-vm.sh   (root, Debian 12; about 4-5 minutes under TCG)
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
# Generation TAG of the stand-in system (with nix, so that `nixpave deploy` can push into it).
stand_in() {
  nix-build --no-out-link "$repo/crates/nixpave-install/tests/fixtures/system.nix" --argstr busybox /bin/busybox \
    --argstr nix /usr/bin/nix --argstr device /dev/vda --argstr tag "$1" --arg harvest "$work/harvest.tar.gz"
}
system=$(stand_in tour)
tarball=$("$N" -q lab vm images --json | jq -r .installer_tarball)
# The stand-in system's sshd reads /etc/ssh/authorized_keys.d/root (a NixOS system gets the keys
# init wrote into flake.nix instead).
mkdir -p "$work/extra/etc/ssh/authorized_keys.d"
cp "$key.pub" "$work/extra/etc/ssh/authorized_keys.d/root"

run install web1 --system "$system" --target "root@127.0.0.1:$port" "${ssh_args[@]}" \
  --kexec "$tarball" --disk-config "$repo/crates/nixpave-install/tests/fixtures/layout-root.nix" \
  --extra-files "$work/extra" --yes-wipe-all-disks --state-dir "$work/state" --kexec-timeout 400 --reboot-timeout 400

current() {
  printf '\n$ ssh root@vm readlink /run/current-system\n'
  ssh -p "$port" -i "$key" -o UserKnownHostsFile="$kh" -o StrictHostKeyChecking=yes root@127.0.0.1 \
    readlink /run/current-system
}
current

# Deploy: generation 2 of the stand-in (tag changed) to node web1 as a deploy-rs-shaped inventory
# gives it (hostname, sshOpts, profiles.system.path; a store path where the flake has a derivation).
system2=$(stand_in tour-2)
jq -n --arg port "$port" --arg path "$system2" '{nodes: {web1: {hostname: "127.0.0.1", sshUser: "root",
  sshOpts: ["-p", $port], profiles: {system: {user: "root", path: $path}}}}}' > "$work/deploy.json"
printf '\n$ cat deploy.json\n'
cat "$work/deploy.json"
run status --inventory deploy.json "${ssh_args[@]}"
run deploy --inventory deploy.json "${ssh_args[@]}"
run status --inventory deploy.json "${ssh_args[@]}"
running=$(current)
echo "$running"
[ "$(echo "$running" | tail -n 1)" = "$system2" ] || { echo "tour: the VM does not run $system2" >&2; exit 1; }
echo "tour: $(( $(now) - T0 )) s"
