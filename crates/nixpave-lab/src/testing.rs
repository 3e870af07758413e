//! Lab hosts for tests: `Lab::up(n)` gives `n` ssh-reachable hosts and removes them on drop.
//!
//! ```no_run
//! use nixpave_lab::testing::Lab;
//! use nixpave_remote::Transport;
//!
//! let lab = Lab::up(2).expect("lab up (needs root)");
//! let host = lab.host(0);
//! let ssh = host.connect().expect("ssh to host1");
//! let out = ssh.run(&["uname".into(), "-n".into()], None).expect("runs");
//! assert!(out.success());
//! // Root inside the host without ssh (its network and mount namespaces):
//! let check = host.run_inside(&["nix-store", "--version"]).expect("nsenter");
//! assert!(check.status.success());
//! // `nixpave` commands: NIXPAVE_LAB_DIR=lab.base_dir() and target `lab.name()`, or
//! // `--inventory lab.inventory_path()`.
//! ```
//!
//! Every lab gets a unique name and its own subnet, so test binaries can run at the same
//! time. Labs live under `NIXPAVE_TEST_LAB_DIR` (default `/var/tmp/nixpave-test-labs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nixpave_remote::{HostKeyPolicy, SshOptions, SshTransport, Target, TransportError};

use crate::hosts::{self, Flavour, HostState, LabError, LabSpec, LabState};

/// A running lab, taken down when dropped.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    base: PathBuf,
    hosts: Vec<LabHost>,
}

/// Options for [`Lab::with`]; build it with `..LabOptions::default()` so new fields don't break you.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of hosts.
    pub hosts: usize,
    /// Loop disks per host.
    pub disks: usize,
    /// Size of each loop disk in bytes.
    pub disk_size: u64,
    /// Non-root users (with sudo) on every host.
    pub users: Vec<crate::hosts::LabUser>,
    /// What the hosts look like inside ([`Flavour::Nixos`]: NixOS-shaped, see [`crate::hosts::Flavour`]).
    pub flavour: Flavour,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            hosts: 1,
            disks: 0,
            disk_size: 256 << 20,
            users: Vec::new(),
            flavour: Flavour::Debian,
        }
    }
}

impl Lab {
    /// Brings up `hosts` lab hosts without disks.
    pub fn up(hosts: usize) -> Result<Lab, LabError> {
        Self::with(LabOptions {
            hosts,
            ..LabOptions::default()
        })
    }

    /// Brings up `hosts` NixOS-shaped lab hosts (tools only under `/run/current-system/sw/bin`, nix only in
    /// `/nix/var/nix/profiles/default/bin`, NixOS's session `PATH`; see [`crate::hosts::Flavour::Nixos`]).
    pub fn up_nixos(hosts: usize) -> Result<Lab, LabError> {
        Self::with(LabOptions {
            hosts,
            flavour: Flavour::Nixos,
            ..LabOptions::default()
        })
    }

    /// Brings up a lab as described by `options`.
    pub fn with(options: LabOptions) -> Result<Lab, LabError> {
        let base = test_base_dir();
        let spec = LabSpec {
            name: unique_name(),
            hosts: options.hosts,
            disks: options.disks,
            disk_size: options.disk_size,
            dir: base.clone(),
            users: options.users.clone(),
            flavour: options.flavour,
        };
        let state = hosts::up(&spec)?;
        let hosts = state
            .hosts
            .iter()
            .map(|h| LabHost {
                state: h.clone(),
                identity_file: state.identity_file.clone(),
                known_hosts: state.known_hosts.clone(),
            })
            .collect();
        Ok(Lab { state, base, hosts })
    }

    /// The lab's unique name (a target word for nixpave commands run with
    /// `NIXPAVE_LAB_DIR` set to [`base_dir`](Self::base_dir)).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The directory holding this lab (use as `NIXPAVE_LAB_DIR`).
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The lab's own state directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// The inventory file (`--inventory`).
    pub fn inventory_path(&self) -> PathBuf {
        self.state.dir.join("inventory.json")
    }

