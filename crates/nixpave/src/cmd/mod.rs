//! One module per subcommand; each parses its own arguments and renders its own output.

use std::process::ExitCode;

pub mod connect;
pub mod deploy;
pub mod disk;
pub mod disk_apply;
pub mod exec;
pub mod facts;
pub mod init;
pub mod install;
pub mod json;
pub mod lab;
pub mod lab_vm;
pub mod table;

/// The subcommands of `nixpave`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Plan, apply and describe disko disk layouts.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Gather facts about hosts (OS, disks, kexec, nix) in one round trip.
    Facts(facts::FactsArgs),
    /// Run a command on many hosts in parallel.
    Exec(exec::ExecArgs),
    /// Disposable local hosts and VMs to try nixpave on.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Deploy NixOS systems and profiles to a fleet, with magic rollback.
    Deploy(deploy::DeployArgs),
    /// Show what each host runs and how its last deploy ended.
    Status(deploy::StatusArgs),
    /// Activate the previous generation on hosts.
    Rollback(deploy::RollbackArgs),
    /// Write a flake for a fresh server from its facts: flake.nix, disk.nix, hardware-configuration.nix.
    Init(init::InitArgs),
    /// Install NixOS on a reachable Linux host (kexec, disks, install, reboot, verify).
    Install(install::InstallArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write one man page per command into DIR.
    Man {
        /// Directory for the pages (created if missing).
        dir: std::path::PathBuf,
    },
}

/// Runs one subcommand.
pub fn run(command: Command) -> miette::Result<ExitCode> {
    match command {
        Command::Disk(c) => disk::run(c),
        Command::Facts(a) => facts::run(a),
        Command::Exec(a) => exec::run(a),
        Command::Lab(c) => lab::run(c),
        Command::Deploy(a) => deploy::run(a),
        Command::Status(a) => deploy::status(a),
        Command::Rollback(a) => deploy::rollback(a),
        Command::Install(a) => install::run(a),
        Command::Init(a) => init::run(a),
        // Both need the whole command line, which main.rs owns.
        Command::Completions { .. } | Command::Man { .. } => unreachable_here(),
    }
}

fn unreachable_here() -> miette::Result<ExitCode> {
    Err(miette::miette!(
        "completions and man pages are written by main, not by a subcommand"
    ))
}

/// Writes `cmd`'s completion script for `shell` to stdout.
pub fn completions(cmd: &mut clap::Command, shell: clap_complete::Shell) -> ExitCode {
    let name = cmd.get_name().to_string();
    // Generated into memory first: clap_complete panics when its writer fails, and a closed pipe
    // (`nixpave completions bash | head`) is no error.
    let mut script = Vec::new();
    clap_complete::generate(shell, cmd, name, &mut script);
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("writing the completion script: {e}");
            crate::exit::code(crate::exit::FAILED)
        }
        _ => crate::exit::code(crate::exit::OK),
    }
}

/// Writes a man page for `cmd` and each of its subcommands (`nixpave-deploy.1`, `nixpave-lab-up.1`, …) into
/// `dir`.
pub fn man_pages(cmd: clap::Command, dir: &std::path::Path) -> miette::Result<ExitCode> {
    use miette::IntoDiagnostic;
    std::fs::create_dir_all(dir).into_diagnostic()?;
    let mut written = 0;
    let mut stack = vec![(cmd, String::new())];
    while let Some((cmd, prefix)) = stack.pop() {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        let page = cmd.clone().name(name.clone());
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .into_diagnostic()?;
        std::fs::write(dir.join(format!("{name}.1")), out).into_diagnostic()?;
        written += 1;
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                stack.push((sub.clone(), name.clone()));
            }
        }
    }
    if !crate::ui::quiet() {
        eprintln!("wrote {written} man page(s) to {}", dir.display());
    }
    Ok(crate::exit::code(crate::exit::OK))
}
