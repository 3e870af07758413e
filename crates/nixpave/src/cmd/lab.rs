//! `nixpave lab …`: disposable local hosts; `lab vm` lives in `lab_vm`.

use std::process::ExitCode;

/// `nixpave lab` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Create lab hosts.
    Up {},
    /// qemu VMs.
    #[command(subcommand)]
    Vm(super::lab_vm::VmCommand),
}

/// Runs a `nixpave lab` subcommand.
pub fn run(command: LabCommand) -> miette::Result<ExitCode> {
    match command {
        LabCommand::Up {} => super::not_yet("lab up"),
        LabCommand::Vm(c) => super::lab_vm::run(c),
    }
}
