//! Shared helpers of the integration tests: a private nix configuration, fixture systems, inventories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use nixpave_deploy::{Event, Inventory, Selection};

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
