#!/usr/bin/env bash
# Conformance with upstream disko: plans every example layout in ../shared/reference/disko and
# compares (1) `nixpave disk plan --json` with disko's own scripts (compare_disko.py) and
# (2) `nixpave disk nixos-config --json` with disko's generated NixOS config fragment.
#
# Usage: scripts/conformance.sh [path/to/nixpave]   (default: builds target/debug/nixpave)
# Skips (exit 0) when ../shared is not next to the repository.
set -euo pipefail

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
shared="$repo/../shared"
if [ ! -d "$shared/reference/disko/golden" ]; then
  echo "conformance: $shared/reference/disko not found next to the repository; skipping"
  exit 0
fi
golden="$shared/reference/disko/golden"
examples="$shared/reference/disko/examples"

nixpave=${1:-}
if [ -z "$nixpave" ]; then
  (cd "$repo" && cargo build -q -p nixpave)
  nixpave="${CARGO_TARGET_DIR:-$repo/target}/debug/nixpave"
fi

# Known, deliberate deviation: disko passes a zfs_volume's bare name to `zfs load-key` /
# `zfs unload-key` (disko #1139: the command fails, and aborts disko's unmount script);
# nixpave uses the full dataset name `<pool>/<volume>`. Everything else must match.
known_deviation() {
  grep -vE '^(DIFF  zfs$|    \[(mount|unmount)\] (missing|extra): +zfs-(un)?load-key (zfs_encryptedvolume|zroot/zfs_encryptedvolume)( |$))' || true
}

status=0
echo "== plans vs. disko scripts (format, mount, unmount; every fact kind)"
out=$(python3 "$shared/tools/compare_disko.py" --golden "$golden" --examples "$examples" \
  --nixpave "$nixpave" --modes format,mount,unmount) || true
echo "$out"
unexplained=$(echo "$out" | grep -v '^MATCH ' | grep -v 'examples match' | known_deviation)
if [ -n "$unexplained" ]; then
  echo "conformance: unexplained differences:" >&2
  echo "$unexplained" >&2
  status=1
fi

echo "== NixOS fragments vs. disko's config"
python3 - "$nixpave" "$golden" "$examples" <<'PY' || status=1
import json, os, subprocess, sys

nixpave, golden, examples = sys.argv[1:4]

def resolve(v):
    """Applies the module-system markers of disko's dumped config (merge/if/override)."""
    if isinstance(v, dict) and v.get("_type") == "merge":
        out = None
        for c in v["contents"]:
            out = merge(out, resolve(c))
        return out
    if isinstance(v, dict) and v.get("_type") == "if":
        return resolve(v["content"]) if v["condition"] else None
    if isinstance(v, dict) and v.get("_type") == "override":
        return resolve(v["content"])
    if isinstance(v, dict):
        return {k: resolve(x) for k, x in v.items()}
    if isinstance(v, list):
        return [resolve(x) for x in v]
    return v

def merge(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        r = dict(a)
        for k, v in b.items():
            r[k] = merge(r.get(k), v)
        return r
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    return b

def prune(v):
    """Drops nulls and empty containers: absent and null mean the same to NixOS here."""
    if isinstance(v, dict):
        r = {k: prune(x) for k, x in v.items()}
        return {k: x for k, x in r.items() if x not in (None, {}, [])}
    if isinstance(v, list):
        return [prune(x) for x in v]
    return v

ok = 0
names = sorted(f[:-len(".config.json")] for f in os.listdir(golden) if f.endswith(".config.json"))
for name in names:
    want = prune(resolve(json.load(open(os.path.join(golden, name + ".config.json")))))
    p = subprocess.run([nixpave, "disk", "nixos-config", "--json", os.path.join(examples, name + ".nix")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        print("DIFF  %s: nixpave failed: %s" % (name, p.stderr.decode()[-500:]))
        continue
    got = prune(json.loads(p.stdout))
    if got == want:
        ok += 1
        print("MATCH %s" % name)
    else:
        print("DIFF  %s\n    disko:   %s\n    nixpave: %s" % (name, json.dumps(want, sort_keys=True), json.dumps(got, sort_keys=True)))
print("nixos-config: %d/%d examples match" % (ok, len(names)))
sys.exit(0 if ok == len(names) else 1)
PY

# `--mode update` classification of every example against synthetic facts (insta snapshots).
echo "update classification of disko's examples (snapshots):"
if ! (cd "$repo" && cargo test -q -p nixpave-disk --test update_snapshots disko_examples -- --ignored); then
  status=1
fi
exit $status
