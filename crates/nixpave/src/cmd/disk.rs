//! `nixpave disk …`: plan, apply and describe disko layouts.

use std::process::ExitCode;

/// `nixpave disk` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DiskCommand {
    /// Show what a layout would do, without touching any disk.
    Plan {
        /// Layout file (.nix or .json).
        config: std::path::PathBuf,
    },
}

/// Runs a `nixpave disk` subcommand.
pub fn run(command: DiskCommand) -> miette::Result<ExitCode> {
    match command {
        DiskCommand::Plan { config } => {
            miette::bail!("disk plan is not implemented yet ({})", config.display())
        }
    }
}
