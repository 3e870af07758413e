//! What only nixpave-deploy's integration tests share: its fixture system, inventories, an event
//! recorder and a connector to lab hosts. Nix, lab and scratch helpers live in
//! `nixpave-testsupport` and `nixpave_lab::testing`.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::sync::Mutex;

use nixpave_deploy::{Event, Inventory, Selection, SshConnector};
use nixpave_lab::testing::Lab;
use nixpave_remote::{InventoryHost, SshOptions};
pub use nixpave_testsupport::{generation_count, nix_conf_dir, resolve, unique};

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Builds a variant of the fixture system and returns its store path: `("k", "true"|"false")`
/// pairs are booleans (`--arg`), the others strings (`--argstr`).
pub fn build_system(args: &[(&str, &str)]) -> String {
    let (bools, strs): (Vec<_>, Vec<_>) = args
        .iter()
        .copied()
        .partition(|(_, v)| *v == "true" || *v == "false");
    nixpave_testsupport::nix_build(&fixtures().join("system.nix"), &strs, &bools)
}

/// Instantiates (does not build) a variant of the fixture system: `{"drv": …, "out": …}` as a flake
/// evaluation gives profile paths.
pub fn instantiate_system(args: &[(&str, &str)]) -> serde_json::Value {
    let (drv, out) = nixpave_testsupport::nix_instantiate(&fixtures().join("system.nix"), args);
    serde_json::json!({ "drv": drv, "out": out })
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

/// A connector that reaches the lab's hosts by their names (`hostname = "host1"`), as root with the lab key.
pub fn connector(lab: &Lab) -> SshConnector {
    connector_with(lab, &[])
}

/// [`connector`] with further `-o Key=Value` ssh options (e.g. `BindAddress=…`) on every connection.
pub fn connector_with(lab: &Lab, extra_options: &[&str]) -> SshConnector {
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
        extra_options: extra_options.iter().map(|o| o.to_string()).collect(),
        ..lab.host(0).ssh_options()
    };
    SshConnector::new(base, hosts)
}