    /// The ssh_config snippet (`ssh -F FILE host1`).
    pub fn ssh_config_path(&self) -> PathBuf {
        self.state.dir.join("ssh_config")
    }

    /// Everything the lab created.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// All hosts.
    pub fn hosts(&self) -> &[LabHost] {
        &self.hosts
    }

    /// Host number `index` (0-based: `host(0)` is `host1`). Panics when out of range.
    pub fn host(&self, index: usize) -> &LabHost {
        &self.hosts[index]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A second pass finishes what a first one could not (it keeps the state for that).
        if let Err(first) = hosts::down(&self.state.dir) {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if let Err(e) = hosts::down(&self.state.dir) {
                eprintln!(
                    "lab {}: teardown failed: {first}; then: {e} (run `NIXPAVE_LAB_DIR={} nixpave lab down --name {}`)",
                    self.state.name,
                    self.base.display(),
                    self.state.name
                );
            }
        }
    }
}

/// One host of a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabHost {
    state: HostState,
    identity_file: PathBuf,
    known_hosts: PathBuf,
}

impl LabHost {
    /// `host1`, `host2`, …
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// What it looks like inside.
    pub fn flavour(&self) -> Flavour {
        self.state.flavour
    }

    /// Its IPv4 address.
    pub fn address(&self) -> &str {
        &self.state.address
    }

    /// `root@ADDRESS:22`.
    pub fn target(&self) -> Target {
        Target {
            user: Some("root".into()),
            host: self.state.address.clone(),
            port: Some(self.state.port),
        }
    }

    /// The lab's private key.
    pub fn identity_file(&self) -> &Path {
        &self.identity_file
    }

    /// The lab's known_hosts (holds this host's key).
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Strict-checking ssh options with the lab's key and known_hosts, a 5 s connect timeout.
    pub fn ssh_options(&self) -> SshOptions {
        SshOptions {
            name: Some(self.state.name.clone()),
            identity_file: Some(self.identity_file.clone()),
            known_hosts: Some(self.known_hosts.clone()),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: std::time::Duration::from_secs(5),
            ..SshOptions::default()
        }
    }

    /// Opens an [`SshTransport`] to the host as root.
    pub fn connect(&self) -> Result<SshTransport, TransportError> {
        SshTransport::connect(&self.target(), self.ssh_options())
    }

    /// `user@ADDRESS:22` for a lab user.
    pub fn target_as(&self, user: &str) -> Target {
        Target {
            user: Some(user.into()),
            ..self.target()
        }
    }

    /// Loop-device disks of this host (`/dev/loopN`).
    pub fn disks(&self) -> Vec<String> {
        self.state.disks.iter().map(|d| d.device.clone()).collect()
    }

    /// Runs `argv` as root inside the host (its network and mount namespaces), without ssh.
    pub fn run_inside(&self, argv: &[&str]) -> Result<std::process::Output, LabError> {
        hosts::run_inside(&self.state, argv)
    }

    /// The host's sshd log so far.
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.state.sshd_log()).unwrap_or_default()
    }

    /// How many ssh logins (handshakes with successful authentication) the host has accepted.
    pub fn accepted_logins(&self) -> usize {
        self.sshd_log().matches("Accepted publickey").count()
    }

    /// Stops the host's sshd (the host stays; connections to it are then refused).
    pub fn stop_sshd(&self) {
        if let Some(pid) = self.state.sshd_pid {
            crate::hosts::sys::terminate(&[pid], std::time::Duration::from_secs(3));
        }
    }

    /// Everything the lab recorded about this host.
    pub fn state(&self) -> &HostState {
        &self.state
    }
}

fn test_base_dir() -> PathBuf {
    std::env::var_os("NIXPAVE_TEST_LAB_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/nixpave-test-labs"))
}

/// `t<pid>-<n>`: unique among running processes and within one.
fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
