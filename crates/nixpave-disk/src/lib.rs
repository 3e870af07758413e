//! disko-compatible disk layouts.
//!
//! - `model`: every disko type with disko's defaults, parsed from JSON and validated
//!   ([`Layout::from_json`]).
//! - `load`: reads a layout from a `.nix`/`.json` file or a flake ([`load_layout`]).
//! - `planner`: the pure planner, layout + mode → [`Plan`] ([`plan()`]).
//! - `plan`: the plan format (operations with argv, guards and safety flags) shared by the
//!   planner and the executor.
//! - `render`: a plan as readable text or as a standalone bash script.
//! - `nixos`: the NixOS configuration fragment disko's module generates ([`nixos_config`]).
//! - `exec`: runs a plan on a machine through a [`nixpave_remote::Transport`].
//!
//! The layout model and the planner are pure functions (layout + mode → plan); the executor
//! runs a plan through a transport.

#![warn(missing_docs)]

pub mod exec;
pub mod load;
mod locate;
pub mod model;
pub mod nixos;
pub mod plan;
pub mod planner;
pub mod render;

pub use load::{
    flake_has_layout, load_layout, parse_disk_override, LayoutSource, LoadError, LoadOptions,
};
pub use model::{DiskInfo, Layout, LayoutError};
pub use nixos::nixos_config;
pub use plan::{Guard, Mode, Operation, Plan, StdinSource};
pub use planner::{plan, PlanError, PlanOptions};
