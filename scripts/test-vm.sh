#!/usr/bin/env bash
# Runs nixpave's VM tests (real qemu VMs; TCG on machines without usable KVM): builds the lab images (cached in
# $NIXPAVE_LAB_CACHE, default /var/cache/nixpave/lab), then runs the ignored vm_* tests and prints timings.
# Usage: scripts/test-vm.sh [TEST_NAME_FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
now() { date +%s%N; }
secs() { local ms=$(( ($(now) - $1) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
T0=$(now)

if [ "${NIXPAVE_SKIP_DEPS:-}" != 1 ]; then bash scripts/install-deps.sh; fi

echo "==> building nixpave"
cargo build -p nixpave --quiet
NIXPAVE=${CARGO_TARGET_DIR:-target}/debug/nixpave

echo "==> lab images (cached)"
t=$(now)
"$NIXPAVE" lab vm images
IMAGES_SECONDS=$(secs "$t")

echo "==> VM tests"
t=$(now)
log=$(mktemp)
# Each test boots its own VM; two at a time keeps a 2-core machine usable.
# --no-fail-fast: every VM test runs and reports, even after one failed.
set +e
cargo test -p nixpave-lab --no-fail-fast --test 'vm_*' -- --ignored --test-threads "${NIXPAVE_VM_TEST_THREADS:-2}" \
  --nocapture ${1:+"$1"} 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
TESTS_SECONDS=$(secs "$t")

echo
echo "==> timings"
echo "images (build or cache hit): ${IMAGES_SECONDS}s"
grep -ho 'TIMING .*' "$log" | sort -u || true
echo "VM tests: ${TESTS_SECONDS}s; total: $(secs "$T0")s"
rm -f "$log"
exit "$rc"
