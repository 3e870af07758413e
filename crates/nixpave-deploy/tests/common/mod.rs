//! Shared helpers of the integration tests: a private nix configuration, fixture systems, inventories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use nixpave_deploy::{Event, Inventory, Selection, SshConnector};
use nixpave_lab::testing::{Lab, LabHost};
use nixpave_remote::{InventoryHost, SshOptions};

/// A NIX_CONF_DIR with sandbox off and no substituters (nix 2.8 on Debian, no binary cache).
pub fn nix_conf_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("nixpave-deploy-test-nixconf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("conf dir");
        std::fs::write(
            dir.join("nix.conf"),
            "experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nsandbox = false\n",
        )
        .expect("nix.conf");
        // Set once, before any test spawns nix; every test uses the same value.
        std::env::set_var("NIX_CONF_DIR", &dir);
        dir
    })
}

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Builds a variant of the fixture system (`--argstr`/`--arg` pairs) and returns its store path.
pub fn build_system(args: &[(&str, &str)]) -> String {
    nix_conf_dir();
    let mut cmd = Command::new("nix-build");
    cmd.arg("--no-out-link").arg(fixtures().join("system.nix"));
    for (k, v) in args {
        if *v == "true" || *v == "false" {
            cmd.args(["--arg", k, v]);
        } else {
            cmd.args(["--argstr", k, v]);
        }
    }
    let out = cmd.output().expect("nix-build runs");
    assert!(
        out.status.success(),
        "nix-build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Instantiates (does not build) a variant of the fixture system: `{"drv": …, "out": …}` as a flake
/// evaluation gives profile paths.
pub fn instantiate_system(args: &[(&str, &str)]) -> serde_json::Value {
    nix_conf_dir();
    let mut cmd = Command::new("nix-instantiate");
    cmd.arg(fixtures().join("system.nix"));
    for (k, v) in args {
        cmd.args(["--argstr", k, v]);
    }
    let out = cmd.output().expect("nix-instantiate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drv = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let q = Command::new("nix-store")
        .args(["-q", "--outputs", &drv])
        .output()
        .expect("nix-store runs");
    let out_path = String::from_utf8_lossy(&q.stdout).trim().to_string();
    serde_json::json!({ "drv": drv, "out": out_path })
}

/// A unique tag for fixture generations (so every test builds its own variants).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{prefix}-{nanos:x}")
}

/// An inventory with one node per (name, hostname, extra node JSON), profile `system` on `path`.
pub fn inventory(nodes: serde_json::Value) -> Inventory {
    Inventory::from_json(serde_json::json!({ "nodes": nodes }), &Selection::default())
        .expect("valid inventory")
}

/// Collects events.
#[derive(Default)]
pub struct Events(pub Mutex<Vec<Event>>);

impl Events {
    /// A sink that records.
    pub fn sink(&self) -> impl Fn(Event) + Sync + '_ {
        move |e| {
            if let Ok(mut v) = self.0.lock() {
                v.push(e)
            }
        }
    }
}

/// Reads a symlink target fully resolved.
pub fn resolve(path: &Path) -> Option<String> {
    std::fs::canonicalize(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// `nix-env -p PROFILE --list-generations` line count.
pub fn generation_count(profile: &Path) -> usize {
    let out = Command::new("nix-env")
        .arg("-p")
        .arg(profile)
        .arg("--list-generations")
        .output()
        .expect("nix-env");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A connector that reaches the lab's hosts by their names (`hostname = "host1"`), as root with the lab key.
pub fn connector(lab: &Lab) -> SshConnector {
    let hosts = lab
        .hosts()
        .iter()
        .map(|h| InventoryHost {
            name: h.name().to_string(),
            host: h.address().to_string(),
            port: h.target().port,
            user: Some("root".into()),
            identity_file: Some(h.identity_file().to_path_buf()),
            known_hosts: Some(h.known_hosts().to_path_buf()),
        })
        .collect();
    let base = SshOptions {
        connect_timeout: std::time::Duration::from_secs(5),
        ..lab.host(0).ssh_options()
    };
    SshConnector::new(base, hosts)
}

/// Runs `cmd` with `sh -c` inside the lab host (its namespaces, no ssh) and returns its trimmed stdout.
pub fn inside(h: &LabHost, cmd: &str) -> String {
    let out = h.run_inside(&["sh", "-c", cmd]).expect("nsenter");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The lab host's network interface (the one that is not `lo`).
pub fn interface_of(h: &LabHost) -> String {
    inside(
        h,
        "ip -o link show | awk -F': ' '$2 != \"lo\" { sub(/@.*/, \"\", $2); print $2; exit }'",
    )
}
