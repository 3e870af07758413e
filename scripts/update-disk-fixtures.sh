#!/usr/bin/env bash
# Rewrites crates/nixpave-disk/fixtures/evaluated/: the JSON the real nix loader makes of every
# disk fixture (crates/nixpave-disk/fixtures/*.nix) and shipped example (examples/*.nix). The
# planner's snapshot tests read these, so they run without nix. CI checks they are current: the
# same test, without NIXPAVE_UPDATE_FIXTURES, fails when one is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
NIXPAVE_UPDATE_FIXTURES=1 cargo test -q -p nixpave-disk --test plan_loader \
  evaluated_json_fixtures_are_what_nix_makes_of_the_layouts
git status --short crates/nixpave-disk/fixtures/evaluated
