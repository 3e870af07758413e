//! `nixpave lab …`: disposable local hosts; `lab vm` lives in `lab_vm`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use nixpave_lab::hosts::{self, LabError, LabSpec, DEFAULT_LAB_NAME};

use crate::exit;

/// Which lab: its name and the directory holding labs.
#[derive(Debug, Clone, clap::Args)]
pub struct LabSelect {
    /// Lab name; also the target word for its hosts (`nixpave exec NAME -- …`).
    #[arg(long, default_value = DEFAULT_LAB_NAME)]
    pub name: String,
    /// Directory holding labs (state in DIR/NAME).
    #[arg(
        long,
        value_name = "DIR",
        env = "NIXPAVE_LAB_DIR",
        default_value = "/var/lib/nixpave/lab"
    )]
    pub dir: PathBuf,
}

/// `nixpave lab` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Create lab hosts: network namespaces with sshd and a private nix store (needs root).
    Up {
        #[command(flatten)]
        lab: LabSelect,
        /// Number of hosts (host1, host2, …).
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Loop-device disks per host.
        #[arg(long, default_value_t = 0)]
        disks: usize,
        /// Size of each disk (e.g. 512M, 2G; sparse).
        #[arg(long, default_value = "1G", value_parser = nixpave_lab::size::parse_size)]
        disk_size: u64,
        /// Also create this non-root user (password-less sudo, the lab key) on every host.
        #[arg(long = "user", value_name = "NAME")]
        users: Vec<String>,
        /// What the hosts look like inside: `debian` (this machine's FHS layout) or `nixos` (tools only in
        /// /run/current-system/sw/bin, nix only in /nix/var/nix/profiles/default/bin, sudo in
        /// /run/wrappers/bin, /usr/bin holding just env and sh, NixOS's session PATH).
        #[arg(long, value_name = "FLAVOUR", default_value = "debian")]
        flavour: String,
        /// Print the lab (hosts, addresses, disks, inventory path) as JSON.
        #[arg(long)]
        json: bool,
        /// Directory of the nix programs the hosts run (first on their PATH), e.g. the current Nix
        /// from `scripts/nix-current.sh`; default: this machine's nix.
        #[arg(long, value_name = "DIR")]
        nix_bin: Option<std::path::PathBuf>,
        /// The sshd the hosts run (an absolute path), e.g. OpenSSH 10's `sbin/sshd` from
        /// `scripts/openssh-current.sh`; its helpers sshd-session and sshd-auth beside it are named in
        /// sshd_config (SshdSessionPath, SshdAuthPath); default: this machine's sshd.
        #[arg(long, value_name = "PATH")]
        sshd: Option<std::path::PathBuf>,
    },
    /// Show the lab's hosts and whether they answer.
    Status {
        #[command(flatten)]
        lab: LabSelect,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Log in to a lab host, or run a command on it.
    Ssh {
        #[command(flatten)]
        lab: LabSelect,
        /// Host name (`host1`).
        host: String,
        /// Command to run instead of a login shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Remove the lab: processes, namespaces, bridge, loop disks, state (idempotent).
    Down {
        #[command(flatten)]
        lab: LabSelect,
    },
    /// qemu VMs.
    #[command(subcommand)]
    Vm(super::lab_vm::VmCommand),
}

/// Runs a `nixpave lab` subcommand.
pub fn run(command: LabCommand) -> miette::Result<ExitCode> {
    let result = match command {
        LabCommand::Up {
            lab,
            hosts,
            disks,
            disk_size,
            users,
            flavour,
            json,
            nix_bin,
            sshd,
        } => flavour.parse().and_then(|flavour| {
            let spec = LabSpec {
                name: lab.name,
                hosts,
                disks,
                disk_size,
                dir: lab.dir,
                users: users
                    .into_iter()
                    .map(|name| hosts::LabUser {
                        name,
                        sudo_password: None,
                    })
                    .collect(),
                flavour,
                nix_bin,
                sshd,
            };
            up(&spec, json)
        }),
        LabCommand::Status { lab, json } => status(&lab, json),
        LabCommand::Ssh { lab, host, command } => ssh(&lab, &host, &command),
        LabCommand::Down { lab } => down(&lab),
        LabCommand::Vm(c) => return super::lab_vm::run(c),
    };
    Ok(result.unwrap_or_else(|e| {
        eprintln!("{:?}", miette::miette!("{e}"));
        exit::code(match e {
            LabError::Spec(_) | LabError::Exists { .. } | LabError::NotFound { .. } => exit::USAGE,
            _ => exit::FAILED,
        })
    }))
}

fn up(spec: &LabSpec, json: bool) -> Result<ExitCode, LabError> {
    let started = Instant::now();
    let state = hosts::up(spec)?;
    let elapsed = started.elapsed();
    if json {
        let value = serde_json::json!({
            "lab": state.name,
            "dir": state.dir,
            "inventory": state.dir.join("inventory.json"),
            "ssh_config": state.dir.join("ssh_config"),
            "duration_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "flavour": spec.flavour,
            "hosts": hosts::status(&state),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(exit::code(exit::OK));
    }
    let mut table = super::table::new(&["HOST", "ADDRESS", "SSHD", "DISKS"]);
    for host in &state.hosts {
        let disks: Vec<&str> = host.disks.iter().map(|d| d.device.as_str()).collect();
        table.add_row(vec![
            host.name.clone(),
            host.address.clone(),
            host.sshd_pid.map_or("-".into(), |p| p.to_string()),
            disks.join(" "),
        ]);
    }
    println!("{}", super::table::render(table, &[]));
    if crate::ui::quiet() {
        return Ok(exit::code(exit::OK));
    }
    println!(
        "\nlab `{}` is up: {} hosts{} in {:.2} s\n  inventory   {}\n  ssh config  {}\n\
         try: nixpave exec {} -- uname -a    |    nixpave lab ssh host1    |    nixpave lab down",
        state.name,
        state.hosts.len(),
        match spec.flavour {
            hosts::Flavour::Nixos => " (NixOS-shaped)",
            hosts::Flavour::Debian => "",
        },
        elapsed.as_secs_f64(),
        state.dir.join("inventory.json").display(),
        state.dir.join("ssh_config").display(),
        state.name,
    );
    Ok(exit::code(exit::OK))
}

fn status(lab: &LabSelect, json: bool) -> Result<ExitCode, LabError> {
    let state = hosts::load(&lab.dir, &lab.name)?;
    let rows = hosts::status(&state);
    if json {
        let value = serde_json::json!({
            "lab": state.name,
            "dir": state.dir,
            "inventory": state.dir.join("inventory.json"),
            "hosts": rows,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!("lab `{}` in {}", state.name, state.dir.display());
        let mut table = super::table::new(&["HOST", "ADDRESS", "SSHD", "SSH PORT", "DISKS"]);
        for row in &rows {
            table.add_row(vec![
                row.name.clone(),
                row.address.clone(),
                if row.sshd_running {
                    "running"
                } else {
                    "stopped"
                }
                .to_string(),
                if row.reachable { "open" } else { "closed" }.to_string(),
                row.disks.join(" "),
            ]);
        }
        println!("{}", super::table::render(table, &[]));
    }
    let all_up = rows.iter().all(|r| r.sshd_running && r.reachable);
    Ok(exit::code(if all_up { exit::OK } else { exit::FAILED }))
}

fn ssh(lab: &LabSelect, host: &str, command: &[String]) -> Result<ExitCode, LabError> {
    let state = hosts::load(&lab.dir, &lab.name)?;
    if !state.hosts.iter().any(|h| h.name == host) {
        let names: Vec<&str> = state.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(LabError::Spec(format!(
            "lab `{}` has no host `{host}` (it has: {})",
            state.name,
            names.join(", ")
        )));
    }
    let config = state.dir.join("ssh_config");
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-F").arg(&config).arg(host);
    if !command.is_empty() {
        ssh.arg("--").arg(nixpave_remote::shell_join(command));
    }
    let status = ssh.status().map_err(|source| LabError::Io {
        what: "running ssh with".into(),
        path: config.clone(),
        source,
    })?;
    // ssh's own status (or the remote command's), so scripts can use `lab ssh` like ssh.
    Ok(exit::code(status.code().map_or(exit::FAILED, |c| c as u8)))
}

fn down(lab: &LabSelect) -> Result<ExitCode, LabError> {
    hosts::validate_name(&lab.name)?;
    let dir = lab.dir.join(&lab.name);
    if hosts::down(&dir)? {
        println!("lab `{}` removed", lab.name);
    } else {
        println!(
            "lab `{}` does not exist in {}: nothing to do",
            lab.name,
            lab.dir.display()
        );
    }
    Ok(exit::code(exit::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_arguments_are_consistent_and_parse() {
        use clap::{FromArgMatches, Subcommand};
        let cmd = LabCommand::augment_subcommands(clap::Command::new("lab"));
        cmd.clone().debug_assert();
        let matches = cmd
            .try_get_matches_from([
                "lab",
                "up",
                "--hosts",
                "5",
                "--disks",
                "2",
                "--disk-size",
                "2G",
                "--name",
                "x",
            ])
            .expect("parses");
        match LabCommand::from_arg_matches(&matches).expect("command") {
            LabCommand::Up {
                lab, hosts, disks, ..
            } => assert_eq!((lab.name.as_str(), hosts, disks), ("x", 5, 2)),
            other => panic!("parsed as {other:?}"),
        }
    }
}
