# Shared by the lab benchmarks (sourced, from the repository's top directory).
#
# bench_setup PREFIX: NIXPAVE (default: a fresh release build), WORK (a directory under /var/tmp, not /tmp:
# lab hosts get a private /tmp) with its own lab directory and nix.conf, the OpenSSH SSH asks for, and an
# EXIT trap that takes down the labs named in LABS, calls bench_extra_cleanup when defined, and removes WORK.
# SSH=current: current OpenSSH (10, from scripts/openssh-current.sh) on both ends: its ssh first on PATH
# (nixpave and nix run `ssh` by name) and its sshd on the lab hosts (LAB_UP_ARGS, for `nixpave lab up`).
# SSH=system (default): this machine's OpenSSH on both ends (9.2 on Debian 12).
# FLAVOUR=nixos: NixOS-shaped lab hosts (`nixpave lab up --flavour nixos`: NixOS's PATH, sh is bash).
# write_fleet_flake DIR N TAG: a deploy-rs flake of nodes host1..hostN, all on one test system tagged TAG.

bench_setup() {
  NIXPAVE=${NIXPAVE:-}
  if [ -z "$NIXPAVE" ]; then
    cargo build --release -p nixpave >&2
    NIXPAVE=${CARGO_TARGET_DIR:-target}/release/nixpave
  fi
  mkdir -p /var/tmp
  WORK=$(mktemp -d "/var/tmp/$1.XXXXXX")
  export NIXPAVE_LAB_DIR=$WORK/labs
  export NIX_CONF_DIR=$WORK/nixconf
  mkdir -p "$NIX_CONF_DIR" "$NIXPAVE_LAB_DIR"
  printf 'experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nsandbox = false\n' \
    > "$NIX_CONF_DIR/nix.conf"
  LABS=()
  trap bench_cleanup EXIT
  bench_ssh
}

bench_ssh() {
  LAB_UP_ARGS=()
  case "${SSH:-system}" in
    system) ;;
    current)
      local bin
      bin=$(bash scripts/openssh-current.sh)
      export PATH="$bin:$PATH"
      LAB_UP_ARGS=(--sshd "$(dirname "$bin")/sbin/sshd")
      ;;
    *) echo "SSH must be \`system\` or \`current\`, not \`$SSH\`" >&2; exit 2 ;;
  esac
  case "${FLAVOUR:-debian}" in
    debian) ;;
    nixos) LAB_UP_ARGS+=(--flavour nixos) ;;
    *) echo "FLAVOUR must be \`debian\` or \`nixos\`, not \`$FLAVOUR\`" >&2; exit 2 ;;
  esac
  echo "ssh: $(ssh -V 2>&1)${LAB_UP_ARGS[*]:+; lab hosts: ${LAB_UP_ARGS[*]}}" >&2
}

bench_cleanup() {
  if declare -F bench_extra_cleanup >/dev/null; then bench_extra_cleanup || true; fi
  for lab in "${LABS[@]}"; do "${NIXPAVE%% *}" lab down --name "$lab" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}

write_fleet_flake() { # DIR N TAG
  mkdir -p "$1"
  cp crates/nixpave-deploy/tests/fixtures/system.nix "$1/system.nix"
  cat > "$1/flake.nix" <<NIX
{ outputs = { self }: let sys = import ./system.nix { tag = "$3"; }; in {
  deploy.nodes = builtins.listToAttrs (map (i: {
    name = "host\${toString i}";
    value = { hostname = "host\${toString i}"; profiles.system.path = sys; };
  }) (builtins.genList (i: i + 1) $2));
}; }
NIX
}
