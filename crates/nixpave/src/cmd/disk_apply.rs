//! `nixpave disk apply`: run a layout's plan on a machine.

use std::process::ExitCode;

/// Arguments of `nixpave disk apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {}

/// Runs `nixpave disk apply`.
pub fn run(_args: ApplyArgs) -> miette::Result<ExitCode> {
    super::not_yet("disk apply")
}
