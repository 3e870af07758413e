//! Parallel fleet rollout with magic rollback, health checks, rolling batches and keys.
//!
//! The pipeline: [`Inventory`] (deploy-rs schema from one flake evaluation, a JSON file, or the lab) →
//! [`fleet::build_all`] (one `nix build`) → [`fleet::deploy_fleet`] (waves of hosts in parallel; per host
//! [`host::deploy_host`]: probe, push, keys, activation by the detached on-target [`agent`], health checks,
//! confirmation over a new connection, final status record). A flake too large for one evaluation is listed
//! instead and deployed as its chunks evaluate ([`pipeline::deploy_listed`]).
//!
//! # Inventory schema
//! deploy-rs's `deploy` output as is (`nodes.<n>.{hostname, profiles.<p>.{path, profilePath}, profilesOrder}` and
//! the general settings at top/node/profile level, see [`settings`]), plus nixpave's additions:
//! - node `tags = [ … ]` for `--on @tag`;
//! - node `healthChecks = [ { type = "command" | "tcp" | "http" | "systemd"; … } ]` (see [`health`]);
//! - node `keys.<name> = { text | keyFile | keyCommand; destDir; user; group; permissions; uploadAt; }`
//!   (see [`keys`]; give `keyFile` as a string, a path literal inside a flake is already in the store);
//! - general `stateDir` (default `/var/lib/nixpave/deploy`): where the target keeps its status records;
//! - top-level `rollout = { parallel; batch; maxFailures; canary; }` (see [`rollout`]).
//!
//! A node without `profiles` deploys `nixosConfigurations.<n>.config.system.build.toplevel`; a flake without
//! `deploy` deploys every `nixosConfigurations` entry to the host of the same name.
//!
//! # On the target
//! Per profile NAME, in `stateDir`: `NAME.json` (the last deploy's status record, see [`status::StatusRecord`]),
//! `NAME.log` (the agent's output, appended), `NAME.lock` (symlink to the running agent's pid),
//! `NAME.confirm` / `NAME.reject` (written by the deployer). The agent script itself lives in a root-only
//! directory of `tempPath` (`nixpave-agent/agent-<hash>.sh`, the directory 0700 and checked to be root's own).
//! Generations are never deleted; a failed one is recorded as `failed_generation`. Everything runs under
//! [`nixpave_remote::TARGET_PATH`], on NixOS as on FHS distributions, whatever environment it is started with.

#![warn(missing_docs)]

pub mod agent;
pub mod cache;
pub mod connection;
pub mod disk_update;
pub mod event;
pub mod fleet;
pub mod health;
pub mod host;
pub mod inventory;
pub mod keys;
pub mod overrides;
pub mod pipeline;
pub mod rollout;
pub mod select;
pub mod settings;
pub mod source;
pub mod ssh;
pub mod status;
pub mod timing;

pub use agent::Goal;
pub use connection::{Connection, Connector, LocalConnector};
pub use event::{Event, HostReport, Outcome, Phase};
pub use fleet::{build_all, build_checks, deploy_fleet, FleetReport};
pub use host::{deploy_host, rollback_host, DeployOptions};
pub use inventory::{Host, Inventory, InventoryError, Profile};
pub use rollout::{Batch, RolloutSettings};
pub use select::Selection;
pub use ssh::SshConnector;
