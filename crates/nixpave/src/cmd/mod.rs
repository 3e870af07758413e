//! One module per subcommand; each parses its own arguments and renders its own output.

use std::process::ExitCode;

pub mod disk;

/// The subcommands of `nixpave`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Plan, apply and describe disko disk layouts.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
}

/// Runs one subcommand.
pub fn run(command: Command) -> miette::Result<ExitCode> {
    match command {
        Command::Disk(c) => disk::run(c),
    }
}
