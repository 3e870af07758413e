#!/usr/bin/env bash
# Runs every test of nixpave on a fresh Debian 12 machine (as root): installs what the tests
# need, checks formatting and lints, runs the whole test suite and the disko conformance check.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build"
cargo build --workspace

step "test suite (real loop devices, sshd, nix)"
cargo test --workspace -- --test-threads "${NIXPAVE_TEST_THREADS:-2}"

if [ -f scripts/conformance.sh ]; then
  step "disko conformance"
  bash scripts/conformance.sh
fi
