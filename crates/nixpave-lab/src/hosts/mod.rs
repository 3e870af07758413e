//! Lab hosts: each a network namespace on a private bridge with its own mount namespace
//! (private `/nix`, `/etc/ssh`, `/root`, `/home`, `/tmp`, and its own `/etc/passwd`, `group`,
//! `shadow` and `sudoers.d`), running sshd and Debian's nix with its own store. `up` writes an inventory that nixpave commands accept; `down` removes everything.
//!
//! Addresses come from `10.77.N.0/24` (N in 10..=250, one subnet per lab), on a bridge the lab
//! creates; nothing is routed out of it.

mod error;
mod files;
mod nixos;
mod state;
pub(crate) mod sys;
mod teardown;
mod up;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::LabError;
pub use files::{inventory, key_exchanges, ssh_config};
pub use nixos::{Flavour, HIDDEN_DIR, NIX_PROFILE_BIN, SESSION_PATH, SW_BIN};
pub use state::{HostState, LabState, LoopDisk};
pub use teardown::down;
pub use up::up;

/// Name of the lab used when none is given (`nixpave exec lab -- …`).
pub const DEFAULT_LAB_NAME: &str = "lab";

/// The directory holding the labs when `NIXPAVE_LAB_DIR` is not set (the CLI's `--lab-dir` default too).
pub const DEFAULT_LAB_DIR: &str = "/var/lib/nixpave/lab";

/// Directory holding the labs: `NIXPAVE_LAB_DIR`, else [`DEFAULT_LAB_DIR`].
pub fn default_lab_dir() -> PathBuf {
    std::env::var_os("NIXPAVE_LAB_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LAB_DIR))
}

/// The labs under a directory as named groups of hosts for target words (`LAB`, `LAB:HOST`):
/// `DIR/LAB/inventory.json`, written by `lab up` (and by `lab vm up`, beside them).
#[derive(Debug, Clone)]
pub struct Labs {
    /// The directory holding the labs.
    pub dir: PathBuf,
}

impl nixpave_remote::HostGroups for Labs {
    fn group(
        &self,
        name: &str,
    ) -> Result<Option<(nixpave_remote::Inventory, String)>, nixpave_remote::InventoryError> {
        if name.is_empty() || name.contains(['/', '@', '.']) {
            return Ok(None);
        }
        let path = self.dir.join(name).join("inventory.json");
        if !path.is_file() {
            return Ok(None);
        }
        let inventory = nixpave_remote::Inventory::load(&path)?;
        Ok(Some((inventory, path.display().to_string())))
    }
}

/// Directories every lab host replaces with a private one.
const PRIVATE_DIRS: &[&str] = &[
    "/tmp",
    "/root",
    "/home",
    "/nix",
    "/etc/ssh",
    "/etc/sudoers.d",
];

/// What `lab up` should create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Lab name (`[a-z0-9-]`, at most 32 characters); its state lives in `dir/name`.
    pub name: String,
    /// Number of hosts (1–200), named `host1`, `host2`, …
    pub hosts: usize,
    /// Loop-device disks per host.
    pub disks: usize,
    /// Size of each disk in bytes.
    pub disk_size: u64,
    /// Directory holding labs (see [`default_lab_dir`]).
    pub dir: PathBuf,
    /// Non-root users created on every host (for sudo tests); root always exists.
    pub users: Vec<LabUser>,
    /// What the hosts look like inside: Debian, or NixOS-shaped (see [`Flavour`]).
    pub flavour: Flavour,
    /// A directory with the `nix` programs the hosts run (first on their `PATH`), e.g. a current Nix
    /// from `scripts/nix-current.sh`; `None`: whatever nix is on this machine's `PATH` (Debian's).
    pub nix_bin: Option<PathBuf>,
    /// The sshd the hosts run (an absolute path), e.g. OpenSSH 10 from `scripts/openssh-current.sh`; `None`:
    /// this machine's. Its helpers `sshd-session` and `sshd-auth`, when next to it, are named in sshd_config
    /// (`SshdSessionPath`, `SshdAuthPath`), and its directory comes first on sessions' `PATH`, so that
    /// `sshd -t` on the host checks the configuration with that sshd. Nothing else of the host changes.
    pub sshd: Option<PathBuf>,
}

/// A non-root login user on every lab host, allowed to use sudo; it logs in with the lab key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabUser {
    /// User name (`[a-z][a-z0-9-]*`).
    pub name: String,
    /// `None`: sudo without a password; `Some`: sudo asks for this password.
    pub sudo_password: Option<String>,
}

