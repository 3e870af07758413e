//! `nixpave lab …`: disposable local hosts and VMs.

use std::process::ExitCode;

/// `nixpave lab` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Create lab hosts.
    Up {},
}

/// Runs a `nixpave lab` subcommand.
pub fn run(_command: LabCommand) -> miette::Result<ExitCode> {
    super::not_yet("lab")
}
