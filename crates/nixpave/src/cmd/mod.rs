//! One module per subcommand; each parses its own arguments and renders its own output.

use std::process::ExitCode;

pub mod deploy;
pub mod disk;
pub mod disk_apply;
pub mod exec;
pub mod facts;
pub mod init;
pub mod install;
pub mod lab;
pub mod lab_vm;

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

/// SSH options from a command's `-i`, `--known-hosts` and `--accept-new-host-key` flags.
pub(crate) fn ssh_options(
    identity: Option<&std::path::Path>,
    known_hosts: Option<&std::path::Path>,
    accept_new_host_key: bool,
) -> nixpave_remote::SshOptions {
    nixpave_remote::SshOptions {
        identity_file: identity.map(Into::into),
        known_hosts: known_hosts.map(Into::into),
        host_key_policy: if accept_new_host_key {
            nixpave_remote::HostKeyPolicy::AcceptNew
        } else {
            nixpave_remote::HostKeyPolicy::Strict
        },
        ..nixpave_remote::SshOptions::default()
    }
}

/// A sudo password prompt that asks on the terminal (hidden) the first time a host needs it and gives the
/// same answer to every other host of the run, as deploy-rs's `interactiveSudo` does. Without a terminal it
/// answers nothing, and such hosts fail to connect with a message that says so.
pub(crate) fn password_once() -> nixpave_remote::PasswordPrompt {
    let answer: std::sync::Arc<std::sync::Mutex<Option<Option<String>>>> = Default::default();
    std::sync::Arc::new(move |host: &str| {
        let mut answer = answer.lock().unwrap_or_else(|p| p.into_inner());
        if answer.is_none() {
            *answer = Some(
                rpassword::prompt_password(format!(
                    "sudo password (asked once, used for {host} and every other host): "
                ))
                .ok(),
            );
        }
        answer.clone().flatten()
    })
}

/// The exit code of a failed connection: a host-key refusal is a safety refusal.
pub(crate) fn connect_exit_code(error: &nixpave_remote::TransportError) -> u8 {
    if error.is_refusal() {
        crate::exit::REFUSED
    } else {
        crate::exit::FAILED
    }
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
