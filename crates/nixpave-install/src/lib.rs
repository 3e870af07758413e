//! Installing NixOS on a reachable Linux host: preflight → kexec → disk → install → reboot →
//! verify, resumable.
//!
//! - [`preflight::check`] (pure): nixpave-remote's facts + requirements → refusals with numbers.
//! - [`state`]: the per-node state file and [`state::schedule`] (pure) that decides what a
//!   `--resume` runs.
//! - [`run::install_node`] / [`run::install_all`]: the orchestration over a [`nixpave_remote::Connection`],
//!   reporting [`events::Event`]s.
//! - [`prepare`]: an [`prepare::InstallRequest`] (the CLI's flags as values) → each node's
//!   [`NodeSpec`] (target, system build, disk plan, resume login, substituters, connection).
//! - [`steps`], [`kexec`]: the commands of each phase.
//! - [`init`] (pure): a flake directory (flake.nix, disk.nix, hardware-configuration.nix)
//!   proposed from a machine's facts, for `nixpave init`.

#![warn(missing_docs)]

pub mod disk;
pub mod events;
pub mod hwconfig;
pub mod init;
pub mod kexec;
pub mod nix;
pub mod phase;
pub mod preflight;
pub mod prepare;
pub mod run;
pub mod state;
pub mod steps;

pub use events::{Event, PhaseTiming, Reporter};
pub use phase::{Phase, PhaseSet};
pub use run::{
    install_all, install_node, preflight_node, FailureKind, InstallError, Installer, NodeSpec,
    PhaseError, Summary, Timeouts,
};
