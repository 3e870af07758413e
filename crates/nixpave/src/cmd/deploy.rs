//! `nixpave deploy`, `nixpave status`, `nixpave rollback`.

use std::process::ExitCode;

/// Arguments of `nixpave deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {}

/// Arguments of `nixpave status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// Arguments of `nixpave rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {}

/// Runs `nixpave deploy`.
pub fn run(_args: DeployArgs) -> miette::Result<ExitCode> {
    super::not_yet("deploy")
}

/// Runs `nixpave status`.
pub fn status(_args: StatusArgs) -> miette::Result<ExitCode> {
    super::not_yet("status")
}

/// Runs `nixpave rollback`.
pub fn rollback(_args: RollbackArgs) -> miette::Result<ExitCode> {
    super::not_yet("rollback")
}
