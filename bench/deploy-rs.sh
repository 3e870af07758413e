#!/usr/bin/env bash
# deploy-rs against nixpave, side by side on the same lab hosts (network namespaces with their own sshd and
# /nix), in one run. Each round, each deploy on a fresh generation (a new tag):
#   deploy-rs fresh, deploy-rs no-op (the same flake again),
#   nixpave --parallel 1 fresh and no-op, nixpave default fresh and no-op;
# odd rounds in this order, even rounds nixpave first (so drift of the shared machine hits both).
# Prints one line per deploy (deploy-rs's with its phases: eval, build, copy, activate, from the time stamps
# of its output lines) and the ratios of each round. Needs root.
#
#   bench/deploy-rs.sh                     # 20 hosts, one round
#   HOSTS=2 ROUNDS=2 bench/deploy-rs.sh
#   SSH=current bench/deploy-rs.sh         # OpenSSH 10 on both ends (bench/common.sh)
#   DEPLOY_RS_ARGS='--debug-logs' bench/deploy-rs.sh   # extra arguments for deploy-rs's `deploy`
#   VERBOSE=1 bench/deploy-rs.sh           # print deploy-rs's output
#   PERSIST=120 ROUNDS=2 bench/deploy-rs.sh  # connections kept open between runs, for both tools: deploy-rs
#                                          # through ssh_config (ControlMaster auto, ControlPersist 120),
#                                          # nixpave through --ssh-persist 120; a tool's first run in the
#                                          # lab opens them, so look at the later rounds
#
# deploy-rs is built by bench/deploy-rs-build.sh (cached). Its flake is in deploy-rs's schema:
#   deploy.sshUser = "root"; deploy.user = "root"   root logs in and owns the profile (no sudo), as nixpave
#   deploy.sshOpts = [ "-F" LAB/ssh_config ]          the lab's ssh_config (host aliases, key, known_hosts);
#                                                     deploy-rs puts these on every ssh it runs and in
#                                                     NIX_SSHOPTS for `nix copy`
#   deploy.nodes.hostK = { hostname = "hostK"; profiles.system.path = <bench/deploy-rs-profile.nix>; }
#   inputs.deploy-rs = the directory of the cargo build (flake = false): the profile's `activate-rs` execs
#                      its `activate`, as a real profile's does deploy-rs's package. It is copied to every
#                      host before the timed runs, as a host deployed before with deploy-rs has it.
# deploy-rs's command line: `deploy --skip-checks path:FLAKE`, everything else at its defaults:
#   --skip-checks      the flake has no `checks` (users with deploy-rs's deployChecks would build those first)
#   defaults kept      magic rollback on (a second ssh waits for the activation, a third deletes the canary
#                      to confirm it), auto rollback on, confirm timeout 30 s, temp path /tmp, no
#                      fast-connection (so `nix copy --substitute-on-destination`), no signature checks,
#                      hosts one after the other (build all, copy to each, activate each)
# So deploy-rs logs in 4 times per host (nix copy's `nix-store --serve`, activate, wait, confirm), fresh and
# no-op alike: it has no no-op (the same profile is set and activated again). After each deploy-rs run the
# script checks, untimed, that every host confirmed and runs the wanted generation.
# nixpave runs as bench/deploy.sh runs it (`deploy path:FLAKE --lab LAB [--parallel 1] --json`) on the test
# system that bench/deploy.sh deploys; both tools' activation is that system's `switch-to-configuration`.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

HOSTS=${HOSTS:-20}
ROUNDS=${ROUNDS:-1}
eval "dr_extra=(${DEPLOY_RS_ARGS:-})"
DEPLOY_RS_BIN=$(bash bench/deploy-rs-build.sh)
bench_setup nixpave-deploy-rs
echo "deploy-rs: $("$DEPLOY_RS_BIN/deploy" --version) ($DEPLOY_RS_BIN); nix: $(nix --version); hosts: $HOSTS" >&2

