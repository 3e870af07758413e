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
    /// The nix the hosts run (see [`LabNix`]).
    pub nix: LabNix,
    /// The sshd the hosts run (see [`crate::hosts::LabSpec::sshd`]), e.g. [`OpensshCurrent::sshd`];
    /// `None`: this machine's.
    pub sshd: Option<PathBuf>,
}

/// Which nix lab hosts run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LabNix {
    /// Whatever is on this machine's `PATH` when sshd starts sessions: Debian 12's nix 2.8.
    #[default]
    System,
    /// Debian's nix from `/usr/bin` explicitly (2.8 on Debian 12), whatever the test's own `PATH` says.
    Debian,
    /// Current Nix (2.26) from [`current_nix_bin`]; bringing the lab up fails when it is not provided.
    Current,
    /// The nix programs in this directory.
    Bin(PathBuf),
}

/// The directory with a current Nix's programs (2.26) for tests: `NIXPAVE_TEST_NIX_CURRENT_BIN`, else
/// the cache `scripts/nix-current.sh` fills (`/var/cache/nixpave/nix-current/bin`). An error (never a
/// silent fallback to the system nix) when neither holds a nix.
pub fn current_nix_bin() -> Result<PathBuf, LabError> {
    let bin = std::env::var_os("NIXPAVE_TEST_NIX_CURRENT_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/nixpave/nix-current/bin"));
    if bin.join("nix").is_file() {
        Ok(bin)
    } else {
        Err(LabError::Spec(format!(
            "this test needs current Nix (2.26) and it is not provided: no nix in {} \
             (run `bash scripts/nix-current.sh`, or set NIXPAVE_TEST_NIX_CURRENT_BIN; scripts/test.sh does both)",
            bin.display()
        )))
    }
}

/// A current OpenSSH (10) for tests, from `scripts/openssh-current.sh`.
#[derive(Debug, Clone)]
pub struct OpensshCurrent {
    /// The client's directory (`ssh`, `ssh-keygen`): first on the deployer's `PATH`.
    pub bin: PathBuf,
    /// The server, its helpers `sshd-session` and `sshd-auth` beside it: [`LabOptions::sshd`].
    pub sshd: PathBuf,
}

/// Current OpenSSH for tests: the `bin/` directory in `NIXPAVE_TEST_OPENSSH_CURRENT_BIN`, else the cache
/// `scripts/openssh-current.sh` fills (`/var/cache/nixpave/openssh-current/bin`), and its sibling
/// `sbin/sshd`. An error (for the caller to skip with, never a silent fallback to this machine's OpenSSH)
/// when they are not there.
pub fn current_openssh() -> Result<OpensshCurrent, LabError> {
    let bin = std::env::var_os("NIXPAVE_TEST_OPENSSH_CURRENT_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/nixpave/openssh-current/bin"));
    let sshd = bin.with_file_name("sbin").join("sshd");
    if bin.join("ssh").is_file() && sshd.is_file() {
        Ok(OpensshCurrent { bin, sshd })
    } else {
        Err(LabError::Spec(format!(
            "this test needs current OpenSSH (10) and it is not provided: no ssh in {} or no {} \
             (run `bash scripts/openssh-current.sh`, or set NIXPAVE_TEST_OPENSSH_CURRENT_BIN; scripts/test.sh does both)",
            bin.display(),
            sshd.display()
        )))
    }
}

/// The nix version the test run's own nix (first on `PATH`) is meant to be: `NIXPAVE_TEST_NIX`
/// (`2.26` in the second pass of `scripts/test.sh`), `None` when unset (Debian's nix).
pub fn expected_local_nix() -> Option<String> {
    std::env::var("NIXPAVE_TEST_NIX")
        .ok()
        .filter(|v| !v.is_empty())
}

impl LabNix {
    /// The bin directory to put first on the hosts' `PATH` (`None` for [`LabNix::System`]).
    pub fn bin_dir(&self) -> Result<Option<PathBuf>, LabError> {
        match self {
            LabNix::System => Ok(None),
            LabNix::Debian => Ok(Some(PathBuf::from("/usr/bin"))),
            LabNix::Current => current_nix_bin().map(Some),
            LabNix::Bin(dir) => Ok(Some(dir.clone())),
        }
    }
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            hosts: 1,
            disks: 0,
            disk_size: 256 << 20,
            users: Vec::new(),
            flavour: Flavour::Debian,
            nix: LabNix::System,
            sshd: None,
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
            nix_bin: options.nix.bin_dir()?,
            sshd: options.sshd.clone(),
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

    /// Runs `argv` as root inside the host (its network and mount namespaces), without ssh; also after
    /// its sshd has stopped, as long as some process of the host lives on.
    pub fn run_inside(&self, argv: &[&str]) -> Result<std::process::Output, LabError> {
        hosts::run_inside(&self.state, argv)
    }

    /// Runs `script` with `sh -c` as root inside the host (no ssh) and returns its trimmed stdout;
    /// panics when the host cannot be entered (test support). NixOS-shaped hosts keep their
    /// tools only in `/run/current-system/sw/bin`, so that comes first on `PATH`.
    pub fn sh(&self, script: &str) -> String {
        let script = format!("PATH=/run/current-system/sw/bin:$PATH; {script}");
        let out = self
            .run_inside(&["sh", "-c", &script])
            .unwrap_or_else(|e| panic!("cannot enter lab host {}: {e}", self.name()));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The host's network interface (the one that is not `lo`).
    pub fn interface(&self) -> String {
        self.sh(
            "ip -o link show | awk -F': ' '$2 != \"lo\" { sub(/@.*/, \"\", $2); print $2; exit }'",
        )
    }

    /// `nix --version` as an ssh session on the host sees it (the nix a deploy uses there).
    pub fn nix_version(&self) -> Result<String, TransportError> {
        use nixpave_remote::Transport;
        let out = self
            .connect()?
            .run(&["nix".into(), "--version".into()], None)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The host's sshd log so far.
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.state.sshd_log()).unwrap_or_default()
    }

    /// How many ssh logins (handshakes with successful authentication) the host has accepted.
    pub fn accepted_logins(&self) -> usize {
        self.sshd_log().matches("Accepted publickey").count()
    }

    /// The key exchange algorithm each ssh handshake with the host negotiated so far, in order (e.g.
    /// `mlkem768x25519-sha256`), from its sshd log.
    pub fn key_exchanges(&self) -> Vec<String> {
        crate::hosts::key_exchanges(&self.sshd_log())
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
