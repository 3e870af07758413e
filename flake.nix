{
  description = "nixpave: turn any reachable Linux box into a NixOS server and keep a fleet of them deployed";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # What nixpave runs on the machine it is started on (the targets bring their own tools).
      runtimeTools = pkgs: with pkgs; [ openssh nix util-linux ];
      # The tools scripts/test.sh needs (scripts/install-deps.sh installs the same on Debian).
      testTools = pkgs: with pkgs; [
        nix openssh gptfdisk parted util-linux dosfstools btrfs-progs xfsprogs e2fsprogs
        iproute2 kexec-tools cpio zstd kmod socat busybox debootstrap cryptsetup lvm2 mdadm
        procps psmisc curl python3 jq sudo openssl bc patchelf git man-db OVMF qemu
      ];
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "nixpave";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;
          src = ./.;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [ "-p" "nixpave" ];
          # The tests need root, loop devices, sshd in network namespaces and VMs: scripts/test.sh runs them.
          doCheck = false;
          nativeBuildInputs = [ pkgs.installShellFiles pkgs.makeWrapper ];
          postInstall = ''
            installShellCompletion --cmd nixpave \
              --bash <($out/bin/nixpave completions bash) \
              --zsh <($out/bin/nixpave completions zsh) \
              --fish <($out/bin/nixpave completions fish)
            $out/bin/nixpave -q man $out/share/man/man1
            wrapProgram $out/bin/nixpave --suffix PATH : ${pkgs.lib.makeBinPath (runtimeTools pkgs)}
          '';
          meta = {
            description = "Turn any reachable Linux box into a NixOS server and keep a fleet of them deployed";
            license = with pkgs.lib.licenses; [ mit asl20 ];
            mainProgram = "nixpave";
            platforms = pkgs.lib.platforms.linux;
          };
        };
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/nixpave";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [ pkgs.cargo pkgs.rustc pkgs.rustfmt pkgs.clippy ] ++ testTools pkgs;
        };
      });
    };
}