lab=drbench$HOSTS
LABS+=("$lab")
"$NIXPAVE" lab up --name "$lab" --hosts "$HOSTS" "${LAB_UP_ARGS[@]}" >/dev/null
ssh_config=$NIXPAVE_LAB_DIR/$lab/ssh_config
[ -f "$ssh_config" ] || { echo "no ssh_config at $ssh_config" >&2; exit 1; }

# PERSIST: the lab's ssh_config plus ssh's connection sharing, as a deploy-rs user would set it up.
nixpave_persist=()
if [ -n "${PERSIST:-}" ]; then
  printf 'Include %s\nHost *\n  ControlMaster auto\n  ControlPath %s/cm-%%C\n  ControlPersist %s\n' \
    "$ssh_config" "$WORK" "$PERSIST" > "$WORK/ssh_config"
  ssh_config=$WORK/ssh_config
  nixpave_persist=(--ssh-persist "$PERSIST")
fi

# deploy-rs's package as a host that deploy-rs deployed before already has it (untimed).
# Named `source` as nix names a flake input's copy, so that the copy sent here is the input's store path.
pkg=$WORK/source
mkdir -p "$pkg"
cp "$DEPLOY_RS_BIN/deploy" "$DEPLOY_RS_BIN/activate" "$pkg/"
pkg_path=$(nix-store --add "$pkg")
pids=()
for i in $(seq 1 "$HOSTS"); do
  NIX_SSHOPTS="-F $ssh_config" nix copy --no-check-sigs --to "ssh://root@host$i" "$pkg_path" 2>/dev/null &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { echo "copying $pkg_path to a lab host failed" >&2; exit 1; }; done

write_deploy_rs_flake() { # DIR TAG
  mkdir -p "$1"
  cp crates/nixpave-deploy/tests/fixtures/system.nix bench/deploy-rs-profile.nix "$1/"
  cat > "$1/flake.nix" <<NIX
{
  inputs.deploy-rs = { url = "path:$pkg"; flake = false; };
  outputs = { self, deploy-rs }: let
    sys = import ./deploy-rs-profile.nix { tag = "$2"; deployRs = deploy-rs; };
  in {
    deploy = {
      sshUser = "root";
      user = "root";
      sshOpts = [ "-F" "$ssh_config" ];
      nodes = builtins.listToAttrs (map (i: {
        name = "host\${toString i}";
        value = { hostname = "host\${toString i}"; profiles.system.path = sys; };
      }) (builtins.genList (i: i + 1) $HOSTS));
    };
  };
}
NIX
  # A deploy-rs user's flake has its lock file (untimed).
  nix flake lock "path:$1" 2>"$1.lock.log" || { cat "$1.lock.log" >&2; exit 1; }
}

declare -A wall # "TOOL LABEL [PARALLEL]" -> seconds, this round
now() { echo "$EPOCHREALTIME"; }
elapsed() { echo "$2 - $1" | bc; }

# Every host's test system reports TAG as its current generation and its system profile is PATH.
check_hosts() { # TAG PATH
  local i bad=0 got
  for i in $(seq 1 "$HOSTS"); do
    got=$(ssh -F "$ssh_config" "host$i" 'cat /nix/var/nixpave-test/current; readlink -f /nix/var/nix/profiles/system')
    if [ "$got" != "$1"$'\n'"$2" ]; then
      echo "host$i: expected generation $1 at $2, found: $got" >&2
      bad=1
    fi
  done
  return $bad
}

