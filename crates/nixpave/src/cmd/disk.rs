//! `nixpave disk plan` and `nixpave disk nixos-config`; `apply` lives in `disk_apply`.

use std::process::ExitCode;

/// `nixpave disk` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DiskCommand {
    /// Show what a layout would do, without touching any disk.
    Plan {
        /// Layout file (.nix or .json).
        config: std::path::PathBuf,
    },
    /// Run a layout's plan on this machine (or a remote one).
    Apply(super::disk_apply::ApplyArgs),
}

/// Runs a `nixpave disk` subcommand.
pub fn run(command: DiskCommand) -> miette::Result<ExitCode> {
    match command {
        DiskCommand::Plan { config } => {
            miette::bail!("disk plan is not implemented yet ({})", config.display())
        }
        DiskCommand::Apply(args) => super::disk_apply::run(args),
    }
}
