//! `nixpave facts`.

use std::process::ExitCode;

/// Arguments of `nixpave facts`.
#[derive(Debug, clap::Args)]
pub struct FactsArgs {}

/// Runs `nixpave facts`.
pub fn run(_args: FactsArgs) -> miette::Result<ExitCode> {
    super::not_yet("facts")
}