deploy_rs() { # LABEL FLAKE TAG
  local t0 t1 log=$WORK/deploy-rs-$3-$1.log path
  t0=$EPOCHREALTIME
  # Each output line stamped with bash's clock (no process per line), for the phases below.
  "$DEPLOY_RS_BIN/deploy" --skip-checks "${dr_extra[@]}" "path:$2" 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$log"
  if [ "${PIPESTATUS[0]}" != 0 ]; then
    echo "deploy-rs $1 failed; its output:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  t1=$EPOCHREALTIME
  [ -z "${VERBOSE:-}" ] || cat "$log" >&2
  # Magic rollback: every host's activation was confirmed (deploy-rs logs one line per confirmation).
  local confirmed
  confirmed=$(grep -c 'Deployment confirmed' "$log" || true)
  [ "$confirmed" = "$HOSTS" ] || { echo "deploy-rs $1: $confirmed of $HOSTS hosts confirmed" >&2; tail -n 40 "$log" >&2; exit 1; }
  path=$(nix eval --raw "path:$2#deploy.nodes.host1.profiles.system.path")
  check_hosts "$3" "$path"
  wall["deploy-rs $1"]=$(elapsed "$t0" "$t1")
  # deploy-rs's phases, one after the other: evaluation (and its flake support check), building every
  # profile, copying to each host, activating each host (activate, wait and confirm logins).
  local build copy activate
  build=$(first_stamp 'Building profile' "$log")
  copy=$(first_stamp 'Copying profile' "$log")
  activate=$(first_stamp 'Activating profile' "$log")
  printf '%-9s %-8s hosts=%-3s parallel=%-7s wall=%6.2fs  eval=%.2f build=%.2f copy=%.2f activate=%.2f\n' \
    deploy-rs "$1" "$HOSTS" 1 "${wall["deploy-rs $1"]}" "$(elapsed "$t0" "$build")" \
    "$(elapsed "$build" "$copy")" "$(elapsed "$copy" "$activate")" "$(elapsed "$activate" "$t1")"
}

first_stamp() { # TEXT LOG: the time stamp of the first line of LOG with TEXT
  grep -m 1 -F "$1" "$2" | cut -d' ' -f1
}

run_nixpave() { # LABEL FLAKE PARALLEL
  local t0 t1 report par=()
  [ "$3" = default ] || par=(--parallel "$3")
  t0=$(now)
  report=$("$NIXPAVE" deploy "path:$2" --lab "$lab" "${par[@]}" "${nixpave_persist[@]}" --json | tail -n 1)
  t1=$(now)
  wall["nixpave $1 $3"]=$(elapsed "$t0" "$t1")
  local failed hs outcomes
  failed=$(echo "$report" | jq .failed)
  hs=$(echo "$report" | jq .ssh_handshakes)
  outcomes=$(echo "$report" | jq -r '[.hosts[].outcome] | group_by(.) | map("\(.[0])=\(length)") | join(",")')
  printf '%-9s %-8s hosts=%-3s parallel=%-7s wall=%6.2fs  handshakes/host=%s  %s  failed=%s\n' \
    nixpave "$1" "$HOSTS" "$3" "${wall["nixpave $1 $3"]}" "$(echo "scale=1; $hs / $HOSTS" | bc)" "$outcomes" "$failed"
  [ "$failed" = 0 ]
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  # Odd rounds start with deploy-rs, even rounds with nixpave.
  if [ $((round % 2)) = 1 ]; then order="deploy-rs nixpave"; else order="nixpave deploy-rs"; fi
  for tool in $order; do
    if [ "$tool" = deploy-rs ]; then
      tag=dr-$round-$(date +%s%N)
      flake=$WORK/deploy-rs-$tag
      write_deploy_rs_flake "$flake" "$tag"
      deploy_rs fresh "$flake" "$tag"
      deploy_rs no-op "$flake" "$tag"
    else
      for par in 1 default; do
        flake=$WORK/nixpave-$round-$par
        write_fleet_flake "$flake" "$HOSTS" "np-$round-$par-$(date +%s%N)"
        run_nixpave fresh "$flake" "$par"
        run_nixpave no-op "$flake" "$par"
      done
    fi
  done
  for kind in fresh no-op; do
    printf 'ratio    %-8s nixpave/deploy-rs: --parallel 1 %.2fx, default %.2fx\n' "$kind" \
      "$(echo "scale=4; ${wall["nixpave $kind 1"]} / ${wall["deploy-rs $kind"]}" | bc)" \
      "$(echo "scale=4; ${wall["nixpave $kind default"]} / ${wall["deploy-rs $kind"]}" | bc)"
  done
done
