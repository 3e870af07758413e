//! The `nixpave` command line: parses arguments, calls the library crates, renders results.

mod cmd;
mod exit;

use clap::Parser;

/// Turn any reachable Linux box into a NixOS server and keep a fleet of them deployed.
#[derive(Debug, Parser)]
#[command(name = "nixpave", version, about, propagate_version = true)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Error reports are not wrapped: they carry paths and commands that must stay copyable.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
    }));
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NIXPAVE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        cmd::Command::Completions { shell } => {
            return cmd::completions(&mut <Cli as clap::CommandFactory>::command(), shell)
        }
        cmd::Command::Man { dir } => cmd::man_pages(<Cli as clap::CommandFactory>::command(), &dir),
        command => cmd::run(command),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            exit::code(exit::FAILED)
        }
    }
}
