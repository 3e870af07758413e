//! One module per subcommand; each parses its own arguments and renders its own output.

use std::process::ExitCode;

pub mod deploy;
pub mod disk;
pub mod disk_apply;
pub mod exec;
pub mod facts;
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
    /// Install NixOS on a reachable Linux host (kexec, disks, install, reboot, verify).
    Install(install::InstallArgs),
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
    }
}
