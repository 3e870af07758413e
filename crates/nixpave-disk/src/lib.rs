//! disko-compatible disk layouts.
//!
//! - `plan`: the plan format (operations with argv, guards and safety flags) shared by the
//!   planner and the executor.
//! - `exec`: runs a plan on a machine through a [`nixpave_remote::Transport`].
//!
//! The layout model and the planner are pure functions (layout + mode → plan); the executor
//! runs a plan through a transport.

pub mod exec;
pub mod plan;

pub use plan::{Guard, Mode, Operation, Plan, StdinSource};
