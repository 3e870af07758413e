# A deploy-rs-style fleet: three web servers with a health check and a key.
# RELEASE and BROKEN_HOST are read from release.nix so the demo can roll out new versions.
{
  outputs = { self }:
    let
      release = import ./release.nix;
      system = name: import ./system.nix {
        release = release.name;
        broken = name == release.brokenHost;
      };
      node = name: {
        hostname = name;
        tags = [ "web" ];
        profiles.system.path = system name;
        healthChecks = [{ type = "http"; url = "http://127.0.0.1:8080/"; from = "target"; body = "hello from ${release.name}"; }];
        keys.api-token = { text = "demo-secret-${name}"; destDir = "/nix/var/demo-keys"; permissions = "0600"; };
      };
    in {
      deploy = {
        confirmTimeout = 15;
        nodes = builtins.listToAttrs (map (n: { name = n; value = node n; }) [ "host1" "host2" "host3" ]);
      };
    };
}
