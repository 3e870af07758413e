//! `nixpave exec`.

use std::process::ExitCode;

/// Arguments of `nixpave exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {}

/// Runs `nixpave exec`.
pub fn run(_args: ExecArgs) -> miette::Result<ExitCode> {
    super::not_yet("exec")
}
