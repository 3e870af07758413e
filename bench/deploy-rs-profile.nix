# A deploy-rs profile around nixpave's test system (crates/nixpave-deploy/tests/fixtures/system.nix, copied
# beside this file by bench/deploy-rs.sh), shaped as deploy-rs's `lib.activate.nixos` shapes a NixOS system:
# the system's files, plus at the top
#   deploy-rs-activate  what deploy-rs's activate program runs (with PROFILE set to the profile): the system's
#                       `bin/switch-to-configuration switch` (dry-activate / boot when DRY_ACTIVATE / BOOT is 1)
#   activate-rs         a wrapper that execs deploy-rs's activate program, whose store path comes in as
#                       `deployRs` (a flake input holding the cargo build, so it is in the profile's closure)
# Both tools thus activate the same script with the same work.
{ tag, deployRs }:
let
  base = import ./system.nix { inherit tag; };
  activate = ''
    #!/bin/bash
    set -euo pipefail
    if [ "''${DRY_ACTIVATE:-}" = 1 ]; then
      exec "$PROFILE/bin/switch-to-configuration" dry-activate
    elif [ "''${BOOT:-}" = 1 ]; then
      exec "$PROFILE/bin/switch-to-configuration" boot
    fi
    cd /tmp
    "$PROFILE/bin/switch-to-configuration" switch
  '';
  activateRs = ''
    #!/bin/sh
    exec ${deployRs}/activate "$@"
  '';
in
builtins.derivation {
  name = "activatable-nixpave-test-system-${tag}";
  system = "x86_64-linux";
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  inherit base activate activateRs;
  passAsFile = [ "activate" "activateRs" ];
  args = [ "-c" ''
    mkdir -p $out
    for f in $base/*; do ln -s $f $out/; done
    cp $activatePath $out/deploy-rs-activate
    cp $activateRsPath $out/activate-rs
    chmod 755 $out/deploy-rs-activate $out/activate-rs
  '' ];
}
