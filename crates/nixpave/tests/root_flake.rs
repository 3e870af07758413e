//! The repository's flake.nix: nixpkgs cannot be fetched here, so the file is parsed with the real
//! `nix-instantiate --parse`, then its `outputs` function is applied to a stand-in nixpkgs (a
//! `rustPlatform.buildRustPackage` and `mkShell` that return their arguments) and the outputs are
//! checked by name: `packages.<system>.default` built from Cargo.lock, `apps.<system>.default`,
//! `devShells.<system>.default` with the tools the tests need.

use std::process::Command;

fn nix_instantiate(args: &[&str]) -> String {
    let out = Command::new("nix-instantiate")
        .args(args)
        .output()
        .expect("nix-instantiate runs");
    assert!(
        out.status.success(),
        "nix-instantiate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dev shell's tools: a Rust toolchain and what scripts/install-deps.sh installs on Debian.
const SHELL_TOOLS: &[&str] = &[
    "cargo",
    "rustc",
    "rustfmt",
    "clippy",
    "nix",
    "openssh",
    "gptfdisk",
    "parted",
    "util-linux",
    "dosfstools",
    "btrfs-progs",
    "xfsprogs",
    "e2fsprogs",
    "iproute2",
    "kexec-tools",
    "cpio",
    "zstd",
    "kmod",
    "socat",
    "busybox",
    "debootstrap",
    "cryptsetup",
    "lvm2",
    "mdadm",
    "procps",
    "psmisc",
    "curl",
    "python3",
    "jq",
    "sudo",
    "openssl",
    "bc",
    "patchelf",
    "git",
    "man-db",
    "OVMF",
    "qemu",
];

#[test]
fn the_repository_flake_parses_and_names_its_outputs() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let flake = format!("{root}/flake.nix");
    nix_instantiate(&["--parse", &flake]);

    let tools: Vec<String> = SHELL_TOOLS
        .iter()
        .map(|t| format!("\"{t}\" = \"/stub/{t}\";"))
        .collect();
    let expr = format!(
        r#"let
          f = import {flake};
          pkgsFor = system: {{
            {tools}
            rustPlatform.buildRustPackage = a: a // {{ outPath = "/nix/store/stub-nixpave"; }};
            mkShell = a: a;
            installShellFiles = "/stub/isf"; makeWrapper = "/stub/mw";
            lib = {{ makeBinPath = l: builtins.concatStringsSep ":" l; licenses = {{ mit = "mit"; asl20 = "asl20"; }};
                    platforms.linux = [ system ]; }};
            stdenv.hostPlatform.system = system;
          }};
          nixpkgs = {{
            lib.genAttrs = names: g: builtins.listToAttrs (map (n: {{ name = n; value = g n; }}) names);
            legacyPackages = {{ x86_64-linux = pkgsFor "x86_64-linux"; aarch64-linux = pkgsFor "aarch64-linux"; }};
          }};
          out = f.outputs {{ inherit self nixpkgs; }};
          self = out;
          pkg = out.packages.x86_64-linux.default;
        in {{
          inputs = builtins.attrNames f.inputs;
          args = builtins.attrNames (builtins.functionArgs f.outputs);
          outputs = builtins.attrNames out;
          systems = builtins.attrNames out.packages;
          packages = builtins.attrNames out.packages.x86_64-linux;
          pname = pkg.pname;
          version = pkg.version;
          lock = builtins.baseNameOf (toString pkg.cargoLock.lockFile);
          lockExists = builtins.pathExists pkg.cargoLock.lockFile;
          buildFlags = pkg.cargoBuildFlags;
          mainProgram = pkg.meta.mainProgram;
          app = out.apps.x86_64-linux.default;
          shells = builtins.attrNames out.devShells.aarch64-linux;
          shellTools = out.devShells.x86_64-linux.default.packages;
        }}"#,
        tools = tools.join(" ")
    );
    let json = nix_instantiate(&["--eval", "--strict", "--json", "--expr", &expr]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["inputs"], serde_json::json!(["nixpkgs"]));
    assert_eq!(v["args"], serde_json::json!(["nixpkgs", "self"]));
    assert_eq!(
        v["outputs"],
        serde_json::json!(["apps", "devShells", "packages"])
    );
    assert_eq!(
        v["systems"],
        serde_json::json!(["aarch64-linux", "x86_64-linux"])
    );
    assert_eq!(v["packages"], serde_json::json!(["default"]));
    assert_eq!(v["pname"], "nixpave");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (v["lock"].as_str(), v["lockExists"].as_bool()),
        (Some("Cargo.lock"), Some(true))
    );
    assert_eq!(v["buildFlags"], serde_json::json!(["-p", "nixpave"]));
    assert_eq!(v["mainProgram"], "nixpave");
    assert_eq!(v["app"]["type"], "app");
    assert_eq!(v["app"]["program"], "/nix/store/stub-nixpave/bin/nixpave");
    assert_eq!(v["shells"], serde_json::json!(["default"]));
    let shell: Vec<&str> = v["shellTools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str()?.strip_prefix("/stub/"))
        .collect();
    assert_eq!(shell, SHELL_TOOLS);
}
