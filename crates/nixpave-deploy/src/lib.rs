//! Parallel fleet rollout with magic rollback, health checks, rolling batches and keys.
//!
//! The pipeline: [`Inventory`] (deploy-rs schema from one flake evaluation, a JSON file, or the lab) →
//! [`fleet::build_all`] (one `nix build`) → [`fleet::deploy_fleet`] (waves of hosts in parallel; per host
//! [`host::deploy_host`]: probe, push, keys, activation by the detached on-target [`agent`], health checks,
//! confirmation over a new connection, final status record).

pub mod agent;
pub mod connection;
pub mod event;
pub mod fleet;
pub mod health;
pub mod host;
pub mod inventory;
pub mod keys;
pub mod overrides;
pub mod rollout;
pub mod select;
pub mod settings;
pub mod ssh;
pub mod status;

pub use agent::Goal;
pub use connection::{Connection, Connector, LocalConnector};
pub use event::{Event, HostReport, Outcome, Phase};
pub use fleet::{build_all, deploy_fleet, FleetReport};
pub use host::{deploy_host, rollback_host, DeployOptions};
pub use inventory::{Host, Inventory, InventoryError, Profile};
pub use rollout::{Batch, RolloutSettings};
pub use select::Selection;
pub use ssh::SshConnector;

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
