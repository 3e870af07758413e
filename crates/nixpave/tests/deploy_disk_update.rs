//! `nixpave deploy --disk-update` against a real lab host with a loop disk: the node's flake carries
//! `nixosConfigurations.host.config.disko.devices` next to its (stand-in) system. Layout A is
//! formatted on the host's disk first; then a deploy without the flag leaves the disks alone, a
//! deploy with layout B (one more partition) and the flag creates it over the deploy's connection and
//! activates, and a deploy with a destructive layout fails the node with the reason, nothing written
//! (the disk's checksum is unchanged) and the system not activated.

use nixpave_testsupport as support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use nixpave_lab::testing::{Lab, LabHost, LabOptions};

use nixpave_testsupport::output_text as text;

/// A layout on disk `main` at DEV with these gpt partitions (no mountpoints: the lab host shares
/// this machine's filesystem tree).
fn gpt(dev: &str, partitions: &str) -> String {
    format!(
        r#"{{"disk": {{"main": {{"type": "disk", "device": "{dev}", "content": {{"type": "gpt", "partitions": {{ {partitions} }}}}}}}}}}"#
    )
}

const DATA_EXT4: &str =
    r#""data": {"size": "32M", "content": {"type": "filesystem", "format": "ext4"}}"#;
const SRV_EXT4: &str =
    r#""srv": {"size": "16M", "content": {"type": "filesystem", "format": "ext4"}}"#;
/// `data` changed from ext4 to xfs: a filesystem change, destructive.
const DATA_XFS: &str =
    r#""data": {"size": "32M", "content": {"type": "filesystem", "format": "xfs"}}"#;

struct Env {
    lab: Lab,
    dir: tempfile::TempDir,
    conf: std::path::PathBuf,
}

impl Env {
    fn host(&self) -> &LabHost {
        self.lab.host(0)
    }

