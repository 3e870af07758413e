//! [`ConnectArgs`]: the one set of connection flags of every command that reaches hosts over ssh
//! (`exec`, `facts`, `deploy`, `status`, `rollback`, `install`, `disk apply --target`).
//!
//! **Precedence, everywhere:** a flag given on the command line beats what an inventory says for a
//! host (a nixpave inventory, a lab's, a deploy-rs flake's settings), which beats nixpave's
//! defaults. deploy-rs `sshOpts` are ssh's own command line and are handed to ssh verbatim, first
//! (ssh keeps the first value it sees); `deploy --ssh-opts` replaces them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nixpave_remote::{HostKeyPolicy, PasswordPrompt, Privilege, SshOptions, TransportError};

/// The help section the connection flags are listed under.
const HEADING: &str = "Connection";

/// How to reach hosts: shared by every command that connects over ssh.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Private key to log in with (only that key is offered; beats the inventory's key).
    #[arg(help_heading = HEADING, short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// ssh_config file to use instead of ~/.ssh/config (a `-F` in deploy-rs `sshOpts` wins over it).
    #[arg(help_heading = HEADING, short = 'F', long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// An ssh option (`KEY=VALUE`, as `ssh -o`) for every connection; repeatable.
    #[arg(help_heading = HEADING, long, value_name = "KEY=VALUE", value_parser = ssh_option)]
    pub ssh_option: Vec<String>,
    /// known_hosts file to check host keys against (instead of ~/.ssh/known_hosts; beats the
    /// inventory's).
    #[arg(help_heading = HEADING, long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Record the key of a host seen for the first time (a changed key is still refused).
    #[arg(help_heading = HEADING, long)]
    pub accept_new_host_key: bool,
    /// Seconds to wait for a host to answer.
    #[arg(help_heading = HEADING, long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
    /// How a non-root login user becomes root (default: sudo, or deploy-rs's `sudo` setting).
    #[arg(help_heading = HEADING, long = "become", value_name = "TOOL")]
    pub become_tool: Option<Become>,
    /// Ask for the sudo password (hidden, fed to sudo on stdin, never in argv; deploy-rs
    /// `interactiveSudo` for deploy, status and rollback).
    #[arg(help_heading = HEADING, long)]
    pub ask_sudo_password: bool,
    /// Keep each host's ssh connection open SECS after the run, for the next run to reuse without
    /// logging in again (ssh's ControlPersist; 0: close at exit). The proof of a magic rollback is
    /// always a new login. Not for install, whose machine kexecs and reboots.
    #[arg(
        help_heading = HEADING,
        long,
        value_name = "SECS",
        env = "NIXPAVE_SSH_PERSIST",
        default_value_t = 0
    )]
    pub ssh_persist: u64,
    /// Directory of `nixpave lab` labs (a lab's name and `LAB:HOST` become targets; `deploy --lab`).
    #[arg(
        long,
        help_heading = HEADING,
        value_name = "DIR",
        env = "NIXPAVE_LAB_DIR",
        default_value = nixpave_lab::hosts::DEFAULT_LAB_DIR
    )]
    pub lab_dir: PathBuf,
}

/// How a non-root login becomes root (`--become`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Become {
    // No doc comments: clap would switch every help text to its long layout for them.
    Sudo,
    Doas,
    Run0,
    None,
}

impl From<Become> for Privilege {
    fn from(b: Become) -> Privilege {
        match b {
            Become::Sudo => Privilege::Sudo,
            Become::Doas => Privilege::Doas,
            Become::Run0 => Privilege::Run0,
            Become::None => Privilege::None,
        }
    }
}

/// Who a sudo password typed at the terminal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskPassword {
    /// Asked once per host (`exec`, `facts`: hosts may have different passwords).
    PerHost,
    /// Asked once for the whole run, as deploy-rs's `interactiveSudo` does (`deploy`, `install`).
    Once,
}

impl ConnectArgs {
    /// ssh options from the flags; per-host inventory settings are filled in only where no flag
    /// was given ([`nixpave_remote::ResolvedHost::ssh_options`], the deploy connector).
    pub fn ssh_options(&self, ask: AskPassword) -> SshOptions {
        SshOptions {
            identity_file: self.identity.clone(),
            known_hosts: self.known_hosts.clone(),
            host_key_policy: if self.accept_new_host_key {
                HostKeyPolicy::AcceptNew
            } else {
                HostKeyPolicy::Strict
            },
            ssh_config: self.ssh_config.clone(),
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            privilege: self.become_tool.map(Into::into).unwrap_or_default(),
            sudo_password: self.ask_sudo_password.then(|| match ask {
                AskPassword::PerHost => terminal_password_prompt(),
                AskPassword::Once => password_once(),
            }),
            extra_options: self.ssh_option.clone(),
            persist: (self.ssh_persist > 0).then(|| Duration::from_secs(self.ssh_persist)),
            ..SshOptions::default()
        }
    }
}

/// `KEY=VALUE`, as `ssh -o` takes it.
fn ssh_option(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() => Ok(s.to_string()),
        _ => Err("expected KEY=VALUE (as `ssh -o` takes it)".into()),
    }
}

/// Asks on the terminal, one host at a time, with echo off (rpassword turns it back on however
/// the read ends).
fn terminal_password_prompt() -> PasswordPrompt {
    let lock = Arc::new(Mutex::new(()));
    Arc::new(move |host: &str| {
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        rpassword::prompt_password(format!("sudo password for {host}: ")).ok()
    })
}

/// A sudo password prompt that asks on the terminal (hidden) the first time a host needs it and gives the
/// same answer to every other host of the run, as deploy-rs's `interactiveSudo` does. Without a terminal it
/// answers nothing, and such hosts fail to connect with a message that says so.
pub(crate) fn password_once() -> PasswordPrompt {
    let answer: Arc<Mutex<Option<Option<String>>>> = Default::default();
    Arc::new(move |host: &str| {
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
pub(crate) fn connect_exit_code(error: &TransportError) -> u8 {
    if error.is_refusal() {
        crate::exit::REFUSED
    } else {
        crate::exit::FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn parse(words: &[&str]) -> Result<ConnectArgs, clap::Error> {
        let cmd = ConnectArgs::augment_args(clap::Command::new("c"));
        let m = cmd.try_get_matches_from(std::iter::once("c").chain(words.iter().copied()))?;
        ConnectArgs::from_arg_matches(&m)
    }

    #[test]
    fn flags_become_ssh_options() {
        let a = parse(&[
            "-i",
            "/k",
            "--ssh-option",
            "ProxyJump=b",
            "--become",
            "doas",
            "--connect-timeout",
            "3",
        ])
        .unwrap();
        let o = a.ssh_options(AskPassword::PerHost);
        assert_eq!(o.identity_file.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(o.extra_options, ["ProxyJump=b"]);
        assert_eq!(o.privilege, Privilege::Doas);
        assert_eq!(o.connect_timeout, Duration::from_secs(3));
        assert!(o.sudo_password.is_none());
        assert!(parse(&["--ssh-option", "novalue"]).is_err());
        assert!(parse(&["--become", "su"]).is_err());
    }
}
