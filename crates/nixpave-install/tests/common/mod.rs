//! What only nixpave-install's integration tests share: its fixtures, hand-written disk plans and
//! an event recorder. Nix and lab helpers live in `nixpave-testsupport` and `nixpave_lab::testing`.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nixpave_disk::{Mode, Operation, Plan};
use nixpave_install::Event;
pub use nixpave_testsupport::{nix_build, nix_conf_dir};

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
