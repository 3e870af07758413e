//! The `nixpave` command line: parses arguments, calls the library crates, renders results.

mod cmd;
mod exit;
mod ui;

use clap::Parser;

/// Turn any reachable Linux box into a NixOS server and keep a fleet of them deployed.
#[derive(Debug, Parser)]
#[command(name = "nixpave", version, about, propagate_version = true)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less output: no progress and no informational messages; results and errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Colour: auto (when the output is a terminal and NO_COLOR is unset or empty), always, never.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    color: ui::ColorChoice,
    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let ui = ui::init(cli.color, cli.quiet);
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
        .with_ansi(ui.color_stderr)
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