impl LabSpec {
    /// One host called `name`, no disks, in the default lab directory.
    pub fn new(name: impl Into<String>) -> Self {
        LabSpec {
            name: name.into(),
            hosts: 1,
            disks: 0,
            disk_size: 1 << 30,
            dir: default_lab_dir(),
            users: Vec::new(),
            flavour: Flavour::Debian,
            nix_bin: None,
            sshd: None,
        }
    }

    /// The lab's own state directory.
    pub fn lab_dir(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Checks the name and counts.
    pub fn validate(&self) -> Result<(), LabError> {
        validate_name(&self.name)?;
        if !(1..=200).contains(&self.hosts) {
            return Err(LabError::Spec(format!(
                "--hosts must be between 1 and 200, not {}",
                self.hosts
            )));
        }
        if !self.dir.is_absolute() {
            return Err(LabError::Spec(format!(
                "the lab directory {} must be an absolute path",
                self.dir.display()
            )));
        }
        // Hosts get private copies of these directories, so state kept there would be
        // invisible to the host's own sshd and nix.
        let real = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        if let Some(hidden) = PRIVATE_DIRS.iter().find(|d| real.starts_with(d)) {
            return Err(LabError::Spec(format!(
                "the lab directory {} is under {hidden}, which lab hosts replace with their own; \
                 use another directory (e.g. /var/lib/nixpave/lab)",
                self.dir.display()
            )));
        }
        for user in &self.users {
            let ok = user.name.len() <= 32
                && user.name.starts_with(|c: char| c.is_ascii_lowercase())
                && user
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok || user.name == "root" {
                return Err(LabError::Spec(format!("bad lab user name `{}`", user.name)));
            }
        }
        if let Some(bin) = &self.nix_bin {
            validate_host_path(bin, "the nix bin directory")?;
            validate_executable(&bin.join("nix"), "an executable nix")?;
        }
        if let Some(sshd) = &self.sshd {
            validate_host_path(sshd, "the sshd")?;
            validate_executable(sshd, "an executable sshd")?;
        }
        if self.disks > 8 {
            return Err(LabError::Spec("at most 8 disks per host".into()));
        }
        if self.disks > 0 && self.disk_size < (1 << 20) {
            return Err(LabError::Spec("disks must be at least 1M".into()));
        }
        Ok(())
    }
}

/// Checks a path the hosts' sshd_config and `PATH` carry (`--nix-bin DIR`, `--sshd PATH`): absolute, and
/// without characters that `SetEnv`, sshd_config paths or `PATH` cannot carry. `what` names it.
fn validate_host_path(path: &Path, what: &str) -> Result<(), LabError> {
    let text = path.to_string_lossy();
    if !path.is_absolute() || text.contains(|c: char| c.is_whitespace() || "\"':".contains(c)) {
        return Err(LabError::Spec(format!(
            "{what} {text} must be an absolute path without spaces, quotes or `:`"
        )));
    }
    Ok(())
}

/// Fails unless `program` is an executable file; `kind` says what it should be.
fn validate_executable(program: &Path, kind: &str) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = std::fs::metadata(program)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !executable {
        return Err(LabError::Spec(format!(
            "{} is not {kind}",
            program.display()
        )));
    }
    Ok(())
}

/// Checks a lab name: it becomes part of file names and ssh_config host aliases.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Spec(format!(
            "lab name `{name}` must be 1–32 characters of a-z, 0-9 and `-`"
        )))
    }
}

/// The state of lab `name` in `dir`.
pub fn load(dir: &Path, name: &str) -> Result<LabState, LabError> {
    validate_name(name)?;
    LabState::load(&dir.join(name))?.ok_or_else(|| LabError::NotFound {
        name: name.to_string(),
        dir: dir.to_path_buf(),
    })
}

/// How one host of a running lab is doing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostStatus {
    /// Host name (`host` in JSON, as in every `--json` output).
    #[serde(rename = "host")]
    pub name: String,
    /// Its address.
    pub address: String,
    /// True when its sshd process runs.
    pub sshd_running: bool,
    /// True when its ssh port accepts TCP connections.
    pub reachable: bool,
    /// Its loop disks.
    pub disks: Vec<String>,
}

