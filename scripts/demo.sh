#!/usr/bin/env bash
# Demo of nixpave's main job on a fresh Debian 12 machine (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p nixpave
bin=target/release/nixpave
echo "==> nixpave disk plan examples/server.nix"
"$bin" disk plan examples/server.nix
echo "==> nixpave disk nixos-config examples/server.nix"
"$bin" disk nixos-config examples/server.nix
