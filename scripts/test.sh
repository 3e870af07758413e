#!/usr/bin/env bash
# Runs every test of nixpave on a fresh Debian 12 machine (as root): installs what the tests
# need, checks formatting and lints, runs the whole test suite, the disko conformance check and
# the qemu VM tests (disk engine in a VM, kexec, install end to end; ~20 min under TCG).
# The nix-facing tests run twice: with Debian 12's nix 2.8, then with current Nix (2.26, from
# scripts/nix-current.sh) on the deployer (scripts/test-nix-current.sh). Current OpenSSH (10, from
# scripts/openssh-current.sh, the same trixie root) is provided for the tests that deploy with it on both ends.
# NIXPAVE_SKIP_VM=1 leaves the VM tests out for a quick local run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every test must really run here: a test that would skip itself (see `skip` in
# crates/nixpave-testsupport) fails instead.
export NIXPAVE_REQUIRE_ALL=1

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "no test skips itself by hand"
# A test that lacks root, nix or loop devices fails, or skips through support::skip (which
# NIXPAVE_REQUIRE_ALL=1 turns into a failure); never `eprintln!("skipped…"); return`.
if grep -rnE 'eprintln!\("(skipped|skipping)' crates/*/tests; then
  echo "tests above skip by hand: use support::require_loop_devices() or support::skip()" >&2
  exit 1
fi

step "cargo build"
cargo build --workspace

step "current Nix (2.26) for the nix-version tests"
NIXPAVE_TEST_NIX_CURRENT_BIN=$(bash scripts/nix-current.sh)
export NIXPAVE_TEST_NIX_CURRENT_BIN

step "current OpenSSH (10) for the tests with it on both ends"
NIXPAVE_TEST_OPENSSH_CURRENT_BIN=$(bash scripts/openssh-current.sh)
export NIXPAVE_TEST_OPENSSH_CURRENT_BIN

step "test suite (real loop devices, sshd, nix 2.8)"
# The version tests check that the deployer's nix really is Debian 12's.
NIXPAVE_TEST_NIX=2.8 cargo test --workspace -- --test-threads "${NIXPAVE_TEST_THREADS:-2}"

step "second pass: deploy, flake, disk loading and install tests with nix 2.26 on the deployer"
bash scripts/test-nix-current.sh -- --test-threads "${NIXPAVE_TEST_THREADS:-2}"

if [ -f scripts/conformance.sh ]; then
  step "disko conformance"
  bash scripts/conformance.sh
fi

if [ "${NIXPAVE_SKIP_VM:-}" != 1 ]; then
  step "VM tests: lab VMs, kexec, disk engine with LUKS/LVM/mdadm/btrfs in a VM"
  NIXPAVE_SKIP_DEPS=1 bash scripts/test-vm.sh

  step "VM tests: nixpave install end to end"
  bash scripts/test-install.sh
fi