/// Checks every host of a lab (process alive, port open).
pub fn status(state: &LabState) -> Vec<HostStatus> {
    state
        .hosts
        .iter()
        .map(|h| HostStatus {
            name: h.name.clone(),
            address: h.address.clone(),
            sshd_running: h.sshd_pid.is_some_and(|pid| {
                // After a reboot the pid may belong to something else.
                sys::alive(pid)
                    && std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("sshd"))
            }),
            reachable: port_open(&h.address, h.port, Duration::from_millis(500)),
            disks: h.disks.iter().map(|d| d.device.clone()).collect(),
        })
        .collect()
}

/// Runs `argv` as root inside a lab host (its network and mount namespaces), without ssh, with the
/// `PATH` a session on the host gets (NixOS's on NixOS-shaped hosts). Needs a live process of the host
/// to enter: its sshd, or once that has stopped, any process left in it.
pub fn run_inside(host: &HostState, argv: &[&str]) -> Result<std::process::Output, LabError> {
    let pid = entry_pid(host)
        .ok_or_else(|| LabError::Spec(format!("lab host {} is not running", host.name)))?;
    let pid = pid.to_string();
    let mut cmd = std::process::Command::new(sys::tool("nsenter"));
    cmd.args(["--target", &pid, "--net", "--mount", "--"])
        .args(argv)
        .stdin(std::process::Stdio::null());
    if host.flavour == Flavour::Nixos {
        // nsenter looks argv[0] up in this PATH too, after entering the host's mounts.
        cmd.env("PATH", SESSION_PATH);
    }
    cmd.output()
        .map_err(LabError::io("running nsenter for", &host.root))
}

/// A live process whose namespaces are the host's: its sshd, or once that is gone (stopped by a test, or by
/// an activation), any process left in its network namespace. Either must see the host's private `/nix`
/// (which also rules out a reused pid). The host's mounts live as long as one of its processes does.
fn entry_pid(host: &HostState) -> Option<i32> {
    let store = std::fs::metadata(host.root.join("nix")).ok()?;
    let inside = |pid: &i32| {
        // Through /proc/PID/root paths resolve in that process's mount namespace.
        sys::alive(*pid)
            && std::fs::metadata(format!("/proc/{pid}/root/nix"))
                .is_ok_and(|m| m.dev() == store.dev() && m.ino() == store.ino())
    };
    if let Some(pid) = host.sshd_pid.filter(inside) {
        return Some(pid);
    }
    let listed = sys::run(
        "listing host processes",
        "ip",
        &["netns", "pids", &host.netns],
    )
    .ok()?;
    listed
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(inside)
}

/// True when `address:port` accepts a TCP connection within `timeout`.
pub(crate) fn port_open(address: &str, port: u16, timeout: Duration) -> bool {
    format!("{address}:{port}")
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| std::net::TcpStream::connect_timeout(&addr, timeout).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labs_are_groups_of_hosts_by_directory() {
        use nixpave_remote::HostGroups;
        let dir = std::env::temp_dir().join(format!("nixpave-labs-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lab")).unwrap();
        std::fs::write(
            dir.join("lab/inventory.json"),
            r#"{"hosts": [{"name": "host1", "host": "10.77.5.10", "port": 22}]}"#,
        )
        .unwrap();
        let labs = Labs { dir: dir.clone() };
        let (inv, path) = labs.group("lab").unwrap().expect("the lab");
        assert_eq!(inv.hosts[0].host, "10.77.5.10");
        assert!(path.ends_with("lab/inventory.json"), "{path}");
        assert!(labs.group("nolab").unwrap().is_none());
        assert!(labs.group("a.b").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_and_counts_are_checked() {
        assert!(validate_name("lab").is_ok());
        assert!(validate_name("t-123").is_ok());
        for bad in ["", "Lab", "a/b", "-x", "a b", &"x".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let mut spec = LabSpec::new("lab");
        assert!(spec.validate().is_ok());
        spec.hosts = 0;
        assert!(spec.validate().is_err());
        spec.hosts = 1;
        spec.dir = "/tmp/labs".into();
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("under /tmp"), "{err}");
        spec.dir = "relative".into();
        assert!(spec.validate().is_err());
        spec.dir = "/var/lib/nixpave/lab".into();
        spec.nix_bin = Some("/nonexistent/bin".into());
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("not an executable nix"), "{err}");
        spec.nix_bin = Some("relative/bin".into());
        assert!(spec.validate().is_err());
        spec.nix_bin = None;
        spec.sshd = Some("/nonexistent/sbin/sshd".into());
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("not an executable sshd"), "{err}");
        spec.sshd = Some("sbin/sshd".into());
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("must be an absolute path"), "{err}");
    }
}
