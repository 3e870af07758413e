//! `nixpave init` against a real lab host (sshd in a network namespace, two loop disks): the written
//! files parse and evaluate with the real nix, the layout plans with `nixpave disk plan`, and nothing
//! is overwritten without `--force`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use nixpave_lab::testing::{Lab, LabOptions};

fn nixpave(lab: &Lab) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixpave"));
    cmd.env("NIXPAVE_LAB_DIR", lab.base_dir());
    cmd.stdin(Stdio::null());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    stdout
}

fn nix_instantiate(args: &[&str]) -> String {
    let out = Command::new("nix-instantiate")
        .args(args)
        .output()
        .expect("nix-instantiate runs");
    ok(&out)
}

/// The three files are valid Nix, and each means what it should.
fn check_files(dir: &Path, name: &str, disks: &[String], zfs: bool) {
    let flake = dir.join("flake.nix");
    // nixpkgs cannot be fetched here: the flake is parsed, and its outputs function applied to
    // stand-in inputs shows the names it defines.
    nix_instantiate(&["--parse", flake.to_str().unwrap()]);
    let expr = format!(
        "let f = import {flake}; \
           lib.nixosSystem = a: {{ inherit (a) system; modules = builtins.length a.modules; \
             config.system.build.toplevel = \"/nix/store/x-toplevel\"; }}; \
           self = f.outputs {{ inherit self; nixpkgs = {{ inherit lib; }}; disko.nixosModules.disko = {{ }}; }}; \
         in {{ inputs = builtins.attrNames f.inputs; \
               config = self.nixosConfigurations.{name}; \
               node = self.deploy.nodes.{name}; }}",
        flake = flake.display()
    );
    let v: serde_json::Value = serde_json::from_str(&nix_instantiate(&[
        "--eval", "--strict", "--json", "--expr", &expr,
    ]))
    .unwrap();
    assert_eq!(v["inputs"], serde_json::json!(["disko", "nixpkgs"]));
    assert_eq!(v["config"]["system"], "x86_64-linux");
    assert_eq!(v["config"]["modules"], 4);
    assert_eq!(v["node"]["sshUser"], "root");
    assert_eq!(
        v["node"]["profiles"]["system"]["path"],
        "/nix/store/x-toplevel"
    );

    // disk.nix evaluates to the chosen disks.
    let disk = dir.join("disk.nix");
    let devices = nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        "--expr",
        &format!(
            "map (d: d.device) (builtins.attrValues (import {}).disko.devices.disk)",
            disk.display()
        ),
    ]);
    let devices: Vec<String> = serde_json::from_str(&devices).unwrap();
    assert_eq!(devices, disks);

    // The hardware configuration is a module that evaluates with stand-in arguments.
    let hw = dir.join("hardware-configuration.nix");
    let hw_out = nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        "--expr",
        &format!(
            "(import {} {{ config.hardware.enableRedistributableFirmware = true; \
               lib.mkDefault = x: x; modulesPath = \"/m\"; }}).nixpkgs.hostPlatform",
            hw.display()
        ),
    ]);
    assert_eq!(hw_out.trim(), "\"x86_64-linux\"");

    // The keys the lab logs in with are in the new system's root keys.
    let flake_text = std::fs::read_to_string(&flake).unwrap();
    assert!(flake_text.contains("ssh-ed25519 "), "{flake_text}");
    assert_eq!(flake_text.contains("networking.hostId"), zfs);
}

/// `nixpave disk plan` plans the written layout, on the chosen disks.
fn plans(lab: &Lab, dir: &Path, disks: &[String]) -> serde_json::Value {
    let out = nixpave(lab)
        .args(["disk", "plan", "--json"])
        .arg(dir.join("disk.nix"))
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let text = plan.to_string();
    for d in disks {
        assert!(text.contains(d.as_str()), "{d} not in the plan: {text}");
    }
    plan
}

#[test]
fn init_writes_a_flake_that_evaluates_and_plans_and_never_overwrites() {
    let lab = Lab::with(LabOptions {
        hosts: 1,
        disks: 2,
        disk_size: 3 << 30,
        ..LabOptions::default()
    })
    .expect("lab up");
    let host = lab.host(0);
    let disks = host.disks();
    let target = format!("{}:{}", lab.name(), host.name());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("web1");
    let disk_args: Vec<String> = disks
        .iter()
        .flat_map(|d| ["--disk".into(), d.clone()])
        .collect();

    // Default: ext4 on one disk, the mirror offered, the next commands printed.
    let out = nixpave(&lab)
        .args(["init", "web1", "--target", &target, "--dir"])
        .arg(&dir)
        .args(&disk_args)
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(stdout.contains("ext4 on"), "{stdout}");
    assert!(stdout.contains("--layout zfs-mirror"), "{stdout}");
    assert!(stdout.contains("nixpave install web1"), "{stdout}");
    assert!(stdout.contains("nixpave deploy .#web1"), "{stdout}");
    check_files(&dir, "web1", &disks[..1], false);
    let plan = plans(&lab, &dir, &disks[..1]);
    assert!(plan.to_string().contains("mkfs.ext4"), "{plan}");
    let flake = std::fs::read_to_string(dir.join("flake.nix")).unwrap();
    assert!(
        flake.contains(&format!("hostname = \"{}\"", host.address())),
        "{flake}"
    );

    // A second run refuses (exit 3) and leaves every file as it was.
    std::fs::write(dir.join("disk.nix"), "# mine\n{ }\n").unwrap();
    let out = nixpave(&lab)
        .args([
            "init",
            "web1",
            "--target",
            &target,
            "--layout",
            "zfs-mirror",
            "--dir",
        ])
        .arg(&dir)
        .args(&disk_args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("disk.nix")).unwrap(),
        "# mine\n{ }\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("flake.nix")).unwrap(),
        flake
    );

    // --force with the mirror: both disks, a pool, JSON output.
    let out = nixpave(&lab)
        .args([
            "init",
            "web1",
            "--target",
            &target,
            "--layout",
            "zfs-mirror",
            "--force",
            "--json",
            "--dir",
        ])
        .arg(&dir)
        .args(&disk_args)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["layout"], "zfs-mirror");
    assert_eq!(v["host"], "web1");
    assert_eq!(v["disks"], serde_json::json!(disks));
    check_files(&dir, "web1", &disks, true);
    let plan = plans(&lab, &dir, &disks);
    assert!(plan.to_string().contains("zpool"), "{plan}");

    // A mirror needs two disks of one size: with one disk named, it is bad input (exit 2).
    let out = nixpave(&lab)
        .args([
            "init",
            "web2",
            "--target",
            &target,
            "--layout",
            "zfs-mirror",
            "--disk",
            &disks[0],
            "--dir",
        ])
        .arg(work.path().join("web2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("two disks of the same size"),
        "{}",
        text(&out.stderr)
    );
    assert!(!work.path().join("web2").exists());
}
