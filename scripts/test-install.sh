#!/usr/bin/env bash
# The slow install tests: real qemu VMs (TCG) booted from the lab image, kexec into the test installer,
# real disk layouts (LUKS on LVM; an askPassword LUKS on mdadm raid1 through the planner, from a sudo user
# with a password), GRUB-BIOS, and under UEFI (OVMF) systemd-boot and GRUB-EFI (the latter through the
# test installer's nixos-install, the others through nixpave's own install steps), reboot, verify; preflight
# refusals (RAM, disks, a missing tool, kexec disabled); kill + --resume and a --disko-mode mount reinstall
# through the CLI, then `nixpave deploy` of a further generation onto the installed system and `nixpave
# rollback`; hardware configuration generated in the VMs. Prints the phase timings (TIMINGS lines).
# Usage: scripts/test-install.sh [TEST_NAME_FILTER]   (as root on Debian 12; ~15-25 min under TCG)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build -p nixpave
export NIXPAVE_BIN=$PWD/$CARGO_TARGET_DIR/debug/nixpave
[ -x "$NIXPAVE_BIN" ] || NIXPAVE_BIN=$CARGO_TARGET_DIR/debug/nixpave
# The fast, non-VM install tests first.
cargo test -p nixpave-install
# VM tests one at a time: the machine has 2 cores and TCG is CPU-bound.
start=$(date +%s)
cargo test -p nixpave-install --test vm_install -- --ignored --nocapture --test-threads 1 ${1:-} 2>&1 |
  tee /tmp/nixpave-test-install.log | grep -E --line-buffered '^(test |TIMINGS|.*\[(kexec|disk|install|reboot|verify)\] (done|FAILED))'
rc=${PIPESTATUS[0]}
echo "VM install tests: $(( $(date +%s) - start )) s (full log: /tmp/nixpave-test-install.log)"
exit "$rc"
