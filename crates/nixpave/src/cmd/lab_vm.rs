//! `nixpave lab vm …`: qemu VMs for install tests.

use std::process::ExitCode;

/// `nixpave lab vm` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Start a VM.
    Up {},
}

/// Runs a `nixpave lab vm` subcommand.
pub fn run(_command: VmCommand) -> miette::Result<ExitCode> {
    super::not_yet("lab vm")
}