    /// Writes the flake: node `host` on the stand-in system tagged TAG, with LAYOUT (or no
    /// `disko` at all).
    fn write(&self, tag: &str, layout: Option<&str>) {
        let dir = self.dir.path();
        let name = self.host().name();
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../nixpave-deploy/tests/fixtures");
        std::fs::copy(fixtures.join("system.nix"), dir.join("system.nix")).expect("copy system");
        let disko = match layout {
            Some(layout) => {
                std::fs::write(dir.join("layout.json"), layout).expect("layout.json");
                "config.disko.devices = builtins.fromJSON (builtins.readFile ./layout.json);"
            }
            None => "",
        };
        std::fs::write(
            dir.join("flake.nix"),
            format!(
                r#"{{ outputs = {{ self }}: {{
  nixosConfigurations."{name}" = {{
    config.system.build.toplevel = import ./system.nix {{ tag = "{tag}"; }};
    {disko}
  }};
  deploy.confirmTimeout = 5;
  deploy.nodes."{name}".hostname = "{name}";
}}; }}"#
            ),
        )
        .expect("flake.nix");
    }

    fn deploy(&self, extra: &[&str]) -> Output {
        let flake = self.dir.path().display().to_string();
        Command::new(env!("CARGO_BIN_EXE_nixpave"))
            .args(["deploy", &flake, "--lab", self.lab.name(), "--json"])
            .args(extra)
            .env("NIXPAVE_LAB_DIR", self.lab.base_dir())
            .env("NIX_CONF_DIR", &self.conf)
            .stdin(Stdio::null())
            .output()
            .expect("nixpave runs")
    }

    fn current_release(&self) -> String {
        let out = self
            .host()
            .run_inside(&["sh", "-c", "cat /nix/var/nixpave-test/current 2>/dev/null"])
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The JSON events of a deploy (one per line; the last line is the summary).
fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn finished(events: &[serde_json::Value]) -> &serde_json::Value {
    of_kind(events, "finished")
        .first()
        .expect("a finished event")
}

#[test]
fn deploy_disk_update_adds_a_partition_and_refuses_a_destructive_layout() {
    support::require_loop_devices();
    let lab = Lab::with(LabOptions {
        hosts: 1,
        disks: 1,
        disk_size: 128 << 20,
        ..Default::default()
    })
    .expect("lab up");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = nixpave_testsupport::write_nix_conf(&dir.path().join("nixconf"));
    let env = Env {
        lab,
        dir: tempfile::tempdir_in(dir.path()).expect("flake tempdir"),
        conf,
    };
    let dev = env.host().disks()[0].clone();
    let tag = |t: &str| format!("{t}-{}", std::process::id());

    // Layout A on the host's disk.
    let a = gpt(&dev, DATA_EXT4);
    let a_file = env.dir.path().join("a.json");
    std::fs::write(&a_file, &a).expect("a.json");
    let out = Command::new(env!("CARGO_BIN_EXE_nixpave"))
        .args(["disk", "apply"])
        .arg(&a_file)
        .args(["--mode", "format", "--yes-wipe-all-disks"])
        .stdin(Stdio::null())
        .output()
        .expect("disk apply");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(support::fstype(&format!("{dev}p1")), "ext4");

    // A node without a layout: the step is skipped with a note, the system activated.
    env.write(&tag("v1"), None);
    let out = env.deploy(&["--disk-update"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ev = events(&out);
    assert_eq!(finished(&ev)["outcome"], "deployed", "{}", text(&out));
    assert!(
        of_kind(&ev, "log").iter().any(|e| e["line"]
            .as_str()
            .unwrap_or_default()
            .contains("disk step skipped")),
        "{}",
        text(&out)
    );
    assert!(of_kind(&ev, "disk_plan").is_empty(), "{}", text(&out));

    // Layout B (one more partition) without --disk-update: no disk step at all.
    let b = gpt(&dev, &format!("{DATA_EXT4}, {SRV_EXT4}"));
    env.write(&tag("v2"), Some(&b));
    let out = env.deploy(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ev = events(&out);
    assert_eq!(finished(&ev)["outcome"], "deployed", "{}", text(&out));
    assert!(
        !ev.iter().any(|e| e["phase"] == "disk"),
        "no disk phase without the flag: {}",
        text(&out)
    );
    assert!(!Path::new(&format!("{dev}p2")).exists(), "{}", text(&out));
    assert_eq!(env.current_release(), tag("v2"));

    // Layout B with --disk-update: the plan is shown first, the partition made, then activation.
    env.write(&tag("v3"), Some(&b));
    let out = env.deploy(&["--disk-update"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ev = events(&out);
    assert_eq!(finished(&ev)["outcome"], "deployed", "{}", text(&out));
    let plans = of_kind(&ev, "disk_plan");
    assert_eq!(plans.len(), 1, "{}", text(&out));
    let shown = plans[0]["text"].as_str().unwrap_or_default();
    assert!(shown.contains("disk-main-srv"), "{shown}");
    let position = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        ev.iter().position(pred).expect("event present")
    };
    assert!(
        position(&|e| e["event"] == "disk_plan")
            < position(&|e| e["event"] == "phase" && e["phase"] == "activate"),
        "the plan comes before activation: {}",
        text(&out)
    );
    assert_eq!(support::fstype(&format!("{dev}p2")), "ext4");
    assert_eq!(support::fstype(&format!("{dev}p1")), "ext4");
    assert_eq!(env.current_release(), tag("v3"));

    // A destructive layout: the node is refused in the disk phase (exit 3, as `disk apply
    // --mode update` refuses), nothing written, not activated.
    let before = support::sh(&["sha256sum", &dev]);
    let c = gpt(&dev, &format!("{DATA_XFS}, {SRV_EXT4}"));
    env.write(&tag("v4"), Some(&c));
    let out = env.deploy(&["--disk-update"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let ev = events(&out);
    let report = finished(&ev);
    assert_eq!(report["outcome"], "failed", "{}", text(&out));
    assert_eq!(report["refused"], true, "{}", text(&out));
    assert_eq!(report["failed_phase"], "disk", "{}", text(&out));
    let message = report["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot be done in place"), "{message}");
    assert!(message.contains("not activated"), "{message}");
    assert_eq!(of_kind(&ev, "disk_plan").len(), 1, "{}", text(&out));
    assert_eq!(support::sh(&["sha256sum", &dev]), before, "disk unchanged");
    assert_eq!(env.current_release(), tag("v3"), "not activated");
}
