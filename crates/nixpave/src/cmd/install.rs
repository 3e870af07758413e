//! `nixpave install`.

use std::process::ExitCode;

/// Arguments of `nixpave install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {}

/// Runs `nixpave install`.
pub fn run(_args: InstallArgs) -> miette::Result<ExitCode> {
    super::not_yet("install")
}
