# A stand-in for a NixOS system (no nixpkgs is reachable here): a derivation with the NixOS
# activation interface, `bin/switch-to-configuration switch|boot|test|dry-activate`.
# Its activation (re)starts a tiny HTTP service on port 8080 that answers with the release name,
# or fails when `broken = true` — which is what magic rollback is for.
{ release, broken ? false }:
let
  # Reads the whole request before answering: closing a socket with unread input makes the
  # kernel send a reset that can discard the reply.
  web = ''
    #!/bin/sh
    cr=$(printf '\r')
    while IFS= read -r line; do case "$line" in "" | "$cr") break ;; esac; done
    printf 'HTTP/1.0 200 OK\r\n\r\nhello from ${release}\n'
  '';
  switch = ''
    #!/bin/sh
    goal=''${1:-switch}
    state=/nix/var/demo
    echo "demo system ${release}: $goal"
    [ "$goal" = dry-activate ] && exit 0
    ${if broken then "echo 'release ${release} is broken: its service fails to start' >&2; exit 1" else ""}
    mkdir -p $state
    [ -f $state/web.pid ] && kill "$(cat $state/web.pid)" 2>/dev/null && sleep 0.2
    setsid socat TCP-LISTEN:8080,fork,reuseaddr EXEC:@out@/bin/web </dev/null >/dev/null 2>&1 &
    echo $! > $state/web.pid
    sleep 0.3
  '';
in
builtins.derivation {
  name = "demo-system-${release}";
  system = "x86_64-linux";
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  inherit web switch;
  passAsFile = [ "web" "switch" ];
  args = [ "-c" ''
    mkdir -p $out/bin
    cp $webPath $out/bin/web
    sed "s|@out@|$out|g" $switchPath > $out/bin/switch-to-configuration
    chmod 755 $out/bin/web $out/bin/switch-to-configuration
    echo ${release} > $out/nixos-version
  '' ];
}
