//! Helpers shared by the install tests: a nix configuration for test builds, the test system
//! closure, hand-written disk plans, an event recorder, and VM sessions.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nixpave_disk::{Mode, Operation, Plan};
use nixpave_install::Event;

/// A nix.conf for test builds (no sandbox, no build users, no substituters), in a temp dir.
pub fn nix_conf_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nix.conf"),
        "build-users-group =\nsandbox = false\nsubstituters =\nexperimental-features = nix-command flakes\n",
    )
    .unwrap();
    dir
}

/// `nix-build` of a fixture with string arguments; returns the out path.
pub fn nix_build(
    conf: &Path,
    file: &Path,
    args: &[(&str, &str)],
    path_args: &[(&str, &Path)],
) -> String {
    let mut cmd = Command::new("nix-build");
    cmd.env("NIX_CONF_DIR", conf).arg("--no-out-link").arg(file);
    for (k, v) in args {
        cmd.args(["--argstr", k, v]);
    }
    for (k, v) in path_args {
        cmd.args(["--arg", k, &v.display().to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "nix-build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One plan operation.
pub fn op(argv: &[&str], description: &str, destructive: bool) -> Operation {
    Operation {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        device: String::new(),
        destructive,
        description: description.to_string(),
        guard: None,
        stdin: None,
    }
}

/// A plan from operations.
pub fn plan(mode: Mode, operations: Vec<Operation>) -> Plan {
    Plan { mode, operations }
}

/// Records every event (and prints it, for the test log).
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn json(&self) -> String {
        serde_json::to_string(&*self.events.lock().unwrap()).unwrap()
    }
}

impl nixpave_install::Reporter for Recorder {
    fn report(&self, event: &Event) {
        eprintln!("{}", nixpave_install::events::render_line(event));
        self.events.lock().unwrap().push(event.clone());
    }
}
